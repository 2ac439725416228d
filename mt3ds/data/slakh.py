"""Slakh2100 as published, and the plain folder shape (docs/design.md §1.3).

Flac redux (the published release): `train|validation|test|omitted/TrackNNNNN/` with `mix.flac`, `all_src.mid`,
`metadata.yaml` (`audio_dir`, `midi_dir`, and per stem `program_num`, `is_drum`, `inst_class`,
`midi_program_name`, `audio_rendered`, `midi_saved`, ...), `stems/SNN.flac`, `MIDI/SNN.mid`. Track folders
straight under the root (BabySlakh) count as train.

The plain folder shape: `Train|Validate|Test/TrackNNNNN/` with `full_mix.flac`, `full_mix.mid`, `stems/stemNNN.flac`,
`midi/trackNNN.mid` (stem and MIDI paired by number); without metadata, programs come from the MIDI files.

`slakh` makes one record per mixture, its target the union of the stems' MIDI files with the programs and drum
flags of metadata.yaml (never `all_src.mid`). `slakh_stems` makes one record per rendered stem.
"""
from __future__ import annotations

import re
from pathlib import Path

import soundfile as sf
import yaml

from ..errors import UserError, first_line
from ..tokens.vocab import DRUM_PROGRAM
from .records import SPLITS, IndexResult, MidiSource, Skipped, TrackRecord, instruments, normalize_split

_TRACK = re.compile(r"^Track\d+$")
_DESIGN_STEM = re.compile(r"^stem(\d+)\.(flac|wav)$", re.IGNORECASE)
_DESIGN_MIDI = re.compile(r"^track(\d+)\.midi?$", re.IGNORECASE)


class _BadTrack(Exception):
    """A track folder that cannot be indexed: (path, reason)."""

    def __init__(self, path, reason):
        super().__init__(reason)
        self.path, self.reason = str(path), reason


def _track_folders(root: Path, splits) -> list[tuple[str, Path]]:
    """(split, TrackNNNNN folder) pairs under ROOT, sorted; UserError when ROOT is not a Slakh tree."""
    if not root.is_dir():
        raise UserError(f"{root}: not a folder (expected Slakh2100 as published)", exit_code=2)
    found, any_layout = [], False
    for child in sorted(root.iterdir()):
        if not child.is_dir():
            continue
        if _TRACK.match(child.name):  # BabySlakh: no split folders
            any_layout = True
            if "train" in splits:
                found.append(("train", child))
            continue
        try:
            split = normalize_split(child.name)
        except ValueError:
            continue
        any_layout = True
        if split in splits:
            found.extend((split, t) for t in sorted(child.iterdir()) if t.is_dir() and _TRACK.match(t.name))
    if not any_layout:
        raise UserError(f"{root}: no train/validation/test/TrackNNNNN folders (expected Slakh2100 as published)",
                        exit_code=2)
    return found


def _duration(path: Path) -> float:
    if not path.is_file():
        raise _BadTrack(path, "missing audio file")
    try:
        return float(sf.info(str(path)).duration)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise _BadTrack(path, f"unreadable audio ({e})") from None


def _flag(info: dict, name: str, meta: Path, stem: str) -> bool:
    value = info.get(name, True)  # older metadata lacks these flags: everything was rendered and saved
    if not isinstance(value, bool):
        raise _BadTrack(meta, f"stem {stem}: {name} is {value!r}, not true/false")
    return value


def _stem_program(info: dict, meta: Path, stem: str) -> int:
    is_drum = info.get("is_drum", False)
    if not isinstance(is_drum, bool):
        raise _BadTrack(meta, f"stem {stem}: is_drum is {is_drum!r}, not true/false")
    if is_drum:
        return DRUM_PROGRAM
    program = info.get("program_num")
    if isinstance(program, bool) or not isinstance(program, int) or not 0 <= program <= 127:
        raise _BadTrack(meta, f"stem {stem}: program_num is {program!r}, not 0..127")
    return program


