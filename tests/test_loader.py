"""The WebDataset loader: mixing shares, determinism, workers and ranks, validation coverage, batches, frame targets,
and each kind of bad input. Shards come from tests/loader_fixtures.py (the shard format of mt3ds/data/samples.py)."""
from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from loader_fixtures import *  # noqa: F401,F403 (fixtures)
from loader_fixtures import BIG, SMALL, all_keys, edit_manifest, npy_bytes, rewrite_member
from mt3ds.config import AudioConfig
from mt3ds.data import loader as L
from mt3ds.data import samples as samples_format
from mt3ds.data.loader import (IGNORE_INDEX, LoaderConfig, TrainStream, ValidationStream, collate, frame_targets,
                               mix_weights, read_manifest, train_loader, validation_loader)
from mt3ds.errors import UserError
from mt3ds.tokens import vocab
from mt3ds.tokens.codec import decode_tokens, encode_notes, to_absolute
from mt3ds.tokens.notes import Notes

N_BIG = BIG["tracks"] * BIG["chunks"]
N_SMALL = SMALL["tracks"] * SMALL["chunks"]


def cfg(**kw) -> LoaderConfig:
    base = dict(batch_size=8, num_workers=0, pin_memory=False, shuffle_buffer=16, shuffle_initial=4)
    base.update(kw)
    return LoaderConfig(**base)


def take(stream, n_batches: int) -> list[dict]:
    out = []
    for batch in stream:
        out.append(batch)
        if len(out) == n_batches:
            return out
    return out


def datasets_of(batches) -> list[str]:
    return [m["dataset"] for b in batches for m in b["meta"]]


# ---------------------------------------------------------------------------------------------------------------
# mixing

def test_mix_weights_follow_the_temperature():
    np.testing.assert_allclose(mix_weights([100, 400], alpha=1.0), [0.2, 0.8])
    np.testing.assert_allclose(mix_weights([100, 400], alpha=0.0), [0.5, 0.5])
    w = mix_weights([100, 400], alpha=0.7)
    np.testing.assert_allclose(w, np.array([100, 400]) ** 0.7 / (100 ** 0.7 + 400 ** 0.7))
    assert w[0] > 0.2  # the smaller dataset is drawn more than its size alone would give


def test_mixing_shares_hold_over_long_and_short_horizons(big, small):
    stream = TrainStream([big, small], cfg(augment=False, seed=7))
    target = mix_weights([N_BIG, N_SMALL], 0.7)[0]
    names = datasets_of(take(stream, 125))  # 1000 samples
    assert len(names) == 1000
    share = np.cumsum(np.array(names) == "maestro") / np.arange(1, 1001)
    assert abs(share[-1] - target) < 0.02
    assert np.all(np.abs(share[63:] - target) < 0.04)  # every prefix of 64 samples or more
    assert Counter(names)["slakh"] > 0.25 * 1000  # more than its 27 % of the samples: temperature at work


def test_mixing_shares_with_two_workers(big, small):
    loader = train_loader([big, small], cfg(num_workers=2, augment=False, prefetch_factor=2))
    names = datasets_of(take(loader, 40))  # 320 samples, alternating between the two workers' streams
    assert abs(np.mean(np.array(names) == "maestro") - mix_weights([N_BIG, N_SMALL], 0.7)[0]) < 0.03


# ---------------------------------------------------------------------------------------------------------------
# determinism, workers, ranks, epochs

def test_same_seed_same_batches_including_augmentation(big, small):
    a = take(TrainStream([big, small], cfg(seed=3)), 3)
    b = take(TrainStream([big, small], cfg(seed=3)), 3)
    for x, y in zip(a, b):
        assert x["keys"] == y["keys"]
        assert torch.equal(x["audio"], y["audio"])
        assert torch.equal(x["tokens"], y["tokens"])
    c = take(TrainStream([big, small], cfg(seed=4)), 3)
    assert [x["keys"] for x in a] != [x["keys"] for x in c]


def test_augmentation_changes_training_audio_only_when_on(big, small):
    on = take(TrainStream([big, small], cfg(seed=5)), 2)
    off = take(TrainStream([big, small], cfg(seed=5, augment=False)), 2)
    assert [b["keys"] for b in on] == [b["keys"] for b in off]  # augmentation draws from its own generator
    assert any(not torch.equal(x["audio"], y["audio"]) for x, y in zip(on, off))


