"""Notes <-> per-chunk Option 1 tokens, with tie sections, and stitching chunks back into notes (docs/design.md §3, §7.3).

Everything is vectorized over a whole piece (no Python loop per event): a piece is a flat id array plus chunk
offsets, as `ChunkTokens` holds it. Chunk k covers [k*L, (k+1)*L); an event's step in its chunk is
round((t - k*L) * 100), so a round trip is exact to within 5 ms.

A chunk's sequence: optional tie section (`tie`, then `program p, pitch n` per note sounding across the chunk's
start), then events grouped by step (a `shift` before each new step; within a step note-offs, then note-ons, each by
(program, pitch), then drum hits by pitch), then EOS. `time_encoding="delta"` counts shifts from the previous step
(the canonical form in shards); `"absolute"` writes the step since the chunk start (MT3's choice).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import vocab as V
from .notes import DRUM_SECONDS, Notes

TRAIN_CHUNK_SECONDS = 32768 / 16000
MAX_TOKENS = 1024
TIME_ENCODINGS = ("delta", "absolute")

# Event kinds, in their order within one step.
_OFF, _ON, _DRUM = 0, 1, 2
_TIE_EV = 3  # a tie, as an event at its chunk's start (stitching only)
_TIED_VELOCITY = 100  # velocity of a note opened by a tie alone (tie_starts_notes): ties carry none
# Token types by id range, for decoding: searchsorted over the first ids of each range.
_T_SPECIAL, _T_SHIFT, _T_PITCH, _T_VELOCITY, _T_TIE, _T_PROGRAM, _T_DRUM = range(7)
_RANGE_STARTS = np.array([0, V.SHIFT.first_id, V.PITCH.first_id, V.VELOCITY.first_id, V.TIE.first_id,
                          V.PROGRAM.first_id, V.DRUM.first_id])
_RANGE_VALUE0 = np.array([0, V.SHIFT.first_id, V.PITCH.first_id - V.MIN_PITCH, V.VELOCITY.first_id,
                          V.TIE.first_id, V.PROGRAM.first_id, V.DRUM.first_id - V.MIN_PITCH])
# Lookup tables id -> type and id -> value: one gather per token instead of a search.
_TYPE_OF = (np.searchsorted(_RANGE_STARTS, np.arange(V.VOCAB_SIZE), side="right") - 1).astype(np.int64)
_VALUE_OF = np.arange(V.VOCAB_SIZE) - _RANGE_VALUE0[_TYPE_OF]


@dataclass
class ChunkTokens:
    """The tokens of every chunk of a piece: one flat id array cut by offsets."""

    tokens: np.ndarray  # int32 [total] ids; each chunk ends with EOS, no PAD
    offsets: np.ndarray  # int64 [n + 1]; chunk i is tokens[offsets[i]:offsets[i + 1]]
    truncated: np.ndarray  # bool [n]; chunk was cut at the token cap
    start_s: np.ndarray  # float64 [n]; chunk start times
    dropped_pitches: int = 0  # notes dropped for a pitch outside 21..108

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def chunk(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]: self.offsets[i + 1]]

    def chunks(self) -> list[np.ndarray]:
        return [self.chunk(i) for i in range(len(self))]


@dataclass
class DecodeStats:
    """What tolerant decoding had to skip."""

    malformed: int = 0  # tokens that could not be read as part of an event
    notes: int = 0
    details: dict = field(default_factory=dict)


def _check_encoding(time_encoding: str) -> None:
    if time_encoding not in TIME_ENCODINGS:
        raise ValueError(f"time_encoding must be one of {TIME_ENCODINGS}, not {time_encoding!r}")


def _quantize(t: np.ndarray, chunk_seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Times -> (chunk, step within chunk), steps rounded half up so results never depend on banker's rounding."""
    chunk = np.floor(t / chunk_seconds).astype(np.int64)
    step = np.floor((t - chunk * chunk_seconds) * V.STEPS_PER_SECOND + 0.5).astype(np.int64)
    return chunk, step


