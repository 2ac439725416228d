"""Grammar-constrained decoding: the grammar accepts every chunk the codec writes, rejects malformed continuations,
and keeps what greedy and beam search emit from a random model well formed (and inside an instrument list); a closed
row ends with EOS within CLOSE_TOKENS tokens from wherever it stands."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mt3ds.model.generate import Search, beam_search, generate
from mt3ds.model import grammar as G
from mt3ds.model.grammar import CHUNK_STEPS, CLOSE_TOKENS, MAX_STEP, TokenGrammar
from mt3ds.model.transcriber import Transcriber
from mt3ds.tokens import vocab as V
from mt3ds.tokens.codec import TRAIN_CHUNK_SECONDS, decode_tokens, encode_notes, to_absolute
from mt3ds.tokens.notes import DRUM_SECONDS, Notes

from model_fixtures import features, instruments, tiny

GOLDEN = Path(__file__).resolve().parent / "resources" / "golden"
ENCODINGS = ("delta", "absolute")


def ev(type: str, value: int = 0) -> int:
    return V.encode_event(type, value)


def note(program, velocity, pitch):
    return [ev("program", program), ev("velocity", velocity), ev("pitch", pitch)]


def drum(velocity, pitch):
    return [ev("velocity", velocity), ev("drum", pitch)]


def well_formed(ids, encoding: str, max_step: int = MAX_STEP) -> bool:
    """An independent, item-by-item reading of docs/design.md §3.4 and §3.9. The ids may stop anywhere (a cut at max_len), but
    EOS only ends the chunk between whole items."""
    toks = [V.decode_event(int(t)) for t in ids]
    if any(t == "EOS" for t, _ in toks[:-1]):
        return False
    ended = bool(toks) and toks[-1][0] == "EOS"
    toks = toks[:-1] if ended else toks
    cut_ok = not ended  # running out of tokens inside an item is a cut, unless EOS came there

    def typ(j):
        return toks[j][0] if j < len(toks) else None

    i = 0
    if typ(0) == "tie":
        i, last = 1, (-1, -1)
        while typ(i) == "program" and typ(i + 1) in ("pitch", None):
            if typ(i + 1) is None:
                return cut_ok
            key = (toks[i][1], toks[i + 1][1])
            if key <= last:
                return False
            last, i = key, i + 2
        if i == 1:  # a tie section needs a pair
            return len(toks) == 1 and cut_ok
    step, last, open_step = 0, None, False  # open_step: a shift still waits for its first event
    while i < len(toks):
        t, v = toks[i]
        if t == "shift":
            if v < 1 or (encoding == "absolute" and (open_step or v <= step)):
                return False
            step = v if encoding == "absolute" else step + v
            if step > max_step:
                return False
            last, open_step, i = None, True, i + 1
            continue
        if t == "program":
            if typ(i + 1) is None or typ(i + 2) is None:
                return cut_ok and typ(i + 1) in ("velocity", None)
            if typ(i + 1) != "velocity" or typ(i + 2) != "pitch":
                return False
            key, size = (int(toks[i + 1][1] > 0), v, toks[i + 2][1]), 3
        elif t == "velocity" and v > 0:
            if typ(i + 1) is None:
                return cut_ok
            if typ(i + 1) != "drum":
                return False
            key, size = (2, 0, toks[i + 1][1]), 2
        else:
            return False
        if last is not None and key <= last:
            return False
        last, open_step, i = key, False, i + size
    return not (ended and open_step)


def walk(seqs: list, encoding: str, max_step: int = MAX_STEP, allowed=None) -> None:
    """Feed whole sequences through one batched grammar, asserting every token was allowed when it came."""
    width = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), width), V.PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
    grammar = TokenGrammar(len(seqs), "cpu", encoding, max_step, allowed)
    for t in range(width):
        ok = grammar.allowed_tokens()
        assert ok.any(1).all()  # never a dead end
        live = tokens[:, t] != V.PAD
        taken = ok.gather(1, tokens[:, t: t + 1]).squeeze(1)
        bad = (live & ~taken).nonzero().flatten().tolist()
        assert not bad, [(i, t, V.event_name(int(tokens[i, t])), seqs[i][: t + 1]) for i in bad[:3]]
        grammar.advance(tokens[:, t])


def after(prefix: list, encoding: str = "absolute", allowed=None, max_step: int = MAX_STEP) -> torch.Tensor:
    """The allowed tokens (bool [vocab]) after one prefix."""
    grammar = TokenGrammar(1, "cpu", encoding, max_step, allowed)
    for tok in prefix:
        assert grammar.allowed_tokens()[0, tok], V.event_name(tok)
        grammar.advance(torch.tensor([tok]))
    return grammar.allowed_tokens()[0]


def random_notes(rng: np.random.Generator, n: int, seconds: float) -> Notes:
    """Pitched and drum notes on a coarse grid (so several share a step), from 10 ms to 5 s long."""
    onset = rng.integers(0, int(seconds * 20), n) / 20 + rng.choice([0, 0, 0.003, 0.0061], n)
    length = np.where(rng.random(n) < 0.3, rng.uniform(2.0, 5.0, n), rng.uniform(0.01, 0.6, n))
    program = rng.choice([0, 0, 1, 33, 40, 127, 128, 128], n)
    offset = np.where(program == 128, onset + DRUM_SECONDS, onset + length)
    return Notes(onset, offset, rng.integers(21, 109, n), rng.integers(1, 128, n), program)


# ---------------------------------------------------------------------------------------------------------------
# the grammar accepts what the codec writes


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_reference_chunk_is_accepted(encoding):
    rng = np.random.default_rng(0)
    chunks, tied, busy_steps = [], 0, 0
    for piece in range(20):
        notes = random_notes(rng, int(rng.integers(1, 120)), 12.0)
        ct = encode_notes(notes, chunk_seconds=TRAIN_CHUNK_SECONDS, time_encoding="delta",
                          max_len=1024 if piece % 4 else 40)  # every fourth piece cut at 40 tokens
        for c in ct.chunks():
            chunks.append(to_absolute(c) if encoding == "absolute" else c)
            tied += int(c[0] == V.TIE_ID)
            shifts = np.flatnonzero((c >= V.SHIFT.first_id) & (c <= V.SHIFT.last_id))
            busy_steps += int((np.diff(np.append(shifts, len(c) - 1)) > 4).sum())  # >1 event after a shift
    assert tied > 10 and busy_steps > 10 and len(chunks) > 100  # ties and shared steps are exercised
    assert all(c[-1] == V.EOS for c in chunks)
    assert all(well_formed(c, encoding) for c in chunks)  # the test's own reading agrees with the codec
    walk(chunks, encoding)  # ... and so does the grammar, EOS included


@pytest.mark.parametrize("name,encoding", [("seed_example.json", "delta"), ("seed_example_absolute.json", "absolute")])
def test_golden_chunks_are_accepted(name, encoding):
    g = json.loads((GOLDEN / name).read_text())
    walk([c["tokens"] for c in g["chunks"]], encoding, max_step=round(2.25 * 100) + 1)


def test_last_step_note_off_lands_one_step_past_the_chunk():
    """Why MAX_STEP is the chunk's step count + 1: a note struck and released on the last step ends one step on."""
    assert CHUNK_STEPS == 205 and MAX_STEP == 206
    ct = encode_notes(Notes([2.046], [2.047], [60], [80], [0]), chunk_seconds=TRAIN_CHUNK_SECONDS,
                      time_encoding="absolute")
    assert ev("shift", 206) in ct.chunk(0).tolist()
    walk([ct.chunk(0)], "absolute")
    assert not after([ev("shift", 205)] + note(0, 80, 60))[ev("shift", 207)]


