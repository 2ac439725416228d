"""A parsed work -> one render's arrangement: instruments, tempo curve, humanized notes, drums, pedal, in MIDI ticks.

Everything random comes from one seeded generator per render, drawn in a fixed order, so a render is a pure
function of (work, seed, layout, banks). The arrangement is kept in MIDI ticks under a tempo map with one
tempo per quarter note: the MIDI files are written from it and the audio is rendered from the same ticks, so the
two agree to the tick (about 0.5 ms).

What varies per render: the ensemble style and a General MIDI program per part (from families that suit the
part's register and range), transposition (whole piece, plus octave shifts per part to fit its instrument),
tempo (the marked tempo scaled, or one chosen from the note values, with slow drift and a final ritardando),
onset timing (part bias, shared chord jitter and per-note jitter: about 10 ms in all), articulation, velocity
(phrase curves shared by the ensemble and per part, metric accents, the score's own dynamics, noise), a drum
part for a share of renders, sustain pedal on piano parts, a bank per stem (banks.py), the players' controllers
and the mix settings (expression.py), and a room for a share of tracks.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..tokens import gm
from ..tokens.vocab import DRUM_PROGRAM, MAX_PITCH, MIN_PITCH
from .corpus import Part, Piece
from .drums import _meter, drum_part

TPQ = 960  # ticks per quarter note in every file written
LAYOUTS = ("slakh", "maestro")
MAX_STEMS = 8


@dataclass(frozen=True)
class Instrument:
    """A General MIDI program as an arranger sees it."""

    program: int
    low: int  # lowest MIDI pitch it plays well
    high: int  # highest
    poly: bool  # plays chords
    palettes: frozenset  # ensemble styles it belongs to: band, orchestra, chamber
    roles: frozenset  # bass, mid, top: where in the texture it sits
    weight: float  # how often it is picked among those that fit


# program low high poly palettes roles weight. Ranges are practical ranges of the instrument (a little inside
# the SoundFonts' key ranges); FX, percussive and sound-effect programs are left out.
_TABLE = """
0 21 108 1 band,orchestra,chamber bass,mid,top 2
1 21 108 1 band,chamber mid,top 1
2 21 108 1 band mid,top 0.7
3 21 108 1 band mid,top 0.4
4 28 103 1 band,chamber bass,mid,top 1.5
5 28 103 1 band mid,top 1
6 29 89 1 chamber,orchestra bass,mid,top 1
7 29 96 1 band mid,top 0.6
8 60 108 1 orchestra,chamber top 0.5
9 72 108 0 orchestra top 0.4
10 60 96 1 chamber top 0.3
11 53 89 1 band,chamber mid,top 0.8
12 45 96 1 chamber,band mid,top 0.8
13 65 108 0 orchestra top 0.4
14 60 77 1 orchestra top 0.2
15 48 84 1 chamber mid,top 0.3
16 24 96 1 band bass,mid,top 1
17 24 96 1 band mid,top 0.6
18 24 96 1 band mid,top 0.6
19 21 108 1 orchestra,chamber bass,mid,top 0.8
20 36 96 1 chamber mid,top 0.4
21 41 89 1 chamber,band mid,top 0.6
22 60 96 0 band top 0.4
23 41 89 1 band mid,top 0.3
24 40 83 1 band,chamber mid,top 1.5
25 40 84 1 band mid,top 1.5
26 40 86 1 band mid,top 1
27 40 86 1 band mid,top 1.2
28 40 83 1 band mid,top 0.5
29 40 86 1 band mid,top 1
30 40 86 1 band mid,top 1
32 28 55 0 band,chamber bass 1.5
33 28 60 0 band bass 2
34 28 60 0 band bass 1.5
35 28 60 0 band bass 1
36 28 60 0 band bass 0.4
37 28 60 0 band bass 0.3
38 24 60 0 band bass 0.8
39 24 60 0 band bass 0.6
40 55 100 0 orchestra,chamber mid,top 2
41 48 88 0 orchestra,chamber mid 1.2
42 36 76 0 orchestra,chamber bass,mid 1.5
43 28 60 0 orchestra bass 1
44 28 96 1 orchestra mid,top 0.4
45 28 96 1 orchestra,band bass,mid,top 0.5
46 24 103 1 orchestra,chamber bass,mid,top 0.8
48 28 96 1 orchestra,band bass,mid,top 1.5
49 28 96 1 orchestra,band mid,top 0.8
50 36 96 1 band mid,top 0.8
51 36 96 1 band mid,top 0.5
52 48 79 1 orchestra,band mid,top 0.6
53 48 79 1 band,chamber mid,top 0.5
54 48 84 1 band mid,top 0.4
56 54 86 0 orchestra,band mid,top 1
57 40 72 0 orchestra,band bass,mid 0.8
58 28 58 0 orchestra bass 0.6
59 54 82 0 band top 0.4
60 41 77 0 orchestra,chamber mid 1
61 36 84 1 band,orchestra mid,top 0.8
62 36 84 1 band mid,top 0.5
63 36 84 1 band mid,top 0.4
64 56 87 0 band,chamber top 0.6
65 49 81 0 band mid,top 0.8
66 44 76 0 band mid 0.8
67 36 69 0 band bass,mid 0.5
68 58 91 0 orchestra,chamber top 1
69 52 81 0 orchestra mid,top 0.5
70 34 75 0 orchestra,chamber bass,mid 1
71 50 91 0 orchestra,chamber,band mid,top 1
72 74 108 0 orchestra top 0.3
73 60 96 0 orchestra,chamber,band top 1.2
74 60 96 0 chamber top 0.5
75 60 96 0 band top 0.4
76 60 84 0 band top 0.2
77 55 84 0 chamber top 0.2
78 60 96 0 band top 0.2
79 60 84 0 band top 0.2
80 36 96 0 band mid,top 0.7
81 36 96 0 band bass,mid,top 0.7
82 48 96 0 band top 0.3
83 48 96 0 band top 0.3
84 40 86 0 band mid,top 0.4
85 48 84 0 band top 0.3
86 36 84 0 band top 0.2
87 28 72 0 band bass 0.4
88 36 96 1 band mid,top 0.6
89 36 96 1 band mid,top 0.8
90 36 96 1 band mid 0.5
91 36 96 1 band mid 0.4
92 36 96 1 band mid 0.3
93 36 96 1 band mid 0.2
94 36 96 1 band mid 0.3
95 36 96 1 band mid 0.3
104 48 77 1 band mid,top 0.2
105 48 84 1 band mid,top 0.3
106 50 79 1 band top 0.1
107 55 90 1 chamber top 0.2
108 60 84 1 band top 0.2
109 55 77 0 band top 0.1
110 55 96 0 band,chamber top 0.4
111 60 84 0 band top 0.1
114 52 76 1 band top 0.2
"""


def _read_table() -> dict[int, Instrument]:
    table = {}
    for line in _TABLE.strip().splitlines():
        prog, low, high, poly, palettes, roles, weight = line.split()
        table[int(prog)] = Instrument(int(prog), int(low), int(high), poly == "1", frozenset(palettes.split(",")),
                                      frozenset(roles.split(",")), float(weight))
    return table


INSTRUMENTS = _read_table()
# Sustained instruments are played legato; plucked and struck ones more detached.
LEGATO = frozenset([*range(16, 24), *range(40, 45), *range(48, 55), *range(56, 80), *range(80, 96), 109, 110, 111])
PIANOS = frozenset(range(0, 6))  # the programs that get sustain pedal
KEYBOARD_NAMES = re.compile(r"piano|klavier|clavier|cembalo|harpsichord|organ|orgel|keyboard|harp", re.IGNORECASE)
# (style, probability, probability of a drum part). 'score' keeps the instruments the score names.
STYLES = (("band", 0.40, 0.75), ("orchestra", 0.22, 0.12), ("chamber", 0.16, 0.2), ("mixed", 0.14, 0.4),
          ("score", 0.08, 0.1))


@dataclass
class Stem:
    """One instrument of a render: its notes in ticks, how it is played back, what it plays of the score."""

    name: str  # General MIDI program name ('Drums' for the kit)
    program: int  # 0..127, or 128 for drums (as Slakh's metadata writes it)
    midi_program: int  # the program in the MIDI file; for drums the bank-128 kit preset
    bank: object  # the Bank it is rendered with (a SoundFont path is read as a FluidSynth bank)
    onset: np.ndarray  # int64 ticks
    offset: np.ndarray  # int64 ticks
    pitch: np.ndarray  # int32
    velocity: np.ndarray  # int32 1..127
    pedal: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))  # [n, 2] (tick, CC64 value)
    parts: tuple = ()  # the score parts it plays
    gain_db: float = 0.0  # mix level relative to the other stems at equal loudness
    controls: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))  # [n, 3] (tick, CC, value)
    bend: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))  # [n, 2] (tick, -8192..8191)
    pan: float = 0.0  # -1 left .. 1 right (CC10), before the mono downmix
    eq_tilt_db: float = 0.0  # highs up / lows down by half of it each (render.tilt)
    reverb: float = 0.0  # send to the track's room (0: dry)
    voicing: dict = field(default_factory=dict)  # SoundFont generator offsets (expression.VOICING), FluidSynth only
    fallback: bool = False  # rendered by another bank than the one first chosen (it lacked the program)

    def __post_init__(self):
        if isinstance(self.bank, (str, Path)):
            self.bank = _bank_from_path(str(self.bank))

    @property
    def is_drum(self) -> bool:
        return self.program == DRUM_PROGRAM

    @property
    def pan_cc(self) -> int:
        return int(np.clip(round(64 + 63 * self.pan), 1, 127))


@lru_cache(maxsize=32)
def _bank_from_path(path: str):
    from .banks import soundfont_bank

    return soundfont_bank(path)


def as_palette(banks):
    """A Palette from a Palette, a list of Banks, or a list of SoundFont paths (read as FluidSynth banks)."""
    from .banks import Bank, Palette

    if isinstance(banks, Palette):
        return banks
    return Palette([b if isinstance(b, Bank) else _bank_from_path(str(b)) for b in banks])


@dataclass
class Arrangement:
    """One render: a tempo map with one tempo per quarter note, the meter, and the stems."""

    tempo_tick: np.ndarray  # int64 ticks where the tempo changes (first is 0)
    tempo_mspq: np.ndarray  # int64 microseconds per quarter from each change on
    time_signatures: list  # [(tick, numerator, denominator)]
    stems: list  # [Stem]
    info: dict  # how it was made (style, transposition, tempo, excerpt...), for metadata

    def seconds(self, ticks) -> np.ndarray:
        """Ticks -> seconds through the tempo map (what a MIDI reader computes)."""
        ticks = np.asarray(ticks, dtype=np.float64)
        start = np.concatenate([[0.0], np.cumsum(np.diff(self.tempo_tick) * self.tempo_mspq[:-1])]) / (1e6 * TPQ)
        i = np.maximum(np.searchsorted(self.tempo_tick, ticks, side="right") - 1, 0)
        return start[i] + (ticks - self.tempo_tick[i]) * self.tempo_mspq[i] / (1e6 * TPQ)

    @property
    def end_tick(self) -> int:
        return max((int(s.offset.max()) for s in self.stems if len(s.offset)), default=0)


# ---------------------------------------------------------------------------------------------------------------
# Tempo


def _tempo_grid(piece: Piece, parts: list[Part], rng: np.random.Generator, grid: np.ndarray) -> tuple:
    """(qpm at every grid point, tempo scale): the score's tempo or a chosen one, scaled, drifting, slowing at
    the end, and kept where the median note lasts 0.15-1.0 s."""
    durations = np.concatenate([p.duration for p in parts])
    median_q = float(np.median(durations[durations > 0])) if (durations > 0).any() else 1.0
    if piece.tempo_marked:
        idx = np.maximum(np.searchsorted(piece.tempos[:, 0], grid, side="right") - 1, 0)
        base = piece.tempos[idx, 1]
        scale = rng.uniform(0.85, 1.2)
    else:  # no marked tempo: pick one that gives the median note a plausible length
        base = np.full(len(grid), 60.0 * median_q / rng.uniform(0.35, 0.75))
        scale = 1.0
    qpm = base * scale
    amplitude = rng.uniform(0.0, 0.04)
    periods, phases = rng.uniform(8, 48, 3), rng.uniform(0, 2 * np.pi, 3)
    qpm = qpm * (1 + amplitude * np.sin(2 * np.pi * grid[:, None] / periods + phases).sum(1) / np.sqrt(3))
    if rng.random() < 0.5:  # ritardando over the last beats
        span, depth = rng.uniform(2, 6), rng.uniform(0.1, 0.3)
        ramp = np.clip((grid - (piece.end - span)) / span, 0, 1)
        qpm = qpm * (1 - depth * ramp)
    median_s = median_q * 60.0 / float(np.median(qpm))
    qpm = qpm * (median_s / np.clip(median_s, 0.15, 1.0))
    qpm = np.clip(qpm, 30.0, 260.0)
    return qpm, float(scale * median_s / np.clip(median_s, 0.15, 1.0))


# ---------------------------------------------------------------------------------------------------------------
# Instruments


def _polyphony(part: Part) -> float:
    """Share of notes struck together with another note of the part (chords, double stops). A sustained second
    voice under a moving one does not count: one player of a melody instrument can suggest it."""
    if len(part.onset) < 2:
        return 0.0
    _, counts = np.unique(np.round(part.onset, 6), return_counts=True)
    return float(counts[counts > 1].sum() / len(part.onset))


def _fit(lo: float, hi: float, inst: Instrument, prefer_down: bool) -> int | None:
    """The octave shift (0, then +-12, +-24) that puts [lo, hi] inside the instrument's range, or None."""
    shifts = (0, -12, 12, -24, 24) if prefer_down else (0, 12, -12, 24, -24)
    for s in shifts:
        if inst.low <= lo + s and hi + s <= inst.high:
            return s
    return None


