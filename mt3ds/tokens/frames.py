"""The 88-key rolls of the aux frame head: notes -> rolls (training targets) and rolls -> notes (hybrid reading).

A roll is float [n_frames, N_KEYS]: row t is the encoder frame t (one log-mel hop: 128 samples at 16 kHz, 8 ms,
so 256 frames a chunk), column k the piano key of MIDI pitch LOWEST_PITCH + k. The head (model/transcriber.py)
predicts two rolls per chunk from the encoder's memory, onset (a note starts in this frame) and active (a note
sounds in it); `frame_targets` builds both from a chunk's tokens for the auxiliary loss (docs/design.md §5.5).

Trained alongside the tokens, the head learns note timing long before the decoder does: on the synthetic validation
split the stage-1 default model found onsets with F1 0.51 from the head against 0.10 from its tokens. So
`transcribe --notes frames` takes the notes from the head, the way frame-based transcribers (Onsets and Frames,
basic-pitch) decode them, and asks the tokens only what the head cannot say: which instrument plays each note, and
the drums (the head has no drum rolls).

    onsets, active = frame_targets(ids)                                # one chunk's rolls, float32 [256, 88]
    notes = frame_notes(onset_prob, active_prob, seconds)              # pitched notes, program unset (0)
    notes = assign_programs(notes, decoded)                            # each note takes a decoded note's program
    notes = hybrid_notes(onset_prob, active_prob, seconds, decoded)    # both, plus the decoded drums

with seconds = frame_seconds(features, audio), the one definition of a frame's length. Onsets are peaks of the
onset probability above `onset_threshold`; a note lasts while the active probability stays above `frame_threshold`,
at least `min_frames`, and never past the next onset of the same key.

numpy, the codec and Notes are imported inside the functions: `mt3ds transcribe --help` shows the thresholds
without loading numpy.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import AudioConfig, FeatureConfig
from . import vocab

if TYPE_CHECKING:
    import numpy as np

    from .notes import Notes

LOWEST_PITCH = vocab.MIN_PITCH  # key 0 is A0 (MIDI 21); the last key is C8 (MIDI 108)
N_KEYS = vocab.MAX_PITCH - vocab.MIN_PITCH + 1  # 88 piano keys

# Hybrid reading (`transcribe --notes frames`): tuned on the synthetic validation split (BENCHMARKS.md), never on
# test.
ONSET_THRESHOLD = 0.6  # an onset peak must be above this probability
FRAME_THRESHOLD = 0.5  # a note lasts while its active probability stays above this
MIN_FRAMES = 2  # the shortest note the reading writes
PROGRAM_WINDOW_S = 0.1  # a decoded note this far away in time costs as much as a wrong octave
SEARCH_S = 1.0  # decoded notes further than this from a frame note are not considered for it


def frame_seconds(features: FeatureConfig = FeatureConfig(), audio: AudioConfig = AudioConfig()) -> float:
    """The length of one frame (row of a roll) in seconds: one log-mel hop, 8 ms."""
    return features.hop_length / audio.sample_rate


# ----------------------------------------------------------------------------------------------------------------
# notes -> rolls: the aux head's training targets

def frame_targets(ids: np.ndarray, features: FeatureConfig = FeatureConfig(),
                  audio: AudioConfig = AudioConfig()) -> tuple[np.ndarray, np.ndarray]:
    """One chunk's canonical (delta) ids -> onset and active rolls, float32 [features.frames, N_KEYS].

    Frame t covers [t, t + 1) * frame_seconds. Onsets: the frame holding each note's onset; a note tied in from the
    previous chunk has no onset here. Active: every frame overlapping [onset, offset), tied notes from the chunk
    start, notes still sounding at the end to the last frame. Drums are left out: they have no pitch to roll and no
    duration (their onsets are learned from the tokens alone).
    """
    import numpy as np

    from .codec import decode_tokens

    frame_s = frame_seconds(features, audio)
    n_frames = features.frames
    rolls = []
    for tie_starts_notes in (False, True):  # False: only notes that start here; True: tied notes too
        notes, _ = decode_tokens([ids], chunk_seconds=audio.chunk_seconds, tie_starts_notes=tie_starts_notes)
        rolls.append(notes.select(notes.program != vocab.DRUM_PROGRAM))
    starting, sounding = rolls
    onsets = np.zeros((n_frames, N_KEYS), dtype=np.float32)
    t = np.floor(starting.onset / frame_s + 1e-6).astype(np.int64)
    ok = (t >= 0) & (t < n_frames)
    onsets[t[ok], starting.pitch[ok] - LOWEST_PITCH] = 1.0
    first = np.clip(np.floor(sounding.onset / frame_s + 1e-6).astype(np.int64), 0, n_frames)
    stop = np.clip(np.ceil(sounding.offset / frame_s - 1e-6).astype(np.int64), 0, n_frames)  # exclusive
    edges = np.zeros((n_frames + 1, N_KEYS), dtype=np.int32)
    keys = sounding.pitch - LOWEST_PITCH
    np.add.at(edges, (first, keys), 1)
    np.add.at(edges, (np.maximum(stop, first), keys), -1)
    active = (np.cumsum(edges[:-1], axis=0) > 0).astype(np.float32)
    return onsets, active


# ----------------------------------------------------------------------------------------------------------------
# rolls -> notes: the hybrid reading

def frame_notes(onset_prob: np.ndarray, active_prob: np.ndarray, seconds: float,
                onset_threshold: float = ONSET_THRESHOLD, frame_threshold: float = FRAME_THRESHOLD,
                min_frames: int = MIN_FRAMES) -> Notes:
    """Onset and active probabilities [n_frames, N_KEYS] -> pitched Notes (program 0, velocity 64), sorted by onset;
    `seconds` is the length of a frame (frame_seconds).

    A note starts at the centre of a frame whose onset probability is above onset_threshold and is a local maximum
    of its key (ties go to the first frame); it ends at the first frame, after its start, whose active probability is
    at or below frame_threshold, or at the key's next onset, whichever comes first, and lasts at least min_frames."""
    import numpy as np

    from .notes import Notes

    onset_prob, active_prob = np.asarray(onset_prob), np.asarray(active_prob)  # float16 stays float16: an hour is
    # 450k frames, 79 MB per roll
    if onset_prob.ndim != 2 or onset_prob.shape[1] != N_KEYS:
        raise ValueError(f"onset_prob must be [frames, {N_KEYS}], got {onset_prob.shape}")
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
    notes = Notes((s + 0.5) * seconds, e * seconds, k + LOWEST_PITCH, np.full(n, 64), np.zeros(n))
    return notes.sorted()


