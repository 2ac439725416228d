"""Expressive playing and the mixing desk, per instrument family: what a player and an engineer add to the notes.

Players: vibrato (CC1 modulation, or a pitch-bend LFO on monophonic lines), expression swells (CC11) on sustained
notes of strings, winds, brass and voices; legato overlaps on monophonic sustained lines; a small detune (a
constant pitch bend of a few cents); palm-muted guitar (short, softer notes). None of these move an onset: the
targets are the notes as played, and every timing change (humanizing, rubato) is already in the notes' ticks.
Engineer: a stem's level around its genre template (+-12 dB in all), pan, EQ tilt and a room send.
Sound designer (`mt3ds synth --voicing`): offsets to the SoundFont's own filter, envelope and LFO settings per stem,
so that one bank's preset sounds like many instruments' takes on it (brighter or darker, resonant, slower or faster
attack and decay, tremolo) rather than one fixed sample set.
"""
from __future__ import annotations

import numpy as np

from .arrange import TPQ, Stem

SUSTAINED = frozenset([*range(40, 45), *range(48, 55), *range(56, 80), 22, 23, 21, *range(80, 88), 109, 110, 111])
VIBRATO = frozenset([*range(40, 44), 52, 53, 54, *range(56, 80), 22, 85, 109, 110, 111])
GUITARS = frozenset(range(24, 32))
KEYS = frozenset(range(0, 8))
# Mix level (dB, at equal loudness) per role: a template a genre shifts; the render adds +-6 dB of its own.
ROLE_LEVEL = {"drums": 0.0, "bass": -1.0, "lead": 1.5, "comp": -3.0, "pad": -7.0, "counter": -4.0, "score": -2.0}
GENRE_SHIFT = {"rock": {"drums": 1.5, "comp": 1.0}, "funk": {"bass": 1.5}, "jazz": {"drums": -3.0},
               "electronic": {"drums": 2.0, "bass": 1.0}, "ballad": {"drums": -4.0, "pad": 2.0},
               "latin": {"drums": -1.0}, "pop": {}}
CC_STEP_S = 0.03  # controller curves are sampled every 30 ms: smooth to the ear, few events


def express(stem: Stem, seconds, rng: np.random.Generator, amount: float = 1.0) -> None:
    """Add the player's controllers to STEM in place (SECONDS maps ticks to seconds). AMOUNT scales them."""
    if stem.is_drum or not len(stem.onset):
        return
    program = stem.program
    controls, bends = [], []
    mono = _monophonic(stem)
    if program in SUSTAINED and mono and rng.random() < 0.7:
        _legato(stem, rng)
    if program in SUSTAINED and rng.random() < 0.8:
        controls += _swells(stem, seconds, rng, amount)
    if program in VIBRATO and rng.random() < 0.8:
        if mono and rng.random() < 0.4:
            bends += _bend_vibrato(stem, seconds, rng, amount)
        else:
            controls += _modwheel(stem, seconds, rng, amount)
    if not bends and rng.random() < 0.5:  # detune: a few cents, as two instruments are never quite in tune
        bends.append((0, int(round(rng.normal(0, 8) / 100 * 4096))))  # 4096 per semitone at the default range
    if program in GUITARS and rng.random() < 0.3:
        _palm_mute(stem, rng)
    stem.controls = _as_rows(controls, 3)
    stem.bend = _as_rows(bends, 2)


def mix_settings(stem: Stem, role: str, genre: str, rng: np.random.Generator) -> None:
    """The engineer's settings for STEM: level (template + genre + +-6 dB), pan, EQ tilt, room send."""
    level = ROLE_LEVEL.get(role, -2.0) + GENRE_SHIFT.get(genre, {}).get(role, 0.0) + rng.uniform(-6, 6)
    stem.gain_db = float(np.clip(level, -12.0, 12.0))
    stem.pan = 0.0 if role in ("bass", "drums", "lead") and rng.random() < 0.8 else float(rng.uniform(-0.8, 0.8))
    stem.eq_tilt_db = float(rng.normal(0, 2.5))
    stem.reverb = float(rng.uniform(0.05, 0.45)) if role != "bass" else float(rng.uniform(0.0, 0.1))


