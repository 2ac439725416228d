"""`mt3ds bench synth`: one core rendering fixed works in the Slakh layout, by stage, against FluidSynth alone.

The floor is FluidSynth's own rendering (stem audio seconds per second inside render_stem); the pipeline adds
parsing (cold cache), arranging, loudness and mixing, and FLAC/MIDI writing on top of it.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

WORKS = ("bach/bwv1.6.mxl", "haydn/opus1no1/movement1.mxl", "chopin/mazurka06-2.krn", "mozart/k80/movement1.mxl")


def bench_synth(seconds: float = 60.0, seed: int = 0) -> dict:
    """Parse, arrange, render, mix and write WORKS (excerpts of at most SECONDS) on one core; seconds per stage."""
    from ..synth import corpus
    from ..synth.arrange import arrange
    from ..synth.layouts import slakh_metadata, write_slakh_track
    from ..synth.render import REFERENCE_LUFS, SAMPLE_RATE, mix_stems, render_stem, total_samples
    from ..synth.run import _check_environment, _soundfonts, render_seed

    _check_environment()
    soundfonts = _soundfonts([])
    import music21  # noqa: F401  (imports are not what is timed)
    import pyloudnorm  # noqa: F401
    import soundfile  # noqa: F401
    import yaml  # noqa: F401

    stage = dict.fromkeys(("parse", "arrange", "render", "mix", "write"), 0.0)
    audio_s = stem_s = 0.0
    stems = 0
    with tempfile.TemporaryDirectory() as tmp:
        cache, out = Path(tmp) / "cache", Path(tmp) / "out"
        out.mkdir()
        for i, work_id in enumerate(WORKS):
            work = corpus.Work(work_id, work_id.split("/", 1)[0], corpus.work_key(work_id))
            t = time.perf_counter()
            result = corpus.parse_work(work_id, str(cache), 120.0)
            if not result.ok:
                raise RuntimeError(f"{work_id}: {result.reason}")
            piece = corpus.load_piece(work, cache)
            stage["parse"] += time.perf_counter() - t
            t = time.perf_counter()
            arr = arrange(piece, render_seed(seed, 0, work), "slakh", soundfonts, seconds)
            n = total_samples(arr)
            stage["arrange"] += time.perf_counter() - t
            t = time.perf_counter()
            audio = [render_stem(arr, s, n) for s in arr.stems]
            stage["render"] += time.perf_counter() - t
            t = time.perf_counter()
            mix, scaled, overall, lufs = mix_stems(audio, [s.gain_db for s in arr.stems])
            stage["mix"] += time.perf_counter() - t
            t = time.perf_counter()
            meta = slakh_metadata(f"{i:032x}", arr, lufs, overall, REFERENCE_LUFS, {"work": work_id})
            write_slakh_track(out / f"Track{i + 1:05d}", arr, scaled, mix, meta, SAMPLE_RATE)
            stage["write"] += time.perf_counter() - t
            audio_s += n / SAMPLE_RATE
            stem_s += len(arr.stems) * n / SAMPLE_RATE
            stems += len(arr.stems)
    total = sum(stage.values())
    return {
        "tracks": len(WORKS),
        "stems": stems,
        "audio_seconds": round(audio_s, 2),
        **{f"{k}_s": round(v, 3) for k, v in stage.items()},
        "audio_seconds_per_second": audio_s / total,
        "audio_seconds_per_second_warm_cache": audio_s / (total - stage["parse"]),
        "floor_fluidsynth_stem_seconds_per_second": stem_s / stage["render"],
        "pipeline_stem_seconds_per_second": stem_s / (total - stage["parse"]),
    }