def _choose_program(pitches: np.ndarray, role: str, poly: bool, style: str, used: set, rng: np.random.Generator,
                    score_program: int | None) -> tuple[int, int]:
    """(program, octave shift) for a group of parts playing PITCHES (already transposed)."""
    lo, hi = np.percentile(pitches, 2), np.percentile(pitches, 98)
    if score_program is not None and score_program in INSTRUMENTS:
        shift = _fit(lo, hi, INSTRUMENTS[score_program], role == "bass")
        if shift is not None:
            return score_program, shift
    for relax in range(3):  # palette and role, then role only, then anything that fits
        cands, weights, shifts = [], [], []
        for inst in INSTRUMENTS.values():
            if relax < 2 and role not in inst.roles:
                continue
            if relax < 1 and style not in ("mixed", "score") and style not in inst.palettes:
                continue
            if poly and not inst.poly:
                continue
            shift = _fit(lo, hi, inst, role == "bass")
            if shift is None:
                continue
            cands.append(inst.program)
            shifts.append(shift)
            weights.append(inst.weight * (0.08 if inst.program in used else 1.0))
        if cands:
            w = np.asarray(weights) / np.sum(weights)
            i = int(rng.choice(len(cands), p=w))
            return cands[i], shifts[i]
    return 0, 0  # the piano fits every pitch the vocabulary has


