"""`mt3ds bench reading`: choose the note heads' reading settings (tokens/rolls.py ReadSettings) on validation data.

The encoder and heads run once per file; the settings are then searched one group at a time (coordinate ascent,
two passes) over the pooled scores of every file: onset threshold, minimum re-onset gap and onset shift for onset
F1; frame and offset thresholds for onset+offset F1; the drum threshold for drum onset F1; the file-level class
prior, the smallest track and the program split for multi-instrument F1. Use validation splits and recordings only,
never test data: the chosen settings are what `mt3ds export --reading` stores as the model's defaults.

    mt3ds bench reading --model m.safetensors --dataset slakh --root data/world --dataset pairs --root real \
        --files "*/mix.flac" --out reading.json
"""
from __future__ import annotations

import time

from ..evaluate import METRICS, Counts, score_notes

GRID = {
    "onset_threshold": (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6),
    "min_gap_s": (0.0, 0.03, 0.05, 0.07, 0.1),
    "onset_shift_s": (-0.02, -0.01, 0.0, 0.01, 0.02, 0.03),
    "frame_threshold": (0.2, 0.3, 0.4, 0.5),
    "offset_threshold": (0.3, 0.5, 0.7, 0.9),
    "drum_threshold": (0.2, 0.3, 0.4, 0.5, 0.6),
    "class_prior": (0.0, 0.5, 1.0, 2.0),
    "min_track_notes": (0, 6, 20, 50),
    "program_split": (0.0, 0.3, 0.5, 0.7),
}
# which pooled score each setting is chosen for
TARGET = {"onset_threshold": "onset", "min_gap_s": "onset", "onset_shift_s": "onset",
          "frame_threshold": "onset_offset", "offset_threshold": "onset_offset", "drum_threshold": "drum_onset",
          "class_prior": "multi_full", "min_track_notes": "multi_full", "program_split": "multi_full"}


def _scores(pipeline, files, settings) -> dict:
    """Pooled F1 of every metric over (decoded, reference, n_samples) files read with `settings`."""
    from ..tokens.rolls import read_heads
    from ..transcribe import _clip

    total = {m: Counts() for m in METRICS}
    for decoded, ref, n in files:
        est = _clip(read_heads(decoded.heads, pipeline.frame_seconds, settings), n / pipeline.audio_cfg.sample_rate)
        for m, c in score_notes(ref, est).items():
            total[m] += c
    return {m: total[m].scores()["f1"] or 0.0 for m in METRICS}


def bench_reading(model, tracks, device: str = "cpu", passes: int = 2) -> dict:
    """tracks: (track id, audio path, reference Notes) -> the chosen settings, their scores and the model's own."""
    from ..data.audio import load_audio
    from ..transcribe import Pipeline

    pipeline = Pipeline(model, device)
    pipeline.notes_source("frames")  # refuses a model without note heads
    pipeline.keep_programs = True  # so program_split can be tried
    files, t0 = [], time.perf_counter()
    for track_id, path, ref in tracks:
        audio = load_audio(path, pipeline.audio_cfg.sample_rate)
        files.append((pipeline.decode_audio(audio, track_id, notes_from="frames"), ref, len(audio)))
    encode_s = time.perf_counter() - t0
    start = pipeline.reading
    before = _scores(pipeline, files, start)
    best, scores = start, before
    for _ in range(passes):
        for name, values in GRID.items():
            target = TARGET[name]
            for value in values:
                trial = best.replace(**{name: value})
                s = _scores(pipeline, files, trial)
                if s[target] > scores[target] + 1e-9:
                    best, scores = trial, s
    return {"model": str(model or "bundled default"), "tracks": len(tracks), "encode_seconds": round(encode_s, 1),
            "before": before, "after": scores, "reading": best.to_dict(), "was": start.to_dict()}