def test_epochs_and_ranks_get_their_own_streams(big, small):
    first = [b["keys"] for b in take(TrainStream([big, small], cfg(), rank=0, world_size=2), 3)]
    other_rank = [b["keys"] for b in take(TrainStream([big, small], cfg(), rank=1, world_size=2), 3)]
    stream = TrainStream([big, small], cfg(), rank=0, world_size=2)
    stream.set_epoch(1)
    next_epoch = [b["keys"] for b in take(stream, 3)]
    assert first != other_rank and first != next_epoch


def test_two_workers_read_different_streams_reproducibly(big, small):
    def run():
        return [b["keys"] for b in take(train_loader([big, small], cfg(num_workers=2, prefetch_factor=1)), 4)]
    a, b = run(), run()
    assert a == b
    assert a[0] != a[1]  # batches alternate between worker 0 and worker 1, each with its own seed


def test_rank_from_environment_and_no_single_node_refusal(big, small, monkeypatch):
    # An earlier in-process training test may have initialized torch.distributed (world size 1), which node_rank
    # rightly prefers: this test is about the environment fallback.
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    stream = TrainStream([big, small], cfg())
    assert (stream.rank, stream.world_size) == (1, 2)
    assert len(take(stream, 1)[0]["keys"]) == 8  # WebDataset's single_node_only would raise here
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(UserError, match="RANK=2 WORLD_SIZE=2"):
        TrainStream([big, small], cfg())


# ---------------------------------------------------------------------------------------------------------------
# validation: each sample exactly once

def test_validation_pass_with_two_workers_reads_each_sample_once(big, small):
    loader = validation_loader([big, small], cfg(num_workers=2, batch_size=5, prefetch_factor=1))
    keys = [k for b in loader for k in b["keys"]]
    assert len(keys) == len(set(keys))
    assert sorted(keys) == sorted(all_keys(big) + all_keys(small))
    again = [k for b in loader for k in b["keys"]]  # a second pass reads them all again
    assert sorted(again) == sorted(keys)


def test_validation_split_across_ranks_and_fewer_shards_than_workers(big, one_shard):
    per_rank = [[k for b in ValidationStream([big], cfg(), rank=r, world_size=3) for k in b["keys"]]
                for r in range(3)]
    assert sum(map(len, per_rank)) == N_BIG and len(set().union(*map(set, per_rank))) == N_BIG
    loader = validation_loader([one_shard], cfg(num_workers=2, batch_size=4, prefetch_factor=1))
    batches = list(loader)
    assert sorted(k for b in batches for k in b["keys"]) == sorted(all_keys(one_shard))
    assert [len(b["keys"]) for b in batches] == [4, 3]  # one worker has no shard; the last batch is short


def test_validation_batches_are_not_augmented(one_shard):
    batch = next(iter(ValidationStream([one_shard], cfg(batch_size=7, augment=True))))
    raw = [L.decode_sample(s) for s in _raw_samples(one_shard)]
    expected = np.stack([s["audio"] for s in raw]).astype(np.float32)
    order = [b for b in batch["keys"]]
    assert order == [s["key"] for s in raw]
    assert np.array_equal(batch["audio"].numpy(), expected)


def _raw_samples(folder):
    return [raw for tar_path in sorted(folder.glob("*.tar")) for raw in samples_format.read_tar_samples(tar_path)]


# ---------------------------------------------------------------------------------------------------------------
# batches

def _sample(ids, programs, key="k", fill=0.25):
    return {"key": key, "audio": np.full(AudioConfig().chunk_samples, fill, dtype=np.float16),
            "tokens": np.asarray(ids, dtype=np.int16), "meta": {"programs": programs}}