def _read_metadata(track: Path) -> dict:
    meta = track / "metadata.yaml"
    try:
        data = yaml.safe_load(meta.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise _BadTrack(meta, f"malformed YAML ({first_line(e)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("stems"), dict) or not data["stems"]:
        raise _BadTrack(meta, "malformed metadata: no 'stems' mapping")
    if not all(isinstance(v, dict) for v in data["stems"].values()):
        raise _BadTrack(meta, "malformed metadata: a stem entry is not a mapping")
    return data


def _redux_track(split: str, track: Path, stems: bool) -> tuple[list[TrackRecord], list[Skipped]]:
    meta_path = track / "metadata.yaml"
    meta = _read_metadata(track)
    audio_dir = track / str(meta.get("audio_dir") or "stems")
    midi_dir = track / str(meta.get("midi_dir") or "MIDI")
    entries = []  # (stem, program, rendered, saved, audio, midi)
    for stem in sorted(meta["stems"], key=str):
        info = meta["stems"][stem]
        entries.append((str(stem), _stem_program(info, meta_path, stem), _flag(info, "audio_rendered", meta_path, stem),
                        _flag(info, "midi_saved", meta_path, stem),
                        audio_dir / f"{stem}.flac", midi_dir / f"{stem}.mid"))
    if not stems:
        sources = []
        for stem, program, rendered, saved, _, midi in entries:
            if midi.is_file():  # docs/design.md §1.3: a stem leaves the mixture's target only when its MIDI is absent
                sources.append(MidiSource(str(midi), program=None if program == DRUM_PROGRAM else program,
                                          is_drum=program == DRUM_PROGRAM))
            elif rendered and saved:
                raise _BadTrack(midi, f"missing stem MIDI (stem {stem} is rendered and saved in metadata.yaml)")
        if not sources:
            raise _BadTrack(midi_dir, "no stem MIDI files")
        mix = track / "mix.flac"
        programs = [DRUM_PROGRAM if s.is_drum else s.program for s in sources]
        return [TrackRecord(track_id=track.name, dataset="slakh", audio_path=str(mix), midi_path=str(midi_dir),
                            split=split, duration_s=_duration(mix), **instruments(programs),
                            midi_sources=tuple(sources))], []
    records, skipped = [], []
    for stem, program, rendered, saved, audio, midi in entries:
        if not (rendered and saved):
            continue  # not rendered or no MIDI saved: not a stem track (docs/design.md §1.3), not an error
        try:
            if not midi.is_file():
                raise _BadTrack(midi, "missing stem MIDI")
            duration = _duration(audio)
        except _BadTrack as e:
            skipped.append(Skipped(e.path, e.reason, split))
            continue
        records.append(TrackRecord(
            track_id=f"{track.name}/{stem}", dataset="slakh_stems", audio_path=str(audio), midi_path=str(midi),
            split=split, duration_s=duration, **instruments([program]),
            midi_sources=(MidiSource(str(midi), program=None if program == DRUM_PROGRAM else program,
                                     is_drum=program == DRUM_PROGRAM),)))
    return records, skipped


def _midi_programs(path: Path) -> list[int]:
    from ..tokens.midi import read_midi

    notes, _ = read_midi(path)
    if not len(notes):
        raise _BadTrack(path, "MIDI has no notes")
    return sorted({int(p) for p in notes.program})


def _design_track(split: str, track: Path, stems: bool) -> tuple[list[TrackRecord], list[Skipped]]:
    """The plain folder shape (docs/design.md §1.3): no metadata, so each file's own program changes and drum channel name the instrument."""
    stem_audio = {int(m.group(1)): p for p in sorted((track / "stems").glob("*"))
                  if (m := _DESIGN_STEM.match(p.name))}
    stem_midi = {int(m.group(1)): p for p in sorted((track / "midi").glob("*")) if (m := _DESIGN_MIDI.match(p.name))}
    if not stems:
        mix = next((p for p in (track / "full_mix.flac", track / "full_mix.wav") if p.is_file()),
                   track / "full_mix.flac")
        midis = [stem_midi[n] for n in sorted(stem_midi)]
        if not midis and (track / "full_mix.mid").is_file():
            midis = [track / "full_mix.mid"]
        if not midis:
            raise _BadTrack(track / "midi", "no stem MIDI files (midi/trackNNN.mid) and no full_mix.mid")
        programs = [p for m in midis for p in _midi_programs(m)]
        duration = _duration(mix)
        return [TrackRecord(track_id=track.name, dataset="slakh", audio_path=str(mix),
                            midi_path=str(midis[0].parent), split=split, duration_s=duration,
                            **instruments(programs), midi_sources=tuple(MidiSource(str(m)) for m in midis))], []
    records, skipped = [], []
    for n in sorted(set(stem_audio) | set(stem_midi)):
        try:
            if n not in stem_midi:
                raise _BadTrack(stem_audio[n], f"missing stem MIDI (midi/track{n:03d}.mid)")
            if n not in stem_audio:
                raise _BadTrack(stem_midi[n], f"missing stem audio (stems/stem{n:03d}.flac)")
            programs = _midi_programs(stem_midi[n])
            duration = _duration(stem_audio[n])
        except _BadTrack as e:
            skipped.append(Skipped(e.path, e.reason, split))
            continue
        except UserError as e:  # read_midi's message names the file
            skipped.append(Skipped(str(stem_midi[n]), str(e), split))
            continue
        records.append(TrackRecord(
            track_id=f"{track.name}/{stem_audio[n].stem}", dataset="slakh_stems", audio_path=str(stem_audio[n]),
            midi_path=str(stem_midi[n]), split=split, duration_s=duration, **instruments(programs)))
    return records, skipped


def index_slakh(root: str | Path, splits=None, stems: bool = False) -> IndexResult:
    """Mixture records (stems=False, dataset `slakh`) or stem records (`slakh_stems`) for SPLITS (default: train,
    validation, test; `omitted` only when named)."""
    root = Path(root)
    splits = set(SPLITS if splits is None else splits)
    records, skipped = [], []
    for split, track in _track_folders(root, splits):
        try:
            if (track / "metadata.yaml").is_file():
                r, s = _redux_track(split, track, stems)
            elif (track / "full_mix.flac").is_file() or (track / "stems").is_dir():
                r, s = _design_track(split, track, stems)
            else:
                raise _BadTrack(track, "no metadata.yaml (flac redux) or full_mix.flac (plain folder shape)")
        except _BadTrack as e:
            skipped.append(Skipped(e.path, e.reason, split))
            continue
        except UserError as e:  # an unreadable MIDI file while reading programs (plain folder shape)
            skipped.append(Skipped(str(track), str(e), split))
            continue
        records.extend(r)
        skipped.extend(s)
    return IndexResult(records, skipped)

