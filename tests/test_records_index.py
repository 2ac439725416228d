"""Track records and the dataset indexers: MAESTRO (CSV, column-oriented JSON, v2 list JSON), Slakh2100 flac redux,
the plain folder shape (docs/design.md §1.3), slakh_stems; malformed rows and tracks are skipped with a reason; wrong roots exit 2."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataset_fixtures import make_maestro, make_slakh_track
from mt3ds.cli import main
from mt3ds.data.index import index, parse_splits, read_index, write_index
from mt3ds.data.records import MidiSource, TrackRecord, normalize_split, track_key
from mt3ds.errors import UserError

MAESTRO_TRACKS = [
    dict(year=2004, name="MIDI-Unprocessed_XP_01_R1_2004_01_ORIG_MID--AUDIO_01_R1_2004_01_Track01_wav", split="train",
         seconds=3.0, seed=1),
    dict(year=2006, name="MIDI-Unprocessed_02", split="validation", seconds=2.5, seed=2),
    dict(year=2006, name="MIDI-Unprocessed_03", split="test", seconds=2.5, seed=3),
]


@pytest.fixture(scope="module")
def maestro_root(tmp_path_factory) -> Path:
    return make_maestro(tmp_path_factory.mktemp("maestro") / "maestro-v3.0.0", MAESTRO_TRACKS, fmt="both",
                        sample_rate=22050)


SLAKH_STEMS = [dict(program=0, seed=10, file_program=5), dict(program=33, seed=11), dict(is_drum=True, seed=12),
               dict(program=48, seed=13, rendered=False, saved=False),  # neither audio nor MIDI: left out
               dict(program=81, seed=14, rendered=False)]  # MIDI but no audio: not a stem track, in the mixture


@pytest.fixture(scope="module")
def slakh_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slakh") / "slakh2100_flac_redux"
    make_slakh_track(root / "train" / "Track00001", SLAKH_STEMS, seconds=3.0, seed=1)
    make_slakh_track(root / "validation" / "Track01501", SLAKH_STEMS[:2], seconds=2.5, seed=2)
    make_slakh_track(root / "omitted" / "Track00002", SLAKH_STEMS[:1], seconds=2.5, seed=3)
    return root


def test_split_names_normalize():
    assert [normalize_split(s) for s in ("train", "Validate ", "validation", "TEST", "omitted")] == \
        ["train", "validation", "validation", "test", "omitted"]
    with pytest.raises(ValueError, match="unknown split"):
        normalize_split("dev-ish")
    assert parse_splits("train, Validate") == ("train", "validation")
    with pytest.raises(UserError):
        parse_splits("nope")


def test_track_key_replaces_everything_outside_the_safe_set():
    assert track_key("2004/MIDI-Un.processed 01") == "2004_MIDI-Un_processed_01"
    assert track_key("Track00001/S02") == "Track00001_S02"


def test_record_round_trips_through_json():
    r = TrackRecord(track_id="Track00001", dataset="slakh", audio_path="/d/mix.flac", midi_path="/d/MIDI",
                    instrument_programs=(0, 128), instrument_names=("Acoustic Grand Piano", "Drums"),
                    instrument_classes=("Piano", "Drums"), split="train", duration_s=12.5,
                    midi_sources=(MidiSource("/d/MIDI/S00.mid", 0, False), MidiSource("/d/MIDI/S01.mid", None, True)))
    assert TrackRecord.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    single = TrackRecord("a", "maestro", "a.wav", "a.midi", (0,), ("Acoustic Grand Piano",), ("Piano",), "test", 1.0)
    assert single.midi_sources == (MidiSource("a.midi"),)
    with pytest.raises(ValueError):
        TrackRecord("a", "mystery", "a.wav", "a.midi", (), (), (), "train", 1.0)


def test_maestro_csv_and_json_give_the_same_records(maestro_root, tmp_path):
    from_csv = index("maestro", maestro_root)
    assert [r.split for r in from_csv.records] == ["train", "validation", "test"]
    r = from_csv.records[0]
    assert r.track_id == "2004/" + MAESTRO_TRACKS[0]["name"]
    assert r.instrument_programs == (0,) and r.instrument_names == ("Acoustic Grand Piano",)
    assert r.instrument_classes == ("Piano",) and r.duration_s == 3.0 and r.dataset == "maestro"
    assert r.midi_sources == (MidiSource(r.midi_path, program=0, is_drum=False),)
    assert Path(r.audio_path).is_file() and Path(r.midi_path).is_file()
    json_only = tmp_path / "json_only"
    json_only.mkdir()
    for p in maestro_root.iterdir():
        if p.suffix != ".csv":
            (json_only / p.name).symlink_to(p)
    from_json = index("maestro", json_only)
    strip = [(r.track_id, r.split, r.duration_s) for r in from_csv.records]
    assert [(r.track_id, r.split, r.duration_s) for r in from_json.records] == strip
    assert not from_csv.skipped and not from_json.skipped
    # pointing at the parent of maestro-v3.0.0/ works too
    assert len(index("maestro", maestro_root.parent).records) == 3


def test_maestro_split_filter_and_v2_list_json(maestro_root, tmp_path):
    assert [r.split for r in index("maestro", maestro_root, "test").records] == ["test"]
    rows = [{"split": "train", "midi_filename": f"2004/{MAESTRO_TRACKS[0]['name']}.midi",
             "audio_filename": f"2004/{MAESTRO_TRACKS[0]['name']}.wav", "duration": 3.0}]
    (tmp_path / "2004").symlink_to(maestro_root / "2004")
    (tmp_path / "maestro-v2.0.0.json").write_text(json.dumps(rows))
    assert len(index("maestro", tmp_path).records) == 1


def test_maestro_malformed_rows_are_skipped_with_reasons(tmp_path):
    tracks = [dict(year=2004, name="good", split="train", seconds=2.0, seed=1),
              dict(year=2004, name="bad_split", split="holdout", seconds=2.0, seed=2),
              dict(year=2004, name="bad_duration", split="train", seconds=2.0, seed=3, duration="long"),
              dict(year=2004, name="no_audio", split="train", seconds=2.0, seed=4, no_audio=True),
              dict(year=2004, name="no_midi", split="test", seconds=2.0, seed=5, no_midi=True)]
    result = index("maestro", make_maestro(tmp_path, tracks, sample_rate=16000))
    assert [r.track_id for r in result.records] == ["2004/good"]
    assert any("unknown split 'holdout'" in s.reason for s in result.skipped)
    assert any("duration 'long' is not a number" in s.reason for s in result.skipped)
    assert any(s.reason == "missing audio file" and s.path.endswith("no_audio.wav") for s in result.skipped)
    assert any(s.reason == "missing MIDI file" and s.path.endswith("no_midi.midi") for s in result.skipped)
    assert len(result.skipped) == 4
    assert all(s.path.startswith(str(tmp_path)) for s in result.skipped)


def test_maestro_wrong_root_says_what_it_expected(tmp_path):
    with pytest.raises(UserError, match="no maestro-v3.0.0.csv or .json found") as e:
        index("maestro", tmp_path)
    assert e.value.exit_code == 2
    (tmp_path / "maestro-v3.0.0.csv").write_text("split,audio_filename\ntrain,a.wav\n")
    with pytest.raises(UserError, match="missing columns midi_filename, duration"):
        index("maestro", tmp_path)
    with pytest.raises(UserError, match="not a folder"):
        index("maestro", tmp_path / "absent")


def test_slakh_mixture_target_is_the_stems_with_metadata_programs(slakh_root):
    result = index("slakh", slakh_root)
    assert [(r.track_id, r.split) for r in result.records] == [("Track00001", "train"), ("Track01501", "validation")]
    r = result.records[0]
    assert r.audio_path.endswith("Track00001/mix.flac") and r.midi_path.endswith("Track00001/MIDI")
    # S00's file says program 5, metadata says 0: metadata wins; S03 has no MIDI: out; S04 (not rendered, MIDI
    # saved) stays in the target (docs/design.md §1.3: left out only when its MIDI is absent)
    assert [(Path(s.path).name, s.program, s.is_drum) for s in r.midi_sources] == \
        [("S00.mid", 0, False), ("S01.mid", 33, False), ("S02.mid", None, True), ("S04.mid", 81, False)]
    assert r.instrument_programs == (0, 33, 81, 128)
    assert r.instrument_names == ("Acoustic Grand Piano", "Electric Bass (finger)", "Lead 2 (sawtooth)", "Drums")
    assert r.instrument_classes == ("Piano", "Bass", "Synth Lead", "Drums")
    assert abs(r.duration_s - 3.0) < 1e-3
    assert not any("all_src" in s.path for s in r.midi_sources)


def test_slakh_omitted_only_when_asked(slakh_root):
    assert "omitted" not in {r.split for r in index("slakh", slakh_root).records}
    assert [r.track_id for r in index("slakh", slakh_root, "omitted").records] == ["Track00002"]


def test_slakh_stems_are_the_rendered_and_saved_stems(slakh_root):
    result = index("slakh_stems", slakh_root, "train")
    assert [r.track_id for r in result.records] == ["Track00001/S00", "Track00001/S01", "Track00001/S02"]
    assert [r.instrument_programs for r in result.records] == [(0,), (33,), (128,)]
    assert result.records[2].midi_sources[0].is_drum is True
    assert {r.dataset for r in result.records} == {"slakh_stems"} and not result.skipped


def test_slakh_bad_tracks_are_skipped_with_reasons(tmp_path):
    root = tmp_path / "slakh"
    make_slakh_track(root / "train" / "Track00001", SLAKH_STEMS[:2], seconds=2.0, seed=1)
    make_slakh_track(root / "train" / "Track00002", [dict(program=0, seed=1, no_midi=True), SLAKH_STEMS[1]],
                     seconds=2.0)
    make_slakh_track(root / "train" / "Track00003", SLAKH_STEMS[:1], seconds=2.0)
    (root / "train" / "Track00003" / "metadata.yaml").write_text("stems: {S00: [unclosed\n")
    make_slakh_track(root / "train" / "Track00004", SLAKH_STEMS[:1], seconds=2.0)
    (root / "train" / "Track00004" / "mix.flac").unlink()
    make_slakh_track(root / "train" / "Track00005", [dict(program=0, seed=1, no_audio=True)], seconds=2.0)
    (root / "train" / "Track00006").mkdir()
    mixes = index("slakh", root)
    assert [r.track_id for r in mixes.records] == ["Track00001", "Track00005"]
    why = {Path(s.path).name: s.reason for s in mixes.skipped}
    assert "missing stem MIDI" in why["S00.mid"]
    assert why["metadata.yaml"].startswith("malformed YAML")
    assert why["mix.flac"] == "missing audio file"
    assert why["Track00006"].startswith("no metadata.yaml")
    stems = index("slakh_stems", root)
    assert "missing audio file" in {s.reason for s in stems.skipped}  # Track00005's S00.flac


def test_slakh_plain_folder_shape(tmp_path):
    root = tmp_path / "Slakh2100"
    stems = [dict(program=0, seed=1), dict(program=40, seed=2), dict(is_drum=True, seed=3)]
    make_slakh_track(root / "Train" / "Track00001", stems, seconds=2.5, layout="design")
    make_slakh_track(root / "Validate" / "Track00002", stems[:1], seconds=2.5, layout="design")
    mixes = index("slakh", root)
    assert [(r.track_id, r.split) for r in mixes.records] == [("Track00001", "train"), ("Track00002", "validation")]
    assert mixes.records[0].instrument_programs == (0, 40, 128)  # from the MIDI files: no metadata here
    assert [Path(s.path).name for s in mixes.records[0].midi_sources] == ["track001.mid", "track002.mid",
                                                                          "track003.mid"]
    stem_records = index("slakh_stems", root, "train").records
    assert [r.track_id for r in stem_records] == ["Track00001/stem001", "Track00001/stem002", "Track00001/stem003"]
    assert [r.instrument_programs for r in stem_records] == [(0,), (40,), (128,)]


def test_slakh_wrong_root_says_what_it_expected(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(UserError, match="no train/validation/test/TrackNNNNN folders") as e:
        index("slakh", tmp_path)
    assert e.value.exit_code == 2


def test_index_command_writes_json_lines(maestro_root, tmp_path, capsys):
    out = tmp_path / "index.jsonl"
    main(["index", "--dataset", "maestro", "--root", str(maestro_root), "-o", str(out)])
    assert "3 track records" in capsys.readouterr().out
    records = read_index(out)
    assert records == index("maestro", maestro_root).records
    assert write_index("maestro", maestro_root, out, "test").records == read_index(out)


@pytest.mark.parametrize("argv, message", [
    (["index", "--dataset", "musicnet", "--root", ".", "-o", "x.jsonl"], "Invalid value for '--dataset'"),
    (["index", "--dataset", "slakh", "--root", "{empty}", "-o", "x.jsonl"], "no train/validation/test/TrackNNNNN"),
])
def test_index_command_bad_input_exits_2(argv, message, tmp_path, capsys):
    argv = [a.replace("{empty}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
