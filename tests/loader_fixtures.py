"""Shared fixtures for the loader tests: small shard folders in the shard format (written by `write_shard_folder`
through the loader bench's synthetic data), with real tokens from the codec. Import the fixtures into a test module
with `from loader_fixtures import *`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mt3ds.bench.loader import write_synthetic_shards
from mt3ds.data.samples import ShardWriter, read_tar_samples, tar_blocks
from mt3ds.files import npy_bytes

BIG = {"tracks": 8, "chunks": 6, "per_shard": 12}  # 48 samples in 4 shards
SMALL = {"tracks": 3, "chunks": 6, "per_shard": 9}  # 18 samples in 2 shards


def _write(root: Path, name: str, dataset: str, split: str, spec: dict, seed: int) -> Path:
    return write_synthetic_shards(root / name, dataset, split, tracks=spec["tracks"], chunks_per_track=spec["chunks"],
                                  samples_per_shard=spec["per_shard"], seed=seed)


@pytest.fixture(scope="session")
def shard_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shards")


@pytest.fixture(scope="session")
def big(shard_root) -> Path:
    """48 training samples of dataset 'maestro' in 4 shards."""
    return _write(shard_root, "big", "maestro", "train", BIG, seed=1)


@pytest.fixture(scope="session")
def small(shard_root) -> Path:
    """18 training samples of dataset 'slakh' in 2 shards."""
    return _write(shard_root, "small", "slakh", "train", SMALL, seed=2)


@pytest.fixture(scope="session")
def one_shard(shard_root) -> Path:
    """A validation split of 7 samples in a single shard (fewer shards than workers)."""
    return _write(shard_root, "one", "slakh", "validation", {"tracks": 1, "chunks": 7, "per_shard": 100}, seed=3)


@pytest.fixture
def copy_of(tmp_path):
    """Copy a shard folder to a scratch place so a test can damage it."""
    import shutil

    def copy(folder: Path) -> Path:
        dest = tmp_path / folder.parent.name / folder.name
        shutil.copytree(folder, dest)
        return dest
    return copy


def all_keys(folder: Path) -> list[str]:
    """Every sample key in a shard folder, read straight from the tars."""
    return [raw["__key__"] for tar_path in sorted(folder.glob("*.tar")) for raw in read_tar_samples(tar_path)]


def rewrite_member(folder: Path, shard: str, key: str, member: str, data: bytes) -> None:
    """Replace one member of one sample in a shard with other bytes (the tar stays well-formed): the shard is
    written again by the format's own ShardWriter, with the damaged member as raw bytes."""
    path = folder / shard
    samples = list(read_tar_samples(path))
    writer = ShardWriter(path)
    for raw in samples:
        members = {ext: data if raw["__key__"] == key and ext == member else b for ext, b in raw.items()
                   if ext != "__key__"}
        writer.add(tar_blocks(raw["__key__"], members))
    writer.finish()


def edit_manifest(folder: Path, **changes) -> None:
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    m.update(changes)
    path.write_text(json.dumps(m))


__all__ = ["shard_root", "big", "small", "one_shard", "copy_of", "all_keys", "rewrite_member", "edit_manifest",
           "npy_bytes", "BIG", "SMALL"]
