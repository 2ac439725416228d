"""`mt3ds bench shard`: shard a generated MAESTRO-layout dataset (44.1 kHz stereo FLAC, piano-like notes) with 1 and
2 workers, and in the same run measure the floor: decoding and resampling the same files and nothing else.

Figures are audio-seconds per wall-second. `ratio_to_floor` = 1-worker shard rate / floor rate (aim >= 0.5);
`scaling_2_workers` = 2-worker shard rate / 1-worker shard rate (aim >= 1.7 on a machine with 2 free cores).
"""
from __future__ import annotations

import csv
import hashlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _render(onset, offset, pitch, velocity, seconds: float, sample_rate: int) -> np.ndarray:
    n = int(round(seconds * sample_rate))
    y = np.zeros(n)
    for on, off, p, v in zip(onset, offset, pitch, velocity):
        i = int(on * sample_rate)
        m = min(n - i, int((off - on + 0.2) * sample_rate))
        t = np.arange(m) / sample_rate
        y[i:i + m] += np.sin(2 * np.pi * 440.0 * 2 ** ((p - 69) / 12) * t) * np.exp(-3.0 * t) * (v / 127 / 8)
    return np.stack([y, 0.9 * y], axis=1).astype(np.float32)  # stereo, as MAESTRO's recordings are


def make_dataset(root: Path, minutes: float, tracks: int, sample_rate: int = 44100, seed: int = 0) -> float:
    """A MAESTRO v3 tree under ROOT (CSV, year folder, FLAC + MIDI) with MINUTES of audio in TRACKS tracks;
    returns the audio seconds."""
    import soundfile as sf

    from ..tokens.midi import write_midi
    from ..tokens.notes import Notes

    rng = np.random.default_rng(seed)
    seconds = minutes * 60.0 / tracks
    (root / "2018").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(tracks):
        n = int(seconds * 6)  # ~6 notes/s: a moderately busy piano part
        onset = np.sort(rng.uniform(0.0, seconds - 1.5, n))
        offset = onset + rng.uniform(0.1, 1.2, n)
        pitch = rng.integers(36, 96, n)
        velocity = rng.integers(30, 110, n)
        name = f"2018/bench_{k:03d}"
        write_midi(Notes(onset, offset, pitch, velocity, np.zeros(n)), root / f"{name}.midi")
        sf.write(str(root / f"{name}.flac"), _render(onset, offset, pitch, velocity, seconds, sample_rate),
                 sample_rate, subtype="PCM_16")
        rows.append({"canonical_composer": "Bench", "canonical_title": name, "split": "train", "year": 2018,
                     "midi_filename": f"{name}.midi", "audio_filename": f"{name}.flac", "duration": seconds})
    with open(root / "maestro-v3.0.0.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return seconds * tracks


def _tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def bench_shard(minutes: float = 20.0, tracks: int = 16, repeats: int = 2) -> dict:
    """The figures of the module docstring; each timing is the best of REPEATS."""
    from ..config import AudioConfig
    from ..data.audio import load_audio
    from ..data.samples import Manifest
    from ..data.shards import shard

    cfg = AudioConfig()
    with tempfile.TemporaryDirectory(prefix="mt3ds-bench-shard-") as tmp:
        tmp = Path(tmp)
        audio_seconds = make_dataset(tmp / "maestro", minutes, tracks)
        files = sorted((tmp / "maestro" / "2018").glob("*.flac"))

        def floor() -> None:
            for f in files:
                load_audio(f, cfg.sample_rate)

        floor()  # warm the page cache and the imports before timing anything
        times = {"floor": [], 1: [], 2: []}
        for r in range(repeats):
            t = time.perf_counter()
            floor()
            times["floor"].append(time.perf_counter() - t)
            for workers in (1, 2):
                t = time.perf_counter()
                shard("maestro", tmp / "maestro", tmp / f"out{workers}-{r}", splits="train", workers=workers,
                      progress=False)
                times[workers].append(time.perf_counter() - t)
        same = _tree_digest(tmp / "out1-0") == _tree_digest(tmp / "out2-0")
        manifest = Manifest.read(tmp / "out1-0" / "train" / "manifest.json")
    floor_rate, one, two = (audio_seconds / min(times[k]) for k in ("floor", 1, 2))
    return {"audio_seconds": round(audio_seconds, 1), "tracks": tracks, "samples": manifest.samples,
            "cpu_count": os.cpu_count(), "floor_audio_s_per_s": floor_rate, "shard_1_worker_audio_s_per_s": one,
            "shard_2_workers_audio_s_per_s": two, "shard_2_workers_per_worker": two / 2,
            "ratio_to_floor": one / floor_rate, "scaling_2_workers": two / one,
            "identical_bytes_1_vs_2_workers": same}
