"""Tiny shard folders in the shard format (mt3ds/data/samples.py) for the training and export tests.

Each track is a few seconds of synthetic harmonic tones (one program per track) with its notes; the notes are
tokenized per 2.048 s chunk with the real codec and written with the audio by `write_shard_folder`, the function
the shard writer uses. The samples are made here rather than by `mt3ds shard` so these tests do not depend on the
offline audio chain.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mt3ds.config import AudioConfig
from mt3ds.data.samples import Manifest, Sample, SampleMeta, sample_key, write_shard_folder
from mt3ds.tokens.codec import encode_notes
from mt3ds.tokens.notes import Notes

AUDIO = AudioConfig()


def synth_track(rng: np.random.Generator, n_chunks: int, program: int, notes_per_chunk: int = 3):
    """(audio float32 [n_chunks * 32768], Notes): harmonic tones with short fades, pitches 48..84."""
    sr, L = AUDIO.sample_rate, AUDIO.chunk_seconds
    n = n_chunks * notes_per_chunk
    onset = np.sort(rng.uniform(0.0, n_chunks * L - 0.3, n))
    onset = np.round(onset * 100) / 100  # on the 10 ms grid, so tokens round-trip exactly
    dur = np.round(rng.uniform(0.15, 0.6, n) * 100) / 100
    offset = np.minimum(onset + dur, n_chunks * L - 0.01)
    pitch = rng.integers(48, 85, n)
    audio = np.zeros(n_chunks * AUDIO.chunk_samples, dtype=np.float64)
    for on, off, p in zip(onset, offset, pitch):
        a, b = int(on * sr), int(off * sr)
        t = np.arange(b - a) / sr
        f0 = 440.0 * 2 ** ((p - 69) / 12)
        tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3) if f0 * k < sr / 2)
        env = np.minimum(1.0, np.minimum(t / 0.005, (t[-1] - t + 1e-9) / 0.02))
        audio[a:b] += 0.2 * tone * env
    notes = Notes(onset, offset, pitch, np.full(n, 100), np.full(n, program))
    return audio.astype(np.float32), notes


def write_shards(folder, n_tracks: int = 2, chunks_per_track: int = 4, seed: int = 0, split: str = "train",
                 dataset: str = "synthetic", samples_per_shard: int = 4) -> Path:
    """Write `n_tracks * chunks_per_track` samples as shards and a manifest under `folder`; return the folder."""
    rng = np.random.default_rng(seed)
    samples = []
    for t in range(n_tracks):
        program = int(rng.choice([0, 24, 40]))
        audio, notes = synth_track(rng, chunks_per_track, program)
        ct = encode_notes(notes, n_chunks=chunks_per_track)
        track_id = f"{dataset}/track{t:03d}"
        for c in range(chunks_per_track):
            meta = SampleMeta(dataset, track_id, c, c * AUDIO.chunk_seconds, (program,), split, bool(ct.truncated[c]))
            chunk_audio = audio[c * AUDIO.chunk_samples:(c + 1) * AUDIO.chunk_samples].astype(np.float16)
            samples.append(Sample(sample_key(track_id, c), chunk_audio, ct.chunk(c).astype(np.int16), meta))

    def manifest(shards) -> Manifest:
        return Manifest(dataset, split, AUDIO, shards, tracks=n_tracks, hours=len(samples) * AUDIO.chunk_seconds / 3600,
                        truncated_chunks=sum(s.meta.truncated for s in samples),
                        created_by={"fixture": "tests/train_fixtures.py"})

    write_shard_folder(folder, samples, manifest, max_samples=samples_per_shard)
    return Path(folder)


CPU_DS_CONFIG = {
    "train_micro_batch_size_per_gpu": 4,
    "gradient_accumulation_steps": 1,
    "gradient_clipping": 1.0,
    "bf16": {"enabled": False},
    "zero_optimization": {"stage": 1},
    "optimizer": {"type": "Adam", "params": {"adam_w_mode": True, "torch_adam": True}},
    "scheduler": {"type": "WarmupCosineLR", "params": {"warmup_type": "linear"}},
}


def train_yaml(run_dir, train_folder, val_folder=None, **top) -> dict:
    """A tiny training config as a dict (what a YAML file would hold)."""
    cfg = {"run_dir": str(run_dir),
           "model": {"preset": "tiny", "resid_dropout": 0.0, "mlp_dropout": 0.0},
           "data": {"train": [str(train_folder)], "validation": [str(val_folder)] if val_folder else [],
                    "loader": {"num_workers": 0, "augment": False, "shuffle_buffer": 16, "shuffle_initial": 4,
                               "prefetch_factor": 1, "pin_memory": False}},
           "optim": {"lr": 3e-3, "warmup_steps": 5, "min_lr_ratio": 0.1, "weight_decay": 0.0},
           "steps": 6, "log_every": 1,
           "validation": {"every": 3, "items": 4, "decode_items": 2, "decode_max_len": 32, "dump_midi": 1},
           "checkpoint": {"every": 3, "keep_last": 2, "keep_best": 1}}
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


def write_yaml(path, data: dict) -> Path:
    import yaml

    Path(path).write_text(yaml.safe_dump(data), encoding="utf-8")
    return Path(path)


def write_json(path, data: dict) -> Path:
    Path(path).write_text(json.dumps(data), encoding="utf-8")
    return Path(path)


def metrics(run_dir, kind: str = "train") -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


# Built once per session and shared by test_train.py and test_export.py (both import this module; a fixture
# imported into two test modules would otherwise run once for each). Tests only read what these return.
_SESSION: dict = {}


@pytest.fixture(scope="module")
def shard_dirs(tmp_path_factory):
    """(train folder with 8 chunks, validation folder with 4 chunks)."""
    key = ("shards", str(tmp_path_factory.getbasetemp()))
    if key not in _SESSION:
        root = tmp_path_factory.mktemp("train_shards")
        _SESSION[key] = (write_shards(root / "train", n_tracks=2, chunks_per_track=4, seed=0),
                         write_shards(root / "validation", n_tracks=1, chunks_per_track=4, seed=1, split="validation"))
    return _SESSION[key]


@pytest.fixture(scope="module")
def finished_run(shard_dirs, tmp_path_factory):
    """A 6-step in-process run of the tiny model with validation every 3 steps: (run_dir, final state)."""
    from mt3ds.train.config import train_config_from_dict
    from mt3ds.train.engine import train

    key = ("finished", str(tmp_path_factory.getbasetemp()))
    if key not in _SESSION:
        run_dir = tmp_path_factory.mktemp("finished") / "run"
        cfg = train_config_from_dict(train_yaml(run_dir, *shard_dirs))
        _SESSION[key] = (run_dir, train(cfg, CPU_DS_CONFIG))
    return _SESSION[key]
