"""The Option 1 vocabulary (docs/design.md §3.1): typed event ranges laid end to end after three special ids.

Ids, pinned by tests/test_vocab.py:
    PAD 0, EOS 1, UNK 2,
    shift    3..1003   (k steps of 10 ms -> 3 + k, k = 0..1000)
    pitch    1004..1091 (MIDI 21..108)
    velocity 1092..1219 (0..127; 0 is a note-off)
    tie      1220
    program  1221..1348 (0..127)
    drum     1349..1436 (MIDI 21..108)
1437 ids in all. Any change to this layout must change VOCAB_VERSION, which shards and exported models record.
"""
from __future__ import annotations

from dataclasses import dataclass

STEPS_PER_SECOND = 100
MAX_SHIFT_STEPS = 1000  # 10 s
MIN_PITCH, MAX_PITCH = 21, 108
DRUM_PROGRAM = 128  # drums share the program axis as 128 (docs/design.md §3.1)

PAD, EOS, UNK = 0, 1, 2
VOCAB_VERSION = "mt3ds-option1-v1:1437:100sps"


@dataclass(frozen=True)
class EventRange:
    """One typed range of event values and the first id it occupies."""

    type: str
    min_value: int
    max_value: int
    first_id: int

    @property
    def size(self) -> int:
        return self.max_value - self.min_value + 1

    @property
    def last_id(self) -> int:
        return self.first_id + self.size - 1

    def encode(self, value: int) -> int:
        if not self.min_value <= value <= self.max_value:
            raise ValueError(f"{self.type} value {value} outside {self.min_value}..{self.max_value}")
        return self.first_id + value - self.min_value

    def decode(self, token: int) -> int:
        return token - self.first_id + self.min_value


def _build_ranges() -> dict[str, EventRange]:
    spec = [
        ("shift", 0, MAX_SHIFT_STEPS),
        ("pitch", MIN_PITCH, MAX_PITCH),
        ("velocity", 0, 127),
        ("tie", 0, 0),
        ("program", 0, 127),
        ("drum", MIN_PITCH, MAX_PITCH),
    ]
    ranges, next_id = {}, 3
    for name, lo, hi in spec:
        ranges[name] = EventRange(name, lo, hi, next_id)
        next_id += hi - lo + 1
    return ranges


RANGES: dict[str, EventRange] = _build_ranges()
SHIFT, PITCH, VELOCITY, TIE, PROGRAM, DRUM = (RANGES[n] for n in ("shift", "pitch", "velocity", "tie", "program", "drum"))
TIE_ID = TIE.first_id
VOCAB_SIZE = DRUM.last_id + 1
SPECIAL_NAMES = {PAD: "PAD", EOS: "EOS", UNK: "UNK"}

assert VOCAB_SIZE == 1437, VOCAB_SIZE


def encode_event(type: str, value: int = 0) -> int:
    """(type, value) -> id, e.g. ("pitch", 60) -> 1043."""
    if type in ("PAD", "EOS", "UNK"):
        return {"PAD": PAD, "EOS": EOS, "UNK": UNK}[type]
    if type not in RANGES:
        raise ValueError(f"unknown event type {type!r}")
    return RANGES[type].encode(value)


def decode_event(token: int) -> tuple[str, int]:
    """id -> (type, value); special ids decode to ("PAD"|"EOS"|"UNK", 0)."""
    token = int(token)
    if token in SPECIAL_NAMES:
        return SPECIAL_NAMES[token], 0
    for r in RANGES.values():
        if r.first_id <= token <= r.last_id:
            return r.type, r.decode(token)
    raise ValueError(f"token id {token} outside the vocabulary (0..{VOCAB_SIZE - 1})")


def event_name(token: int) -> str:
    """Human-readable name of one id, e.g. 'pitch 60', 'shift 50', 'EOS'."""
    type, value = decode_event(token)
    if type in SPECIAL_NAMES.values() or type == "tie":
        return type
    return f"{type} {value}"


def describe() -> dict:
    """The vocabulary as JSON (the ranges of docs/design.md §3.1)."""
    entries = [{"type": "special", "name": n, "id": i} for i, n in SPECIAL_NAMES.items()]
    for r in RANGES.values():
        if r.size == 1:
            entries.append({"type": r.type, "id": r.first_id})
        else:
            entries.append({"type": r.type, "min_id": r.first_id, "max_id": r.last_id})
    return {"version": VOCAB_VERSION, "steps_per_second": STEPS_PER_SECOND, "cumulative_vocabulary": entries,
            "total_size": VOCAB_SIZE}