def test_collate_pads_to_the_longest_sequence_in_the_batch():
    short = [vocab.encode_event("shift", 5), vocab.EOS]
    long = [vocab.encode_event("program", 0), vocab.encode_event("velocity", 80), vocab.encode_event("pitch", 60),
            vocab.EOS]
    b = collate([_sample(short, [0, 128]), _sample(long, [33])], time_encoding="delta")
    assert b["audio"].shape == (2, 32768) and b["audio"].dtype == torch.float32
    assert b["tokens"].shape == (2, 4) and b["tokens"].dtype == torch.int64  # 4 = longest, not 1024
    assert b["tokens"][0].tolist() == short + [vocab.PAD, vocab.PAD]
    assert b["decoder_input"][1].tolist() == [vocab.PAD] + long[:-1]  # PAD is the decoder's start token
    assert b["decoder_input"][0].tolist() == [vocab.PAD, short[0], vocab.EOS, vocab.PAD]
    assert b["labels"][0].tolist() == short + [IGNORE_INDEX, IGNORE_INDEX]
    assert b["labels"][1].tolist() == long
    assert b["attention_mask"].tolist() == [[True, True, False, False], [True] * 4]
    assert b["instruments"].shape == (2, 129) and b["instruments"].dtype == torch.bool
    assert b["instruments"][0].nonzero().flatten().tolist() == [0, 128]
    assert b["instruments"][1].nonzero().flatten().tolist() == [33]
    assert b["keys"] == ["k", "k"] and b["meta"][1] == {"programs": [33]}
    assert "frame_onsets" not in b


def test_collate_rewrites_shifts_to_absolute_time(big):
    raw = [L.decode_sample(s) for s in _raw_samples(big)[:6]]
    delta = collate(raw, time_encoding="delta")
    absolute = collate(raw, time_encoding="absolute")
    for i, s in enumerate(raw):
        n = int(absolute["attention_mask"][i].sum())
        assert absolute["tokens"][i, :n].numpy().tolist() == to_absolute(s["tokens"]).tolist()
        a_notes, _ = decode_tokens([absolute["tokens"][i, :n].numpy()], time_encoding="absolute")
        d_notes, _ = decode_tokens([delta["tokens"][i][delta["attention_mask"][i]].numpy()])
        np.testing.assert_array_equal(a_notes.onset, d_notes.onset)
    assert any(not torch.equal(absolute["tokens"][i], delta["tokens"][i]) for i in range(len(raw)))


def test_collate_quantizes_target_velocities_when_asked():
    on = [vocab.encode_event("program", 0), vocab.encode_event("velocity", 93), vocab.encode_event("pitch", 60)]
    off = [vocab.encode_event("shift", 20), vocab.encode_event("program", 0), vocab.encode_event("velocity", 0),
           vocab.encode_event("pitch", 60), vocab.EOS]
    drum = [vocab.encode_event("velocity", 20), vocab.encode_event("drum", 36)]
    ids = on + drum + off
    exact = collate([_sample(ids, [0, 128])], time_encoding="delta")
    one = collate([_sample(ids, [0, 128])], time_encoding="delta", velocity_bins=1)
    four = collate([_sample(ids, [0, 128])], time_encoding="delta", velocity_bins=4)
    velocity = vocab.encode_event("velocity", 0)
    assert exact["tokens"][0].tolist() == ids
    assert [t - velocity for t in one["tokens"][0].tolist() if velocity <= t <= velocity + 127] == [64, 64, 0]
    assert [t - velocity for t in four["tokens"][0].tolist() if velocity <= t <= velocity + 127] == [80, 16, 0]
    assert one["labels"][0].tolist() == one["tokens"][0].tolist()
    with pytest.raises(ValueError, match="velocity_bins"):
        LoaderConfig(velocity_bins=0)


def test_train_batches_have_the_documented_shapes(big, small):
    batch = take(TrainStream([big, small], cfg(aux_frame_loss=True)), 1)[0]
    b, t = batch["tokens"].shape
    assert b == 8 and t == int(batch["attention_mask"].sum(1).max())
    assert batch["frame_onsets"].shape == (8, 256, 88) and batch["frame_active"].dtype == torch.float32
    assert batch["skipped"] == 0
    assert ((batch["labels"] == IGNORE_INDEX) == ~batch["attention_mask"]).all()


