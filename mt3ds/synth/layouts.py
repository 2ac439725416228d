"""Renders written in the layouts the datasets are published in, so `mt3ds shard` reads them as it reads the real ones.

Slakh2100 (flac redux, docs/design.md §1.3): SPLIT/TrackNNNNN/{mix.flac, all_src.mid, metadata.yaml, stems/SNN.flac,
MIDI/SNN.mid}; a track is assembled in a hidden folder beside it and renamed when complete.
MAESTRO v3: YEAR/NAME.wav + YEAR/NAME.midi pairs and maestro-v3.0.0.csv / .json (column-oriented) at the root.
Audio is 16 kHz mono, 16-bit (Slakh ships 44.1 kHz FLAC, MAESTRO 44.1-48 kHz stereo WAV: the offline chain
resamples both to 16 kHz mono anyway).
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..files import atomic_path, write_text_atomic
from ..tokens import gm
from .arrange import TPQ, Arrangement, Stem

MAESTRO_COLUMNS = ("canonical_composer", "canonical_title", "split", "year", "midi_filename", "audio_filename",
                   "duration")
MAESTRO_NAME = "maestro-v3.0.0"


def write_audio(audio: np.ndarray, path: Path, sample_rate: int, fmt: str) -> None:
    """16-bit mono FLAC or WAV, through a temporary name."""
    import soundfile as sf

    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.clip(audio, -1.0, 1.0), sample_rate, format=fmt, subtype="PCM_16")


def write_midi(arr: Arrangement, stems: list[Stem], path: Path) -> None:
    """STEMS as one General MIDI file (one track each, drums on channel 10) with the arrangement's tempo map,
    meter, sustain pedal, pan, the players' controllers and pitch bends, through a temporary name."""
    import symusic.core as sc

    score = sc.ScoreTick(TPQ)
    for tick, mspq in zip(arr.tempo_tick.tolist(), arr.tempo_mspq.tolist()):
        score.tempos.append(sc.TempoTick(int(tick), mspq=int(mspq)))
    for tick, num, den in arr.time_signatures:
        score.time_signatures.append(sc.TimeSignatureTick(int(tick), int(num), int(den)))
    for stem in stems:
        track = sc.TrackTick(stem.name, int(stem.midi_program), stem.is_drum)
        track.notes = sc.NoteTickList.from_numpy(
            np.ascontiguousarray(stem.onset, dtype=np.int32),
            np.ascontiguousarray(stem.offset - stem.onset, dtype=np.int32),
            np.ascontiguousarray(stem.pitch, dtype=np.int8),
            np.ascontiguousarray(stem.velocity, dtype=np.int8))
        track.controls.append(sc.ControlChangeTick(0, 10, stem.pan_cc))
        for tick, value in stem.pedal.tolist():
            track.controls.append(sc.ControlChangeTick(int(tick), 64, int(value)))
        for tick, number, value in stem.controls.tolist():
            track.controls.append(sc.ControlChangeTick(int(tick), int(number), int(value)))
        for tick, value in stem.bend.tolist():
            track.pitch_bends.append(sc.PitchBendTick(int(tick), int(value)))
        score.tracks.append(track)
    with atomic_path(path) as tmp:
        score.dump_midi(str(tmp))


def write_slakh_track(final: Path, arr: Arrangement, stems_audio: list[np.ndarray], mix: np.ndarray,
                      metadata: dict, sample_rate: int) -> None:
    """One Slakh2100 track folder, assembled under a hidden temporary name and renamed into place."""
    import yaml

    tmp = final.parent / f".partial-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "stems").mkdir(parents=True)
    (tmp / "MIDI").mkdir()
    try:
        for i, (stem, audio) in enumerate(zip(arr.stems, stems_audio)):
            write_audio(audio, tmp / "stems" / f"S{i:02d}.flac", sample_rate, "FLAC")
            write_midi(arr, [stem], tmp / "MIDI" / f"S{i:02d}.mid")
        write_midi(arr, arr.stems, tmp / "all_src.mid")
        write_audio(mix, tmp / "mix.flac", sample_rate, "FLAC")
        (tmp / "metadata.yaml").write_text(yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True),
                                           encoding="utf-8")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def slakh_metadata(uuid: str, arr: Arrangement, loudness: list, overall_gain: float, reference_lufs: float,
                   source: dict) -> dict:
    """metadata.yaml as Slakh2100 writes it, plus a `synth` section saying how the track was made."""
    stems = {}
    for i, (stem, lufs) in enumerate(zip(arr.stems, loudness)):
        stems[f"S{i:02d}"] = {
            "audio_rendered": True,
            "inst_class": gm.program_class(stem.program),
            "integrated_loudness": None if lufs is None else round(float(lufs), 4),
            "is_drum": stem.is_drum,
            "midi_program_name": gm.program_name(stem.program),
            "midi_saved": True,
            "plugin_name": Path(stem.bank.path).name,
            "program_num": int(stem.program),
            "bank": stem.bank.name,
            "engine": stem.bank.engine,
            "bank_fallback": bool(stem.fallback),
        }
    return {"UUID": uuid, "audio_dir": "stems", "midi_dir": "MIDI", "normalization_factor": reference_lufs,
            "normalized": True, "overall_gain": round(float(overall_gain), 6), "stems": stems,
            "synth": {**source, **arr.info,
                      "stem_parts": {f"S{i:02d}": list(s.parts) for i, s in enumerate(arr.stems)},
                      "stem_gain_db": {f"S{i:02d}": round(s.gain_db, 3) for i, s in enumerate(arr.stems)},
                      "stem_mix": {f"S{i:02d}": {"pan": round(s.pan, 3), "eq_tilt_db": round(s.eq_tilt_db, 3),
                                                 "reverb": round(s.reverb, 3),
                                                 **({"voicing": s.voicing} if s.voicing else {})}
                                   for i, s in enumerate(arr.stems)},
                      "drum_kit_preset": next((s.midi_program for s in arr.stems if s.is_drum), None)}}


def write_maestro_pair(audio_path: Path, midi_path: Path, arr: Arrangement, audio: np.ndarray,
                       sample_rate: int) -> None:
    """A MAESTRO .wav/.midi pair; the WAV is renamed into place last, so its presence means the pair is done."""
    audio_path.parent.mkdir(parents=True, exist_ok=True)
    write_midi(arr, arr.stems, midi_path)
    write_audio(audio, audio_path, sample_rate, "WAV")


def write_maestro_metadata(root: Path, rows: list[dict]) -> None:
    """maestro-v3.0.0.csv and its column-oriented .json, rows in the given order."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MAESTRO_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in MAESTRO_COLUMNS})
    columns = {k: {str(i): row[k] for i, row in enumerate(rows)} for k in MAESTRO_COLUMNS}
    for name, text in ((f"{MAESTRO_NAME}.csv", buf.getvalue()), (f"{MAESTRO_NAME}.json", json.dumps(columns))):
        write_text_atomic(root / name, text)