def _fold(pitch: np.ndarray, low: int, high: int) -> np.ndarray:
    """Move notes outside [low, high] by octaves until they fit."""
    pitch = pitch.copy()
    below = pitch < low
    pitch[below] += 12 * np.ceil((low - pitch[below]) / 12).astype(np.int32)
    above = pitch > high
    pitch[above] -= 12 * np.ceil((pitch[above] - high) / 12).astype(np.int32)
    return np.clip(pitch, max(low, MIN_PITCH), min(high, MAX_PITCH))


def _groups(parts: list[Part], rng: np.random.Generator, layout: str) -> list[list[int]]:
    """Which parts each stem plays, lowest first. The staves of one keyboard (or harp) part mostly stay one
    instrument; two middle voices are sometimes merged onto one chord instrument; at most MAX_STEMS stems.
    MAESTRO: one piano plays everything."""
    if layout == "maestro":
        return [list(range(len(parts)))]
    units: list[list[int]] = []
    for i, p in enumerate(parts):
        prev = parts[units[-1][-1]] if units else None
        if (prev is not None and KEYBOARD_NAMES.search(p.name) and p.name == prev.name
                and p.program == prev.program and rng.random() < 0.75):
            units[-1].append(i)
        else:
            units.append([i])
    if len(units) == 1:  # a keyboard piece alone: its hands become two instruments (Slakh mixes ensembles)
        units = [[i] for i in range(len(parts))]
    centers = [np.median(np.concatenate([parts[i].pitch for i in u])) for u in units]
    groups = [units[i] for i in np.argsort(centers, kind="stable")]
    if len(groups) >= 4 and rng.random() < 0.3:
        j = int(rng.integers(1, len(groups) - 2))
        groups[j:j + 2] = [groups[j] + groups[j + 1]]
    while len(groups) > MAX_STEMS:
        centers = [np.median(np.concatenate([parts[i].pitch for i in g])) for g in groups]
        j = int(np.argmin(np.diff(centers)))
        groups[j:j + 2] = [groups[j] + groups[j + 1]]
    return groups


