"""`mt3ds evaluate`: hand-made reference/estimate pairs with known answers, checked against mir_eval directly."""
import json

import mir_eval
import numpy as np
import pytest
from click.testing import CliRunner

from mt3ds.cli import cli
from mt3ds.errors import UserError
from mt3ds.evaluate import evaluate, score_notes
from mt3ds.tokens.midi import write_midi
from mt3ds.tokens.notes import Notes

REF = Notes([0.0, 0.5, 1.0, 1.5, 0.25, 0.75], [0.4, 1.0, 1.4, 2.0, 0.26, 0.76], [60, 64, 67, 72, 36, 38],
            [80] * 6, [0, 0, 33, 40, 128, 128])


def shifted(notes, dt):
    return Notes(notes.onset + dt, notes.offset + dt, notes.pitch, notes.velocity, notes.program)


def mir_eval_f1(ref, est, offsets):
    pitched = lambda n: n.select(~n.is_drum)  # noqa: E731
    r, e = pitched(ref), pitched(est)
    return mir_eval.transcription.precision_recall_f1_overlap(
        np.stack([r.onset, r.offset], 1), mir_eval.util.midi_to_hz(r.pitch.astype(float)),
        np.stack([e.onset, e.offset], 1), mir_eval.util.midi_to_hz(e.pitch.astype(float)),
        onset_tolerance=0.05, offset_ratio=0.2 if offsets else None, offset_min_tolerance=0.05)[2]


def f1s(ref, est):
    return {m: c.scores()["f1"] for m, c in score_notes(ref, est).items()}


def test_perfect():
    assert f1s(REF, REF) == {m: 1.0 for m in ("onset", "onset_offset", "frame", "multi_full", "multi_class",
                                              "drum_onset")}


def test_shift_40ms_matches_onsets_60ms_does_not():
    near, far = f1s(REF, shifted(REF, 0.04)), f1s(REF, shifted(REF, 0.06))
    assert near["onset"] == 1.0 == pytest.approx(mir_eval_f1(REF, shifted(REF, 0.04), False))
    assert near["drum_onset"] == 1.0 and near["multi_full"] == 1.0
    assert far["onset"] == 0.0 == pytest.approx(mir_eval_f1(REF, shifted(REF, 0.06), False))
    assert far["drum_onset"] == 0.0 and far["multi_full"] == 0.0
    assert near["onset_offset"] == pytest.approx(mir_eval_f1(REF, shifted(REF, 0.04), True))
    assert 0.0 < near["frame"] < 1.0


def test_wrong_program_keeps_note_f1_and_loses_multi_instrument_f1():
    est = Notes(REF.onset, REF.offset, REF.pitch, REF.velocity, [1, 1, 34, 41, 128, 128])  # same classes
    f = f1s(REF, est)
    assert f["onset"] == 1.0 and f["onset_offset"] == 1.0 and f["frame"] == 1.0
    # Pitched groups all wrong (4 notes), drums right (2): tp 2 of 6 ref and 6 est.
    assert f["multi_full"] == pytest.approx(2 / 6)
    assert f["multi_class"] == 1.0
    other_class = Notes(REF.onset, REF.offset, REF.pitch, REF.velocity, [24, 24, 0, 56, 128, 128])
    assert f1s(REF, other_class)["multi_class"] == pytest.approx(2 / 6)


def test_extra_drums_lower_drum_precision_only():
    extra = Notes.concat([REF, Notes([1.2, 1.7], [1.21, 1.71], [42, 42], [90, 90], [128, 128])])
    counts = score_notes(REF, extra)
    assert counts["drum_onset"].scores()["precision"] == pytest.approx(0.5)
    assert counts["drum_onset"].scores()["recall"] == 1.0
    assert counts["onset"].scores()["f1"] == 1.0
    # Drums are onset-only in the multi-instrument score: a drum hit with any length matches.
    assert counts["multi_full"].tp == 6


def test_empty_estimate_is_zero_and_empty_pair_is_undefined():
    assert f1s(REF, Notes.empty())["onset"] == 0.0
    assert score_notes(Notes.empty(), Notes.empty())["onset"].scores()["f1"] is None


def test_folders_matched_by_name_pooled_and_json(tmp_path):
    (tmp_path / "ref").mkdir()
    (tmp_path / "est").mkdir()
    write_midi(REF, tmp_path / "ref" / "a.mid")
    write_midi(REF, tmp_path / "est" / "a.mid")
    write_midi(REF, tmp_path / "ref" / "b.midi")
    write_midi(shifted(REF, 0.06), tmp_path / "est" / "b.mid")
    write_midi(REF, tmp_path / "ref" / "c.mid")  # no estimate: reported as unmatched
    result = evaluate(tmp_path / "ref", tmp_path / "est")
    assert set(result["files"]) == {"a", "b"} and result["unmatched"] == ["c"]
    assert result["files"]["a"]["onset"]["f1"] == 1.0 and result["files"]["b"]["onset"]["f1"] == 0.0
    assert result["pooled"]["onset"]["f1"] == pytest.approx(0.5)
    assert result["mean_per_file"]["onset"]["f1"] == pytest.approx(0.5)
    out = CliRunner().invoke(cli, ["evaluate", "--ref", str(tmp_path / "ref"), "--est", str(tmp_path / "est"),
                                   "--json"])
    assert out.exit_code == 0 and json.loads(out.stdout)["pooled"]["onset"]["tp"] == 4


def test_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        evaluate(tmp_path / "missing.mid", tmp_path / "missing2.mid")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .mid"):
        evaluate(tmp_path / "empty", tmp_path / "empty")
    bad = tmp_path / "bad.mid"
    bad.write_text("nope")
    with pytest.raises(UserError, match="not a MIDI file"):
        evaluate(bad, bad)