# SoundFont 2.01 generators (FluidSynth's fluid_gen_type numbers) that change a preset's sound but not its pitch or
# timing, and the range of the offset each may get at --voicing 1 (units: cents of cutoff, centibels, timecents)
VOICING = {
    "filter_cutoff": (8, -4200.0, 0.0),  # up to 3.5 octaves darker; an open filter cannot be opened further
    "filter_q": (9, 0.0, 180.0),  # a resonance of up to 18 dB at the cutoff
    "attack": (34, -1200.0, 2400.0),  # half to four times the preset's attack
    "decay": (36, -2400.0, 1200.0),
    "sustain": (37, 0.0, 200.0),  # a sustain up to 20 dB lower: a held note dies away
    "release": (38, -1200.0, 1200.0),
    "tremolo": (13, 0.0, 60.0),  # modulation LFO to volume, up to 6 dB
    "wah": (10, 0.0, 1800.0),  # modulation LFO to filter cutoff
}
VOICING_SHARE = {"filter_cutoff": 0.7, "filter_q": 0.4, "attack": 0.5, "decay": 0.5, "sustain": 0.3,
                 "release": 0.5, "tremolo": 0.15, "wah": 0.15}  # how often each is touched
DRUM_VOICING = ("filter_cutoff", "filter_q", "decay", "release")  # a kit keeps its attacks


def voicing(stem: Stem, rng: np.random.Generator, amount: float = 1.0) -> dict:
    """Random generator offsets for STEM ({name: offset}, see VOICING), scaled by AMOUNT (0: none). Every draw is
    taken whatever is kept, so a stem's offsets do not depend on which others were touched."""
    names = DRUM_VOICING if stem.is_drum else tuple(VOICING)
    out = {}
    for name in names:
        _, low, high = VOICING[name]
        touch, value = rng.random(), rng.uniform(low, high)
        if amount > 0 and touch < VOICING_SHARE[name]:
            out[name] = round(float(value) * amount, 1)
    if "filter_cutoff" not in out:  # resonance and a cutoff LFO mean little on an untouched (often open) filter
        out.pop("filter_q", None)
    return out


def _as_rows(rows: list, width: int) -> np.ndarray:
    return np.array(rows, dtype=np.int64).reshape(-1, width) if rows else np.zeros((0, width), np.int64)


def _monophonic(stem: Stem) -> bool:
    """One note at a time (no onset before the previous note's offset, by more than a tick or two)."""
    return len(stem.onset) < 2 or bool(np.all(stem.onset[1:] >= stem.offset[:-1] - 4))