# ---------------------------------------------------------------------------------------------------------------
# rejections


def test_rejections():
    start = after([])
    assert start[V.EOS] and start[V.TIE_ID] and not start[V.PAD] and not start[V.UNK]
    assert not start[ev("pitch", 60)] and not start[ev("drum", 36)] and not start[ev("velocity", 0)]
    assert not start[ev("shift", 0)] and start[ev("shift", 1)] and not after([], "delta")[ev("shift", 0)]
    # after tie only a program (no drums in a tie section, no EOS before the first pair)
    tie = after([V.TIE_ID])
    assert tie[V.PROGRAM.first_id: V.PROGRAM.last_id + 1].all() and tie.sum() == 128
    # tie pairs strictly increase; after a pair a program may continue the ties or open a note
    pair = [V.TIE_ID, ev("program", 5), ev("pitch", 60)]
    assert not after(pair + [ev("program", 4)])[ev("pitch", 100)]
    assert not after(pair + [ev("program", 5)])[ev("pitch", 60)]
    both = after(pair + [ev("program", 5)])
    assert both[ev("pitch", 61)] and both[ev("velocity", 0)] and both[ev("velocity", 90)] and not both[V.EOS]
    assert after(pair)[V.EOS] and after(pair)[ev("velocity", 90)]  # a drum hit at step 0
    assert not after(pair)[ev("velocity", 0)] and not after(pair)[ev("pitch", 61)]
    # after an event's program only a velocity
    prog = after([ev("shift", 10), ev("program", 0)])
    assert prog[V.VELOCITY.first_id: V.VELOCITY.last_id + 1].all() and prog.sum() == 128
    # a repeated identical note in one step, or one out of (group, program, pitch) order, is masked
    played = [ev("shift", 10)] + note(3, 80, 60)
    assert not after(played + [ev("program", 3), ev("velocity", 80)])[ev("pitch", 60)]
    assert after(played + [ev("program", 3), ev("velocity", 80)])[ev("pitch", 61)]
    assert not after(played + [ev("program", 3)])[ev("velocity", 0)]  # offs come before ons
    assert not after(played)[ev("program", 2)] and after(played)[ev("program", 3)]
    assert after(played + drum(100, 36))[ev("velocity", 100)]
    assert not after(played + drum(100, 36) + [ev("velocity", 100)])[ev("drum", 36)]
    # ... but the same note again after a shift is fine
    assert after(played + [ev("shift", 11), ev("program", 3), ev("velocity", 80)])[ev("pitch", 60)]
    # absolute shifts strictly increase and stay in the chunk; a shift needs an event after it
    shifted = after(played)
    assert not shifted[ev("shift", 10)] and not shifted[ev("shift", 9)] and shifted[ev("shift", 11)]
    assert not shifted[ev("shift", MAX_STEP + 1)] and shifted[ev("shift", MAX_STEP)]
    assert not after([ev("shift", 10)])[V.EOS] and not after([ev("shift", 10)])[ev("shift", 20)]
    # delta: shifts add up to at most MAX_STEP, and several in a row are allowed
    delta = after([ev("shift", 100)] + note(0, 80, 60), "delta")
    assert delta[ev("shift", MAX_STEP - 100)] and not delta[ev("shift", MAX_STEP - 99)]
    assert after([ev("shift", 100)], "delta")[ev("shift", 50)]
    # once drum 108 is written nothing else fits in the step: only a shift or EOS
    full = after(drum(100, 108))
    assert full[V.EOS] and full[ev("shift", 1)]
    assert full.sum() == 1 + MAX_STEP  # EOS and shift 1..MAX_STEP


