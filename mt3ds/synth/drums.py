"""A generated drum part in a piece's meter: grooves on the bar grid, variation, fills at phrase ends, crashes.

The music21 corpus has no drums, and a model that never hears a kit beside pitched instruments cannot learn to
separate them. Positions are in quarter notes on the piece's own bar lines (pickups and meter changes included),
so the part follows the music's tempo curve once the arrangement maps quarters to seconds.
General MIDI drum map (channel 10): kick 35/36, side stick 37, snare 38/40, clap 39, hi-hats 42/44/46,
toms 41/43/45/47/48/50, crash 49/57, ride 51, ride bell 53, tambourine 54, cowbell 56, shaker 70 / 82.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KICKS = (35, 36)
SNARES = (38, 40, 37, 39)  # snare, electric snare, side stick, clap
TOMS = (50, 48, 47, 45, 43, 41)  # high to low: fills run down them
CRASHES = (49, 57)
TIMEKEEPERS = (42, 42, 42, 51, 44, 70, 82, 54)  # closed hat most often; ride, pedal hat, shaker, tambourine
KITS = {"standard": (0, 0, 8, 16), "electronic": (24, 25), "jazz": (32, 40)}  # bank-128 presets per feel


@dataclass
class DrumPart:
    """Drum hits in quarter notes, with the kit (bank-128 preset) to render them with."""

    onset: np.ndarray  # float64 quarters
    pitch: np.ndarray  # int32 GM drum keys
    velocity: np.ndarray  # int32
    kit: int  # 0 standard, 8 room, 16 power, 24 electronic, 25 TR-808, 32 jazz, 40 brush


@dataclass(frozen=True)
class _Meter:
    beats: int  # felt beats per bar
    beat: float  # quarters per felt beat
    steps: int  # subdivisions per beat (2 simple, 3 compound)


def _meter(num: int, den: int) -> _Meter:
    unit = 4.0 / den
    if den >= 8 and num % 3 == 0 and num > 3:  # 6/8, 9/8, 12/8: dotted beats of three
        return _Meter(num // 3, 3 * unit, 3)
    if den >= 8 and num in (2, 3, 4):  # 3/8 and friends: feel the bar as one or two beats
        return _Meter(1 if num == 3 else num // 2, num * unit if num == 3 else 2 * unit, 3 if num == 3 else 2)
    return _Meter(num, unit, 2)


def _backbeats(m: _Meter, feel: str) -> list[int]:
    if m.beats == 4:
        return [2] if feel == "halftime" else [1, 3]
    if m.beats == 3:
        return [1, 2] if feel == "waltz" else [2]
    if m.beats == 2:
        return [1]
    if m.beats == 1:
        return []
    return list(range(1, m.beats, 2))


def _kick_beats(m: _Meter, feel: str) -> list[int]:
    if feel == "four":
        return list(range(m.beats))
    if m.beats == 4:
        return [0, 2]
    if m.beats in (5, 6, 7):
        return [0, m.beats // 2]
    return [0]


def drum_part(bar_starts: np.ndarray, meters: list[tuple[float, int, int]], end: float,
              rng: np.random.Generator, style: str) -> DrumPart:
    """Drum hits for bars starting at BAR_STARTS (quarters) up to END; METERS: (quarter, num, den) changes.

    STYLE is the arrangement's ('band' grooves harder; 'orchestra'/'chamber' get lighter feels and kits)."""
    feel = rng.choice(["rock", "rock", "halftime", "four", "shuffle", "waltz"] if style in ("band", "mixed")
                      else ["rock", "waltz", "light", "light"])
    kit_family = ("jazz" if feel in ("light", "shuffle") and rng.random() < 0.6
                  else "electronic" if style == "band" and rng.random() < 0.2 else "standard")
    kit = int(rng.choice(KITS[kit_family]))
    timekeeper = int(rng.choice(TIMEKEEPERS))
    if feel == "light" and rng.random() < 0.5:
        timekeeper = 51
    kick = int(rng.choice(KICKS))
    snare = int(rng.choice(SNARES[:2])) if feel != "light" else int(rng.choice((37, 38)))
    phrase = int(rng.choice([4, 8, 8]))
    subdivide = feel != "light" and rng.random() < 0.3  # hats on every half step (16ths in 4/4)
    p_fill = rng.uniform(0.5, 0.9)
    start_bar = phrase if rng.random() < 0.25 else 0  # sometimes the drums come in after the first phrase
    tacet_phrase = int(rng.integers(2, 6)) if rng.random() < 0.2 else -1  # one phrase with drums out

    bars = np.asarray(bar_starts, dtype=np.float64)
    bars = bars[bars < end]
    if len(bars) == 0:
        return DrumPart(np.zeros(0), np.zeros(0, np.int32), np.zeros(0, np.int32), kit)
    sig_at = [q for q, _, _ in meters]
    hits: list[tuple[float, int, float]] = []  # (quarter, key, velocity)

    def hit(q, key, vel):
        hits.append((q, key, vel))

    def meter_at(q):
        return _meter(*meters[max(0, int(np.searchsorted(sig_at, q + 1e-9, side="right")) - 1)][1:])

    # a first bar shorter than its meter is a pickup: the grooves and phrases count from the bar after it
    m0 = meter_at(bars[0])
    first = 1 if len(bars) > 1 and bars[1] - bars[0] < m0.beats * m0.beat - 1e-6 else 0
    crash_next = True
    for b, q0 in enumerate(bars):
        q1 = bars[b + 1] if b + 1 < len(bars) else end
        length = q1 - q0
        m = meter_at(q0)
        nominal = m.beats * m.beat
        if b < first:
            continue
        k = b - first  # bar number within the groove
        if k < start_bar or (k // phrase) == tacet_phrase:
            crash_next = True
            if k == start_bar - 1 or (k // phrase == tacet_phrase and (k + 1) % phrase == 0):
                _fill(hit, q0 + max(0.0, length - m.beat), m, rng, q1)  # lead back in
            continue
        step = m.beat / m.steps
        swing = feel == "shuffle" and m.steps == 2
        if crash_next:
            hit(q0, int(rng.choice(CRASHES)), rng.normal(108, 8))
            hit(q0, kick, rng.normal(105, 8))
            crash_next = False
        fill_here = (k + 1) % phrase == 0 and rng.random() < p_fill and b + 1 < len(bars)
        fill_from = q0 + max(m.beat, nominal - m.beat * (2 if rng.random() < 0.3 else 1)) if fill_here else q1
        backbeats, kicks = _backbeats(m, feel), _kick_beats(m, feel)
        for beat in range(m.beats):
            qb = q0 + beat * m.beat
            if qb >= min(q1, fill_from) - 1e-9:
                break
            if beat in kicks:
                hit(qb, kick, rng.normal(100 if beat == 0 else 92, 7))
            if beat in backbeats:
                hit(qb, snare, rng.normal(100 if feel != "light" else 70, 8))
            for s in range(m.steps):
                q = qb + s * step
                if swing and s == 1:
                    q = qb + m.beat * 2 / 3
                if q >= min(q1, fill_from) - 1e-9:
                    break
                accent = 82 if s == 0 else 62
                if timekeeper == 44 and s != 0:
                    continue  # a pedal hat only marks the beats
                hit(q, timekeeper, rng.normal(accent, 7))
                if subdivide and not swing:
                    hit(q + step / 2, timekeeper, rng.normal(50, 7))
                if s != 0 and rng.random() < (0.12 if feel != "light" else 0.04):
                    hit(q, kick, rng.normal(80, 8))  # syncopated kick
                if rng.random() < 0.06 and feel != "four":
                    hit(q, snare, rng.normal(38, 6))  # ghost note
            if feel == "four" and timekeeper in (42, 44) and rng.random() < 0.5 and m.steps == 2:
                hit(qb + step, 46, rng.normal(70, 6))  # open hat on the off-beat
        if fill_here:
            _fill(hit, fill_from, m, rng, q1, kick=kick, snare=snare)
            crash_next = True
    if hits:  # a last crash on the final downbeat rings the piece out
        last_bar = bars[-1]
        if not any(abs(q - last_bar) < 1e-9 and k in CRASHES for q, k, _ in hits):
            hit(last_bar, int(rng.choice(CRASHES)), rng.normal(105, 8))
    hits = [h for h in hits if h[0] < end - 1e-9]
    hits.sort(key=lambda h: (h[0], h[1]))
    onset = np.array([h[0] for h in hits], dtype=np.float64)
    pitch = np.array([h[1] for h in hits], dtype=np.int32)
    velocity = np.clip(np.round([h[2] for h in hits]), 1, 127).astype(np.int32)
    # one hit per (time, key): a pattern and a fill can land on the same step
    if len(onset):
        keep = np.ones(len(onset), dtype=bool)
        keep[1:] = ~((np.diff(onset) < 1e-9) & (np.diff(pitch) == 0))
        onset, pitch, velocity = onset[keep], pitch[keep], velocity[keep]
    return DrumPart(onset, pitch, velocity, kit)


def _fill(hit, q_from: float, m: _Meter, rng: np.random.Generator, q_to: float, kick: int = 36,
          snare: int = 38) -> None:
    """Snare and tom notes from Q_FROM to Q_TO on a grid of 1, 2 or 4 notes per step, running down the toms."""
    step = m.beat / m.steps / int(rng.choice([1, 2, 2]))  # eighths or sixteenths (in simple meters)
    n = int(round((q_to - q_from) / step))
    if n <= 0:
        return
    voices = [snare] * int(rng.integers(0, 3)) + list(TOMS[int(rng.integers(0, 2)):])
    for i in range(n):
        frac = i / max(n - 1, 1)
        key = voices[min(int(frac * len(voices)), len(voices) - 1)] if rng.random() < 0.85 else snare
        hit(q_from + i * step, key, rng.normal(85 + 20 * frac, 7))
        if i % 4 == 0 and rng.random() < 0.4:
            hit(q_from + i * step, kick, rng.normal(90, 7))
