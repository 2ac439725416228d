"""`mt3ds bench transcribe`: real-time factor (seconds of compute per second of audio) of `mt3ds transcribe` on a
generated 60 s recording, with and without the KV cache, for batches of 1 chunk and of transcribe's default size (32
chunks on the CPU, 64 on a GPU: the file's 30 chunks in one batch either way); and, when basic-pitch is installed, its
real-time factor on the same file in the same run.

The whole path is timed: decode + resample + offline chain + features + generation + stitching + MIDI writing.
Without the cache a segment costs one full decoder pass per token, so it is timed on the first few chunks only and
reported per second of audio like the others (the RTF of a subset is the RTF of the file: chunks cost alike).
"""
from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from ..tokens.midi import write_midi
from .tokens import generate_piece


def render_test_file(path: Path, seconds: float, sample_rate: int = 44100, seed: int = 0) -> None:
    """A stereo 44.1 kHz file of decaying harmonic tones from a random 10-track piece (~4 notes/s), so the model
    has notes to decode; no SoundFont needed."""
    notes = generate_piece(seconds, notes_per_second=4.0, seed=seed)
    notes = notes.select(~notes.is_drum)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    x = np.zeros_like(t)
    for on, off, pitch, vel in zip(notes.onset, notes.offset, notes.pitch, notes.velocity):
        a, b = int(on * sample_rate), min(int(off * sample_rate), len(t))
        f = 440.0 * 2 ** ((pitch - 69) / 12)
        tt = t[a:b] - on
        x[a:b] += (vel / 127) * np.exp(-3 * tt) * sum(np.sin(2 * np.pi * f * k * tt) / k for k in (1, 2, 3))
    x /= max(1e-9, np.abs(x).max()) * 1.25
    sf.write(path, np.stack([x, x], 1).astype(np.float32), sample_rate)


BASIC_PITCH_HINT = ("pip install --no-deps basic-pitch==0.4.0 && pip install onnxruntime pretty_midi "
                    "'resampy<0.4.3,>=0.2.2' scikit-learn 'setuptools<81' (README.md, Benchmarks)")


def note_missing_basic_pitch(command: str) -> None:
    """Say before the work, not after it, that the basic-pitch comparison will be empty (an optional peer)."""
    import importlib.util

    if importlib.util.find_spec("basic_pitch") is None:
        print(f"{command}: basic-pitch is not installed, so its figures will be null; for them: {BASIC_PITCH_HINT}",
              file=sys.stderr, flush=True)


def _basic_pitch_rtf(path: Path, seconds: float, warm: Path) -> float | None:
    try:
        from basic_pitch import ICASSP_2022_MODEL_PATH
        from basic_pitch.inference import Model, predict
    except ImportError:  # not installed (an optional peer: README.md, Benchmarks); a broken install raises
        return None
    model = Model(ICASSP_2022_MODEL_PATH)
    with contextlib.redirect_stdout(sys.stderr):  # it prints progress to stdout, which holds our --json
        predict(str(warm), model)  # the first call compiles its graph (~20 s): not part of the figure
        t0 = time.perf_counter()
        predict(str(path), model)
        return (time.perf_counter() - t0) / seconds


def bench_transcribe(model=None, seconds: float = 60.0, uncached_chunks: int = 2, device: str = "cpu") -> dict:
    """Figures for one model (default: the bundled one)."""
    import torch

    from ..data.audio import chunk, load_audio, prepare
    from ..transcribe import Pipeline

    note_missing_basic_pitch("bench transcribe")
    pipeline = Pipeline(model, device)
    cfg = pipeline.audio_cfg
    with tempfile.TemporaryDirectory() as tmp:
        path, warm = Path(tmp) / "bench.wav", Path(tmp) / "warm.wav"
        render_test_file(path, seconds)
        render_test_file(warm, 3.0, seed=1)

        hybrid = pipeline.notes_source(None) == "frames"  # transcribe's default reading of this model

        def run(batch_size, use_cache, limit=None):
            t0 = time.perf_counter()
            audio = load_audio(path, cfg.sample_rate)
            if limit is not None:
                audio = audio[:limit * cfg.chunk_samples]
            decoded = pipeline.decode_audio(audio, "bench", batch_size=batch_size, use_cache=use_cache,
                                            with_rolls=hybrid)
            notes = pipeline.read_notes(decoded, len(audio))
            write_midi(notes, Path(tmp) / "out.mid")
            elapsed = time.perf_counter() - t0
            audio_s = seconds if limit is None else min(seconds, limit * cfg.chunk_seconds)
            return elapsed / audio_s, len(decoded.tokens), int(sum(len(t) for t in decoded.tokens)), len(notes)

        pipeline.decode_chunks(chunk(prepare(load_audio(warm, cfg.sample_rate), cfg, "w"), cfg))  # warm-up
        rtf_all, n_chunks, n_tokens, n_notes = run(None, True)
        rtf_one, *_ = run(1, True)
        rtf_uncached, *_ = run(None, False, limit=uncached_chunks)
        rtf_bp = _basic_pitch_rtf(path, seconds, warm)
    return {
        "model": str(model or "bundled default"),
        "params": pipeline.model.num_params(),
        "device": str(pipeline.device),
        "notes_from": "frames" if hybrid else "tokens",
        "threads": torch.get_num_threads(),
        "audio_seconds": seconds,
        "chunks": n_chunks,
        "tokens_decoded": n_tokens,
        "notes": n_notes,
        "rtf_cached": rtf_all,
        "rtf_cached_batch1": rtf_one,
        "rtf_uncached": rtf_uncached,
        "uncached_measured_on_chunks": uncached_chunks,
        "rtf_basic_pitch": rtf_bp,
        "cache_speedup": rtf_uncached / rtf_all,
        "speed_vs_basic_pitch": (rtf_bp / rtf_all) if rtf_bp else None,
    }