def normalize_notes(notes: Notes, chunk_seconds: float = TRAIN_CHUNK_SECONDS) -> tuple[Notes, int]:
    """Make notes encodable: drop pitches outside 21..108 (counted), clip negative times, merge notes of one
    (program, pitch) whose onsets fall on the same step, and end a sounding note where the same key is struck again
    (what decoding does, so round trips are exact). Returns (notes, dropped_pitches)."""
    in_range = (notes.pitch >= V.MIN_PITCH) & (notes.pitch <= V.MAX_PITCH)
    dropped = int((~in_range).sum())
    n = notes.select(in_range)
    onset = np.maximum(n.onset, 0.0)
    offset = np.maximum(n.offset, onset)
    drum = n.program == V.DRUM_PROGRAM
    offset[drum] = onset[drum] + DRUM_SECONDS
    chunk, step = _quantize(onset, chunk_seconds)
    key = n.program.astype(np.int64) * 128 + n.pitch
    # Sort by key, then quantized onset, longest first, so the first of a same-step group is the one kept. Of two
    # drum hits on one step (all as long) the louder is kept: a flam's soft grace note is not the accent.
    louder = np.where(drum, -n.velocity.astype(np.int64), 0)
    order = np.lexsort((-offset, onset, louder, step, chunk, key))
    key, chunk, step, onset, offset = key[order], chunk[order], step[order], onset[order], offset[order]
    same_as_prev = np.zeros(len(key), dtype=bool)
    same_as_prev[1:] = (key[1:] == key[:-1]) & (chunk[1:] == chunk[:-1]) & (step[1:] == step[:-1])
    keep = ~same_as_prev
    key, onset, offset, order = key[keep], onset[keep], offset[keep], order[keep]
    nxt_same = np.zeros(len(key), dtype=bool)
    nxt_same[:-1] = key[1:] == key[:-1]
    pitched = (key // 128) != V.DRUM_PROGRAM
    cut = nxt_same & pitched
    cut[cut] = offset[cut] > onset[1:][cut[:-1]]
    offset[cut] = onset[1:][cut[:-1]]
    out = Notes(onset, offset, n.pitch[order], n.velocity[order], n.program[order])
    return out.sorted(), dropped


def encode_notes(notes: Notes, n_chunks: int | None = None, chunk_seconds: float = TRAIN_CHUNK_SECONDS,
                 time_encoding: str = "delta", max_len: int = MAX_TOKENS) -> ChunkTokens:
    """Notes -> the token sequence of every chunk (tie sections, events, EOS), truncation counted per chunk."""
    _check_encoding(time_encoding)
    if chunk_seconds <= 0:
        raise ValueError("chunk_seconds must be positive")
    max_step = int(np.floor(chunk_seconds * V.STEPS_PER_SECOND + 0.5)) + 1
    if time_encoding == "absolute" and max_step > V.MAX_SHIFT_STEPS:
        raise ValueError(f"absolute time encoding holds at most {V.MAX_SHIFT_STEPS / V.STEPS_PER_SECOND:g} s "
                         f"per chunk, not {chunk_seconds:g} s")
    notes, dropped = normalize_notes(notes, chunk_seconds)
    drum = notes.program == V.DRUM_PROGRAM
    c_on, s_on = _quantize(notes.onset, chunk_seconds)
    c_off, s_off = _quantize(notes.offset, chunk_seconds)
    # A note-off on its own note-on's step moves one step later.
    s_off = np.where((c_off == c_on) & (s_off == s_on), s_off + 1, s_off)
    if n_chunks is None:
        last = np.concatenate([c_on, c_off[~drum]])
        n_chunks = int(last.max()) + 1 if len(last) else 1

    pitched = ~drum
    ev_chunk = np.concatenate([c_on[pitched], c_off[pitched], c_on[drum]])
    ev_step = np.concatenate([s_on[pitched], s_off[pitched], s_on[drum]])
    n_p, n_d = int(pitched.sum()), int(drum.sum())
    ev_kind = np.concatenate([np.full(n_p, _ON), np.full(n_p, _OFF), np.full(n_d, _DRUM)])
    ev_prog = np.concatenate([notes.program[pitched], notes.program[pitched], notes.program[drum]]).astype(np.int64)
    ev_pitch = np.concatenate([notes.pitch[pitched], notes.pitch[pitched], notes.pitch[drum]]).astype(np.int64)
    ev_vel = np.concatenate([notes.velocity[pitched], np.zeros(n_p, np.int64), notes.velocity[drum]])
    ev_vel = np.clip(ev_vel, 0, 127).astype(np.int64)
    inside = ev_chunk < n_chunks
    order = np.lexsort((ev_pitch, ev_prog, ev_kind, ev_step, ev_chunk))
    order = order[inside[order]]
    ev_chunk, ev_step, ev_kind = ev_chunk[order], ev_step[order], ev_kind[order]
    ev_prog, ev_pitch, ev_vel = ev_prog[order], ev_pitch[order], ev_vel[order]
    n_ev = len(ev_chunk)

    # Shift tokens before the first event of each new step.
    first_in_chunk = np.ones(n_ev, dtype=bool)
    first_in_chunk[1:] = ev_chunk[1:] != ev_chunk[:-1]
    prev_step = np.zeros(n_ev, dtype=np.int64)
    prev_step[1:] = ev_step[:-1]
    prev_step[first_in_chunk] = 0
    d = ev_step - prev_step
    new_group = first_in_chunk | (d != 0)
    if time_encoding == "delta":
        n_shift = (d + V.MAX_SHIFT_STEPS - 1) // V.MAX_SHIFT_STEPS
    else:
        n_shift = (d > 0).astype(np.int64)
    n_evtok = np.where(ev_kind == _DRUM, 2, 3)
    cnt = n_shift + n_evtok

    # Tie sections: pitched notes with onset < k*L <= offset, for chunks c_on+1 .. c_off, sorted by (program, pitch).
    reps = np.where(pitched, np.maximum(np.minimum(c_off, n_chunks - 1) - c_on, 0), 0)
    tie_note = np.repeat(np.arange(len(notes)), reps)
    tie_chunk = (c_on[tie_note] + 1 + (np.arange(len(tie_note)) - np.repeat(np.cumsum(reps) - reps, reps)))
    tie_prog = notes.program[tie_note].astype(np.int64)
    tie_pitch = notes.pitch[tie_note].astype(np.int64)
    t_order = np.lexsort((tie_pitch, tie_prog, tie_chunk))
    tie_chunk, tie_prog, tie_pitch = tie_chunk[t_order], tie_prog[t_order], tie_pitch[t_order]
    n_ties = np.bincount(tie_chunk, minlength=n_chunks)
    tie_cnt = np.where(n_ties > 0, 1 + 2 * n_ties, 0)

    ev_cnt = np.bincount(ev_chunk, weights=cnt, minlength=n_chunks).astype(np.int64)
    chunk_len = tie_cnt + ev_cnt + 1
    offsets = np.zeros(n_chunks + 1, dtype=np.int64)
    np.cumsum(chunk_len, out=offsets[1:])
    out = np.empty(int(offsets[-1]), dtype=np.int32)

    # Tie section tokens.
    has_tie = n_ties > 0
    out[offsets[:-1][has_tie]] = V.TIE_ID
    tie_first = np.cumsum(n_ties) - n_ties
    tie_rank = np.arange(len(tie_chunk)) - tie_first[tie_chunk]
    tie_pos = offsets[tie_chunk] + 1 + 2 * tie_rank
    out[tie_pos] = V.PROGRAM.first_id + tie_prog
    out[tie_pos + 1] = V.PITCH.first_id + tie_pitch - V.MIN_PITCH

    # Event tokens: position = chunk offset + tie section + running count within the chunk.
    ev_start = np.cumsum(cnt) - cnt
    chunk_ev_start = np.cumsum(ev_cnt) - ev_cnt
    pos = offsets[ev_chunk] + tie_cnt[ev_chunk] + ev_start - chunk_ev_start[ev_chunk]
    for j in range(int(n_shift.max()) if n_ev else 0):
        m = n_shift > j
        if time_encoding == "delta":
            last = j == n_shift[m] - 1
            val = np.where(last, d[m] - V.MAX_SHIFT_STEPS * (n_shift[m] - 1), V.MAX_SHIFT_STEPS)
        else:
            val = ev_step[m]
        out[pos[m] + j] = V.SHIFT.first_id + val
    p = pos + n_shift
    is_drum = ev_kind == _DRUM
    pi = ~is_drum
    out[p[pi]] = V.PROGRAM.first_id + ev_prog[pi]
    out[p[pi] + 1] = V.VELOCITY.first_id + ev_vel[pi]
    out[p[pi] + 2] = V.PITCH.first_id + ev_pitch[pi] - V.MIN_PITCH
    out[p[is_drum]] = V.VELOCITY.first_id + ev_vel[is_drum]
    out[p[is_drum] + 1] = V.DRUM.first_id + ev_pitch[is_drum] - V.MIN_PITCH
    out[offsets[1:] - 1] = V.EOS

    truncated = chunk_len > max_len
    result = ChunkTokens(out, offsets, truncated, np.arange(n_chunks) * chunk_seconds, dropped)
    if truncated.any():
        group_pos = pos[new_group]
        result = _truncate(result, max_len, tie_cnt, group_pos, ev_chunk[new_group])
    return result


def _truncate(ct: ChunkTokens, max_len: int, tie_cnt: np.ndarray, group_pos: np.ndarray,
              group_chunk: np.ndarray) -> ChunkTokens:
    """Cut over-full chunks after the last whole step that fits before EOS (rare: a Python loop per cut chunk)."""
    pieces, lengths = [], []
    for i in range(len(ct)):
        seq = ct.chunk(i)
        if ct.truncated[i]:
            start = ct.offsets[i]
            # Boundaries where a cut keeps whole units: after each tie pair, after the tie section, at each step.
            bounds = [0]
            if tie_cnt[i]:
                bounds += list(range(3, int(tie_cnt[i]) + 1, 2))
            bounds += list(group_pos[group_chunk == i] - start)
            bounds.append(len(seq) - 1)
            cut = max(b for b in bounds if b <= max_len - 1)
            seq = np.concatenate([seq[:cut], [V.EOS]]).astype(np.int32)
        pieces.append(seq)
        lengths.append(len(seq))
    offsets = np.zeros(len(ct) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return ChunkTokens(np.concatenate(pieces), offsets, ct.truncated, ct.start_s, ct.dropped_pitches)


# ----------------------------------------------------------------------------------------------------------------
# Decoding

def _ffill_index(mask: np.ndarray, chunk_first: np.ndarray) -> np.ndarray:
    """For each position, the index of the last True at or before it within the same chunk, else -1."""
    idx = np.where(mask, np.arange(len(mask)), -1)
    last = np.maximum.accumulate(idx) if len(idx) else idx
    return np.where(last >= chunk_first, last, -1)


def _flatten(chunks) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(chunks, ChunkTokens):
        return chunks.tokens.astype(np.int64), chunks.offsets.astype(np.int64)
    arrays = [np.asarray(c, dtype=np.int64).reshape(-1) for c in chunks]
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    tokens = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    return tokens, offsets


def decode_tokens(chunks, chunk_seconds: float = TRAIN_CHUNK_SECONDS, time_encoding: str = "delta",
                  start_s=None, end_s: float | None = None, tie_starts_notes: bool = False) -> tuple[Notes, DecodeStats]:
    """Tokens of consecutive chunks -> stitched notes. Tolerant: malformed runs are skipped and counted, a note-on
    over a sounding note retriggers it, a note-off with no sounding note is ignored. A note sounding at a chunk's end
    and absent from the next chunk's tie section ends at the boundary; notes sounding at the end end at `end_s`
    (default: the last chunk's end). With `tie_starts_notes`, a tied note that is not sounding starts at its chunk's
    start (to read one chunk on its own); otherwise such a tie is ignored, as MT3 does."""
    _check_encoding(time_encoding)
    tok, offsets = _flatten(chunks)
    n = len(offsets) - 1
    starts = np.arange(n) * chunk_seconds if start_s is None else np.asarray(start_s, dtype=np.float64)
    boundary = np.append(starts, (starts[-1] + chunk_seconds if n else 0.0) if end_s is None else end_s)
    if end_s is not None and n:
        boundary[-1] = end_s
    cid = np.repeat(np.arange(n), np.diff(offsets))
    stats = DecodeStats()

    # Keep what precedes each chunk's first EOS; PAD is silent, UNK and out-of-range ids are malformed.
    eos = tok == V.EOS
    cum = np.cumsum(eos)
    base = np.concatenate([[0], cum])[offsets[:-1]]
    before_eos = (cum - base[cid]) == 0
    bad = before_eos & ((tok == V.UNK) | (tok < 0) | (tok >= V.VOCAB_SIZE))
    keep = before_eos & ~bad & (tok != V.PAD)
    stats.malformed += int(bad.sum())
    tok, cid = tok[keep], cid[keep]
    m = len(tok)
    first = np.searchsorted(cid, np.arange(n))  # first index of each chunk (== m when empty)
    chunk_first = first[cid] if m else np.zeros(0, dtype=np.int64)

    typ = _TYPE_OF[tok]
    val = _VALUE_OF[tok]

    # Step of every token.
    if time_encoding == "delta":
        sv = np.where(typ == _T_SHIFT, val, 0)
        cs = np.cumsum(sv)
        cs_before = np.concatenate([[0], cs])[first]
        step = cs - cs_before[cid] if m else cs
    else:
        last_shift = _ffill_index(typ == _T_SHIFT, chunk_first)
        step = np.where(last_shift >= 0, val[np.maximum(last_shift, 0)], 0)
    t = starts[cid] + step / V.STEPS_PER_SECOND if m else np.zeros(0)

    # Tie section: from a tie token that opens the chunk until the first shift, velocity or drum token.
    opens_with_tie = np.zeros(n, dtype=bool)
    nonempty = first < m
    opens_with_tie[nonempty] = typ[first[nonempty]] == _T_TIE
    breaker = _ffill_index((typ == _T_SHIFT) | (typ == _T_VELOCITY) | (typ == _T_DRUM), chunk_first)
    in_tie = opens_with_tie[cid] & (breaker < 0) if m else np.zeros(0, dtype=bool)
    stray_tie = (typ == _T_TIE) & ~((np.arange(m) == chunk_first) & in_tie)
    stats.malformed += int(stray_tie.sum())

    last_prog = _ffill_index(typ == _T_PROGRAM, chunk_first)
    last_vel = _ffill_index(typ == _T_VELOCITY, chunk_first)
    prog = np.where(last_prog >= 0, val[np.maximum(last_prog, 0)], -1)
    vel = np.where(last_vel >= 0, val[np.maximum(last_vel, 0)], -1)

    is_pitch = typ == _T_PITCH
    tie_ok = is_pitch & in_tie & (prog >= 0)
    ev_ok = is_pitch & ~in_tie & (prog >= 0) & (vel >= 0)
    drum_ok = (typ == _T_DRUM) & (vel > 0)
    stats.malformed += int((is_pitch & ~tie_ok & ~ev_ok).sum()) + int(((typ == _T_DRUM) & (vel < 0)).sum())

    key = prog * 128 + val
    # (key, chunk) codes sorted by key then chunk: a radix sort by key keeps the stream's chunk order.
    tk, tc = key[tie_ok], cid[tie_ok]
    ties = (tk * (n + 1) + tc)[np.argsort(tk.astype(np.uint16), kind="stable")]
    ties = ties[np.append(True, ties[1:] != ties[:-1])] if len(ties) else ties
    ev_idx = np.flatnonzero(ev_ok)
    notes = _stitch(t[ev_idx], cid[ev_idx], key[ev_idx], vel[ev_idx], ties, starts, boundary, tie_starts_notes)
    d = np.flatnonzero(drum_ok)
    drums = Notes(t[d], t[d] + DRUM_SECONDS, val[d], vel[d], np.full(len(d), V.DRUM_PROGRAM))
    out = Notes.concat([notes, drums]).sorted()
    stats.notes = len(out)
    return out, stats


def _stitch(t, cid, key, vel, ties, starts, boundary, tie_starts_notes) -> Notes:
    """Pitched on/off events in stream order + tie codes -> notes, vectorized per (program, pitch) key.

    Ties become events at their chunk's start (before its other events). A note starts at a note-on (or, with
    tie_starts_notes, at a tie whose key is not sounding) and ends at the key's next note-on/off, or at the first
    chunk boundary the key is not tied across, whichever comes first."""
    n = len(starts)
    tie_chunk, tie_key = ties % (n + 1), ties // (n + 1)
    kind = np.concatenate([np.full(len(ties), _TIE_EV), np.where(vel > 0, _ON, _OFF)])
    t = np.concatenate([starts[tie_chunk], t])
    cid = np.concatenate([tie_chunk, cid])
    key = np.concatenate([tie_key, key])
    vel = np.concatenate([np.zeros(len(ties), np.int64), vel])
    order = np.lexsort((kind != _TIE_EV, cid))  # stable: stream order within a chunk, ties first
    t, cid, key, vel, kind = t[order], cid[order], key[order], vel[order], kind[order]

    g = np.argsort(key.astype(np.uint16), kind="stable")  # grouped by key (radix sort), stream order inside
    gk, gkind = key[g], kind[g]
    m = len(g)
    same_prev = np.zeros(m, dtype=bool)
    same_prev[1:] = gk[1:] == gk[:-1]
    # Next note-on/off of the same key (ties do not end a note).
    real = np.where(gkind != _TIE_EV, np.arange(m), m)
    next_real = np.minimum.accumulate(real[::-1])[::-1]
    nxt = np.append(next_real[1:], m)[:m]
    nxt_ok = nxt < m
    nxt_ok[nxt_ok] = gk[nxt[nxt_ok]] == gk[nxt_ok]
    gcid = cid[g]
    starting = gkind == _ON
    if tie_starts_notes:
        # First chunk after each event's chunk that the key is not tied into, for every event here.
        ends = _untied_after(gk, gcid, ties, n)
        prev = np.arange(m) - 1
        sounding = same_prev & (gkind[np.maximum(prev, 0)] != _OFF) & (ends[np.maximum(prev, 0)] > gcid)
        starting |= (gkind == _TIE_EV) & ~sounding
    s = np.flatnonzero(starting)
    ends = ends[s] if tie_starts_notes else _untied_after(gk[s], gcid[s], ties, n)
    nx = np.where(nxt_ok[s], nxt[s], 0)
    use_next = nxt_ok[s] & (gcid[nx] < ends)
    onset = t[g[s]]
    end = np.where(use_next, t[g[nx]], boundary[np.minimum(ends, n)])
    end = np.where(end > onset, end, onset + 1.0 / V.STEPS_PER_SECOND)
    velocity = np.where(vel[g[s]] > 0, vel[g[s]], _TIED_VELOCITY)
    return Notes(onset, end, gk[s] % 128, velocity, gk[s] // 128)


def _untied_after(key, cid, tcode, n) -> np.ndarray:
    """For each (key, chunk c): the first chunk after c whose start the key is not tied across.
    `tcode`: sorted tie codes key * (n + 1) + chunk."""
    if len(tcode) == 0:
        return cid + 1
    run_start = np.ones(len(tcode), dtype=bool)
    run_start[1:] = tcode[1:] != tcode[:-1] + 1
    run_id = np.cumsum(run_start) - 1
    run_last = tcode[np.append(np.flatnonzero(run_start)[1:] - 1, len(tcode) - 1)]
    q = key * (n + 1) + cid + 1
    pos = np.minimum(np.searchsorted(tcode, q), len(tcode) - 1)
    hit = tcode[pos] == q
    return np.where(hit, run_last[run_id[pos]] % (n + 1) + 1, cid + 1)


# ----------------------------------------------------------------------------------------------------------------
# Rewriting time encodings (the loader turns canonical delta shards into what the model was trained on)

def to_absolute(ids) -> np.ndarray:
    """One chunk's delta-time ids -> absolute-time ids: each run of shifts becomes one `shift k` (k = steps since
    the chunk start). Lossless for chunks up to 10 s."""
    ids = np.asarray(ids)
    is_shift = (ids >= V.SHIFT.first_id) & (ids <= V.SHIFT.last_id)
    if not is_shift.any():
        return ids.copy()
    total = np.cumsum(np.where(is_shift, ids - V.SHIFT.first_id, 0))
    last_of_run = is_shift.copy()
    last_of_run[:-1] &= ~is_shift[1:]
    if total[last_of_run].max() > V.MAX_SHIFT_STEPS:
        raise ValueError("chunk longer than 10 s cannot be written with absolute time")
    out = np.where(last_of_run, V.SHIFT.first_id + total, ids).astype(ids.dtype)
    zero = last_of_run & (total == 0)
    return out[(~is_shift | last_of_run) & ~zero]


def quantize_velocities(ids, bins: int) -> np.ndarray:
    """Note-on velocities (1..127) -> the centre of one of `bins` equal bins over 1..127; note-offs (0) and every
    other token are kept. bins=1 writes one velocity for every note-on, as MT3's multi-instrument vocabulary does.
    A training-target option: velocity a model cannot hear (humanized +-10 on a synth) is noise in the loss."""
    if bins < 1 or bins > 127:
        raise ValueError(f"velocity bins must be in 1..127, not {bins}")
    ids = np.asarray(ids)
    v = ids.astype(np.int64) - V.VELOCITY.first_id
    on = (v >= 1) & (v <= 127)
    width = 127 / bins
    centre = np.floor((np.floor((v - 1) / width) + 0.5) * width).astype(np.int64) + 1
    return np.where(on, V.VELOCITY.first_id + centre, ids).astype(ids.dtype)


def to_delta(ids) -> np.ndarray:
    """One chunk's absolute-time ids -> canonical delta-time ids (the inverse of to_absolute)."""
    ids = np.asarray(ids)
    is_shift = (ids >= V.SHIFT.first_id) & (ids <= V.SHIFT.last_id)
    if not is_shift.any():
        return ids.copy()
    pos = np.flatnonzero(is_shift)
    k = ids[pos].astype(np.int64) - V.SHIFT.first_id
    d = np.diff(np.concatenate([[0], k]))
    if (d < 0).any():
        raise ValueError("absolute shifts go back in time: not a canonical sequence")
    pieces, prev = [], 0
    for p, dd in zip(pos, d):  # one iteration per step group: a handful per chunk
        pieces.append(ids[prev:p])
        while dd > 0:
            s = min(dd, V.MAX_SHIFT_STEPS)
            pieces.append(np.array([V.SHIFT.first_id + s], dtype=ids.dtype))
            dd -= s
        prev = p + 1
    pieces.append(ids[prev:])
    return np.concatenate(pieces).astype(ids.dtype)


def event_names(ids) -> list[str]:
    """Ids -> readable event names ('program 0', 'velocity 100', 'pitch 60', 'shift 50', 'EOS', ...)."""
    return [V.event_name(int(i)) for i in ids]
