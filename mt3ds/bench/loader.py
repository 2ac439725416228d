"""`mt3ds bench loader`: samples/s of the training loader with 0, 1 and 2 workers, augmentation off and on, against
the floor of reading the same tars raw; log-mel features/s on the CPU; and the dataset shares the mixer delivers
over 5,000 samples against the temperature targets (`mix_max_abs_error`, in share units: 0.02 = 2 points).
Also the rate with the aux frame targets on, and aug_on_over_off (the aim: >= 0.5). The shards are synthetic (two
datasets of 600 and 150 samples, real codec tokens from random 10-track pieces) and built in a temp dir."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from .. import __version__
from ..config import AudioConfig
from ..tokens import vocab
from ..tokens.codec import encode_notes
from .tokens import generate_piece


def _sanitize(track_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", track_id)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_synthetic_shards(out, dataset: str, split: str, tracks: int, chunks_per_track: int,
                           samples_per_shard: int = 100, seed: int = 0) -> Path:
    """A split folder in the shard format (decisions §4) from random multi-track pieces: real tokens from the codec,
    synthetic audio (a quiet noise floor plus a sine per chunk). Returns the folder holding manifest.json.
    Used by this benchmark and by the loader tests; `mt3ds shard` writes the real thing from datasets."""
    audio = AudioConfig()
    folder = Path(out) / split
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = []
    for t in range(tracks):
        track_id = f"{dataset}/track-{seed}.{t:04d}"
        notes = generate_piece(chunks_per_track * audio.chunk_seconds, notes_per_second=8.0, seed=seed * 1000 + t)
        ct = encode_notes(notes, n_chunks=chunks_per_track, chunk_seconds=audio.chunk_seconds)
        programs = sorted({int(p) for p in notes.program})
        for c in range(chunks_per_track):
            n = np.arange(audio.chunk_samples)
            wav = 0.003 * rng.standard_normal(audio.chunk_samples) + 0.1 * np.sin(2 * np.pi * rng.uniform(50, 4000)
                                                                                  * n / audio.sample_rate)
            meta = {"dataset": dataset, "track_id": track_id, "chunk": c, "start_s": c * audio.chunk_seconds,
                    "programs": programs, "split": split, "truncated": bool(ct.truncated[c])}
            samples.append({"__key__": f"{_sanitize(track_id)}_{c:05d}", "audio.npy": _npy(wav.astype(np.float16)),
                            "tokens.npy": _npy(ct.chunk(c).astype(np.int16)),
                            "json": json.dumps(meta, sort_keys=True).encode("utf-8")})
    shards = []
    for i in range(0, len(samples), samples_per_shard):
        name = f"shard-{i // samples_per_shard:06d}.tar"
        tmp = folder / (name + ".tmp")
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for s in samples[i:i + samples_per_shard]:
                for member in ("audio.npy", "json", "tokens.npy"):
                    _add(tar, f"{s['__key__']}.{member}", s[member])
        os.replace(tmp, folder / name)
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        shards.append({"name": name, "samples": len(samples[i:i + samples_per_shard]), "sha256": digest})
    manifest = {
        "format": "mt3ds-shards-v1", "dataset": dataset, "split": split, "vocab_version": vocab.VOCAB_VERSION,
        "audio_version": audio.version, "audio_config": audio.to_dict(), "time_encoding": "delta",
        "code_version": __version__, "shards": shards, "samples": len(samples), "tracks": tracks,
        "hours": len(samples) * audio.chunk_seconds / 3600, "truncated_chunks": 0, "skipped": [],
        "skipped_count": 0, "created_by": {"command": "write_synthetic_shards", "seed": seed},
    }
    tmp = folder / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, folder / "manifest.json")
    return folder


def _rate(loader, samples: int) -> float:
    """Samples/s after the first batch (worker start-up and buffer filling are not steady state)."""
    it = iter(loader)
    first = next(it)
    b = len(first["keys"])
    t0, seen = time.perf_counter(), 0
    while seen < samples:
        seen += len(next(it)["keys"])
    return seen / (time.perf_counter() - t0) if b else 0.0


def bench_loader(samples: int = 2000, mix_samples: int = 5000, batch_size: int = 16) -> dict:
    """Build two datasets of different sizes in a temp dir and measure the loader on them."""
    import torch

    from ..data.loader import LoaderConfig, TrainStream, decode_sample, train_loader
    from ..model.features import LogMel

    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        big = write_synthetic_shards(Path(tmp) / "big", "maestro", "train", tracks=40, chunks_per_track=15,
                                     samples_per_shard=100, seed=1)
        small = write_synthetic_shards(Path(tmp) / "small", "slakh", "train", tracks=10, chunks_per_track=15,
                                       samples_per_shard=50, seed=2)
        folders = [big, small]

        # Floor: the same tars read raw (tar iteration and np.load of each member), in this process.
        t0, n = time.perf_counter(), 0
        while n < samples:
            for folder in folders:
                for tar_path in sorted(folder.glob("*.tar")):
                    with tarfile.open(tar_path) as tar:
                        members = {}
                        for m in tar:
                            members[m.name.split(".", 1)[1]] = tar.extractfile(m).read()
                            if len(members) == 3:
                                members["__key__"] = m.name.split(".", 1)[0]
                                decode_sample(members)
                                members, n = {}, n + 1
        figures["raw_tar_read_samples_per_s"] = n / (time.perf_counter() - t0)

        rates = {}
        for workers in (0, 1, 2):
            for aug in (False, True):
                cfg = LoaderConfig(batch_size=batch_size, num_workers=workers, prefetch_factor=4, pin_memory=False,
                                   shuffle_buffer=200, shuffle_initial=50, augment=aug)
                rates[f"workers{workers}_aug_{'on' if aug else 'off'}"] = _rate(train_loader(folders, cfg), samples)
        cfg = LoaderConfig(batch_size=batch_size, num_workers=0, pin_memory=False, shuffle_buffer=200,
                           shuffle_initial=50, augment=False, aux_frame_loss=True)
        rates["workers0_aug_off_aux_frames"] = _rate(train_loader(folders, cfg), samples)
        figures["samples_per_s"] = rates
        # the aim: augmentation keeps at least half of the no-augmentation rate (ratio >= 0.5)
        figures["aug_on_over_off"] = {f"workers{w}": rates[f"workers{w}_aug_on"] / rates[f"workers{w}_aug_off"]
                                      for w in (0, 1, 2)}

        # Mixing: shares of each dataset over the first mix_samples samples of one stream, against the targets.
        cfg = LoaderConfig(batch_size=batch_size, num_workers=0, pin_memory=False, shuffle_buffer=200,
                           shuffle_initial=50, augment=False)
        stream = TrainStream(folders, cfg)
        counts: Counter = Counter()
        for batch in stream:
            counts.update(m["dataset"] for m in batch["meta"])
            if sum(counts.values()) >= mix_samples:
                break
        total = sum(counts.values())
        targets = {s.dataset: float(w) for s, w in zip(stream.sets, stream.weights)}
        shares = {d: counts[d] / total for d in targets}
        figures["mix_targets"] = targets
        figures["mix_shares"] = shares
        figures["mix_max_abs_error"] = max(abs(shares[d] - targets[d]) for d in targets)

    # Features on the CPU: [16, 32768] -> [16, 256, 512], best of a few batches.
    feats = LogMel().eval()
    x = torch.randn(batch_size, AudioConfig().chunk_samples) * 0.1
    with torch.no_grad():
        feats(x)
        best = min(_timed(lambda: feats(x)) for _ in range(3))
    figures["features_per_s_cpu"] = batch_size / best
    figures["torch_threads"] = torch.get_num_threads()
    return figures


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
