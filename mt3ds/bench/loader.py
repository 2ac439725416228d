"""`mt3ds bench loader`: samples/s of the training loader with 0, 1 and 2 workers, augmentation off and on, against
the floor of reading the same tars raw; log-mel features/s on the CPU; and the dataset shares the mixer delivers
over 5,000 samples against the temperature targets (`mix_max_abs_error`, in share units: 0.02 = 2 points).
Also the rate with the aux frame targets on, and aug_on_over_off (the aim: >= 0.5). The shards are synthetic (two
datasets of 600 and 150 samples, real codec tokens from random 10-track pieces) and built in a temp dir."""
from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from ..config import AudioConfig
from ..data.samples import Manifest, Sample, SampleMeta, read_tar_samples, sample_key, write_shard_folder
from ..tokens.codec import encode_notes
from .tokens import generate_piece


def write_synthetic_shards(out, dataset: str, split: str, tracks: int, chunks_per_track: int,
                           samples_per_shard: int = 100, seed: int = 0) -> Path:
    """A split folder in the shard format (data/samples.py) from random multi-track pieces: real tokens from the
    codec, synthetic audio (a quiet noise floor plus a sine per chunk). Returns the folder holding manifest.json.
    Used by this benchmark and by the loader tests; `mt3ds shard` writes the real thing from datasets."""
    audio = AudioConfig()
    folder = Path(out) / split
    rng = np.random.default_rng(seed)
    samples = []
    for t in range(tracks):
        track_id = f"{dataset}/track-{seed}.{t:04d}"
        notes = generate_piece(chunks_per_track * audio.chunk_seconds, notes_per_second=8.0, seed=seed * 1000 + t)
        ct = encode_notes(notes, n_chunks=chunks_per_track, chunk_seconds=audio.chunk_seconds)
        programs = tuple(sorted({int(p) for p in notes.program}))
        for c in range(chunks_per_track):
            n = np.arange(audio.chunk_samples)
            wav = 0.003 * rng.standard_normal(audio.chunk_samples) + 0.1 * np.sin(2 * np.pi * rng.uniform(50, 4000)
                                                                                  * n / audio.sample_rate)
            meta = SampleMeta(dataset, track_id, c, c * audio.chunk_seconds, programs, split, bool(ct.truncated[c]))
            samples.append(Sample(sample_key(track_id, c), wav.astype(np.float16), ct.chunk(c).astype(np.int16), meta))

    def manifest(shards) -> Manifest:
        return Manifest(dataset, split, audio, shards, tracks=tracks,
                        hours=len(samples) * audio.chunk_seconds / 3600,
                        truncated_chunks=sum(s.meta.truncated for s in samples),
                        created_by={"command": "write_synthetic_shards", "seed": seed})

    write_shard_folder(folder, samples, manifest, max_samples=samples_per_shard)
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
                    for raw in read_tar_samples(tar_path):
                        decode_sample(raw)
                        n += 1
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