def test_frame_targets_from_a_chunk_with_a_tie_a_drum_and_a_note_past_its_end():
    L0 = AudioConfig().chunk_seconds
    notes = Notes(onset=[1.5, L0 + 0.5, L0 + 0.1, L0 + 1.0], offset=[L0 + 0.45, L0 + 3.0, L0 + 0.2, L0 + 1.01],
                  pitch=[60, 40, 72, 38], velocity=[90, 70, 60, 100], program=[0, 33, 0, 128])
    ids = encode_notes(notes, n_chunks=2).chunk(1)
    assert ids[0] == vocab.TIE_ID  # the piano note is tied into chunk 1
    onsets, active = frame_targets(ids)
    assert onsets.shape == active.shape == (256, 88) and onsets.dtype == np.float32
    # frames are 8 ms: 0.5 s -> frame 62, 0.1 s -> frame 12; the tied note has no onset here
    assert sorted(zip(*np.nonzero(onsets))) == [(12, 72 - 21), (62, 40 - 21)]
    expect = np.zeros((256, 88), dtype=np.float32)
    expect[0:57, 60 - 21] = 1  # tied in, ends at 0.45 s: frames overlapping [0, 0.45)
    expect[62:256, 40 - 21] = 1  # still sounding at the chunk's end
    expect[12:25, 72 - 21] = 1  # [0.1, 0.2): frame 25 starts at 0.2 and is not touched
    np.testing.assert_array_equal(active, expect)  # and no drum key anywhere


# ---------------------------------------------------------------------------------------------------------------
# bad input

def test_folder_without_manifest(tmp_path):
    with pytest.raises(UserError, match="no manifest.json"):
        read_manifest(tmp_path)
    with pytest.raises(UserError, match="not a folder"):
        TrainStream([tmp_path / "missing"], cfg())


@pytest.mark.parametrize("key, value, ours", [
    ("vocab_version", "mt3ds-option1-v0:1000:100sps", vocab.VOCAB_VERSION),
    ("audio_version", "mt3ds-audio-v1:sr22050", AudioConfig().version),
    ("format", "mt3ds-shards-v9", samples_format.FORMAT),
])
def test_manifest_from_another_version_is_refused_naming_both(big, copy_of, key, value, ours):
    folder = copy_of(big)
    edit_manifest(folder, **{key: value})
    with pytest.raises(UserError) as e:
        TrainStream([folder], cfg())
    assert value in str(e.value) and ours in str(e.value) and str(folder) in str(e.value)


def test_missing_shard_and_malformed_manifest(big, copy_of):
    folder = copy_of(big)
    (folder / "shard-000001.tar").unlink()
    with pytest.raises(UserError, match="shard-000001.tar: listed in .* but missing"):
        read_manifest(folder)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="unreadable manifest"):
        read_manifest(folder)


def test_manifest_of_the_old_fixtures_and_bench_is_still_read(big, copy_of):
    # Before the format had one writer, the bench and the test fixtures wrote manifests without dropped_pitches,
    # part, fingerprint, or a shard's bytes and first sample: such folders must still load.
    folder = copy_of(big)
    m = json.loads((folder / "manifest.json").read_text())
    for k in ("dropped_pitches", "part", "fingerprint"):
        del m[k]
    m["shards"] = [{k: e[k] for k in ("name", "samples", "sha256")} for e in m["shards"]]
    (folder / "manifest.json").write_text(json.dumps(m))
    old, new = read_manifest(folder), read_manifest(big)
    assert old.samples == new.samples == N_BIG and [Path(u).name for u in old.urls] == [Path(u).name for u in new.urls]
    assert sorted(k for b in ValidationStream([folder], cfg()) for k in b["keys"]) == sorted(all_keys(big))


def test_empty_dataset_in_the_mix(big, copy_of):
    empty = copy_of(big)
    edit_manifest(empty, shards=[], samples=0)
    with pytest.raises(UserError, match="holds no samples"):
        TrainStream([big, empty], cfg())
    with pytest.raises(UserError, match="no shard folders"):
        TrainStream([], cfg())


def test_corrupt_members_are_skipped_counted_and_warned_once(big, copy_of, caplog, monkeypatch):
    monkeypatch.setattr(L, "_warned", False)
    folder = copy_of(big)
    keys = all_keys(folder)
    rewrite_member(folder, "shard-000000.tar", keys[0], "tokens.npy", b"not an npy file")
    rewrite_member(folder, "shard-000000.tar", keys[1], "audio.npy", npy_bytes(np.zeros(100, np.float16)))
    rewrite_member(folder, "shard-000001.tar", keys[12], "json", b"{\"programs\": \"piano\"}")
    with caplog.at_level(logging.WARNING, logger="mt3ds.data.loader"):
        batches = list(ValidationStream([folder], cfg()))
    seen = [k for b in batches for k in b["keys"]]
    assert sorted(seen) == sorted(set(keys) - {keys[0], keys[1], keys[12]})
    assert sum(b["skipped"] for b in batches) == 3
    warnings = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1 and keys[0] in warnings[0].getMessage()