# ---------------------------------------------------------------------------------------------------------------
# The arrangement


def _pick_style(rng: np.random.Generator, layout: str, piece: Piece) -> tuple[str, float]:
    if layout == "maestro":
        return "piano", 0.0
    names = [s[0] for s in STYLES]
    probs = np.array([s[1] for s in STYLES])
    i = int(rng.choice(len(STYLES), p=probs / probs.sum()))
    style, p_drums = names[i], STYLES[i][2]
    if style == "score" and not any(p.program for p in piece.parts):
        style = "chamber"  # the score names no instruments
    return style, p_drums


def _excerpt(piece: Piece, grid: np.ndarray, seconds_at: np.ndarray, max_seconds: float,
             rng: np.random.Generator) -> tuple[float, float]:
    """(start, end) in quarters: the whole piece, or whole bars lasting at most MAX_SECONDS from a random bar."""
    total = float(np.interp(piece.end, grid, seconds_at))
    if total <= max_seconds:
        return 0.0, piece.end
    bars = piece.bar_starts[piece.bar_starts < piece.end]
    bar_s = np.interp(bars, grid, seconds_at)
    starts = bars[bar_s <= total - max_seconds]
    q0 = float(rng.choice(starts)) if len(starts) else 0.0
    s0 = float(np.interp(q0, grid, seconds_at))
    ends = bars[(bars > q0) & (bar_s - s0 <= max_seconds)]
    q1 = float(ends[-1]) if len(ends) and ends[-1] > q0 else float(np.interp(s0 + max_seconds, seconds_at, grid))
    return q0, q1


