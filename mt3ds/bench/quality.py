"""`mt3ds bench quality`: transcription quality and speed of a model on a dataset split, against basic-pitch.

Indexes a dataset in its published layout (e.g. the synthetic corpus from `mt3ds synth`), transcribes every track of
one split, scores it with `mt3ds evaluate`'s metrics against the track's target notes (for Slakh: the union of the
stem MIDI files, as the shards use), and, when basic-pitch is installed, does the same with basic-pitch on the same
files in the same run. Optionally also with each track's instrument list given to the model (`--instruments`),
to show what Step 3 conditioning buys. A model with the aux frame head is read the way `transcribe` reads it by
default (hybrid, --notes frames: mt3ds_*), and the same decode is also read from its tokens alone (--notes tokens,
as MT3: mt3ds_tokens_*). Figures: pooled onset, onset+offset, frame, multi-instrument (full and
class) and drum onset F1, and the real-time factor of each system.
"""
from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from pathlib import Path

from ..evaluate import METRICS, Counts, score_notes


def _pooled(pairs) -> dict:
    total = {m: Counts() for m in METRICS}
    for ref, est in pairs:
        for m, c in score_notes(ref, est).items():
            total[m] += c
    return {f"{m}_f1": total[m].scores()["f1"] for m in METRICS}


def _basic_pitch(paths):
    """basic-pitch's notes for each file (program 0: it names no instrument) and its total seconds, or None."""
    try:
        from basic_pitch import ICASSP_2022_MODEL_PATH
        from basic_pitch.inference import Model, predict
    except ImportError:  # not installed (an optional peer: README, Benchmarks); a broken install raises
        return None, None
    import numpy as np

    from ..tokens.notes import Notes

    model = Model(ICASSP_2022_MODEL_PATH)
    out, elapsed = [], 0.0
    with contextlib.redirect_stdout(sys.stderr):
        predict(str(paths[0]), model)  # compiles its graph on the first call: not timed
        for p in paths:
            t0 = time.perf_counter()
            _, _, events = predict(str(p), model)
            elapsed += time.perf_counter() - t0
            ev = np.array([(e[0], e[1], e[2], e[3]) for e in events], dtype=np.float64).reshape(-1, 4)
            out.append(Notes(ev[:, 0], ev[:, 1], ev[:, 2].astype(int),
                             np.clip((ev[:, 3] * 127).round(), 1, 127).astype(int), np.zeros(len(ev), int)))
    return out, elapsed


def bench_quality(model, dataset: str, root, split: str = "test", limit: int | None = None,
                  instruments: bool = True, basic_pitch: bool = True, device: str = "cpu") -> dict:
    from ..data.audio import load_audio
    from ..data.index import index
    from ..data.shards import read_target
    from ..transcribe import Decoded, Pipeline

    records = index(dataset, root, [split]).records[:limit]
    if not records:
        from ..errors import UserError
        raise UserError(f"{root}: no {split} tracks of dataset {dataset}", exit_code=2)
    if basic_pitch:
        from .transcribe import note_missing_basic_pitch

        note_missing_basic_pitch("bench quality")
    pipeline = Pipeline(model, device)
    refs = [read_target(r) for r in records]
    audio_s = sum(r.duration_s for r in records)
    fig = {"model": str(model or "bundled default"), "dataset": dataset, "split": split, "tracks": len(records),
           "audio_seconds": round(audio_s, 1)}

    hybrid = pipeline.notes_source(None) == "frames"
    fig["mt3ds_notes_from"] = "frames" if hybrid else "tokens"

    def run(with_instruments: bool):
        """(default estimates, token-only estimates or None, seconds): one decode gives both readings; the time is
        that of the default reading alone."""
        ests, tokens_only, elapsed = [], [], 0.0
        for r in records:
            t0 = time.perf_counter()
            audio = load_audio(r.audio_path, pipeline.audio_cfg.sample_rate)
            programs = sorted(set(r.instrument_programs)) if with_instruments else None
            decoded = pipeline.decode_audio(audio, r.track_id, programs, with_rolls=hybrid)
            ests.append(pipeline.read_notes(decoded, len(audio), programs))
            elapsed += time.perf_counter() - t0
            if hybrid:  # the same decode without its rolls: read from the tokens alone
                tokens_only.append(pipeline.read_notes(Decoded(decoded.tokens), len(audio), programs))
        return ests, tokens_only if hybrid else None, elapsed

    ests, tokens_only, elapsed = run(False)
    fig.update({f"mt3ds_{k}": v for k, v in _pooled(zip(refs, ests)).items()})
    fig["mt3ds_rtf"] = elapsed / audio_s
    if tokens_only is not None:  # what the same decode gives read from the tokens alone (--notes tokens, MT3)
        fig.update({f"mt3ds_tokens_{k}": v for k, v in _pooled(zip(refs, tokens_only)).items()})
    if instruments:
        ests_i, tokens_only_i, _ = run(True)
        fig.update({f"mt3ds_with_instruments_{k}": v for k, v in _pooled(zip(refs, ests_i)).items()})
        if tokens_only_i is not None:
            fig.update({f"mt3ds_tokens_with_instruments_{k}": v for k, v in _pooled(zip(refs, tokens_only_i)).items()})
    bp, bp_s = _basic_pitch([r.audio_path for r in records]) if basic_pitch else (None, None)
    if bp is not None:
        scores = _pooled(zip(refs, bp))
        for k in ("onset_f1", "onset_offset_f1", "frame_f1"):  # instrument-agnostic: only these mean anything
            fig[f"basic_pitch_{k}"] = scores[k]
        fig["basic_pitch_rtf"] = bp_s / audio_s
    else:
        fig["basic_pitch_onset_f1"] = fig["basic_pitch_rtf"] = None
    return fig