def test_instrument_list_masks_programs_and_drums():
    pitched_only = instruments([0, 33])
    start = after([], allowed=pitched_only)
    programs = start[V.PROGRAM.first_id: V.PROGRAM.last_id + 1].nonzero().flatten().tolist()
    assert programs == [0, 33]
    assert not start[V.VELOCITY.first_id: V.VELOCITY.last_id + 1].any()  # no drum hit may open
    assert after([V.TIE_ID], allowed=pitched_only)[V.PROGRAM.first_id: V.PROGRAM.last_id + 1].sum() == 2
    drums_only = after([], allowed=instruments([128]))
    assert not drums_only[V.TIE_ID] and not drums_only[V.PROGRAM.first_id: V.PROGRAM.last_id + 1].any()
    assert drums_only[ev("velocity", 90)] and not drums_only[ev("velocity", 0)]
    # an empty list is the conditioning's 'unknown': nothing is restricted
    assert torch.equal(after([], allowed=instruments([])), after([]))


def test_select_keeps_and_reorders_rows():
    grammar = TokenGrammar(3, "cpu", "absolute", allowed=instruments([0], [128], []))
    for tok in (ev("shift", 10), V.EOS, ev("shift", 20)):
        grammar.advance(torch.tensor([tok, tok, tok]))
    before = grammar.allowed_tokens()
    grammar.select(torch.tensor([2, 0, 0]))
    assert torch.equal(grammar.allowed_tokens(), before[[2, 0, 0]])


# ---------------------------------------------------------------------------------------------------------------
# decoding under the grammar


def noisy_model(encoding: str, seed: int = 0) -> Transcriber:
    """A tiny untrained model whose logits get large seeded noise: decoding wanders through every kind of token."""
    torch.manual_seed(seed)
    model = Transcriber(tiny(time_encoding=encoding)).eval()
    g = torch.Generator().manual_seed(seed)
    logits = model.logits
    model.logits = lambda hidden: logits(hidden) + 6.0 * torch.randn(hidden.shape[0], V.VOCAB_SIZE, generator=g)
    return model