def pick_bank(palette, program: int, rng: np.random.Generator):
    """(bank, fallback): a bank of PALETTE by weight; when it lacks PROGRAM, one that has it (fallback True).
    ValueError when no bank of the palette plays PROGRAM."""
    first = None
    pitched = [b for b in palette.banks if b.presets]  # Hydrogen kits and kit-only banks play no programs
    weights = np.array([b.weight for b in pitched], dtype=np.float64)
    if program == DRUM_PROGRAM:
        first = palette.choose(program, rng)
    elif len(weights):
        first = pitched[int(rng.choice(len(weights), p=weights / weights.sum()))]
    if first is not None and first.has(program):
        return first, False
    other = palette.choose(program, rng)
    if other is None:
        raise ValueError(f"no bank plays {gm.program_name(program)} (program {program})")
    return other, True


def finish_drums(stem: Stem) -> Stem | None:
    """A drum stem as its bank plays it: a Hydrogen kit plays some keys as others (drumkit.kit_keys) and lacks
    some; the targets follow. None when nothing is left."""
    from .banks import DRUMKIT
    from .drumkit import kit_keys

    if stem.bank.engine != DRUMKIT:
        return stem
    pitch = kit_keys(stem.bank.path, stem.pitch)
    keep = pitch >= 0
    stem.onset, stem.offset, stem.pitch, stem.velocity = (stem.onset[keep], stem.offset[keep], pitch[keep],
                                                          stem.velocity[keep])
    if not len(stem.onset):
        return None
    # two keys played as one: one hit per (tick, key)
    order = np.lexsort((stem.pitch, stem.onset))
    stem.onset, stem.offset, stem.pitch, stem.velocity = (a[order] for a in (stem.onset, stem.offset, stem.pitch,
                                                                             stem.velocity))
    dup = np.concatenate([[False], (np.diff(stem.onset) == 0) & (np.diff(stem.pitch) == 0)])
    stem.onset, stem.offset, stem.pitch, stem.velocity = (a[~dup] for a in (stem.onset, stem.offset, stem.pitch,
                                                                            stem.velocity))
    return stem


