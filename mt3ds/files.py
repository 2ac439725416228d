"""Writing files so that nothing half written looks complete, and the .npy bytes every format stores.

Every writer in the package goes through `atomic_path`: the data goes to a hidden temporary name in the same folder
(`.NAME.PID.tmp`, so two processes never share one and every cleanup that removes `*.tmp` finds it), is renamed
over the final name only when complete, and is removed if writing fails.
"""
from __future__ import annotations

import io
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np


def temp_name(path: Path) -> Path:
    """The temporary name `path` is written under before it is renamed into place."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it to `path` (optionally chmod first), else remove it."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path, data: bytes) -> None:
    """Write `data` to `path` through a temporary name (a reader sees the old file or the whole new one)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path, text: str) -> None:
    """`write_bytes_atomic` for UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


def json_bytes(obj) -> bytes:
    """Stable JSON (sorted keys, one space indent, final newline): the same object gives the same bytes."""
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode("utf-8")


def npy_bytes(a: np.ndarray) -> bytes:
    """An array as the bytes of a .npy file (no pickle: object arrays are refused)."""
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def npy_load(data: bytes) -> np.ndarray:
    """The array in a .npy file's bytes; pickled (object) arrays are refused."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def check_writable(path, folder: bool = False) -> None:
    """Refuse an output path that cannot be written before any work starts: UserError (exit 2) naming it.

    A file output may exist as a file, a folder output as a folder; either may not exist yet. The nearest existing
    folder at or above where it goes must take a new file: that is tried (a probe file made and removed), not read
    from the permission bits, which root passes everywhere, even in /proc."""
    import tempfile

    from .errors import UserError

    path = Path(path)
    if path.is_dir() and not folder:
        raise UserError(f"{path}: is a folder; name a file to write", exit_code=2)
    if path.exists() and not path.is_dir() and folder:
        raise UserError(f"{path}: exists and is not a folder", exit_code=2)
    here = path if path.is_dir() else path.parent
    while not here.exists() and here != here.parent:
        here = here.parent
    if here.exists() and not here.is_dir():
        raise UserError(f"{path}: cannot be written: {here} is a file, not a folder", exit_code=2)
    try:
        fd, probe = tempfile.mkstemp(prefix=".mt3ds-probe-", dir=here)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{path}: cannot be written: {here} takes no new files ({e.strerror or e})",
                        exit_code=2) from None