def assign_programs(notes: Notes, decoded: Notes, programs: list[int] | None = None,
                    window_s: float = PROGRAM_WINDOW_S) -> Notes:
    """Give each of `notes` the program (and velocity) of the decoded pitched note that matches it best.

    Cost of a decoded note: |onset difference| / window_s, plus 0 for the same pitch, 1 for the same pitch class,
    2 + semitones / 12 otherwise; candidates within SEARCH_S. With no candidate, the nearest decoded pitched note in
    time; with no decoded pitched note at all, the first pitched program of `programs` (the --instruments list),
    else 0 (acoustic grand piano)."""
    import numpy as np

    from .notes import Notes

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


def hybrid_notes(onset_prob: np.ndarray, active_prob: np.ndarray, seconds: float, decoded: Notes,
                 programs: list[int] | None = None, onset_threshold: float = ONSET_THRESHOLD,
                 frame_threshold: float = FRAME_THRESHOLD) -> Notes:
    """Pitched notes from the rolls with programs from `decoded`, plus the drums of `decoded`; sorted."""
    from .notes import Notes

    pitched = frame_notes(onset_prob, active_prob, seconds, onset_threshold, frame_threshold)
    pitched = assign_programs(pitched, decoded, programs)
    return Notes.concat([pitched, decoded.select(decoded.is_drum)]).sorted()