def arrange(piece: Piece, seed: int, layout: str, banks, max_seconds: float = 300.0) -> Arrangement:
    """One render of PIECE, a pure function of its arguments (BANKS: a Palette, Banks or SoundFont paths).
    Raises ValueError for a piece it cannot use."""
    from .expression import express, mix_settings

    palette = as_palette(banks)
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    parts = [p for p in piece.parts if len(p.pitch)]
    if not parts:
        raise ValueError("no notes")
    if layout == "slakh" and len(parts) < 2:
        raise ValueError("a single part (the Slakh layout needs an ensemble)")
    rng = np.random.default_rng(seed)
    style, p_drums = _pick_style(rng, layout, piece)

    # Tempo on a fine grid of quarters, seconds by integration, and the stretch of music this render plays.
    grid = np.arange(0.0, piece.end + 16.0, 0.125)
    qpm_grid, tempo_scale = _tempo_grid(piece, parts, rng, grid)
    seconds_at = np.concatenate([[0.0], np.cumsum(60.0 / qpm_grid[:-1] * 0.125)])
    q0, q1 = _excerpt(piece, grid, seconds_at, max_seconds, rng)
    # A lead-in of whole quarters, so that the score's beats fall on the MIDI file's quarter grid.
    qpm0 = float(np.interp(q0, grid, qpm_grid))
    lead_q = float(max(1, int(np.ceil(rng.uniform(0.25, 0.6) * qpm0 / 60.0))))
    lead_s = lead_q * 60.0 / qpm0

    # The MIDI tempo map: one tempo per quarter of the file's timeline u = q - q0 + lead_q.
    n_quarters = int(np.ceil(q1 - q0 + lead_q)) + 8
    mids = np.clip(q0 - lead_q + np.arange(n_quarters) + 0.5, 0.0, grid[-1])
    mspq = np.round(60e6 / np.interp(mids, grid, qpm_grid)).astype(np.int64)
    change = np.concatenate([[True], mspq[1:] != mspq[:-1]])
    tempo_tick, tempo_mspq = np.flatnonzero(change).astype(np.int64) * TPQ, mspq[change]
    qpm_at_u = lambda u: 60e6 / mspq[np.clip(np.floor(u).astype(np.int64), 0, n_quarters - 1)]  # noqa: E731
    arr_seconds = Arrangement(tempo_tick, tempo_mspq, [], [], {}).seconds

    def ticks(u):
        return np.maximum(np.round(np.asarray(u) * TPQ), 0).astype(np.int64)

    sig_q = [q for q, _, _ in piece.time_signatures]
    first = max(0, int(np.searchsorted(sig_q, q0 + 1e-9, side="right")) - 1)
    meters_u = [(lead_q, *piece.time_signatures[first][1:])] + [
        (q - q0 + lead_q, n, d) for q, n, d in piece.time_signatures if q0 < q < q1]
    bars_u = np.array([b - q0 + lead_q for b in piece.bar_starts if q0 - 1e-9 <= b < q1], dtype=np.float64)
    if len(bars_u) == 0 or bars_u[0] > lead_q + 1e-9:
        bars_u = np.concatenate([[lead_q], bars_u])
    time_signatures = _midi_meters(bars_u, meters_u, ticks)

    # Instruments.
    transpose = 0 if rng.random() < (0.3 if layout == "slakh" else 0.5) else (
        int(rng.integers(-5, 7)) if layout == "slakh" else int(rng.integers(-3, 4)))
    groups = _groups(parts, rng, layout)
    tightness = rng.uniform(0.5, 1.4)  # how loose this performance is: scales every timing jitter
    ensemble_curve = (rng.uniform(6, 16) if layout == "slakh" else rng.uniform(10, 24),
                      rng.uniform(8, 32), rng.uniform(0, 2 * np.pi))  # (depth, period in quarters, phase)
    used: set[int] = set()
    stems: list[Stem] = []
    for g, group in enumerate(groups):
        role = "top" if g == len(groups) - 1 else "bass" if g == 0 and len(groups) > 1 else "mid"
        pitches = np.concatenate([parts[i].pitch for i in group]) + transpose
        # double stops here and there do not make a violin part a piano part
        poly = len(group) > 1 or max(_polyphony(parts[i]) for i in group) > 0.35
        if layout == "maestro":
            program, shift = 0, 0
        else:
            score_program = parts[group[0]].program if style == "score" and len(group) == 1 else None
            program, shift = _choose_program(pitches, role, poly, style, used, rng, score_program)
        used.add(program)
        inst = INSTRUMENTS.get(program, INSTRUMENTS[0])
        legato = program in LEGATO
        cols = {k: [] for k in ("on", "off", "pitch", "vel")}
        for part in _without_unisons([parts[i] for i in group]):
            sel = (part.onset >= q0 - 1e-9) & (part.onset < q1 - 1e-9)
            if not sel.any():
                continue
            p = part.select(sel)
            u_on = p.onset - q0 + lead_q
            dur = np.minimum(p.duration, q1 - p.onset)
            n = len(u_on)
            # timing: part bias + one jitter per chord (notes struck together) + per-note jitter, ~10 ms in all
            _, chord = np.unique(u_on, return_inverse=True)
            jitter = (rng.normal(0, 0.004) + rng.normal(0, 0.007 * tightness, chord.max() + 1)[chord]
                      + rng.normal(0, 0.003 * tightness, n))
            jitter = np.clip(jitter, -0.04, 0.04)
            qps = qpm_at_u(u_on) / 60.0
            u_on_h = u_on + jitter * qps
            artic = (rng.uniform(0.85, 1.0) if legato else rng.uniform(0.65, 0.95)) * rng.normal(1, 0.04, n)
            u_off = u_on_h + np.maximum(dur * artic, 0.05 * qps) + rng.normal(0, 0.004, n) * qps
            # velocity: the player's level, the score's dynamics, shared and own phrase curves, accents, noise
            base = rng.uniform(55, 100) if layout == "slakh" else rng.uniform(45, 90)
            own = (rng.uniform(3, 8), rng.uniform(6, 24), rng.uniform(0, 2 * np.pi))
            depth, period, phase = ensemble_curve
            vel = (base + 0.5 * (p.velocity - np.median(p.velocity))
                   + depth * np.sin(2 * np.pi * u_on / period + phase)
                   + own[0] * np.sin(2 * np.pi * u_on / own[1] + own[2])
                   + _accents(u_on, bars_u, meters_u, rng.uniform(3, 9))
                   + rng.normal(0, 5, n) + (rng.uniform(0, 8) if role == "top" else 0.0))
            cols["on"].append(ticks(u_on_h))
            cols["off"].append(ticks(u_off))
            cols["pitch"].append(_fold(p.pitch + transpose + shift, inst.low, inst.high))
            cols["vel"].append(np.clip(np.round(vel), 1, 127).astype(np.int32))
        if not cols["on"]:
            continue
        on, off, pitch, vel = _resolve_overlaps(*(np.concatenate(cols[k]) for k in ("on", "off", "pitch", "vel")))
        pedal = np.zeros((0, 2), np.int64)
        if program in PIANOS and rng.random() < (0.75 if layout == "maestro" else 0.4):
            pedal = _pedal(on, off, bars_u, meters_u, qpm_at_u, rng, ticks)
        bank, fallback = pick_bank(palette, program, rng)
        stem = Stem(gm.program_name(program), program, program, bank, on, off, pitch, vel, pedal,
                    tuple(parts[i].name for i in group), fallback=fallback)
        if layout == "slakh":
            express(stem, arr_seconds, rng)
            mix_settings(stem, {"top": "lead", "bass": "bass"}.get(role, "comp"), style, rng)
        stems.append(stem)
    if not stems:
        raise ValueError("no notes in the chosen excerpt")

    drums = layout == "slakh" and rng.random() < p_drums
    kit = None
    if drums:
        part = drum_part(bars_u, meters_u, q1 - q0 + lead_q, rng, style)
        if len(part.onset):
            jitter = np.clip(rng.normal(0, 0.005 * tightness, len(part.onset)), -0.03, 0.03)
            on = ticks(part.onset + jitter * qpm_at_u(part.onset) / 60.0)
            vel = np.clip(np.round(part.velocity + rng.normal(0, 5, len(on))), 1, 127).astype(np.int32)
            order = np.lexsort((part.pitch, on))
            kit = part.kit
            bank, fallback = pick_bank(palette, DRUM_PROGRAM, rng)
            stem = finish_drums(Stem(gm.DRUMS_NAME, DRUM_PROGRAM, part.kit, bank, on[order], on[order] + TPQ // 8,
                                     part.pitch[order], vel[order], parts=("generated drums",), fallback=fallback))
            if stem is not None:
                mix_settings(stem, "drums", style, rng)
                stems.append(stem)
    room = float(rng.uniform(0.3, 1.6)) if layout == "slakh" and rng.random() < 0.5 else None
    info = {"style": style, "transpose": transpose, "tempo_scale": round(tempo_scale, 4),
            "median_qpm": round(float(np.median(60e6 / tempo_mspq)), 2), "excerpt_quarters": [q0, q1],
            "lead_in_s": round(lead_s, 4), "tightness": round(tightness, 4), "drums": kit is not None,
            "drum_kit": kit, "quarters": round(q1 - q0, 4),
            "room_rt60": None if room is None else round(room, 3)}
    return Arrangement(tempo_tick, tempo_mspq, time_signatures, stems, info)


