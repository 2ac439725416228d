"""`mt3ds bench tokens`: notes/s for encoding a dense multi-track piece into chunks, and for decode + stitch."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from ..tokens.codec import decode_tokens, encode_notes
from ..tokens.midi import read_midi, write_midi
from ..tokens.notes import Notes

PROGRAMS = (0, 4, 24, 33, 40, 48, 56, 65, 73, 128)  # 9 pitched tracks and drums


def generate_piece(seconds: float, notes_per_second: float = 20.0, seed: int = 0) -> Notes:
    """A dense random 10-track piece: notes of 50 ms to 2 s, drums on a 16th grid."""
    rng = np.random.default_rng(seed)
    n = int(seconds * notes_per_second)
    program = rng.choice(PROGRAMS, size=n)
    onset = np.sort(rng.uniform(0, seconds, size=n)).round(3)
    offset = onset + rng.uniform(0.05, 2.0, size=n)
    pitch = rng.integers(28, 100, size=n)
    drum = program == 128
    pitch[drum] = rng.choice([36, 38, 42, 46, 49], size=int(drum.sum()))
    onset[drum] = np.round(onset[drum] / 0.125) * 0.125
    return Notes(onset, offset, pitch, rng.integers(30, 127, size=n), program)


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_tokens(seconds: float = 300.0, repeats: int = 5) -> dict:
    """Generate a MIDI file, parse it, encode it into 2.048 s chunks and decode + stitch it back; best of N."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dense.mid"
        write_midi(generate_piece(seconds), path)
        t_parse = _best(lambda: read_midi(path), repeats)
        notes, _ = read_midi(path)
    ct = encode_notes(notes)
    t_encode = _best(lambda: encode_notes(notes), repeats)
    t_decode = _best(lambda: decode_tokens(ct), repeats)
    decoded, _ = decode_tokens(ct)
    n = len(notes)
    return {
        "notes": n,
        "chunks": len(ct),
        "tokens": int(len(ct.tokens)),
        "encode_notes_per_s": n / t_encode,
        "decode_notes_per_s": n / t_decode,
        "midi_parse_notes_per_s": n / t_parse,
        "decoded_notes": len(decoded),
    }
