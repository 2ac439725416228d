"""The chunk codec: golden vectors, round trips (hypothesis), ties, truncation, tolerant decoding, rewrites."""
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mt3ds.tokens import vocab as V
from mt3ds.tokens.codec import (TRAIN_CHUNK_SECONDS, decode_tokens, encode_notes, event_names, normalize_notes,
                                to_absolute, to_delta)
from mt3ds.tokens.notes import DRUM_SECONDS, Notes

# The golden vectors of docs/design.md §3.7, read from tests/resources: these ids must come out exactly.
GOLDEN = Path(__file__).resolve().parent / "resources" / "golden"


def golden(name):
    return json.loads((GOLDEN / name).read_text())


@pytest.mark.parametrize("name,encoding", [("seed_example.json", "delta"),
                                           ("seed_example_absolute.json", "absolute")])
def test_golden_vectors(name, encoding):
    g = golden(name)
    notes = Notes.from_list(g["notes"])
    ct = encode_notes(notes, n_chunks=len(g["chunks"]), chunk_seconds=2.25, time_encoding=encoding)
    for i, chunk in enumerate(g["chunks"]):
        assert ct.chunk(i).tolist() == chunk["tokens"]
        assert ct.start_s[i] == pytest.approx(chunk["start"])
    decoded, stats = decode_tokens(ct, chunk_seconds=2.25, time_encoding=encoding)
    assert stats.malformed == 0
    assert decoded.to_list() == notes.sorted().to_list()


def test_golden_event_names():
    g = golden("seed_example.json")
    ct = encode_notes(Notes.from_list(g["notes"]), n_chunks=2, chunk_seconds=2.25)
    for i, chunk in enumerate(g["chunks"]):
        expected = [f"{t} {v}" if t != "tie" else "tie" for t, v in chunk["events"]] + ["EOS"]
        assert event_names(ct.chunk(i)) == expected


# ---------------------------------------------------------------------------------------------------------------
# Round trips on random note sets (docs/design.md §3.3: within 5 ms)

@st.composite
def note_sets(draw):
    n = draw(st.integers(0, 40))
    span = draw(st.integers(50, 1500))  # in 10 ms steps
    onset = np.array(draw(st.lists(st.integers(0, span), min_size=n, max_size=n)), dtype=np.int64)
    length = np.array(draw(st.lists(st.integers(1, 900), min_size=n, max_size=n)), dtype=np.int64)
    pitch = np.array(draw(st.lists(st.integers(21, 108), min_size=n, max_size=n)))
    vel = np.array(draw(st.lists(st.integers(1, 127), min_size=n, max_size=n)))
    program = np.array(draw(st.lists(st.sampled_from([0, 0, 33, 40, 128]), min_size=n, max_size=n)))
    onset_s = onset / 100.0
    offset_s = (onset + length) / 100.0
    offset_s = np.where(program == 128, onset_s + DRUM_SECONDS, offset_s)
    return Notes(onset_s, offset_s, pitch, vel, program)


def assert_same_notes(expected: Notes, got: Notes, tol=0.005 + 1e-9):
    expected, got = expected.sorted(), got.sorted()
    assert len(expected) == len(got)
    # Match by (program, pitch, rounded onset) rather than by order: onsets within 10 ms may swap places.
    for prog in np.unique(expected.program):
        for pitch in np.unique(expected.pitch[expected.program == prog]):
            e = expected.select((expected.program == prog) & (expected.pitch == pitch))
            g = got.select((got.program == prog) & (got.pitch == pitch))
            assert len(e) == len(g), (prog, pitch)
            np.testing.assert_allclose(g.onset, e.onset, atol=tol)
            np.testing.assert_array_equal(g.velocity, e.velocity)
            if prog != 128:
                np.testing.assert_allclose(g.offset, e.offset, atol=tol)


@settings(max_examples=150, deadline=None)
@given(notes=note_sets(), encoding=st.sampled_from(["delta", "absolute"]),
       chunk=st.sampled_from([TRAIN_CHUNK_SECONDS, 2.25, 1.0, 0.37, 3.333]))