def test_truncated_shard_is_read_up_to_the_damage(big, copy_of):
    folder = copy_of(big)
    shard = folder / "shard-000002.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    batches = list(ValidationStream([folder], cfg()))
    n = sum(len(b["keys"]) for b in batches)
    assert N_BIG - BIG["per_shard"] < n < N_BIG
    assert sum(b["skipped"] for b in batches) >= 1


def test_a_dataset_with_nothing_readable_stops_with_a_clear_error(big, small, copy_of):
    folder = copy_of(small)
    for tar in folder.glob("*.tar"):
        tar.write_bytes(b"garbage" * 100)
    with pytest.raises(UserError, match="unreadable samples or shards in a row"):
        take(TrainStream([big, folder], cfg(max_bad_in_a_row=20)), 2)


def test_loader_config_checks_and_round_trip():
    c = LoaderConfig(time_encoding="delta", aux_frame_loss=True)
    assert LoaderConfig.from_dict(c.to_dict()) == c
    assert LoaderConfig.tiny().num_workers == 0
    for bad in ({"time_encoding": "relative"}, {"batch_size": 0}, {"shuffle_initial": 2000}, {"mix_alpha": -1}):
        with pytest.raises(ValueError):
            LoaderConfig(**bad)


# ---------------------------------------------------------------------------------------------------------------
# round trip with the real shard writer

def test_reads_what_mt3ds_shard_writes(tmp_path):
    from dataset_fixtures import make_maestro
    from mt3ds.data.shards import shard

    tracks = [{"year": 2004, "name": f"piece {i}.v2", "split": split, "seconds": 5.0, "seed": i}
              for i, split in enumerate(["train", "train", "validation"])]
    root = make_maestro(tmp_path / "maestro", tracks, sample_rate=16000, channels=1)
    shard("maestro", root, tmp_path / "shards", splits="train,validation", workers=1, progress=False)
    train, valid = tmp_path / "shards" / "train", tmp_path / "shards" / "validation"
    assert read_manifest(train).samples == 6  # 5 s -> 3 chunks of 2.048 s per track
    batch = take(TrainStream([train], cfg(batch_size=4, aux_frame_loss=True)), 1)[0]
    assert batch["audio"].shape == (4, 32768) and batch["frame_active"].shape == (4, 256, 88)
    assert all(m["dataset"] == "maestro" and m["programs"] == [0] for m in batch["meta"])
    assert batch["instruments"][:, 0].all() and batch["instruments"].sum() == 4
    keys = [k for b in validation_loader([valid], cfg(num_workers=2, batch_size=2, prefetch_factor=1)) for k in
            b["keys"]]
    assert sorted(keys) == sorted(all_keys(valid)) and len(keys) == 3
    assert all("." not in k for k in keys)  # the writer's key sanitising keeps WebDataset's key split intact


def test_pipe_folder_spec_streams_manifest_and_shards_through_a_command(big, tmp_path):
    spec = f"pipe:cat {big}/{{}}"
    remote = read_manifest(spec)
    local = read_manifest(big)
    assert remote.samples == local.samples and len(remote.urls) == len(local.urls)
    assert all(u.startswith("pipe:cat ") for u in remote.urls)
    keys = [k for b in validation_loader([spec], cfg(batch_size=5)) for k in b["keys"]]
    assert sorted(keys) == sorted(all_keys(big))
    # a ShardSet read once (train.engine checks its inputs first) goes to the loader without a second fetch
    assert read_manifest(remote) is remote
    assert [b["keys"] for b in validation_loader([remote], cfg(batch_size=5))] == \
        [b["keys"] for b in validation_loader([spec], cfg(batch_size=5))]
    with pytest.raises(UserError, match="needs"):
        read_manifest(f"pipe:cat {big}/manifest.json")
    with pytest.raises(UserError, match="fetching manifest.json failed"):
        read_manifest(f"pipe:cat {tmp_path}/nowhere/{{}}")