def _legato(stem: Stem, rng: np.random.Generator) -> None:
    """Each note held into the next one (a different pitch) by 10-40 ms worth of ticks, as a legato player does."""
    if len(stem.onset) < 2:
        return
    overlap = int(rng.uniform(0.02, 0.08) * TPQ)  # about 10-40 ms at common tempos
    gap = stem.onset[1:] - stem.offset[:-1]
    join = (gap >= 0) & (gap < TPQ // 4) & (stem.pitch[1:] != stem.pitch[:-1])
    stem.offset[:-1][join] = stem.onset[1:][join] + overlap
    # a note that now reaches a later note of its own pitch stops 2 ticks before it (the MIDI stays pairable)
    for p in np.unique(stem.pitch):
        idx = np.flatnonzero(stem.pitch == p)
        if len(idx) > 1:
            stem.offset[idx[:-1]] = np.minimum(stem.offset[idx[:-1]], stem.onset[idx[1:]] - 2)
    stem.offset = np.maximum(stem.offset, stem.onset + 1)


def _note_curves(stem: Stem, seconds, min_s: float):
    """(onset s, offset s, onset tick, offset tick) of the note gestures lasting at least MIN_S seconds."""
    # a chord is one gesture: one curve per onset, as long as its longest note
    ticks, inv = np.unique(stem.onset, return_inverse=True)
    ends = np.zeros(len(ticks), np.int64)
    np.maximum.at(ends, inv, stem.offset)
    if len(ticks) > 1:  # a curve ends where the next gesture starts: controllers are per channel, not per note
        ends[:-1] = np.minimum(ends[:-1], ticks[1:])
    on_s, off_s = seconds(ticks), seconds(ends)
    long = (off_s - on_s) >= min_s
    return on_s[long], off_s[long], ticks[long], ends[long]


def _ticks_at(stem: Stem, seconds, t0: int, t1: int, s0: float, s1: float) -> np.ndarray:
    """Ticks every CC_STEP_S seconds between ticks T0 and T1 (linear in ticks: tempo is constant within a note
    to well under a step)."""
    n = max(2, int((s1 - s0) / CC_STEP_S))
    return np.round(np.linspace(t0, t1, n)).astype(np.int64)


def _swells(stem: Stem, seconds, rng, amount: float) -> list:
    """CC11 over each long note: up from a softer start, a peak, and down towards its end; 127 between notes."""
    rows = []
    for s0, s1, t0, t1 in zip(*_note_curves(stem, seconds, 0.4)):
        ticks = _ticks_at(stem, seconds, int(t0), int(t1), float(s0), float(s1))
        x = np.linspace(0, 1, len(ticks))
        peak = rng.uniform(0.3, 0.7)
        depth = rng.uniform(15, 45) * amount
        shape = np.where(x < peak, x / peak, (1 - x) / (1 - peak))
        values = np.clip(np.round(127 - depth + depth * shape), 40, 127).astype(int)
        rows += [(int(t), 11, int(v)) for t, v in zip(ticks, values)]
        rows.append((int(t1), 11, 127))
    return _dedupe(rows)


def _modwheel(stem: Stem, seconds, rng, amount: float) -> list:
    """CC1 (the bank's vibrato) rising after each long note's attack, back to 0 at its end."""
    rows = []
    top = int(np.clip(rng.uniform(30, 90) * amount, 0, 127))
    for s0, s1, t0, t1 in zip(*_note_curves(stem, seconds, 0.35)):
        ticks = _ticks_at(stem, seconds, int(t0), int(t1), float(s0), float(s1))
        x = np.linspace(0, 1, len(ticks)) * (s1 - s0)
        values = np.round(top * np.clip((x - 0.15) / 0.3, 0, 1)).astype(int)
        rows += [(int(t), 1, int(v)) for t, v in zip(ticks, values)]
        rows.append((int(t1), 1, 0))
    return _dedupe(rows)


def _bend_vibrato(stem: Stem, seconds, rng, amount: float) -> list:
    """A pitch-bend LFO (5-6.5 Hz, 10-35 cents) on each long note after its attack; centre between notes."""
    rows = []
    rate, cents = rng.uniform(5.0, 6.5), rng.uniform(10, 35) * amount
    for s0, s1, t0, t1 in zip(*_note_curves(stem, seconds, 0.35)):
        ticks = _ticks_at(stem, seconds, int(t0), int(t1), float(s0), float(s1))
        x = np.linspace(0, 1, len(ticks)) * (s1 - s0)
        depth = cents / 100 * 4096 * np.clip((x - 0.12) / 0.25, 0, 1)
        values = np.round(depth * np.sin(2 * np.pi * rate * x)).astype(int)
        rows += [(int(t), int(v)) for t, v in zip(ticks, values)]
        rows.append((int(t1), 0))
    out, last = [], {}
    for t, v in rows:
        if last.get("t") == t:
            out[-1] = (t, v)
        else:
            out.append((t, v))
        last["t"] = t
    return out


def _palm_mute(stem: Stem, rng) -> None:
    """Palm-muted passages: in a stretch of the part, notes cut short and played softer."""
    n = len(stem.onset)
    a = int(rng.integers(0, n))
    b = min(n, a + int(rng.integers(8, 64)))
    dur = stem.offset[a:b] - stem.onset[a:b]
    stem.offset[a:b] = stem.onset[a:b] + np.maximum(dur * rng.uniform(0.25, 0.5), TPQ // 16)
    stem.velocity[a:b] = np.clip(stem.velocity[a:b] - int(rng.integers(5, 20)), 1, 127)


def _dedupe(rows: list) -> list:
    """One value per (tick, controller): the last written wins; unchanged values are dropped."""
    rows = sorted({(t, c): (t, c, v) for t, c, v in rows}.values(), key=lambda r: (r[0], r[1]))
    out, last = [], {}
    for t, c, v in rows:
        if last.get(c) != v:
            out.append((t, c, v))
            last[c] = v
    return out
