"""The 88-key rolls (mt3ds/tokens/frames.py): frame timing, and hybrid transcription's note reading: onset peaks and
active runs from the frame head's probabilities, programs from the decoded notes."""
import numpy as np
import pytest

from mt3ds.config import AudioConfig, FeatureConfig
from mt3ds.tokens.codec import encode_notes
from mt3ds.tokens.frames import (LOWEST_PITCH, N_KEYS, assign_programs, frame_notes, frame_seconds, frame_targets,
                                 hybrid_notes)
from mt3ds.tokens.notes import Notes

FRAME = 0.008


def rolls(n_frames=100):
    return np.zeros((n_frames, N_KEYS), np.float32), np.zeros((n_frames, N_KEYS), np.float32)


def test_keys_and_frame_timing():
    assert N_KEYS == 88 and LOWEST_PITCH == 21  # A0..C8, the piano
    assert frame_seconds() == FRAME == 128 / 16000  # one log-mel hop
    # a chunk's frames tile it exactly, so rolls of consecutive chunks make one timeline
    assert frame_seconds() * FeatureConfig().frames == AudioConfig().chunk_seconds
    assert frame_seconds(FeatureConfig(hop_length=256), AudioConfig(sample_rate=32000)) == FRAME


def test_targets_read_back_as_their_notes():
    """frame_targets then frame_notes (the rolls as probabilities 0/1): each pitched note comes back to within a
    frame, the drum is left out (it has no roll)."""
    truth = Notes([0.1, 0.5, 1.2, 0.7], [0.4, 1.5, 1.3, 0.8], [60, 64, 108, 38], [80, 80, 80, 80], [0, 33, 0, 128])
    ids = encode_notes(truth, n_chunks=1, time_encoding="delta").chunks()[0]
    onsets, active = frame_targets(ids)
    assert onsets.shape == active.shape == (FeatureConfig().frames, N_KEYS) and onsets.sum() == 3
    notes = frame_notes(onsets, active, frame_seconds())
    pitched = truth.select(~truth.is_drum).sorted()
    assert notes.pitch.tolist() == pitched.pitch.tolist()
    np.testing.assert_allclose(notes.onset, pitched.onset, atol=FRAME)
    np.testing.assert_allclose(notes.offset, pitched.offset, atol=FRAME)


def test_onset_peaks_and_active_runs_make_notes():
    on, act = rolls()
    key = 60 - 21
    on[9:12, key] = [0.6, 0.9, 0.7]  # one peak at frame 10
    act[10:30, key] = 0.8  # sounds for 20 frames
    on[50, key + 4] = 0.4  # below the onset threshold: no note
    act[50:60, key + 4] = 0.9
    notes = frame_notes(on, act, FRAME)
    assert len(notes) == 1 and notes.pitch.tolist() == [60] and notes.program.tolist() == [0]
    assert notes.onset[0] == pytest.approx(10.5 * FRAME) and notes.offset[0] == pytest.approx(30 * FRAME)
    assert len(frame_notes(on, act, FRAME, onset_threshold=0.3)) == 2


def test_a_repeated_key_ends_at_its_next_onset_and_short_notes_last_min_frames():
    on, act = rolls()
    on[[10, 20], 30] = 0.9
    act[10:40, 30] = 0.9  # one long active run over both onsets
    on[70, 40] = 0.9  # no active frames at all
    notes = frame_notes(on, act, FRAME, min_frames=3)
    spans = [(int(p), round(a / FRAME, 1), round(b / FRAME, 1)) for p, a, b in zip(notes.pitch, notes.onset,
                                                                                 notes.offset)]
    assert spans == [(51, 10.5, 20.0), (51, 20.5, 40.0), (61, 70.5, 73.0)]


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\[frames, 88\]"):
        frame_notes(np.zeros((10, 87)), np.zeros((10, 87)), FRAME)
    with pytest.raises(ValueError, match="does not match"):
        frame_notes(np.zeros((10, 88)), np.zeros((11, 88)), FRAME)
    assert len(frame_notes(*rolls(), FRAME)) == 0


def test_programs_come_from_the_best_matching_decoded_note():
    found = Notes([1.0, 1.0, 3.0, 9.0], [1.5, 1.5, 3.5, 9.5], [60, 72, 50, 40], [64] * 4, [0] * 4)
    decoded = Notes([1.02, 0.98, 1.0, 2.9, 1.0], [1.5, 1.5, 1.5, 3.5, 1.1], [60, 48, 72, 55, 36],
                    [90, 64, 64, 64, 100], [33, 0, 73, 25, 128])
    out = assign_programs(found, decoded)
    # same pitch wins over a closer note an octave away; 3.0 takes the only pitched note nearby; 9.0 has none
    # within a second and takes the nearest in time; drums are never a pitched note's program
    assert out.program.tolist() == [33, 73, 25, 25] and out.velocity.tolist()[0] == 90
    assert assign_programs(found, Notes.empty(), programs=[128, 33]).program.tolist() == [33] * 4
    assert assign_programs(found, Notes.empty()).program.tolist() == [0] * 4


def test_hybrid_keeps_the_decoded_drums_and_drops_the_decoded_pitched_notes():
    on, act = rolls()
    on[25, 64 - 21] = 0.9
    act[25:40, 64 - 21] = 0.9
    decoded = Notes([0.21, 0.5], [0.3, 0.51], [64, 38], [64, 64], [40, 128])
    out = hybrid_notes(on, act, FRAME, decoded)
    assert out.program.tolist() == [40, 128] and out.pitch.tolist() == [64, 38]
    assert out.onset[0] == pytest.approx(25.5 * FRAME)