def _midi_meters(bars_u: np.ndarray, meters_u: list, ticks) -> list:
    """Time signatures for the MIDI file: the lead-in (and a pickup) as one short bar where a meter can say its
    length, then the piece's meters, so bar lines in the file fall where the score has them."""
    m = _meter(*meters_u[0][1:])
    pickup = len(bars_u) > 1 and bars_u[1] - bars_u[0] < m.beats * m.beat - 1e-6
    first_full = float(bars_u[1] if pickup else bars_u[0])
    out = []
    for den in (4, 8, 16):
        num = first_full * den / 4
        if abs(num - round(num)) < 1e-6 and 1 <= round(num) <= 64:
            out.append((0, int(round(num)), den))
            break
    out.append((int(ticks(first_full)), *meters_u[0][1:]))
    out += [(int(ticks(u)), n, d) for u, n, d in meters_u[1:]]
    if len(out) > 1 and out[0][0] == out[1][0]:  # no room for a lead-in bar: the piece's meter from the start
        out = out[1:]
    if out[0][0] != 0:
        out[0] = (0, *out[0][1:])
    return out


def _accents(u: np.ndarray, bars_u: np.ndarray, meters_u: list, amount: float) -> np.ndarray:
    """Velocity added on downbeats (AMOUNT) and other beats (half of it)."""
    b = np.maximum(np.searchsorted(bars_u, u + 1e-6, side="right") - 1, 0)
    pos = u - bars_u[b]
    sig_u = [m[0] for m in meters_u]
    beat = np.array([_meter(*meters_u[max(0, int(np.searchsorted(sig_u, x + 1e-9, side="right")) - 1)][1:]).beat
                     for x in bars_u])[b]
    on_beat = np.abs(pos / beat - np.round(pos / beat)) < 1e-3
    return np.where(pos < 1e-3, amount, np.where(on_beat, amount / 2, 0.0))


