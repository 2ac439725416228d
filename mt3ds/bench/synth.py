"""`mt3ds bench synth`: one core rendering fixed works and generated songs in the Slakh layout, by stage and engine.

Every installed bank plays (both sides of the cross-timbre split), so every engine is timed: FluidSynth, TiMidity++
and the Hydrogen kit player, each as stem audio seconds per second of its own rendering. The pipeline adds parsing
(cold cache), arranging, the mix (EQ, room, loudness) and FLAC/MIDI writing on top of them. Times are CPU seconds
of one core (this process and the TiMidity++ processes it starts), so the figures hold on a shared machine.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

def _cpu() -> float:
    """CPU seconds of this process and its finished children (TiMidity++ runs as one): per-core figures that a
    busy machine does not distort, as wall-clock time would."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


WORKS = ("bach/bwv1.6.mxl", "haydn/opus1no1/movement1.mxl", "chopin/mazurka06-2.krn", "mozart/k80/movement1.mxl")
SONGS = ("pop", "rock", "funk", "jazz", "latin", "electronic", "ballad")


def bench_synth(seconds: float = 60.0, seed: int = 0) -> dict:
    """Parse, arrange, render, mix and write WORKS and one song per genre (at most SECONDS each) on one core."""
    from ..synth import corpus
    from ..synth.arrange import arrange
    from ..synth.banks import Palette, available_banks
    from ..synth.layouts import slakh_metadata, write_slakh_track
    from ..synth.render import (REFERENCE_LUFS, SAMPLE_RATE, mix_stems, process_stems, render_stem,
                                total_samples)
    from ..synth.run import _check_environment, render_seed
    from ..synth.songs import arrange_song

    _check_environment()
    banks, _ = available_banks()
    palette = Palette(banks)
    import music21  # noqa: F401  (imports are not what is timed)
    import pyloudnorm  # noqa: F401
    import soundfile  # noqa: F401
    import yaml  # noqa: F401

    stage = dict.fromkeys(("parse", "arrange", "render", "mix", "write"), 0.0)
    engine_s: dict[str, float] = {}
    engine_audio: dict[str, float] = {}
    audio_s = stem_s = 0.0
    stems = 0
    jobs = [("work", w) for w in WORKS] + [("song", g) for g in SONGS]
    with tempfile.TemporaryDirectory() as tmp:
        cache, out = Path(tmp) / "cache", Path(tmp) / "out"
        out.mkdir()
        for i, (kind, name) in enumerate(jobs):
            t = _cpu()
            if kind == "work":
                work = corpus.Work(name, name.split("/", 1)[0], corpus.work_key(name))
                result = corpus.parse_work(name, str(cache), 120.0)
                if not result.ok:
                    raise RuntimeError(f"{name}: {result.reason}")
                piece = corpus.load_piece(work, cache)
            stage["parse"] += _cpu() - t
            t = _cpu()
            if kind == "work":
                arr = arrange(piece, render_seed(seed, 0, work), "slakh", palette, seconds)
            else:
                arr = arrange_song(seed + i, palette, seconds, genre=name)
            n = total_samples(arr)
            stage["arrange"] += _cpu() - t
            audio = []
            for k, stem in enumerate(arr.stems):
                t = _cpu()
                audio.append(render_stem(arr, stem, n, seed=seed + k))
                dt = _cpu() - t
                stage["render"] += dt
                engine_s[stem.bank.engine] = engine_s.get(stem.bank.engine, 0.0) + dt
                engine_audio[stem.bank.engine] = engine_audio.get(stem.bank.engine, 0.0) + n / SAMPLE_RATE
            t = _cpu()
            mix, scaled, overall, lufs = mix_stems(process_stems(arr, audio, seed + i), [s.gain_db for s in arr.stems])
            stage["mix"] += _cpu() - t
            t = _cpu()
            meta = slakh_metadata(f"{i:032x}", arr, lufs, overall, REFERENCE_LUFS, {"work": name})
            write_slakh_track(out / f"Track{i + 1:05d}", arr, scaled, mix, meta, SAMPLE_RATE)
            stage["write"] += _cpu() - t
            audio_s += n / SAMPLE_RATE
            stem_s += len(arr.stems) * n / SAMPLE_RATE
            stems += len(arr.stems)
    total = sum(stage.values())
    return {
        "tracks": len(jobs),
        "stems": stems,
        "audio_seconds": round(audio_s, 2),
        **{f"{k}_s": round(v, 3) for k, v in stage.items()},
        "audio_seconds_per_second": audio_s / total,
        "audio_seconds_per_second_warm_cache": audio_s / (total - stage["parse"]),
        **{f"engine_{e}_stem_seconds_per_second": engine_audio[e] / engine_s[e] for e in sorted(engine_s)},
        "render_stem_seconds_per_second": stem_s / stage["render"],
        "pipeline_stem_seconds_per_second": stem_s / (total - stage["parse"]),
    }