def check_output(tokens: torch.Tensor, encoding: str) -> list[np.ndarray]:
    rows = []
    for row in tokens.numpy():
        eos = np.flatnonzero(row == V.EOS)
        row = row[: eos[0] + 1] if len(eos) else row
        assert (row != V.PAD).all()
        assert well_formed(row, encoding)
        _, stats = decode_tokens([row], time_encoding=encoding)
        assert stats.malformed == 0
        shifts = row[(row >= V.SHIFT.first_id) & (row <= V.SHIFT.last_id)] - V.SHIFT.first_id
        steps = shifts if encoding == "absolute" else np.cumsum(shifts)
        assert (np.diff(steps) > 0).all() and (steps <= MAX_STEP).all()
        rows.append(row)
    return rows


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_greedy_under_the_grammar_is_well_formed(encoding):
    model = noisy_model(encoding)
    free = generate(model, features(8), search=Search(max_len=96, constrain=False)).tokens
    _, stats = decode_tokens([r for r in free.numpy()], time_encoding=encoding)
    assert stats.malformed > 0  # the same noise, unconstrained, writes garbage
    rows = check_output(generate(model, features(8), search=Search(max_len=96)).tokens, encoding)
    assert sum(len(r) for r in rows) > 8 * 20


def test_greedy_writes_only_allowed_instruments():
    model = noisy_model("absolute", seed=1)
    sets = [[0, 33], [128], [40, 41, 128], [5]]
    out = generate(model, features(4), allowed=instruments(*sets), search=Search(max_len=128))
    rows = check_output(out.tokens, "absolute")
    seen_programs = 0
    for row, programs in zip(rows, sets):
        written = set((row[(row >= V.PROGRAM.first_id) & (row <= V.PROGRAM.last_id)] - V.PROGRAM.first_id).tolist())
        assert written <= set(programs)
        seen_programs += len(written)
        has_drums = ((row >= V.DRUM.first_id) & (row <= V.DRUM.last_id)).any()
        assert not has_drums or 128 in programs
    assert seen_programs >= 3  # not vacuous


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_beam_search_under_the_grammar_is_well_formed(encoding):
    model = noisy_model(encoding, seed=2)
    out = generate(model, features(3), allowed=instruments([0, 128], [], [40]), search=Search(max_len=64, beam_size=3))
    rows = check_output(out.tokens, encoding)
    programs = set((rows[2][(rows[2] >= V.PROGRAM.first_id) & (rows[2] <= V.PROGRAM.last_id)]
                    - V.PROGRAM.first_id).tolist())
    assert programs <= {40}


def test_beam_of_one_equals_greedy_under_the_grammar():
    torch.manual_seed(0)
    model = Transcriber(tiny()).eval()
    feats, sets = features(3), instruments([0], [128], [])
    greedy = generate(model, feats, allowed=sets, search=Search(max_len=40)).tokens
    grammar = TokenGrammar(3, "cpu", model.cfg.time_encoding, allowed=sets)
    with torch.no_grad():
        beam = beam_search(model, model.encode(feats), None, Search(max_len=40), grammar).tokens  # K = 1
    assert torch.equal(beam, greedy)
    check_output(greedy, model.cfg.time_encoding)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_closed_row_finishes_its_item_then_ends(encoding):
    """Random walks through the grammar, closed after 0..11 tokens (so in every phase: inside a tie pair, after a
    shift, mid-note, mid-drum hit, at a boundary): each then writes at most CLOSE_TOKENS tokens, the last EOS, never
    a shift, tie or second item, and the whole chunk is well formed."""
    B, g = 600, torch.Generator().manual_seed(7)
    sets = instruments(*[[0, 5, 128], [40], [128], []] * (B // 4))
    grammar = TokenGrammar(B, "cpu", encoding, allowed=sets)
    close_at = torch.arange(B) // 4 % 12  # every instrument set closes at every step
    rows = [[] for _ in range(B)]
    phases_closed = set()
    for t in range(12 + CLOSE_TOKENS):
        closing = close_at == t
        phases_closed |= set(grammar.phase[closing].tolist())
        grammar.close(closing)
        allowed = grammar.allowed_tokens()
        assert allowed.any(1).all()
        scores = torch.rand(B, V.VOCAB_SIZE, generator=g)
        scores[torch.arange(B) // 48 % 2 == 0, V.TIE_ID] += 1  # half the rows open a tie section
        token = grammar.mask(scores).argmax(-1)
        grammar.advance(token)
        for i in range(B):
            if not rows[i] or rows[i][-1] != V.EOS:
                rows[i].append(int(token[i]))
    assert {G.START, G.TIE_OPEN, G.TIE_PITCH, G.TIE_PAIR, G.TIE_OR_EVENT, G.STEP, G.SHIFTED, G.PROGRAM,
            G.VELOCITY, G.DRUM_VELOCITY} <= phases_closed  # every phase was closed in
    for i, row in enumerate(rows):
        assert row[-1] == V.EOS, row
        after = row[int(close_at[i]):]
        assert len(after) <= CLOSE_TOKENS
        assert not any(V.SHIFT.first_id <= t <= V.SHIFT.last_id or t == V.TIE_ID for t in after)
        assert well_formed(row, encoding)