def test_roundtrip_within_5ms(notes, encoding, chunk):
    normalized, dropped = normalize_notes(notes, chunk)
    assert dropped == 0
    ct = encode_notes(notes, chunk_seconds=chunk, time_encoding=encoding)
    assert not ct.truncated.any()
    for i in range(len(ct)):
        seq = ct.chunk(i)
        assert seq[-1] == V.EOS and (seq[:-1] != V.EOS).all() and len(seq) <= 1024
    decoded, stats = decode_tokens(ct, chunk_seconds=chunk, time_encoding=encoding)
    assert stats.malformed == 0
    assert_same_notes(normalized, decoded)


@settings(max_examples=60, deadline=None)
@given(notes=note_sets(), chunk=st.sampled_from([TRAIN_CHUNK_SECONDS, 0.37, 2.25]))
def test_time_encodings_rewrite_losslessly(notes, chunk):
    delta = encode_notes(notes, chunk_seconds=chunk, time_encoding="delta")
    absolute = encode_notes(notes, chunk_seconds=chunk, time_encoding="absolute")
    for i in range(len(delta)):
        assert to_absolute(delta.chunk(i)).tolist() == absolute.chunk(i).tolist()
        assert to_delta(absolute.chunk(i)).tolist() == delta.chunk(i).tolist()


def test_note_crossing_many_chunks_is_tied_in_each():
    notes = Notes([0.5], [9.0], [60], [80], [0])
    ct = encode_notes(notes, chunk_seconds=2.0)
    assert len(ct) == 5
    for i in range(1, 4):
        assert ct.chunk(i).tolist() == [V.TIE_ID, 1221, 1043, V.EOS]
    # chunk 4 starts at 8.0: tied, then the off 100 steps in.
    assert ct.chunk(4).tolist() == [V.TIE_ID, 1221, 1043, 3 + 100, 1221, 1092, 1043, V.EOS]
    decoded, _ = decode_tokens(ct, chunk_seconds=2.0)
    assert decoded.to_list() == notes.to_list()


def test_note_ending_on_boundary_is_tied_then_ended_at_step_0():
    ct = encode_notes(Notes([1.0], [2.0], [60], [80], [0]), chunk_seconds=2.0)
    assert ct.chunk(1).tolist() == [V.TIE_ID, 1221, 1043, 1221, 1092, 1043, V.EOS]


def test_zero_length_note_off_moves_one_step_later():
    ct = encode_notes(Notes([0.5], [0.5], [60], [80], [0]), chunk_seconds=2.0)
    assert ct.chunk(0).tolist() == [53, 1221, 1092 + 80, 1043, 3 + 1, 1221, 1092, 1043, V.EOS]
    decoded, _ = decode_tokens(ct, chunk_seconds=2.0)
    assert decoded.offset[0] == pytest.approx(0.51)


def test_overlapping_same_pitch_notes_are_cut_at_the_restrike():
    notes = Notes([0.0, 0.5], [1.0, 1.5], [60, 60], [80, 90], [0, 0])
    ct = encode_notes(notes, chunk_seconds=2.0)
    decoded, _ = decode_tokens(ct, chunk_seconds=2.0)
    np.testing.assert_allclose(decoded.onset, [0.0, 0.5])
    np.testing.assert_allclose(decoded.offset, [0.5, 1.5])
    # Same pitch struck twice on one step: one note, the longer.
    decoded, _ = decode_tokens(encode_notes(Notes([0.0, 0.001], [1.0, 0.2], [60, 60], [80, 90], [0, 0])))
    assert len(decoded) == 1 and decoded.offset[0] == pytest.approx(1.0)


def test_doubled_drum_hit_on_one_step_keeps_the_louder():
    # A soft grace note 3 ms before the accent, on the same 10 ms step and key: the accent's velocity is kept.
    for soft_first in (True, False):
        onset, vel = ([0.500, 0.503], [30, 110]) if soft_first else ([0.500, 0.503], [110, 30])
        notes = Notes(onset, [o + DRUM_SECONDS for o in onset], [38, 38], vel, [V.DRUM_PROGRAM] * 2)
        kept, _ = normalize_notes(notes)
        assert len(kept) == 1 and kept.velocity.tolist() == [110]


def test_out_of_range_pitches_are_dropped_and_counted():
    ct = encode_notes(Notes([0.0, 0.1, 0.2], [1, 1, 1], [10, 60, 120], [80, 80, 80], [0, 0, 0]))
    assert ct.dropped_pitches == 2
    decoded, _ = decode_tokens(ct)
    assert decoded.pitch.tolist() == [60]


