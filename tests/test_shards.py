"""`mt3ds shard` / `mt3ds inspect`: samples read back (WebDataset and tarfile), tokens against the notes of each window,
audio against the offline chain, manifests, byte-identical reruns (also across --workers), resume after an
interruption, rebuilding a deleted shard, --part, every bad input skipped and reported, wrong input exit 2."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from dataset_fixtures import expected_target, make_maestro, make_slakh_track, random_notes, render
from mt3ds.cli import main
from mt3ds.config import AudioConfig
from mt3ds.data import shards as S
from mt3ds.data.audio import chunk, load_audio, prepare
from mt3ds.data.index import index
from mt3ds.data.samples import Manifest
from mt3ds.errors import UserError
from mt3ds.files import temp_name
from mt3ds.tokens import vocab
from mt3ds.tokens.codec import decode_tokens, encode_notes, normalize_notes
from mt3ds.tokens.midi import write_midi
from mt3ds.tokens.notes import Notes

CFG = AudioConfig()
L = CFG.chunk_seconds
SMALL = "200KB"  # two samples per shard: several shards from a few seconds of audio

TRACKS = [dict(year=2004, name="alpha.one", split="train", seconds=5.0, seed=1),
          dict(year=2004, name="beta", split="train", seconds=4.5, seed=2),
          dict(year=2005, name="gamma", split="train", seconds=2.5, seed=3),
          dict(year=2005, name="delta", split="test", seconds=3.0, seed=4)]
SLAKH_STEMS = [dict(program=0, seed=10, file_program=5), dict(program=33, seed=11), dict(is_drum=True, seed=12),
               dict(program=48, seed=13, rendered=False, saved=False), dict(program=81, seed=14, rendered=False)]


def tree_bytes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def read_split(split_dir: Path) -> list[dict]:
    manifest = json.loads((split_dir / "manifest.json").read_text())
    urls = [str(split_dir / e["name"]) for e in manifest["shards"]]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False)) if urls else []


@pytest.fixture(scope="module")
def maestro_root(tmp_path_factory) -> Path:
    return make_maestro(tmp_path_factory.mktemp("maestro"), TRACKS, sample_rate=22050)


@pytest.fixture(scope="module")
def maestro_out(maestro_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("maestro_out")
    S.shard("maestro", maestro_root, out, shard_size=SMALL, progress=False)
    return out


@pytest.fixture(scope="module")
def slakh_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slakh") / "slakh2100_flac_redux"
    make_slakh_track(root / "train" / "Track00001", SLAKH_STEMS, seconds=5.0, seed=1)
    return root


def test_parse_size_and_part():
    assert S.parse_size("1GB") == 10**9 and S.parse_size("500MB") == 5 * 10**8
    assert S.parse_size("64MiB") == 64 * 2**20 and S.parse_size("1.5 gb") == 15 * 10**8
    assert S.parse_size("123456") == 123456
    for bad in ("big", "1XB", "10KB"):
        with pytest.raises(UserError, match="--shard-size"):
            S.parse_size(bad)
    assert S.parse_part(None) == (1, 1) and S.parse_part("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "1-4", "a/b"):
        with pytest.raises(UserError, match="--part"):
            S.parse_part(bad)


def test_every_sample_reads_back_in_the_agreed_format(maestro_root, maestro_out):
    records = {r.key: r for r in index("maestro", maestro_root).records}
    for split, n_tracks in (("train", 3), ("test", 1)):
        manifest = json.loads((maestro_out / split / "manifest.json").read_text())
        samples = read_split(maestro_out / split)
        assert len(samples) == manifest["samples"] == sum(e["samples"] for e in manifest["shards"])
        assert manifest["tracks"] == n_tracks
        assert [e["samples"] for e in manifest["shards"]][:-1] == [2] * (len(manifest["shards"]) - 1)  # 200 KB
        for s in samples:
            assert set(s) == {"__key__", "__url__", "__local_path__", "audio.npy", "json", "tokens.npy"} - \
                ({"__local_path__"} - set(s))
            audio = np.load(io.BytesIO(s["audio.npy"]), allow_pickle=False)
            tokens = np.load(io.BytesIO(s["tokens.npy"]), allow_pickle=False)
            meta = json.loads(s["json"])
            assert audio.dtype == np.float16 and audio.shape == (32768,)
            assert tokens.dtype == np.int16 and tokens[-1] == vocab.EOS and vocab.PAD not in tokens
            assert set(meta) == {"dataset", "track_id", "chunk", "start_s", "programs", "split", "truncated"}
            assert s["__key__"] == f"{records[s['__key__'][:-6]].key}_{meta['chunk']:05d}"
            assert meta["split"] == split and meta["programs"] == [0] and meta["truncated"] is False
            assert meta["start_s"] == meta["chunk"] * L
        # no dot of a track id ('alpha.one') survives into a key: WebDataset splits keys at the first dot
        assert all("." not in s["__key__"] for s in samples)


def test_tokens_and_audio_match_each_window(maestro_root, maestro_out):
    samples = read_split(maestro_out / "train")
    for record in index("maestro", maestro_root, "train").records:
        mine = sorted((s for s in samples if s["__key__"].startswith(record.key + "_")), key=lambda s: s["__key__"])
        target = S.read_target(record)
        chunks = chunk(prepare(load_audio(record.audio_path, CFG.sample_rate), CFG, record.track_id), CFG)
        assert len(mine) == len(chunks) == int(np.ceil(record.duration_s / L))
        reference = encode_notes(target, n_chunks=len(chunks), chunk_seconds=L)
        notes, _ = normalize_notes(target, L)
        for k, s in enumerate(mine):
            np.testing.assert_array_equal(np.load(io.BytesIO(s["audio.npy"])), chunks[k].astype(np.float16))
            tokens = np.load(io.BytesIO(s["tokens.npy"])).astype(np.int64)
            np.testing.assert_array_equal(tokens, reference.chunk(k))
            # the notes inside the window [kL, (k+1)L), times relative to its start, tied notes from its start
            got, _ = decode_tokens([tokens], chunk_seconds=L, tie_starts_notes=True)
            inside = (notes.onset < (k + 1) * L) & (notes.offset > k * L)
            want = notes.select(inside)
            on = np.maximum(want.onset - k * L, 0.0)
            off = np.minimum(want.offset - k * L, L)
            keep = off - on > 0.011  # a note ending within a step of the window start decodes to nothing
            want = Notes(on[keep], off[keep], want.pitch[keep], want.velocity[keep], want.program[keep]).sorted()
            got = got.select(got.offset - got.onset > 0.011).sorted()
            assert len(got) == len(want), (record.track_id, k)
            np.testing.assert_array_equal(got.pitch, want.pitch)
            np.testing.assert_allclose(got.onset, want.onset, atol=0.0051)
            np.testing.assert_allclose(got.offset, want.offset, atol=0.0101)


def test_manifest_records_what_made_the_shards(maestro_out):
    m = json.loads((maestro_out / "train" / "manifest.json").read_text())
    assert m["format"] == "mt3ds-shards-v1" and m["dataset"] == "maestro" and m["split"] == "train"
    assert m["vocab_version"] == vocab.VOCAB_VERSION and m["audio_version"] == CFG.version
    assert m["audio_config"] == CFG.to_dict() and m["time_encoding"] == "delta"
    assert m["skipped"] == [] and m["skipped_count"] == 0 and m["truncated_chunks"] == 0
    assert m["hours"] == pytest.approx((5.0 + 4.5 + 2.5) / 3600, abs=1e-5)
    assert m["created_by"]["command"] == "mt3ds shard" and m["created_by"]["shard_size"] == 200000
    import hashlib

    for e in m["shards"]:
        data = (maestro_out / "train" / e["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == e["sha256"] and len(data) == e["bytes"]
        assert len(data) <= 200000 + tarfile.RECORDSIZE
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:  # what `tar tf` lists
            names = tar.getnames()
            assert len(names) == 3 * e["samples"] and all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
    assert [e["name"] for e in m["shards"]] == [f"shard-{k:06d}.tar" for k in range(len(m["shards"]))]
    assert not (maestro_out / "train" / ".work").exists() and not list(maestro_out.rglob("*.tmp"))


def test_same_input_same_bytes_with_any_number_of_workers(maestro_root, maestro_out, tmp_path):
    S.shard("maestro", maestro_root, tmp_path / "w2", shard_size=SMALL, workers=2, progress=False)
    assert tree_bytes(tmp_path / "w2") == tree_bytes(maestro_out)


def test_interrupted_run_resumes_to_the_same_bytes(maestro_root, maestro_out, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real, calls = S._process_track, []

    def power_cut(job):
        calls.append(job[0])
        if len(calls) == 3:
            raise RuntimeError("power cut")
        return real(job)

    monkeypatch.setattr(S, "_process_track", power_cut)
    with pytest.raises(RuntimeError, match="power cut"):
        S.shard("maestro", maestro_root, out, shard_size=SMALL, progress=False)
    monkeypatch.setattr(S, "_process_track", real)
    work = out / "train" / ".work"
    assert (work / "journal.json").is_file() and not (out / "train" / "manifest.json").exists()
    finished = json.loads((work / "journal.json").read_text())["shards"]
    assert finished and all((out / "train" / e["name"]).is_file() for e in finished)
    temp_name(out / "train" / "shard-000009.tar").write_bytes(b"half a shard")  # what a cut-off write leaves
    [train, test] = S.shard("maestro", maestro_root, out, shard_size=SMALL, progress=False)
    assert train.status == "resumed" and test.status == "written"
    assert tree_bytes(out) == tree_bytes(maestro_out)


def test_rerun_keeps_complete_shards_and_rebuilds_deleted_ones(maestro_root, maestro_out, tmp_path):
    out = tmp_path / "out"
    S.shard("maestro", maestro_root, out, shard_size=SMALL, progress=False)
    reference = tree_bytes(out)
    assert [s.status for s in S.shard("maestro", maestro_root, out, shard_size=SMALL, progress=False)] == \
        ["complete", "complete"]
    (out / "train" / "shard-000001.tar").unlink()
    (out / "train" / "shard-000003.tar").write_bytes(b"truncated")
    summary = S.shard("maestro", maestro_root, out, shard_size=SMALL, progress=False)
    assert summary[0].status == "rebuilt 2 shard(s)"
    assert tree_bytes(out) == reference
    with pytest.raises(UserError, match="made from other input or settings") as e:
        S.shard("maestro", maestro_root, out, shard_size="300KB", progress=False)
    assert e.value.exit_code == 2


def test_a_refused_rerun_names_what_changed(maestro_root, tmp_path, monkeypatch):
    root, out = tmp_path / "maestro", tmp_path / "out"
    shutil.copytree(maestro_root, root)
    S.shard("maestro", root, out, splits="train", shard_size=SMALL, progress=False)
    with pytest.raises(UserError, match=r"\(shard_size 200000 -> 300000\); delete"):
        S.shard("maestro", root, out, splits="train", shard_size="300KB", progress=False)
    make_maestro(root, [*TRACKS, dict(year=2006, name="epsilon", split="train", seconds=3.0, seed=5)],
                 sample_rate=22050)  # the same files again, and one track more
    wav = root / "2004" / "beta.wav"
    sf.write(str(wav), sf.read(str(wav))[0][:30000], 22050)  # and other audio for one track
    with pytest.raises(UserError) as e:
        S.shard("maestro", root, out, splits="train", shard_size=SMALL, progress=False)
    message = str(e.value)
    assert "1 track(s) added: 2006/epsilon" in message and "shard_size" not in message
    assert "1 track(s) changed (record or file size): 2004/beta" in message
    # an unfinished run is refused the same way
    shutil.rmtree(out)
    monkeypatch.setattr(S, "_process_track", lambda job: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        S.shard("maestro", root, out, splits="train", shard_size=SMALL, progress=False)
    with pytest.raises(UserError, match=r"unfinished run made from other input or settings \(part 1/1 -> 1/2"):
        S.shard("maestro", root, out, splits="train", shard_size=SMALL, part="1/2", progress=False)


def test_same_audio_under_two_names_gives_the_same_samples(tmp_path):
    twins = [dict(year=2004, name=n, split="train", seconds=3.0, seed=9) for n in ("first_name", "second_name")]
    [train] = S.shard("maestro", make_maestro(tmp_path / "maestro", twins, sample_rate=16000), tmp_path / "out",
                      progress=False)
    audio = {}
    for s in read_split(tmp_path / "out" / "train"):
        audio.setdefault(s["__key__"].rsplit("_", 1)[-1], []).append(s["audio.npy"])
    assert train.manifest.tracks == 2 and audio and all(len(a) == 2 and a[0] == a[1] for a in audio.values())


def test_parts_combine_even_when_a_later_part_gets_none_of_a_splits_tracks(maestro_root, maestro_out, tmp_path):
    # test has one track: part 1 of 2 takes it, part 2 has none; either order of finishing combines both splits
    for order in (("1/2", "2/2"), ("2/2", "1/2")):
        out = tmp_path / "-".join(o[0] for o in order)
        for part in order:
            S.shard("maestro", maestro_root, out, shard_size=SMALL, part=part, progress=False)
        for split in ("train", "test"):
            combined = Manifest.read(out / split / "manifest.json", CFG)
            whole = Manifest.read(maestro_out / split / "manifest.json", CFG)
            assert (combined.tracks, combined.samples) == (whole.tracks, whole.samples), (order, split)
    assert Manifest.read(out / "test" / "manifest.part2of2.json").tracks == 0


def test_parts_combine_into_one_manifest(maestro_root, maestro_out, tmp_path):
    out = tmp_path / "parts"
    first = S.shard("maestro", maestro_root, out, splits="train", shard_size=SMALL, part="1/2", progress=False)
    assert not (out / "train" / "manifest.json").exists() and "all 2 parts" not in first[0].status
    second = S.shard("maestro", maestro_root, out, splits="train", shard_size=SMALL, part="2/2", progress=False)
    assert "manifest.json written" in second[0].status
    combined = json.loads((out / "train" / "manifest.json").read_text())
    whole = json.loads((maestro_out / "train" / "manifest.json").read_text())
    assert combined["samples"] == whole["samples"] and combined["tracks"] == whole["tracks"]
    assert combined["hours"] == pytest.approx(whole["hours"])
    assert {e["name"].split("-")[1] for e in combined["shards"]} == {"part1of2", "part2of2"}
    assert sorted(s["__key__"] for s in read_split(out / "train")) == \
        sorted(s["__key__"] for s in read_split(maestro_out / "train"))


def test_slakh_mixture_target_is_the_union_of_stems_with_metadata_programs(slakh_root, tmp_path):
    S.shard("slakh", slakh_root, tmp_path, progress=False)
    samples = sorted(read_split(tmp_path / "train"), key=lambda s: s["__key__"])
    assert [s["__key__"] for s in samples] == [f"Track00001_{k:05d}" for k in range(3)]
    assert {tuple(json.loads(s["json"])["programs"]) for s in samples} == {(0, 33, 81, 128)}
    chunks = [np.load(io.BytesIO(s["tokens.npy"])).astype(np.int64) for s in samples]
    got, _ = decode_tokens(chunks, chunk_seconds=L)
    want, _ = normalize_notes(expected_target(slakh_root, SLAKH_STEMS, 5.0), L)
    got, want = (n.select(np.lexsort((n.onset, n.pitch, n.program))) for n in (got, want))
    np.testing.assert_array_equal(got.program, want.program)  # the file's program 5 never shows: metadata wins
    np.testing.assert_array_equal(got.pitch, want.pitch)
    np.testing.assert_allclose(got.onset, want.onset, atol=0.0062)  # 5 ms steps + the MIDI file's 1.04 ms ticks


def test_slakh_stems_and_design_shape_shard(slakh_root, tmp_path):
    [train] = S.shard("slakh_stems", slakh_root, tmp_path / "stems", progress=False)
    assert train.manifest.tracks == 3 and train.manifest.dataset == "slakh_stems"
    keys = {s["__key__"].rsplit("_", 1)[0] for s in read_split(tmp_path / "stems" / "train")}
    assert keys == {"Track00001_S00", "Track00001_S01", "Track00001_S02"}
    design = tmp_path / "Slakh2100"
    make_slakh_track(design / "Train" / "Track00001", SLAKH_STEMS[:3], seconds=3.0, layout="design")
    make_slakh_track(design / "Validate" / "Track00002", SLAKH_STEMS[:1], seconds=3.0, layout="design")
    summaries = S.shard("slakh", design, tmp_path / "design", progress=False)
    assert [(s.split, s.manifest.tracks, s.manifest.samples) for s in summaries] == \
        [("train", 1, 2), ("validation", 1, 2)]


def test_bad_tracks_are_reported_counted_and_skipped(tmp_path, capsys):
    tracks = [dict(year=2004, name=n, split="train", seconds=3.0, seed=i) for i, n in
              enumerate(["good", "no_audio", "corrupt", "bad_row", "no_notes", "too_short", "nan"])]
    tracks[1]["no_audio"] = True
    tracks[3]["duration"] = "three"
    tracks[4]["notes"] = Notes.empty()
    root = make_maestro(tmp_path / "maestro", tracks, sample_rate=16000)
    (root / "2004" / "corrupt.wav").write_bytes(b"RIFF" + bytes(300))
    write_midi(Notes.empty(), root / "2004" / "no_notes.midi")
    notes = random_notes(5, 3.0, 0)
    sf.write(str(root / "2004" / "too_short.wav"), render(notes, 1.0, 16000, 1), 16000)  # notes run to ~2.5 s
    nan = render(random_notes(6, 3.0, 0), 3.0, 16000, 1)
    nan[100] = np.nan
    sf.write(str(root / "2004" / "nan.wav"), nan, 16000, subtype="FLOAT")
    main(["shard", "--dataset", "maestro", "--root", str(root), "-o", str(tmp_path / "out"), "--workers", "1",
          "--quiet"])  # returns: exit 0
    out = capsys.readouterr().out
    m = json.loads((tmp_path / "out" / "train" / "manifest.json").read_text())
    assert m["tracks"] == 1 and m["skipped_count"] == 6 == len(m["skipped"])
    reasons = {Path(s["path"].split(":")[0]).name: s["reason"] for s in m["skipped"]}
    assert reasons["no_audio.wav"] == "missing audio file"
    assert reasons["corrupt.wav"].startswith("unreadable audio")
    assert "duration 'three' is not a number" in reasons["maestro-v3.0.0.csv"]
    assert reasons["no_notes.midi"] == "MIDI has no notes"
    assert "more than 1 s after its audio" in reasons["too_short.midi"]
    assert reasons["nan.wav"] == "audio contains NaN or infinite samples"
    assert "skipped 6 track(s):" in out and "1 tracks" in out
    for name in ("no_audio.wav", "corrupt.wav", "no_notes.midi", "too_short.midi", "nan.wav"):
        assert name in out


def test_slakh_bad_tracks_are_skipped_too(tmp_path):
    root = tmp_path / "slakh"
    make_slakh_track(root / "train" / "Track00001", SLAKH_STEMS[:2], seconds=3.0)
    make_slakh_track(root / "train" / "Track00002", [dict(program=0, seed=1, no_midi=True)], seconds=3.0)
    make_slakh_track(root / "train" / "Track00003", SLAKH_STEMS[:1], seconds=3.0)
    (root / "train" / "Track00003" / "metadata.yaml").write_text("stems: [\n")
    make_slakh_track(root / "train" / "Track00004", SLAKH_STEMS[:1], seconds=3.0)
    (root / "train" / "Track00004" / "mix.flac").write_bytes(b"fLaC" + bytes(500))
    [train] = S.shard("slakh", root, tmp_path / "out", progress=False)
    assert train.manifest.tracks == 1
    reasons = sorted(s.reason.split(" (")[0] for s in train.manifest.skipped)
    assert reasons == ["malformed YAML", "missing stem MIDI", "unreadable audio"]
    assert Manifest.read(tmp_path / "out" / "train" / "manifest.json", CFG) == train.manifest  # what was written


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "musicnet", "--root", "{root}"], "Invalid value for '--dataset'"),
    (["--dataset", "maestro", "--root", "{root}"], "no maestro-v3.0.0.csv or .json found"),
    (["--dataset", "slakh", "--root", "{root}/absent"], "not a folder"),
    (["--dataset", "maestro", "--root", "{maestro}", "--shard-size", "huge"], "--shard-size"),
])
def test_wrong_dataset_or_root_exits_2(argv, message, tmp_path, maestro_root, capsys):
    argv = [a.replace("{root}", str(tmp_path)).replace("{maestro}", str(maestro_root)) for a in argv]
    with pytest.raises(SystemExit) as e:
        main(["shard", *argv, "-o", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_empty_split_folders_exit_2(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    with pytest.raises(SystemExit) as e:
        main(["shard", "--dataset", "slakh", "--root", str(tmp_path), "-o", str(tmp_path / "out")])
    assert e.value.code == 2 and "no slakh tracks" in capsys.readouterr().err


def test_inspect_summary_and_one_sample(maestro_out, tmp_path, capsys):
    main(["inspect", str(maestro_out)])
    out = capsys.readouterr().out
    assert "maestro/train: 3 tracks" in out and "maestro/test: 1 tracks" in out
    key = "2004_beta_00001"
    main(["inspect", str(maestro_out / "train"), "--sample", key, "--wav", str(tmp_path / "s.wav"),
          "--midi", str(tmp_path / "s.mid")])
    out = capsys.readouterr().out
    assert f"sample {key}" in out and "wrote" in out
    audio, sr = sf.read(str(tmp_path / "s.wav"))
    assert sr == 16000 and audio.shape == (32768,)
    from mt3ds.tokens.midi import read_midi

    [s] = [s for s in read_split(maestro_out / "train") if s["__key__"] == key]
    decoded, _ = decode_tokens([np.load(io.BytesIO(s["tokens.npy"])).astype(np.int64)], chunk_seconds=L,
                               tie_starts_notes=True)
    notes, _ = read_midi(tmp_path / "s.mid")
    assert len(notes) == len(decoded) > 0
    with pytest.raises(SystemExit) as e:
        main(["inspect", str(maestro_out), "--sample", "nope_00000"])
    assert e.value.code == 1 and "no sample 'nope_00000'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["inspect", str(tmp_path)])
    assert "no manifest.json" in capsys.readouterr().err