def _without_unisons(parts: list[Part]) -> list[Part]:
    """Parts that one instrument plays together: of the notes with the same onset and pitch (in two parts, or
    twice in one) the first is kept, lasting as long as the longest, so a unison is struck once."""
    which = np.concatenate([np.full(len(p.onset), i) for i, p in enumerate(parts)])
    index = np.concatenate([np.arange(len(p.onset)) for p in parts])
    onset = np.round(np.concatenate([p.onset for p in parts]), 6)
    pitch = np.concatenate([p.pitch for p in parts])
    duration = np.concatenate([p.duration for p in parts])
    order = np.lexsort((index, which, onset, pitch))  # duplicates adjacent, the first of each run first
    same = (np.diff(onset[order]) == 0) & (np.diff(pitch[order]) == 0)
    run_start = np.concatenate([[True], ~same])
    run_id = np.cumsum(run_start) - 1
    longest = np.maximum.reduceat(duration[order], np.flatnonzero(run_start))
    keep = np.zeros(len(onset), dtype=bool)
    keep[order[run_start]] = True
    new_duration = duration.copy()
    new_duration[order] = longest[run_id]
    out, start = [], 0
    for i, p in enumerate(parts):
        sel = slice(start, start + len(p.onset))
        k = keep[sel]
        out.append(Part(p.name, p.program, p.onset[k], new_duration[sel][k], p.pitch[k], p.velocity[k]))
        start += len(p.onset)
    return out


def _resolve_overlaps(on, off, pitch, vel):
    """Per pitch, in time order: notes struck together (merged voices in unison) become one; a note still sounding
    when the same pitch is struck again ends 2 ticks before it. A MIDI reader then pairs every note-on/off as here."""
    order = np.lexsort((on, pitch))
    on, off, pitch, vel = on[order].copy(), off[order].copy(), pitch[order], vel[order].copy()
    off = np.maximum(off, on + 1)
    keep = np.ones(len(on), dtype=bool)
    last = -1
    for i in range(len(on)):
        if last >= 0 and pitch[i] == pitch[last]:
            if on[i] - on[last] < TPQ // 32:
                off[last] = max(off[last], off[i])
                vel[last] = max(vel[last], vel[i])
                keep[i] = False
                continue
            off[last] = min(off[last], on[i] - 2)
        last = i
    on, off, pitch, vel = on[keep], off[keep], pitch[keep], vel[keep]
    order = np.lexsort((pitch, on))
    return on[order], off[order], pitch[order], vel[order]


def _pedal(on, off, bars_u, meters_u, qpm_at_u, rng, ticks) -> np.ndarray:
    """Legato pedalling: the pedal is lifted just after each change point (every bar, half bar or beat) and put
    down again a moment later; some stretches are played without pedal. [n, 2] (tick, 127 or 0)."""
    start_u, end_u = on.min() / TPQ, off.max() / TPQ
    per = rng.choice(["bar", "half", "beat"], p=[0.5, 0.3, 0.2])
    points = []
    sig_u = [m[0] for m in meters_u]
    for b, u0 in enumerate(bars_u):
        u1 = bars_u[b + 1] if b + 1 < len(bars_u) else end_u
        m = _meter(*meters_u[max(0, int(np.searchsorted(sig_u, u0 + 1e-9, side="right")) - 1)][1:])
        step = (u1 - u0) if per == "bar" else max(m.beat, (u1 - u0) / 2) if per == "half" else m.beat
        points.extend(np.arange(u0, u1 - 1e-9, step))
    points = np.array([p for p in points if start_u <= p < end_u])
    events = []
    down = False
    for p in points:
        qps = qpm_at_u(np.array([p]))[0] / 60.0
        lift = p + rng.uniform(0.01, 0.06) * qps
        if down:
            events.append((lift, 0))
            down = False
        if rng.random() < 0.85:
            events.append((lift + rng.uniform(0.03, 0.12) * qps, 127))
            down = True
    if down:
        events.append((end_u + rng.uniform(0.1, 0.5), 0))
    if not events:
        return np.zeros((0, 2), np.int64)
    return np.column_stack([ticks(np.array([e[0] for e in events])), np.array([e[1] for e in events])]).astype(np.int64)
