"""`mt3ds index`: dataset layouts as published -> TrackRecords, one dispatch for every dataset name."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..files import write_text_atomic
from .records import DATASETS, OMITTED, SPLITS, IndexResult, normalize_split


def parse_splits(splits) -> tuple[str, ...]:
    """'train,validate' / ['test'] / None -> normalized split names (None: train, validation, test)."""
    if splits is None:
        return SPLITS
    if isinstance(splits, str):
        splits = [s for s in splits.split(",") if s.strip()]
    try:
        names = tuple(dict.fromkeys(normalize_split(s) for s in splits))
    except ValueError as e:
        raise UserError(f"--splits: {e}", exit_code=2) from None
    if not names:
        raise UserError("--splits: no split named", exit_code=2)
    return names


def index(dataset: str, root: str | Path, splits=None) -> IndexResult:
    """Records of DATASET under ROOT for SPLITS, sorted by (split, track_id); malformed tracks in `.skipped`.
    Slakh's `omitted` tracks only come when SPLITS names them."""
    splits = parse_splits(splits)
    if dataset == "maestro":
        from .maestro import index_maestro

        result = index_maestro(root, splits)
    elif dataset in ("slakh", "slakh_stems"):
        from .slakh import index_slakh

        result = index_slakh(root, splits, stems=dataset == "slakh_stems")
    else:
        raise UserError(f"--dataset: unknown dataset {dataset!r} (expected {', '.join(DATASETS)})", exit_code=2)
    order = {s: i for i, s in enumerate((*SPLITS, OMITTED))}
    result.records.sort(key=lambda r: (order[r.split], r.track_id))
    seen = set()
    for r in result.records:
        if r.key in seen:  # two ids that differ only in characters outside [A-Za-z0-9_-] would share shard keys
            raise UserError(f"{r.audio_path}: track key {r.key!r} is not unique in {root}", exit_code=2)
        seen.add(r.key)
    return result


def write_index(dataset: str, root: str | Path, out: str | Path, splits=None) -> IndexResult:
    """`mt3ds index`: write the records as JSON lines to OUT (atomically) and return them."""
    result = index(dataset, root, splits)
    out = Path(out)
    write_text_atomic(out, "".join(json.dumps(r.to_dict(), sort_keys=True) + "\n" for r in result.records))
    return result


def read_index(path: str | Path) -> list:
    """TrackRecords from a JSON-lines index file; UserError naming the line for a malformed one."""
    from .records import TrackRecord

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(TrackRecord.from_dict(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise UserError(f"{path}:{n}: not a track record ({e})") from None
    return records
