"""`mt3ds bench transcribe`: real-time factor (seconds of compute per second of audio) of `mt3ds transcribe` on a
generated 60 s recording for each reading the model can do (frames: the note heads alone; hybrid; tokens: decoded
with the KV cache at transcribe's default batch (32 chunks on the CPU, 64 on a GPU), also with batches of one chunk
and without the cache; frames with int8 linear layers); when basic-pitch is installed, its real-time factor on the
same file in the same run; with --long-minutes, the peak memory of transcribing a long file in a fresh process.

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


_PEAK_CHILD = """import runpy, sys
peak, sys.argv = sys.argv[1], sys.argv[2:]
try:
    runpy.run_module("mt3ds", run_name="__main__", alter_sys=True)
finally:
    with open("/proc/self/status") as f, open(peak, "w") as out:
        out.write(next(line for line in f if line.startswith("VmHWM:")).split()[1])
"""  # argv: PEAK_FILE mt3ds ARGS...; writes its own high-water mark in kB to PEAK_FILE


def _peak_rss_mb(path: Path, model, minutes: float, tmp: Path) -> float:
    """Peak resident memory (MB) of `mt3ds transcribe` on a file of `minutes`, in a fresh process. The process reads
    its own high-water mark (VmHWM) as it ends: the kernel's ru_maxrss of a child also counts the parent's pages it
    was forked with, which here (a parent holding models) would be most of the figure."""
    import subprocess

    long = tmp / "long.wav"
    render_test_file(long, minutes * 60, sample_rate=16000, seed=2)
    peak = tmp / "long.peak"
    cmd = [sys.executable, "-c", _PEAK_CHILD, str(peak), "mt3ds", "transcribe", str(long), "-o", str(tmp / "long.mid"),
           "--quiet", "--device", "cpu"] + (["--model", str(model)] if model else [])
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return int(peak.read_text()) / 1024  # kB


def bench_transcribe(model=None, seconds: float = 60.0, uncached_chunks: int = 2, device: str = "cpu",
                     long_minutes: float = 0.0) -> dict:
    """Figures for one model (default: the bundled one): the real-time factor of each reading the model can do
    (rtf_frames, rtf_hybrid, rtf_tokens, and rtf_frames_int8 with quantized linear layers), the token path's with
    batches of one chunk and without the KV cache, basic-pitch's on the same file; with long_minutes, the peak
    memory of transcribing a file that long."""
    import torch

    from ..data.audio import chunk, load_audio, prepare
    from ..transcribe import NOTE_SOURCES, Pipeline

    note_missing_basic_pitch("bench transcribe")
    pipeline = Pipeline(model, device)
    cfg = pipeline.audio_cfg
    readings = [r for r in NOTE_SOURCES if r == "tokens" or (r == "frames" and pipeline.has_heads)
                or (r == "hybrid" and (pipeline.has_heads or pipeline.has_frame_head))]
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        path, warm = Path(tmp) / "bench.wav", Path(tmp) / "warm.wav"
        render_test_file(path, seconds)
        render_test_file(warm, 3.0, seed=1)

        def run(reading, batch_size=None, use_cache=True, limit=None, pipe=pipeline):
            t0 = time.perf_counter()
            audio = load_audio(path, cfg.sample_rate)
            if limit is not None:
                audio = audio[:limit * cfg.chunk_samples]
            decoded = pipe.decode_audio(audio, "bench", batch_size=batch_size, use_cache=use_cache,
                                        notes_from=reading)
            notes = pipe.read_notes(decoded, len(audio))
            write_midi(notes, Path(tmp) / "out.mid")
            elapsed = time.perf_counter() - t0
            audio_s = seconds if limit is None else min(seconds, limit * cfg.chunk_seconds)
            return elapsed / audio_s, decoded, notes

        warm_chunks = chunk(prepare(load_audio(warm, cfg.sample_rate), cfg, "warm"), cfg)
        for reading in readings:
            pipeline.decode_chunks(warm_chunks, notes_from=reading)  # warm-up
            rtf, decoded, notes = run(reading)
            figures[f"rtf_{reading}"] = rtf
            figures[f"notes_{reading}"] = len(notes)
            if reading == "tokens":
                figures["chunks"] = len(decoded.tokens)
                figures["tokens_decoded"] = int(sum(len(t) for t in decoded.tokens))
        if pipeline.has_heads and pipeline.device.type == "cpu":
            int8 = Pipeline(model, device, quantize=True)
            int8.decode_chunks(warm_chunks, notes_from="frames")
            figures["rtf_frames_int8"], _, notes = run("frames", pipe=int8)
            figures["notes_frames_int8"] = len(notes)
        figures["rtf_tokens_batch1"], *_ = run("tokens", 1)
        figures["rtf_tokens_uncached"], *_ = run("tokens", None, False, limit=uncached_chunks)
        rtf_bp = _basic_pitch_rtf(path, seconds, warm)
        if long_minutes > 0:
            figures["long_file_minutes"] = long_minutes
            figures["peak_rss_mb_long_file"] = _peak_rss_mb(path, model, long_minutes, Path(tmp))
    default = pipeline.notes_source(None)
    return {
        "model": str(model or "bundled default"),
        "params": pipeline.model.num_params(),
        "device": str(pipeline.device),
        "notes_from": default,
        "threads": torch.get_num_threads(),
        "audio_seconds": seconds,
        **figures,
        "uncached_measured_on_chunks": uncached_chunks,
        "rtf_basic_pitch": rtf_bp,
        "cache_speedup": figures["rtf_tokens_uncached"] / figures["rtf_tokens"],
        "default_vs_basic_pitch": (figures[f"rtf_{default}"] / rtf_bp) if rtf_bp else None,
    }