def test_empty_notes_give_one_eos_chunk():
    ct = encode_notes(Notes.empty())
    assert len(ct) == 1 and ct.chunk(0).tolist() == [V.EOS]
    ct = encode_notes(Notes.empty(), n_chunks=3)
    assert [c.tolist() for c in ct.chunks()] == [[V.EOS]] * 3


def test_truncation_cuts_after_the_last_whole_step_and_counts():
    # 400 chords of 1 note each at distinct steps in one 10 s chunk -> 400 * (1 + 3) + offs > 1023
    onset = np.arange(400) * 0.02
    notes = Notes(onset, onset + 0.01, 21 + (np.arange(400) % 88), np.full(400, 80), np.zeros(400))
    ct = encode_notes(notes, chunk_seconds=10.0)
    assert ct.truncated.tolist() == [True]
    seq = ct.chunk(0)
    assert len(seq) <= 1024 and seq[-1] == V.EOS
    # The cut falls on a step boundary: what precedes EOS is whole groups, i.e. the next token would be a shift.
    full = encode_notes(notes, chunk_seconds=10.0, max_len=100000).chunk(0)
    assert full[: len(seq) - 1].tolist() == seq[:-1].tolist()
    assert V.SHIFT.first_id <= full[len(seq) - 1] <= V.SHIFT.last_id


def test_events_after_n_chunks_are_dropped_and_sounding_notes_end_at_the_end():
    notes = Notes([0.5, 3.0], [5.0, 3.5], [60, 62], [80, 80], [0, 0])
    ct = encode_notes(notes, n_chunks=1, chunk_seconds=2.0)
    decoded, _ = decode_tokens(ct, chunk_seconds=2.0, end_s=1.9)
    assert decoded.to_list() == [{"onset": 0.5, "offset": 1.9, "pitch": 60, "velocity": 80, "program": 0,
                                  "is_drum": False}]


def test_tolerant_decoding_skips_and_counts_malformed_runs():
    seqs = [[V.PITCH.first_id + 39,  # pitch with no program/velocity: malformed
             1221, 1192, 1043,  # program 0, velocity 100, pitch 60: on at 0
             53, 1221, 1192, 1043,  # retrigger at 0.5
             V.UNK, V.TIE_ID,  # UNK and a stray tie: malformed
             53, 1221, 1092, 1045,  # off for a pitch not sounding: ignored
             V.EOS, 1221, 1192, 1050, V.PAD]]  # after EOS: ignored
    decoded, stats = decode_tokens(seqs, chunk_seconds=2.0)
    assert stats.malformed == 3
    assert decoded.onset.tolist() == [0.0, 0.5]
    assert decoded.offset.tolist() == [0.5, 2.0]


def test_sounding_note_absent_from_next_tie_section_ends_at_the_boundary():
    seqs = [[1221, 1192, 1043, V.EOS], [V.EOS]]
    decoded, _ = decode_tokens(seqs, chunk_seconds=2.0)
    assert decoded.offset.tolist() == [2.0]
    tied = [[1221, 1192, 1043, V.EOS], [V.TIE_ID, 1221, 1043, V.EOS]]
    decoded, _ = decode_tokens(tied, chunk_seconds=2.0)
    assert decoded.offset.tolist() == [4.0]


def test_tie_for_a_silent_key_is_ignored_unless_asked_to_start_notes():
    seqs = [[V.TIE_ID, 1221, 1043, 53, 1221, 1092, 1043, V.EOS]]
    decoded, _ = decode_tokens(seqs, chunk_seconds=2.0)
    assert len(decoded) == 0
    decoded, _ = decode_tokens(seqs, chunk_seconds=2.0, tie_starts_notes=True)
    assert decoded.onset.tolist() == [0.0] and decoded.offset.tolist() == [0.5]
    # A tied note that is sounding is continued, not restarted.
    seqs = [[1221, 1192, 1043, V.EOS], [V.TIE_ID, 1221, 1043, 53, 1221, 1092, 1043, V.EOS]]
    decoded, _ = decode_tokens(seqs, chunk_seconds=2.0, tie_starts_notes=True)
    assert decoded.onset.tolist() == [0.0] and decoded.offset.tolist() == [2.5]
