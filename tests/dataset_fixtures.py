"""Tiny MAESTRO and Slakh2100 trees in their published layouts, with audio rendered from their own MIDI
(a decaying sine per pitched note, a short noise burst per drum hit), for the index/audio/shard tests."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

from mt3ds.tokens.midi import write_midi
from mt3ds.tokens.notes import Notes
from mt3ds.tokens.vocab import DRUM_PROGRAM

TAIL_S = 0.5  # audio runs this long after the last note ends


def random_notes(seed: int, seconds: float, program: int, n: int = 12) -> Notes:
    """N notes inside [0, SECONDS - TAIL_S], some long enough to cross a 2.048 s chunk boundary."""
    rng = np.random.default_rng(seed)
    onset = np.sort(rng.uniform(0.05, seconds - TAIL_S - 0.6, n))
    if program == DRUM_PROGRAM:
        offset = onset + 0.01
        pitch = rng.choice([36, 38, 42, 46], n)
    else:
        offset = np.minimum(onset + rng.uniform(0.1, 2.5, n), seconds - TAIL_S)
        pitch = rng.integers(40, 90, n)
    return Notes(onset, offset, pitch, rng.integers(40, 120, n), np.full(n, program)).sorted()


def render(notes: Notes, seconds: float, sample_rate: int, channels: int, seed: int = 0) -> np.ndarray:
    """[samples, channels] float32: what the notes sound like, roughly; level well under full scale."""
    n = int(round(seconds * sample_rate))
    y = np.zeros(n)
    rng = np.random.default_rng(seed)
    for on, off, p, v, prog in zip(notes.onset, notes.offset, notes.pitch, notes.velocity, notes.program):
        i = int(on * sample_rate)
        if prog == DRUM_PROGRAM:
            m = min(n - i, int(0.08 * sample_rate))
            y[i:i + m] += rng.standard_normal(m) * np.exp(-np.arange(m) / (0.015 * sample_rate)) * v / 400
            continue
        m = min(n - i, int((off - on + 0.1) * sample_rate))
        t = np.arange(m) / sample_rate
        y[i:i + m] += np.sin(2 * np.pi * 440 * 2 ** ((p - 69) / 12) * t) * np.exp(-t * 2.0) * v / 900
    return np.repeat(y[:, None], channels, axis=1).astype(np.float32) * np.linspace(1.0, 0.8, channels)[None, :]


def write_audio(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, sample_rate, subtype="PCM_16")


def make_maestro(root: Path, tracks: list[dict], fmt: str = "csv", sample_rate: int = 44100, channels: int = 2,
                 version: str = "v3.0.0") -> Path:
    """A MAESTRO tree: year folders of WAV + MIDI, and maestro-vX.csv and/or .json (column-oriented).
    Each track: {year, name, split, seconds, seed}; optional `notes`, `no_audio`, `no_midi`, `duration`."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for t in tracks:
        notes = t.get("notes") or random_notes(t["seed"], t["seconds"], 0)
        audio_name = f"{t['year']}/{t['name']}.wav"
        midi_name = f"{t['year']}/{t['name']}.midi"
        if not t.get("no_midi"):
            (root / str(t["year"])).mkdir(parents=True, exist_ok=True)
            write_midi(notes, root / midi_name)
        if not t.get("no_audio"):
            write_audio(root / audio_name, render(notes, t["seconds"], sample_rate, channels, t["seed"]), sample_rate)
        rows.append({"canonical_composer": "Synthetic", "canonical_title": t["name"], "split": t["split"],
                     "year": t["year"], "midi_filename": midi_name, "audio_filename": audio_name,
                     "duration": t.get("duration", t["seconds"])})
    columns = ["canonical_composer", "canonical_title", "split", "year", "midi_filename", "audio_filename",
               "duration"]
    if fmt in ("csv", "both"):
        with open(root / f"maestro-{version}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)
    if fmt in ("json", "both"):
        data = {c: {str(i): r[c] for i, r in enumerate(rows)} for c in columns}
        (root / f"maestro-{version}.json").write_text(json.dumps(data), encoding="utf-8")
    return root


def make_slakh_track(folder: Path, stems: list[dict], seconds: float, sample_rate: int = 22050, seed: int = 0,
                     layout: str = "redux") -> None:
    """One Slakh track folder. Each stem: {program, is_drum, seed}; optional `rendered`, `saved` (metadata flags),
    `no_audio`, `no_midi`, `file_program` (the program written into the MIDI file, to show metadata wins).
    layout 'redux': mix.flac, all_src.mid, metadata.yaml, stems/SNN.flac, MIDI/SNN.mid;
    layout 'design': full_mix.flac, full_mix.mid, stems/stemNNN.flac, midi/trackNNN.mid (the plain folder shape, docs/design.md §1.3)."""
    folder.mkdir(parents=True, exist_ok=True)
    mix = np.zeros((int(round(seconds * sample_rate)), 1), dtype=np.float32)
    meta_stems = {}
    all_notes = []
    for k, st in enumerate(stems):
        program = DRUM_PROGRAM if st.get("is_drum") else st["program"]
        notes = random_notes(st["seed"], seconds, program, n=st.get("n", 10))
        file_notes = notes if "file_program" not in st else Notes(notes.onset, notes.offset, notes.pitch,
                                                                  notes.velocity,
                                                                  np.full(len(notes), st["file_program"]))
        audio = render(notes, seconds, sample_rate, 1, st["seed"])
        if st.get("rendered", True):
            mix += audio
        name = f"S{k:02d}" if layout == "redux" else None
        audio_path = folder / ("stems" if layout == "redux" else "stems") / (
            f"{name}.flac" if layout == "redux" else f"stem{k + 1:03d}.flac")
        midi_path = folder / ("MIDI" if layout == "redux" else "midi") / (
            f"{name}.mid" if layout == "redux" else f"track{k + 1:03d}.mid")
        if st.get("rendered", True) and not st.get("no_audio"):
            write_audio(audio_path, audio, sample_rate)
        if st.get("saved", True) and not st.get("no_midi"):
            midi_path.parent.mkdir(parents=True, exist_ok=True)
            write_midi(file_notes, midi_path)
        all_notes.append(notes)
        meta_stems[name or f"stem{k + 1:03d}"] = {
            "audio_rendered": bool(st.get("rendered", True)), "inst_class": "Synthetic",
            "integrated_loudness": -20.0, "is_drum": bool(st.get("is_drum", False)),
            "midi_program_name": "Synthetic", "midi_saved": bool(st.get("saved", True)),
            "plugin_name": "sine.nkm", "program_num": 0 if st.get("is_drum") else int(st["program"])}
    if layout == "redux":
        write_audio(folder / "mix.flac", mix, sample_rate)
        # all_src.mid deliberately disagrees with the stems (one note only): the target must not come from it
        write_midi(Notes([0.0], [0.5], [60], [100], [0]), folder / "all_src.mid")
        meta = {"UUID": f"{seed:032x}", "audio_dir": "stems", "midi_dir": "MIDI", "normalization_factor": -13.0,
                "normalized": True, "overall_gain": 0.5, "stems": meta_stems, "target_peak": -1.0}
        (folder / "metadata.yaml").write_text(yaml.safe_dump(meta), encoding="utf-8")
    else:
        write_audio(folder / "full_mix.flac", mix, sample_rate)
        write_midi(Notes.concat(all_notes), folder / "full_mix.mid")


def expected_target(folder: Path, stems: list[dict], seconds: float) -> Notes:
    """The notes a mixture's target must hold: every stem whose MIDI exists, with its metadata program."""
    parts = []
    for st in stems:
        if not st.get("saved", True) or st.get("no_midi"):
            continue
        program = DRUM_PROGRAM if st.get("is_drum") else st["program"]
        parts.append(random_notes(st["seed"], seconds, program, n=st.get("n", 10)))
    return Notes.concat(parts).sorted()
