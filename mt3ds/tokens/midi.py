"""MIDI files <-> Notes with symusic: seconds through tempo changes, sustain pedal, drums as program 128.

Reading follows MT3: the sustain pedal (CC64 >= 64) extends a note's offset to the pedal's release, per track;
pitches outside 21..108 are dropped and counted. Writing gives a General MIDI file with one named track per
program and drums on channel 10.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import atomic_path
from . import gm
from .notes import DRUM_SECONDS, Notes
from .vocab import DRUM_PROGRAM, MAX_PITCH, MIN_PITCH

SUSTAIN_CC = 64
WRITE_TPQ = 480
WRITE_QPM = 120.0  # 480 ticks per quarter at 120 bpm: ticks of 1.04 ms


@dataclass
class MidiStats:
    """What reading one MIDI file kept and dropped."""

    notes: int  # notes kept
    dropped_pitches: int  # notes outside 21..108
    tracks: int  # tracks with notes


def _sustain_intervals(controls: dict) -> np.ndarray:
    """[n, 2] (down, up) times of CC64 >= 64 runs on one track; an unreleased pedal lasts forever."""
    sel = controls["number"] == SUSTAIN_CC
    times = controls["time"][sel].astype(np.float64)
    down = controls["value"][sel] >= 64
    if not down.any():
        return np.zeros((0, 2))
    order = np.argsort(times, kind="stable")
    times, down = times[order], down[order]
    change = np.flatnonzero(np.diff(np.concatenate([[False], down]).astype(np.int8)))
    starts, ends = change[0::2], change[1::2]
    end_times = np.full(len(starts), np.inf)
    end_times[: len(ends)] = times[ends]
    return np.stack([times[starts], end_times], axis=1)


def apply_sustain(onset: np.ndarray, offset: np.ndarray, pedals: np.ndarray) -> np.ndarray:
    """Offsets that fall while the pedal is down move to its release (MT3's apply_sustain_control_changes).

    A re-struck pitch still cuts the sustained note at the new onset; that happens later, when overlapping
    same-pitch notes are resolved (codec.normalize_notes)."""
    if len(pedals) == 0 or len(offset) == 0:
        return offset
    idx = np.searchsorted(pedals[:, 0], offset, side="right") - 1
    held = (idx >= 0) & (offset < pedals[np.maximum(idx, 0), 1])
    out = offset.copy()
    out[held] = np.maximum(offset[held], pedals[idx[held], 1])
    # A pedal never released extends to the last event of the file rather than to infinity.
    if np.isinf(out).any():
        finite_end = max(float(np.max(offset)), float(np.max(pedals[:, 0])))
        out[np.isinf(out)] = finite_end
    return out


def _load_score(path: str | os.PathLike):
    from symusic import Score

    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file")
    if not p.is_file():
        raise UserError(f"{p}: not a file")
    with open(p, "rb") as f:
        head = f.read(4)
    if head != b"MThd":
        raise UserError(f"{p}: not a MIDI file (no MThd header)")
    try:
        return Score(str(p)).to("second")
    except Exception as e:  # symusic raises RuntimeError/ValueError for damaged files
        raise UserError(f"{p}: unreadable MIDI ({str(e).splitlines()[0] if str(e) else type(e).__name__})")


def read_midi(path, program: int | None = None, is_drum: bool | None = None) -> tuple[Notes, MidiStats]:
    """A MIDI file -> Notes in seconds, sustain applied, drums as program 128 (onset-only).

    `program` / `is_drum`, when given, override every track's (Slakh takes them from metadata.yaml)."""
    score = _load_score(path)
    parts, dropped, tracks = [], 0, 0
    for track in score.tracks:
        arr = track.notes.numpy()
        if len(arr["time"]) == 0:
            continue
        tracks += 1
        onset = arr["time"].astype(np.float64)
        offset = onset + arr["duration"].astype(np.float64)
        pitch = arr["pitch"].astype(np.int32)
        velocity = np.clip(arr["velocity"].astype(np.int32), 1, 127)
        drum = track.is_drum if is_drum is None else is_drum
        prog = DRUM_PROGRAM if drum else (track.program if program is None else program)
        if drum:
            offset = onset + DRUM_SECONDS
        else:
            offset = apply_sustain(onset, offset, _sustain_intervals(track.controls.numpy()))
        keep = (pitch >= MIN_PITCH) & (pitch <= MAX_PITCH)
        dropped += int((~keep).sum())
        parts.append(Notes(onset[keep], offset[keep], pitch[keep], velocity[keep],
                           np.full(int(keep.sum()), prog, dtype=np.int32)))
    notes = Notes.concat(parts).sorted()
    return notes, MidiStats(notes=len(notes), dropped_pitches=dropped, tracks=tracks)


def write_midi(notes: Notes, path) -> None:
    """Notes -> a General MIDI file: one named track per program, drums on channel 10; written atomically."""
    import symusic.core as sc

    score = sc.ScoreSecond(WRITE_TPQ)
    score.tempos.append(sc.TempoSecond(0.0, qpm=WRITE_QPM))
    for prog in np.unique(notes.program):
        sel = notes.program == prog
        drum = bool(prog == DRUM_PROGRAM)
        track = sc.TrackSecond(gm.program_name(int(prog)), 0 if drum else int(prog), drum)
        onset = notes.onset[sel]
        duration = np.maximum(notes.offset[sel] - onset, 1e-3)
        order = np.lexsort((notes.pitch[sel], onset))
        track.notes = sc.NoteSecondList.from_numpy(
            np.ascontiguousarray(onset[order], dtype=np.float32),
            np.ascontiguousarray(duration[order], dtype=np.float32),
            np.ascontiguousarray(notes.pitch[sel][order], dtype=np.int8),
            np.ascontiguousarray(np.clip(notes.velocity[sel][order], 1, 127), dtype=np.int8))
        score.tracks.append(track)
    path = Path(path)
    with atomic_path(path) as tmp:
        score.to("tick").dump_midi(str(tmp))
