"""`mt3ds bench quality`: transcription quality and speed of a model on a dataset split, against basic-pitch.

Indexes a dataset in its published layout (e.g. the synthetic corpus from `mt3ds synth`), transcribes every track of
one split, scores it with `mt3ds evaluate`'s metrics against the track's target notes (for Slakh: the union of the
stem MIDI files, as the shards use), and, when basic-pitch is installed, does the same with basic-pitch on the same
files in the same run. Optionally also with each track's instrument list given to the model (`--instruments`),
to show what Step 3 conditioning buys. The model is read the way `transcribe` reads it by default (mt3ds_*), and
with --readings also in other ways (frames, hybrid, tokens: mt3ds_READING_*). `--dataset pairs` scores real
recordings instead: every audio file under --root matching --files with a same-named .mid beside it. Figures: pooled
onset, onset+offset, frame, multi-instrument (full and class) and drum onset F1, instrument tracks per file (and the
reference's), and the real-time factor of each system, basic-pitch's on the same files in the same run.
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


def _pairs(root, pattern: str):
    """(track id, audio path, reference Notes, programs) of every audio file matching `pattern` under root that has a
    MIDI file of the same name beside it (real recordings with aligned notes, e.g. TRIOS's */mix.flac)."""
    from ..tokens.midi import read_midi
    from ..transcribe import AUDIO_SUFFIXES

    root = Path(root)
    out = []
    for audio in sorted(root.glob(pattern)):
        midi = audio.with_suffix(".mid")
        if audio.suffix.lower() in AUDIO_SUFFIXES and midi.exists():
            notes, _ = read_midi(midi)
            out.append((str(audio.relative_to(root)), audio, notes, sorted({int(p) for p in notes.program})))
    return out


def load_tracks(dataset: str, root, split: str, files: str = "**/*", limit: int | None = None) -> list:
    """(track id, audio path, reference Notes, programs) of a dataset split, or of `pairs` under root."""
    from ..errors import UserError

    if dataset == "pairs":
        tracks = _pairs(root, files)[:limit]
    else:
        from ..data.index import index
        from ..data.shards import read_target

        records = index(dataset, root, [split]).records[:limit]
        tracks = [(r.track_id, Path(r.audio_path), read_target(r), sorted(set(r.instrument_programs)))
                  for r in records]
    if not tracks:
        raise UserError(f"{root}: no {split if dataset != 'pairs' else files} tracks of dataset {dataset}",
                        exit_code=2)
    return tracks


def _tracks(notes) -> int:
    """Instrument tracks a MIDI file of these notes has: one per program, drums one."""
    return len(set(notes.program.tolist()))


def bench_quality(model, dataset: str, root, split: str = "test", limit: int | None = None,
                  instruments: bool = True, basic_pitch: bool = True, device: str = "cpu",
                  readings: tuple[str, ...] | None = None, files: str = "**/*", quantize: bool = False) -> dict:
    """Figures of one model on a dataset split (or, with dataset "pairs", on audio files with same-named MIDI files
    under root, matching `files`). `readings`: how notes are read (frames, hybrid, tokens); the first is the
    headline (mt3ds_*), the others are mt3ds_READING_*; default: the model's default reading alone."""
    import numpy as np

    from ..data.audio import load_audio
    from ..transcribe import Pipeline

    tracks = load_tracks(dataset, root, split, files, limit)
    if basic_pitch:
        from .transcribe import note_missing_basic_pitch

        note_missing_basic_pitch("bench quality")
    pipeline = Pipeline(model, device, quantize=quantize)
    readings = tuple(readings or (pipeline.notes_source(None),))
    for r in readings:
        pipeline.notes_source(r)  # refuses a reading the model cannot do
    refs = [t[2] for t in tracks]
    audio = [load_audio(t[1], pipeline.audio_cfg.sample_rate) for t in tracks]
    audio_s = sum(len(a) for a in audio) / pipeline.audio_cfg.sample_rate
    fig = {"model": str(model or "bundled default"), "dataset": dataset, "split": split if dataset != "pairs"
           else files, "tracks": len(tracks), "audio_seconds": round(audio_s, 1), "mt3ds_notes_from": readings[0],
           "reference_tracks_per_file": float(np.mean([_tracks(r) for r in refs]))}

    def run(reading: str, with_instruments: bool):
        """Each track's estimated notes and the seconds they took (decoding from the waveform on)."""
        ests, elapsed = [], 0.0
        for (track_id, _, _, programs), wave in zip(tracks, audio):
            hint = programs if with_instruments else None
            t0 = time.perf_counter()
            decoded = pipeline.decode_audio(wave, track_id, hint, notes_from=reading)
            ests.append(pipeline.read_notes(decoded, len(wave), hint))
            elapsed += time.perf_counter() - t0
        return ests, elapsed

    for i, reading in enumerate(readings):
        prefix = "mt3ds_" if i == 0 else f"mt3ds_{reading}_"
        ests, elapsed = run(reading, False)
        fig.update({f"{prefix}{k}": v for k, v in _pooled(zip(refs, ests)).items()})
        fig[f"{prefix}rtf"] = elapsed / audio_s
        fig[f"{prefix}tracks_per_file"] = float(np.mean([_tracks(e) for e in ests]))
        if instruments and i == 0:
            ests_i, _ = run(reading, True)
            fig.update({f"mt3ds_with_instruments_{k}": v for k, v in _pooled(zip(refs, ests_i)).items()})
            fig["mt3ds_with_instruments_tracks_per_file"] = float(np.mean([_tracks(e) for e in ests_i]))
    bp, bp_s = _basic_pitch([t[1] for t in tracks]) if basic_pitch else (None, None)
    if bp is not None:
        scores = _pooled(zip(refs, bp))
        for k in ("onset_f1", "onset_offset_f1", "frame_f1"):  # instrument-agnostic: only these mean anything
            fig[f"basic_pitch_{k}"] = scores[k]
        fig["basic_pitch_rtf"] = bp_s / audio_s
    else:
        fig["basic_pitch_onset_f1"] = fig["basic_pitch_rtf"] = None
    return fig
