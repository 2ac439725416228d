"""Track records (docs/design.md §1.1): one per track, whatever the dataset layout, written as JSON lines by `mt3ds index`.

A record names the audio and where its target notes come from. MAESTRO and `slakh_stems` have one MIDI file per
track; a Slakh mixture's target is the union of its stems' MIDI files, each read with the program and drum flag
that metadata.yaml gives it (not `all_src.mid`, which need not match). `midi_sources` holds that list for every
dataset, so the shard writer reads every target the same way.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..tokens import gm

DATASETS = ("maestro", "slakh", "slakh_stems")
SPLITS = ("train", "validation", "test")  # normalized names; Slakh's "omitted" only when asked for
OMITTED = "omitted"

# Every spelling the published layouts and the plain folder shape use (docs/design.md §1.2), lower-cased and stripped.
_SPLIT_ALIASES = {"train": "train", "training": "train",
                  "validation": "validation", "validate": "validation", "valid": "validation", "val": "validation",
                  "test": "test", "testing": "test",
                  "omitted": OMITTED}


def normalize_split(name: str) -> str:
    """'Validate ' / 'validation' / 'val' -> 'validation'; ValueError for a name no layout uses."""
    key = str(name).strip().lower()
    if key not in _SPLIT_ALIASES:
        raise ValueError(f"unknown split {name!r} (expected train, validation, test or omitted)")
    return _SPLIT_ALIASES[key]


def track_key(track_id: str) -> str:
    """The WebDataset-safe form of a track id: every character outside [A-Za-z0-9_-] becomes '_' (docs/design.md §4.1)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", track_id)


@dataclass(frozen=True)
class MidiSource:
    """One MIDI file of a track's target, with the instrument that metadata assigns it (None: as in the file)."""

    path: str
    program: int | None = None  # 0..127 overrides every track's program in the file
    is_drum: bool | None = None  # True makes every note a drum hit (program 128)

    def to_dict(self) -> dict:
        return {"path": self.path, "program": self.program, "is_drum": self.is_drum}

    @classmethod
    def from_dict(cls, d: dict) -> "MidiSource":
        return cls(str(d["path"]), None if d.get("program") is None else int(d["program"]),
                   None if d.get("is_drum") is None else bool(d["is_drum"]))


@dataclass(frozen=True)
class TrackRecord:
    """One track of a dataset, as docs/design.md §1.1 defines it."""

    track_id: str  # unique within the dataset, e.g. "2004/MIDI-Unprocessed_..." or "Track00001/S02"
    dataset: str  # maestro | slakh | slakh_stems
    audio_path: str  # wav/flac, any rate and channel count
    midi_path: str  # the track's MIDI file; for a Slakh mixture the folder of its stems' MIDI files
    instrument_programs: tuple[int, ...]  # sorted, 0..127, drums 128
    instrument_names: tuple[str, ...]  # General MIDI names, one per program
    instrument_classes: tuple[str, ...]  # MIDI class names, one per program
    split: str  # train | validation | test | omitted
    duration_s: float  # audio length as the metadata or the file header gives it
    midi_sources: tuple[MidiSource, ...] = field(default=())  # the target: the union of these files' notes

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}")
        if self.split not in (*SPLITS, OMITTED):
            raise ValueError(f"split {self.split!r} is not normalized")
        if not self.midi_sources:
            object.__setattr__(self, "midi_sources", (MidiSource(self.midi_path),))

    @property
    def key(self) -> str:
        return track_key(self.track_id)

    def to_dict(self) -> dict:
        return {"track_id": self.track_id, "dataset": self.dataset, "audio_path": self.audio_path,
                "midi_path": self.midi_path, "instrument_programs": list(self.instrument_programs),
                "instrument_names": list(self.instrument_names),
                "instrument_classes": list(self.instrument_classes), "split": self.split,
                "duration_s": self.duration_s, "midi_sources": [s.to_dict() for s in self.midi_sources]}

    @classmethod
    def from_dict(cls, d: dict) -> "TrackRecord":
        return cls(track_id=str(d["track_id"]), dataset=str(d["dataset"]), audio_path=str(d["audio_path"]),
                   midi_path=str(d["midi_path"]),
                   instrument_programs=tuple(int(p) for p in d["instrument_programs"]),
                   instrument_names=tuple(d["instrument_names"]), instrument_classes=tuple(d["instrument_classes"]),
                   split=normalize_split(d["split"]), duration_s=float(d["duration_s"]),
                   midi_sources=tuple(MidiSource.from_dict(s) for s in d.get("midi_sources", ())))


def instruments(programs) -> dict:
    """The three instrument fields of a record for a set of programs (0..128), sorted, names from General MIDI."""
    programs = tuple(sorted({int(p) for p in programs}))
    return {"instrument_programs": programs,
            "instrument_names": tuple(gm.program_name(p) for p in programs),
            "instrument_classes": tuple(gm.program_class(p) for p in programs)}


@dataclass(frozen=True)
class Skipped:
    """A track (or metadata row) left out, with the file that is wrong and why."""

    path: str
    reason: str
    split: str | None = None  # None when the split itself could not be read

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


@dataclass
class IndexResult:
    """What an indexer found: the good records and the skipped ones."""

    records: list[TrackRecord]
    skipped: list[Skipped]
