"""MAESTRO as published (v3; v1/v2 read the same): `maestro-vX.Y.Z.csv` or `.json` beside year folders of
WAV audio and MIDI. The JSON is column-oriented ({"split": {"0": "train", ...}, ...}); v2's list of rows is read
too. A row that cannot be read (bad split, missing file name, bad duration, missing file) is skipped and reported.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path, PurePosixPath

from ..errors import UserError
from .records import IndexResult, MidiSource, Skipped, TrackRecord, instruments, normalize_split

REQUIRED = ("split", "midi_filename", "audio_filename", "duration")
PIANO = 0  # MAESTRO is solo piano: every note is program 0 (docs/design.md §1.3)


def find_metadata(root: Path) -> Path:
    """The metadata file under ROOT (or ROOT/maestro-v*/): the newest version, CSV before JSON."""
    for folder in (root, *sorted(p for p in root.glob("maestro-v*") if p.is_dir())):
        for ext in ("csv", "json"):
            found = sorted(folder.glob(f"maestro-v*.{ext}"))
            if found:
                return found[-1]
    raise UserError(f"{root}: no maestro-v3.0.0.csv or .json found (expected MAESTRO as published)", exit_code=2)


def _csv_rows(path: Path) -> list[tuple[str, dict]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or ())]
            if missing:
                raise UserError(f"{path}: missing columns {', '.join(missing)}", exit_code=2)
            # line numbers count the header as line 1, as an editor shows them
            return [(f"{path}:{reader.line_num}", row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: not a readable CSV ({e})", exit_code=2) from None


def _json_rows(path: Path) -> list[tuple[str, dict]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not readable JSON ({e})", exit_code=2) from None
    if isinstance(data, list):  # v1/v2: a list of row objects
        return [(f"{path}[{i}]", row if isinstance(row, dict) else {}) for i, row in enumerate(data)]
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise UserError(f"{path}: expected MAESTRO's column-oriented JSON ({{column: {{row: value}}}})",
                        exit_code=2)
    missing = [c for c in REQUIRED if c not in data]
    if missing:
        raise UserError(f"{path}: missing columns {', '.join(missing)}", exit_code=2)
    ids = sorted({i for column in data.values() for i in column}, key=lambda i: (len(i), i))
    return [(f"{path}[{i}]", {c: column.get(i) for c, column in data.items()}) for i in ids]


def index_maestro(root: str | Path, splits=None) -> IndexResult:
    """Records for every readable row of MAESTRO's metadata whose split is in SPLITS (default: all three)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: not a folder (expected MAESTRO as published)", exit_code=2)
    meta = find_metadata(root)
    rows = _csv_rows(meta) if meta.suffix == ".csv" else _json_rows(meta)
    base = meta.parent
    records, skipped = [], []
    for where, row in rows:
        try:
            split = normalize_split(row.get("split") or "")
        except ValueError as e:
            skipped.append(Skipped(where, str(e)))
            continue
        if splits is not None and split not in splits:
            continue
        audio_name, midi_name = row.get("audio_filename"), row.get("midi_filename")
        if not audio_name or not midi_name:
            skipped.append(Skipped(where, "row without audio_filename or midi_filename", split))
            continue
        try:
            duration = float(row.get("duration"))
        except (TypeError, ValueError):
            skipped.append(Skipped(where, f"duration {row.get('duration')!r} is not a number", split))
            continue
        audio, midi = base / audio_name, base / midi_name
        if not audio.is_file():
            skipped.append(Skipped(str(audio), "missing audio file", split))
            continue
        if not midi.is_file():
            skipped.append(Skipped(str(midi), "missing MIDI file", split))
            continue
        records.append(TrackRecord(
            track_id=str(PurePosixPath(audio_name).with_suffix("")), dataset="maestro", audio_path=str(audio),
            midi_path=str(midi), split=split, duration_s=duration, **instruments([PIANO]),
            midi_sources=(MidiSource(str(midi), program=PIANO, is_drum=False),)))
    return IndexResult(records, skipped)
