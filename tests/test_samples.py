"""The shard format (mt3ds/data/samples.py): samples and manifests written then read back (tarfile, WebDataset and the
format's own reader), shards split and named as documented, nothing half written left behind, and every kind of bad
sample or manifest refused with a message naming what is wrong."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile

import numpy as np
import pytest
import webdataset as wds

from mt3ds.config import AudioConfig
from mt3ds.data.records import Skipped
from mt3ds.data.samples import (FORMAT, MEMBERS, TAR_FORMAT, EncodedSample, Manifest, Sample, SampleMeta, ShardEntry,
                                end_of_archive, read_tar_samples, sample_key, tar_blocks, write_shard_folder)
from mt3ds.errors import UserError
from mt3ds.files import npy_bytes
from mt3ds.tokens import vocab

AUDIO = AudioConfig()
SHIFT, PROGRAM, VELOCITY, PITCH = (vocab.encode_event(e, v) for e, v in
                                   (("shift", 10), ("program", 33), ("velocity", 90), ("pitch", 40)))


def make_sample(track: int, chunk: int, seed: int = 0, track_id: str | None = None) -> Sample:
    rng = np.random.default_rng(seed * 1000 + track * 10 + chunk)
    track_id = track_id or f"set/piece {track}.v2"
    tokens = np.array([SHIFT] * (1 + chunk) + [PROGRAM, VELOCITY, PITCH, vocab.EOS], dtype=np.int16)
    meta = SampleMeta("synthetic", track_id, chunk, chunk * AUDIO.chunk_seconds, (33, 128), "train", False)
    return Sample(sample_key(track_id, chunk), (0.1 * rng.standard_normal(AUDIO.chunk_samples)).astype(np.float16),
                  tokens, meta)


def manifest_of(samples, **kw):
    def make(shards) -> Manifest:
        return Manifest("synthetic", "train", AUDIO, shards, tracks=len({s.meta.track_id for s in samples}),
                        hours=len(samples) * AUDIO.chunk_seconds / 3600, **kw)
    return make


def same(a: Sample, b: Sample) -> bool:
    return a.key == b.key and a.meta == b.meta and np.array_equal(a.audio, b.audio) and \
        a.audio.dtype == b.audio.dtype and np.array_equal(a.tokens, b.tokens) and a.tokens.dtype == b.tokens.dtype


# ---------------------------------------------------------------------------------------------------------------
# one sample

def test_sample_key_makes_the_track_id_webdataset_safe():
    assert sample_key("2004/MIDI-Un.processed 01", 3) == "2004_MIDI-Un_processed_01_00003"
    assert sample_key("Track00001/S02", 12) == "Track00001_S02_00012"


def test_sample_round_trips_through_its_members():
    s = make_sample(0, 2)
    members = s.to_members()
    assert tuple(members) == MEMBERS
    assert json.loads(members["json"]) == {"dataset": "synthetic", "track_id": "set/piece 0.v2", "chunk": 2,
                                           "start_s": 2 * AUDIO.chunk_seconds, "programs": [33, 128],
                                           "split": "train", "truncated": False}
    assert members["json"] == json.dumps(json.loads(members["json"]), sort_keys=True).encode()  # sorted keys
    back = Sample.from_members({"__key__": s.key, **members})
    assert same(back, s)
    assert SampleMeta.from_dict(s.meta.to_dict()) == s.meta


def test_tar_blocks_are_what_tarfile_writes_pax_records_included():
    key = "x" * 150  # past USTAR's 100 characters: the name travels in a PAX record
    members = {"audio.npy": b"a" * 1000, "json": b"{}", "tokens.npy": b"t" * 512}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=TAR_FORMAT) as tar:
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = \
                len(data), 0, 0o644, 0, 0, "", ""
            tar.addfile(info, io.BytesIO(data))
    blocks = tar_blocks(key, members)
    assert blocks + end_of_archive(len(blocks)) == buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        assert [m.name for m in tar] == [f"{key}.{ext}" for ext in members]


def test_written_shards_read_back_with_tarfile_webdataset_and_the_format(tmp_path):
    samples = [make_sample(t, c) for t in range(2) for c in range(3)]
    m = write_shard_folder(tmp_path / "train", samples, manifest_of(samples), max_samples=4)
    urls = [str(tmp_path / "train" / e.name) for e in m.shards]
    via_wds = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [r["__key__"] for r in via_wds] == [s.key for s in samples]
    for raw, s in zip(via_wds, samples):
        assert same(Sample.from_members(raw), s)
    via_format = [r for u in urls for r in read_tar_samples(u)]
    assert all(same(Sample.from_members(r), s) for r, s in zip(via_format, samples)) and len(via_format) == 6
    for e in m.shards:
        with tarfile.open(tmp_path / "train" / e.name) as tar:
            infos = tar.getmembers()
        assert len(infos) == 3 * e.samples and all(i.mtime == 0 and i.uid == 0 and i.mode == 0o644 for i in infos)


# ---------------------------------------------------------------------------------------------------------------
# a split folder

def test_shards_split_by_sample_count_and_the_manifest_lists_each(tmp_path):
    samples = [make_sample(t, c) for t in range(3) for c in range(3)]
    folder = tmp_path / "train"
    m = write_shard_folder(folder, samples, manifest_of(samples, created_by={"test": 1}), max_samples=4)
    assert [e.samples for e in m.shards] == [4, 4, 1] and m.samples == 9 and m.tracks == 3
    assert [e.name for e in m.shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert [(e.first_track, e.first_chunk) for e in m.shards] == [(0, 0), (1, 1), (2, 2)]
    for e in m.shards:
        data = (folder / e.name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == e.sha256 and len(data) == e.bytes
        assert len(data) % tarfile.RECORDSIZE == 0
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json"] + [e.name for e in m.shards]
    on_disk = Manifest.read(folder / "manifest.json", AUDIO)
    assert on_disk == m and on_disk.to_bytes() == (folder / "manifest.json").read_bytes()
    raw = json.loads((folder / "manifest.json").read_text())
    assert raw["format"] == FORMAT and raw["samples"] == 9 and raw["skipped_count"] == 0 and "parts" not in raw


def test_shards_split_by_size_never_pass_it(tmp_path):
    samples = [make_sample(0, c) for c in range(7)]
    one = len(samples[0].tar_blocks())
    limit = 3 * one + 2 * tarfile.BLOCKSIZE + 100  # three samples and the end blocks fit, four do not
    m = write_shard_folder(tmp_path, samples, manifest_of(samples), max_bytes=limit)
    assert [e.samples for e in m.shards] == [3, 3, 1]
    assert [r["__key__"] for e in m.shards for r in read_tar_samples(tmp_path / e.name)] == [s.key for s in samples]
    tiny = write_shard_folder(tmp_path / "tiny", samples[:2], manifest_of(samples[:2]), max_bytes=10)
    assert [e.samples for e in tiny.shards] == [1, 1]  # a shard always takes at least one sample


def test_a_part_names_its_shards_and_manifest(tmp_path):
    samples = [make_sample(0, c) for c in range(3)]
    m = write_shard_folder(tmp_path, samples, manifest_of(samples, part="2/3"), max_samples=2, part=(2, 3))
    assert [e.name for e in m.shards] == ["shard-part2of3-000000.tar", "shard-part2of3-000001.tar"]
    assert (tmp_path / "manifest.part2of3.json").is_file() and not (tmp_path / "manifest.json").exists()


def test_on_shard_reports_where_the_next_shard_starts_and_done_shards_are_kept(tmp_path):
    samples = [make_sample(t, c) for t in range(2) for c in range(3)]
    calls = []
    m = write_shard_folder(tmp_path / "a", samples, manifest_of(samples), max_samples=2,
                           on_shard=lambda e, nxt: calls.append((e.name, nxt)))
    assert calls == [("shard-000000.tar", (0, 2)), ("shard-000001.tar", (1, 1)), ("shard-000002.tar", None)]
    # an interrupted run goes on after its finished first shard, from encoded samples, to the same bytes
    rest = [EncodedSample(t, c, make_sample(t, c).tar_blocks()) for t, c in [(0, 2), (1, 0), (1, 1), (1, 2)]]
    b = tmp_path / "b"
    b.mkdir()
    (b / m.shards[0].name).write_bytes((tmp_path / "a" / m.shards[0].name).read_bytes())
    resumed = write_shard_folder(b, rest, manifest_of(samples), max_samples=2, done=m.shards[:1])
    assert resumed == m
    assert all((b / e.name).read_bytes() == (tmp_path / "a" / e.name).read_bytes() for e in m.shards)


def test_a_failed_write_leaves_no_manifest_and_no_half_shard(tmp_path):
    def failing():
        for c in range(3):
            yield make_sample(0, c)
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        write_shard_folder(tmp_path, failing(), manifest_of([]), max_samples=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-000000.tar"]  # finished before the failure
    with pytest.raises(ValueError, match="max_bytes or max_samples"):
        write_shard_folder(tmp_path, [], manifest_of([]))


# ---------------------------------------------------------------------------------------------------------------
# manifests

def full_manifest() -> Manifest:
    shards = (ShardEntry("shard-000000.tar", 3, "ab" * 32, 215040, 0, 0),
              ShardEntry("shard-000001.tar", 2, "cd" * 32, 143360, 1, 1))
    return Manifest("maestro", "train", AUDIO, shards, tracks=2, hours=0.003333, truncated_chunks=1,
                    dropped_pitches=4, skipped=(Skipped("/data/x.wav", "missing audio file"),), part="1/2",
                    fingerprint="f" * 64, created_by={"command": "mt3ds shard", "shard_size": 200000})


def test_manifest_round_trips_and_writes_every_field():
    m = full_manifest()
    d = m.to_dict()
    assert Manifest.from_dict(d) == m and Manifest.from_bytes(m.to_bytes(), "m.json", AUDIO) == m
    assert d["samples"] == 5 and d["skipped_count"] == 1 and d["skipped"] == [{"path": "/data/x.wav",
                                                                              "reason": "missing audio file"}]
    assert d["audio_version"] == AUDIO.version and d["audio_config"] == AUDIO.to_dict()
    assert d["vocab_version"] == vocab.VOCAB_VERSION and d["time_encoding"] == "delta" and d["format"] == FORMAT
    assert set(d) == {"format", "dataset", "split", "vocab_version", "audio_version", "audio_config",
                      "time_encoding", "code_version", "shards", "samples", "tracks", "hours", "truncated_chunks",
                      "dropped_pitches", "skipped", "skipped_count", "part", "fingerprint", "created_by"}
    assert d["shards"][1] == {"name": "shard-000001.tar", "samples": 2, "sha256": "cd" * 32, "bytes": 143360,
                              "first_track": 1, "first_chunk": 1}
    combined = Manifest.from_dict(dict(d, parts=["manifest.part1of2.json", "manifest.part2of2.json"]))
    assert combined.to_dict()["parts"] == ["manifest.part1of2.json", "manifest.part2of2.json"]


def test_manifest_from_before_the_optional_fields_reads_with_defaults():
    d = full_manifest().to_dict()
    for k in ("dropped_pitches", "part", "fingerprint"):
        del d[k]
    d["shards"] = [{k: e[k] for k in ("name", "samples", "sha256")} for e in d["shards"]]
    m = Manifest.from_dict(d)
    assert m.dropped_pitches == 0 and m.part is None and m.fingerprint is None and m.samples == 5
    assert m.shards[0].bytes is None and m.shards[0].to_dict() == {"name": "shard-000000.tar", "samples": 3,
                                                                   "sha256": "ab" * 32}


@pytest.mark.parametrize("key, theirs, ours, what", [
    ("format", "mt3ds-shards-v9", FORMAT, "shard format"),
    ("vocab_version", "mt3ds-option1-v0:1000:100sps", vocab.VOCAB_VERSION, "vocabulary"),
    ("audio_version", "mt3ds-audio-v1:sr22050", AUDIO.version, "audio config"),
    ("time_encoding", "absolute", "delta", "time encoding"),
])
def test_a_manifest_of_other_versions_is_refused_naming_both(key, theirs, ours, what):
    data = json.dumps(dict(full_manifest().to_dict(), **{key: theirs})).encode()
    with pytest.raises(UserError) as e:
        Manifest.from_bytes(data, "shards/train/manifest.json", AUDIO)
    msg = str(e.value)
    assert msg.startswith("shards/train/manifest.json: ") and what in msg and repr(theirs) in msg and repr(ours) in msg
    assert "\n" not in msg
    if key == "format":  # another format is refused even unchecked: its structure may be another one
        with pytest.raises(UserError, match="shard format"):
            Manifest.from_bytes(data, "m.json")
    else:  # unchecked (inspect, the writer's resume), other versions are read and reported
        m = Manifest.from_bytes(data, "m.json")
        assert getattr(m, key) == theirs
        assert [d for d in m.differences(AUDIO) if theirs in d and ours in d]


@pytest.mark.parametrize("edit, message", [
    (lambda d: b"{not json", "unreadable manifest"),
    (lambda d: b"\xff\xfe", "unreadable manifest"),
    (lambda d: b"[1, 2]", "not a manifest"),
    (lambda d: {k: v for k, v in d.items() if k != "shards"}, "malformed manifest (KeyError: 'shards')"),
    (lambda d: dict(d, samples=6), "malformed manifest (ValueError: samples is 6 but"),
    (lambda d: dict(d, skipped_count=0), "malformed manifest (ValueError: skipped_count is 0"),
    (lambda d: dict(d, shards=[dict(d["shards"][0], name="../escape.tar")]), "is not a file name"),
    (lambda d: dict(d, shards=[d["shards"][0]] * 2, samples=6), "listed twice"),
    (lambda d: dict(d, shards=[dict(d["shards"][0], samples="three")]), "malformed manifest (ValueError"),
    (lambda d: dict(d, tracks=-1), "must be >= 0"),
    (lambda d: dict(d, audio_config={"sample_rate": 16000, "bogus": 1}), "malformed manifest (TypeError"),
])
def test_bad_manifests_are_refused_in_one_line_naming_the_file(edit, message):
    out = edit(full_manifest().to_dict())
    data = out if isinstance(out, bytes) else json.dumps(out).encode()
    with pytest.raises(UserError) as e:
        Manifest.from_bytes(data, "/x/manifest.json", AUDIO)
    assert str(e.value).startswith("/x/manifest.json: ") and message in str(e.value) and "\n" not in str(e.value)


def test_an_unreadable_manifest_file(tmp_path):
    with pytest.raises(UserError, match="manifest.json: unreadable manifest"):
        Manifest.read(tmp_path / "manifest.json")


# ---------------------------------------------------------------------------------------------------------------
# bad samples

def _members(**changes) -> dict:
    s = make_sample(0, 1)
    return dict({"__key__": s.key, **s.to_members()}, **changes)


def _pickled() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buf.getvalue()


@pytest.mark.parametrize("raw, message", [
    ({k: v for k, v in _members().items() if k != "json"}, "missing member json"),
    (_members(**{"audio.npy": npy_bytes(np.zeros(100, np.float16))}), "audio.npy is float16 (100,)"),
    (_members(**{"audio.npy": npy_bytes(np.zeros(AUDIO.chunk_samples, np.float32))}), "audio.npy is float32"),
    (_members(**{"audio.npy": _pickled()}), "allow_pickle=False"),
    (_members(**{"tokens.npy": npy_bytes(np.array([SHIFT, PITCH], np.int16))}), "ending with EOS"),
    (_members(**{"tokens.npy": npy_bytes(np.array([SHIFT, vocab.EOS], np.int64))}), "tokens.npy is int64"),
    (_members(**{"tokens.npy": npy_bytes(np.array([vocab.VOCAB_SIZE + 5, vocab.EOS], np.int16))}),
     "outside the vocabulary"),
    (_members(json=b'{"programs": "piano"}'), "json lacks dataset"),
    (_members(json=json.dumps(dict(make_sample(0, 1).meta.to_dict(), programs=[0, 129])).encode()),
     "programs 0..128"),
    (_members(json=json.dumps(dict(make_sample(0, 1).meta.to_dict(), chunk=-1)).encode()), "chunk -1"),
    (_members(json=b"[]"), "json is not an object"),
    (_members(json=b"\xff"), "can't decode"),
    (_members(__key__="a.b_00001"), "holds a dot"),
])
def test_bad_samples_are_refused_naming_what_is_wrong(raw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Sample.from_members(raw)


def test_a_sample_checks_itself_before_it_is_written():
    s = make_sample(0, 0)
    with pytest.raises(ValueError, match="holds a dot"):
        Sample("track.1_00000", s.audio, s.tokens, s.meta)
    with pytest.raises(ValueError, match="audio.npy is float64"):
        Sample(s.key, s.audio.astype(np.float64), s.tokens, s.meta)
    with pytest.raises(ValueError, match="truncated"):
        SampleMeta("d", "t", 0, 0.0, (0,), "train", "no")
    # ints where the format keeps floats come out the same as floats, so equal samples give equal bytes
    assert SampleMeta("d", "t", 0, 0, [np.int64(0)], "train", np.bool_(False)).to_bytes() == \
        SampleMeta("d", "t", 0, 0.0, (0,), "train", False).to_bytes()
