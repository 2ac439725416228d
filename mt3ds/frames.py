"""Hybrid transcription: notes from the aux frame head, instruments from the decoded tokens.

The aux frame head (decisions §5) reads the encoder's memory and gives, for every 8 ms frame, the probability that
each of the 88 piano keys starts (onset) and sounds (active). Trained alongside the tokens, it learns note timing long
before the decoder does: on the synthetic validation split the stage-1 default model found onsets with F1 0.51 from
the head against 0.10 from its tokens. So `transcribe` can take the notes from the head, the way frame-based
transcribers (Onsets and Frames, basic-pitch) decode them, and ask the tokens only what the head cannot say: which
instrument plays each note, and the drums (the head has no drum rolls).

    notes = frame_notes(onset_prob, active_prob, frame_seconds)        # pitched notes, program unset (0)
    notes = assign_programs(notes, decoded)                            # each note takes a decoded note's program
    notes = hybrid_notes(onset_prob, active_prob, frame_seconds, decoded)  # both, plus the decoded drums

Onsets are peaks of the onset probability above `onset_threshold`; a note lasts while the active probability stays
above `frame_threshold`, at least `min_frames`, and never past the next onset of the same key.
"""
from __future__ import annotations

import numpy as np

from .config import FRAME_THRESHOLD, ONSET_THRESHOLD
from .tokens import vocab
from .tokens.notes import Notes

MIN_FRAMES = 2
PROGRAM_WINDOW_S = 0.1  # a decoded note this far away in time costs as much as a wrong octave
SEARCH_S = 1.0  # decoded notes further than this from a frame note are not considered for it


def frame_notes(onset_prob: np.ndarray, active_prob: np.ndarray, frame_seconds: float,
                onset_threshold: float = ONSET_THRESHOLD, frame_threshold: float = FRAME_THRESHOLD,
                min_frames: int = MIN_FRAMES) -> Notes:
    """Onset and active probabilities [frames, 88] -> pitched Notes (program 0, velocity 64), sorted by onset.

    A note starts at the centre of a frame whose onset probability is above onset_threshold and is a local maximum
    of its key (ties go to the first frame); it ends at the first frame, after its start, whose active probability is
    at or below frame_threshold, or at the key's next onset, whichever comes first, and lasts at least min_frames."""
    onset_prob, active_prob = np.asarray(onset_prob), np.asarray(active_prob)  # float16 stays float16: an hour is
    # 450k frames, 79 MB per roll
    if onset_prob.ndim != 2 or onset_prob.shape[1] != vocab.MAX_PITCH - vocab.MIN_PITCH + 1:
        raise ValueError(f"onset_prob must be [frames, 88], got {onset_prob.shape}")
    if active_prob.shape != onset_prob.shape:
        raise ValueError(f"active_prob {active_prob.shape} does not match onset_prob {onset_prob.shape}")
    n_frames = len(onset_prob)
    before = np.pad(onset_prob, ((1, 0), (0, 0)), constant_values=-1.0)[:-1]
    after = np.pad(onset_prob, ((0, 1), (0, 0)), constant_values=-1.0)[1:]
    peaks = (onset_prob > onset_threshold) & (onset_prob > before) & (onset_prob >= after)
    starts, ends, keys = [], [], []
    for key in np.flatnonzero(peaks.any(axis=0)):
        s = np.flatnonzero(peaks[:, key])
        # first frame at or after t whose active probability is at or below the threshold (n_frames: none)
        quiet = active_prob[:, key] <= frame_threshold
        next_quiet = np.where(quiet, np.arange(n_frames), n_frames)
        next_quiet = np.minimum.accumulate(next_quiet[::-1])[::-1]
        next_quiet = np.append(next_quiet, n_frames)
        e = np.minimum(next_quiet[np.minimum(s + 1, n_frames)], np.append(s[1:], n_frames))
        e = np.maximum(e, np.minimum(s + min_frames, np.append(s[1:], n_frames)))
        e = np.maximum(e, s + 1)
        starts.append(s)
        ends.append(e)
        keys.append(np.full(len(s), key))
    if not starts:
        return Notes.empty()
    s, e, k = np.concatenate(starts), np.concatenate(ends), np.concatenate(keys)
    n = len(s)
    notes = Notes((s + 0.5) * frame_seconds, e * frame_seconds, k + vocab.MIN_PITCH, np.full(n, 64), np.zeros(n))
    return notes.sorted()


def assign_programs(notes: Notes, decoded: Notes, programs: list[int] | None = None,
                    window_s: float = PROGRAM_WINDOW_S) -> Notes:
    """Give each of `notes` the program (and velocity) of the decoded pitched note that matches it best.

    Cost of a decoded note: |onset difference| / window_s, plus 0 for the same pitch, 1 for the same pitch class,
    2 + semitones / 12 otherwise; candidates within SEARCH_S. With no candidate, the nearest decoded pitched note in
    time; with no decoded pitched note at all, the first pitched program of `programs` (the --instruments list),
    else 0 (acoustic grand piano)."""
    pitched = decoded.select(~decoded.is_drum).sorted()
    fallback = next((p for p in (programs or []) if p != vocab.DRUM_PROGRAM), 0)
    program = np.full(len(notes), fallback, dtype=np.int32)
    velocity = notes.velocity.copy()
    if len(pitched):
        lo = np.searchsorted(pitched.onset, notes.onset - SEARCH_S)
        hi = np.searchsorted(pitched.onset, notes.onset + SEARCH_S)
        for i in range(len(notes)):
            if hi[i] > lo[i]:
                cand = slice(lo[i], hi[i])
                dp = np.abs(pitched.pitch[cand] - notes.pitch[i])
                cost = (np.abs(pitched.onset[cand] - notes.onset[i]) / window_s
                        + np.where(dp == 0, 0.0, np.where(dp % 12 == 0, 1.0, 2.0 + dp / 12)))
                j = lo[i] + int(np.argmin(cost))
            else:
                j = int(np.argmin(np.abs(pitched.onset - notes.onset[i])))
            program[i] = pitched.program[j]
            velocity[i] = pitched.velocity[j]
    return Notes(notes.onset, notes.offset, notes.pitch, velocity, program)


def hybrid_notes(onset_prob: np.ndarray, active_prob: np.ndarray, frame_seconds: float, decoded: Notes,
                 programs: list[int] | None = None, onset_threshold: float = ONSET_THRESHOLD,
                 frame_threshold: float = FRAME_THRESHOLD) -> Notes:
    """Pitched notes from the frame head with programs from `decoded`, plus the drums of `decoded`; sorted."""
    pitched = frame_notes(onset_prob, active_prob, frame_seconds, onset_threshold, frame_threshold)
    pitched = assign_programs(pitched, decoded, programs)
    return Notes.concat([pitched, decoded.select(decoded.is_drum)]).sorted()
