"""A procedural arranger for popular music: pop, rock, funk, jazz, latin, electronic and ballad songs.

The music21 corpus is classical and has no drums, no bass guitar, no comping: a model trained on it alone misses
bass lines and hears drums where there are none. A song here is a key, a tempo and a form (intro, verses, choruses,
a bridge, an outro) over chord progressions of its genre, played by a band: drums (the genre's groove, fills at
section ends, crashes at section starts, densities of real drummers), a bass line down to E1 (MIDI 28), comping
(piano, guitar, organ, clavinet, vibraphone...), a pad, a melody and sometimes a counter-line or an effect, each
instrument in its own register. Every General MIDI family appears across songs. All randomness comes from one
generator seeded per song, so a song is a pure function of (seed, palette).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..tokens import gm
from ..tokens.vocab import DRUM_PROGRAM
from .arrange import INSTRUMENTS, TPQ, Arrangement, Stem, _resolve_overlaps, finish_drums, pick_bank

GENRES = ("pop", "rock", "funk", "jazz", "latin", "electronic", "ballad")
GENRE_WEIGHTS = (0.2, 0.18, 0.12, 0.13, 0.12, 0.13, 0.12)
MAJOR, MINOR = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10)
# Progressions as scale degrees (0-based) per bar; a chord's quality follows the scale.
PROGRESSIONS = {
    "pop": [[0, 4, 5, 3], [0, 5, 3, 4], [5, 3, 0, 4], [0, 3, 4, 3]],
    "rock": [[0, 6, 3, 0], [0, 3, 4, 4], [0, 4, 3, 3], [5, 3, 0, 4]],
    "funk": [[0, 0, 3, 3], [1, 4, 1, 4], [0, 3, 0, 4]],
    "jazz": [[1, 4, 0, 0], [0, 5, 1, 4], [2, 5, 1, 4], [3, 6, 2, 5]],
    "latin": [[0, 3, 4, 0], [1, 4, 0, 5], [0, 1, 4, 0]],
    "electronic": [[0, 5, 3, 4], [5, 3, 0, 4], [0, 0, 5, 5]],
    "ballad": [[0, 4, 5, 3], [0, 2, 3, 4], [3, 4, 2, 5], [0, 5, 1, 4]],
}
TEMPO = {"pop": (90, 128), "rock": (100, 150), "funk": (90, 115), "jazz": (100, 200), "latin": (90, 130),
         "electronic": (118, 132), "ballad": (60, 84)}
FORMS = (("intro", "verse", "chorus", "verse", "chorus", "bridge", "chorus", "outro"),
         ("intro", "verse", "verse", "chorus", "verse", "chorus", "outro"),
         ("intro", "chorus", "verse", "chorus", "bridge", "chorus", "chorus", "outro"))
# Instruments per role and genre: (program, weight). Together they cover every General MIDI family.
BASS = {"pop": [(33, 3), (34, 2), (38, 1), (35, 0.5)], "rock": [(34, 3), (33, 2)],
        "funk": [(36, 2), (37, 1.5), (33, 2), (38, 0.5)], "jazz": [(32, 4), (35, 1)],
        "latin": [(32, 2), (33, 2), (35, 1)], "electronic": [(38, 3), (39, 3), (87, 1), (81, 0.5)],
        "ballad": [(33, 2), (32, 1), (35, 1.5)]}
COMP = {"pop": [(0, 2), (4, 1.5), (25, 1.5), (27, 1), (1, 1), (24, 0.6), (11, 0.3), (15, 0.2)],
        "rock": [(29, 3), (30, 3), (27, 1), (18, 1), (28, 1), (3, 0.3), (2, 0.3)],
        "funk": [(28, 2), (27, 2), (7, 2), (4, 1.5), (16, 1), (17, 0.5)],
        "jazz": [(0, 3), (26, 2), (11, 1.5), (4, 1), (16, 0.5)],
        "latin": [(0, 2), (24, 2), (12, 1), (21, 0.6), (23, 0.6), (105, 0.3), (104, 0.2)],
        "electronic": [(5, 1), (81, 1.5), (80, 1), (90, 1), (62, 0.8), (63, 0.6), (4, 0.5)],
        "ballad": [(0, 3), (4, 1.5), (24, 1.2), (46, 1), (8, 0.3), (10, 0.2), (107, 0.3), (19, 0.3), (6, 0.3)]}
PAD = {"pop": [(48, 2), (89, 1), (52, 0.6), (20, 0.3), (95, 0.5)], "rock": [(16, 1.5), (18, 1), (48, 1), (61, 0.5)],
       "funk": [(61, 2), (62, 1), (16, 1)], "jazz": [(48, 1), (61, 0.5), (52, 0.3)],
       "latin": [(48, 1), (61, 1), (21, 0.5)],
       "electronic": [(89, 1), (90, 1), (91, 1), (92, 0.6), (94, 0.6), (95, 1), (50, 1), (51, 0.6), (88, 0.6),
                      (96, 0.4), (97, 0.4), (99, 0.4), (100, 0.3), (101, 0.3), (102, 0.3), (103, 0.3)],
       "ballad": [(48, 2), (49, 1.5), (52, 1), (53, 0.6), (89, 1), (88, 0.6), (94, 0.5), (19, 0.4), (44, 0.5)]}
LEAD = {"pop": [(53, 1.5), (85, 1), (65, 1), (73, 1), (22, 0.6), (80, 0.8), (27, 0.8), (9, 0.4), (79, 0.3),
                (110, 0.3), (105, 0.3), (108, 0.3)],
        "rock": [(29, 2), (30, 2), (84, 1), (66, 0.6), (81, 0.5), (22, 0.5), (109, 0.2)],
        "funk": [(65, 1.5), (66, 1), (56, 1.5), (81, 1), (27, 1)],
        "jazz": [(66, 2), (65, 2), (56, 1.5), (59, 1), (57, 0.8), (71, 1), (73, 0.8), (11, 1), (26, 0.8), (64, 0.5)],
        "latin": [(56, 1.5), (73, 1.5), (65, 1), (24, 1), (114, 0.8), (12, 0.8), (75, 0.5), (21, 0.6), (104, 0.3),
                  (106, 0.2), (111, 0.2)],
        "electronic": [(80, 2), (81, 2), (82, 0.8), (83, 0.8), (84, 0.6), (86, 0.5), (85, 0.6), (98, 0.4),
                       (108, 0.5), (13, 0.4)],
        "ballad": [(73, 1.5), (53, 1.5), (40, 1.5), (71, 0.8), (68, 0.8), (69, 0.5), (60, 0.8), (64, 0.6),
                   (74, 0.4), (75, 0.5), (77, 0.3), (78, 0.2), (14, 0.3), (13, 0.2), (110, 0.4), (107, 0.3)]}
COUNTER = {"pop": [(48, 1), (42, 0.8), (60, 0.6), (11, 0.5), (70, 0.4)],
           "rock": [(61, 1), (57, 0.6), (18, 0.8), (29, 0.8)],
           "funk": [(61, 2), (57, 1), (67, 1), (58, 0.4)],
           "jazz": [(57, 1.5), (67, 1), (60, 0.6), (41, 0.4), (58, 0.4)],
           "latin": [(57, 1.5), (61, 1), (13, 0.6), (114, 0.5), (72, 0.4)],
           "electronic": [(55, 1), (62, 1), (63, 1), (87, 0.6), (112, 0.3), (113, 0.3), (118, 0.3)],
           "ballad": [(42, 1.5), (41, 1), (70, 0.8), (60, 0.8), (43, 0.6), (47, 0.4), (58, 0.4), (45, 0.5)]}
# Sparse colour, one stem in some songs: percussive and sound-effect programs, struck or held at section edges.
EFFECTS = [(112, 1), (113, 1), (115, 1), (116, 1), (117, 1), (118, 1), (119, 1), (120, 0.5), (121, 0.5),
           (122, 0.5), (123, 0.5), (124, 0.3), (125, 0.3), (126, 0.3), (127, 0.2), (31, 0.4), (47, 0.6), (14, 0.5)]
# Registers (low, high) for programs the classical table leaves out.
RANGES = {9: (79, 108), 31: (52, 88), 47: (36, 57), 55: (48, 84), 96: (48, 84), 97: (48, 84), 98: (60, 96),
          99: (48, 84), 100: (48, 84), 101: (48, 84), 102: (48, 84), 103: (48, 84), 106: (50, 79), 112: (72, 96),
          113: (60, 84), 115: (60, 84), 116: (36, 60), 117: (40, 72), 118: (40, 76), 119: (48, 72),
          120: (40, 76), 121: (48, 84), 122: (48, 72), 123: (72, 96), 124: (60, 84), 125: (48, 72), 126: (48, 72),
          127: (48, 72)}
KITS = {"pop": (0, 16, 8), "rock": (16, 0, 8), "funk": (0, 8), "jazz": (32, 40), "latin": (0, 8),
        "electronic": (24, 25), "ballad": (0, 8, 40)}
SWING = {"jazz": (0.62, 0.68), "funk": (0.5, 0.56), "pop": (0.5, 0.52), "ballad": (0.5, 0.56)}
TIGHTNESS = {"electronic": 0.25, "jazz": 1.3, "ballad": 1.2}


def register(program: int) -> tuple[int, int]:
    """(low, high) MIDI pitches PROGRAM plays well."""
    if program in INSTRUMENTS:
        return INSTRUMENTS[program].low, INSTRUMENTS[program].high
    return RANGES.get(program, (48, 84))


@dataclass
class _Song:
    genre: str
    key: int  # pitch class of the tonic
    minor: bool
    qpm: float
    beats: int  # per bar (4 or 3)
    bars: list  # [(section name, bar index in section, chord root pitch class, chord intervals)]
    swing: float  # where the off-beat eighth falls in the beat (0.5 straight, 2/3 triplet swing)


def _choose(rng, table) -> int:
    progs, weights = zip(*table)
    w = np.asarray(weights, dtype=np.float64)
    return int(progs[int(rng.choice(len(progs), p=w / w.sum()))])


def _plan(rng, genre: str, max_seconds: float) -> _Song:
    minor = rng.random() < (0.5 if genre in ("rock", "electronic", "latin") else 0.3)
    scale = MINOR if minor else MAJOR
    qpm = float(rng.uniform(*TEMPO[genre]))
    beats = 3 if genre in ("jazz", "ballad") and rng.random() < 0.15 else 4
    form = FORMS[int(rng.integers(len(FORMS)))]
    # sorted: a set of strings iterates in a per-process order, and the draws must not depend on it
    progs = {name: PROGRESSIONS[genre][int(rng.integers(len(PROGRESSIONS[genre])))] for name in sorted(set(form))}
    bar_s = beats * 60.0 / qpm
    bars = []
    for name in form:
        n = 4 if name in ("intro", "outro", "bridge") else 8
        for i in range(n):
            degree = progs[name][i % len(progs[name])]
            root = (scale[degree] + 0) % 12
            third = (scale[(degree + 2) % 7] - scale[degree]) % 12
            fifth = (scale[(degree + 4) % 7] - scale[degree]) % 12
            intervals = [0, third, fifth]
            if genre in ("jazz", "funk") or (genre in ("pop", "ballad", "latin") and rng.random() < 0.3):
                intervals.append((scale[(degree + 6) % 7] - scale[degree]) % 12)
            bars.append((name, i, root, tuple(intervals)))
        if (len(bars) + 4) * bar_s > max_seconds:
            break
    bars = bars[: max(4, int(max_seconds / bar_s) - 1)]
    lo, hi = SWING.get(genre, (0.5, 0.5))
    return _Song(genre, int(rng.integers(12)), minor, qpm, beats, bars, float(rng.uniform(lo, hi)))


# ---------------------------------------------------------------------------------------------------------------
# Parts, in quarters: lists of (onset, duration, pitch, velocity)


def _swing(q: np.ndarray, amount: float) -> np.ndarray:
    """Move off-beat eighths to AMOUNT of the beat (0.5: straight)."""
    frac = q % 1.0
    return np.where(np.isclose(frac, 0.5), np.floor(q) + amount, q)


def _drums(song: _Song, rng) -> list:
    g, beats, hits = song.genre, song.beats, []
    ride = g == "jazz" or rng.random() < 0.15
    for b, (section, i, _, _) in enumerate(song.bars):
        q0 = b * beats
        last = b + 1 == len(song.bars) or song.bars[b + 1][0] != section or song.bars[b + 1][1] == 0
        first = i == 0
        quiet = section in ("intro",) and rng.random() < 0.5
        if first:
            hits.append((q0, 49 if rng.random() < 0.8 else 57, 105))
        fill_from = beats - (2 if rng.random() < 0.3 else 1) if last and b > 0 else beats
        for s in range(beats * 4):  # sixteenth steps
            q = q0 + s / 4
            beat, sub = divmod(s, 4)
            if beat >= fill_from:
                break
            if g == "jazz":
                if sub == 0:
                    hits.append((q, 51, 80 if beat % 2 else 70))
                if sub == 2 and beat % 2 == 1:
                    hits.append((q, 51, 60))
                if sub == 0 and beat % 2 == 1:
                    hits.append((q, 44, 60))
                if sub == 0 and rng.random() < 0.12:
                    hits.append((q, 36, 50))
                if sub == 2 and rng.random() < 0.08:
                    hits.append((q, 38, 45))
                continue
            if g == "electronic":
                if sub == 0:
                    hits.append((q, 36, 110))
                if sub == 0 and beat % 2 == 1:
                    hits.append((q, 39 if rng.random() < 0.5 else 38, 100))
                if sub == 2:
                    hits.append((q, 46, 80))
                elif not quiet and rng.random() < 0.7:
                    hits.append((q, 42, 60 + 10 * (sub == 0)))
                continue
            if g == "latin":  # bossa: side stick on a clave, kick on 1 and the and-of-2, shaker in eighths
                clave = (0, 3, 6, 10, 12) if beats == 4 else (0, 3, 6)
                if s in clave:
                    hits.append((q, 37, 80))
                if s in (0, 6, 8, 14) and sub in (0, 2):
                    hits.append((q, 36, 85))
                if sub in (0, 2):
                    hits.append((q, 70 if rng.random() < 0.7 else 42, 55 + 10 * (sub == 0)))
                continue
            # pop, rock, funk, ballad
            backbeat = beat % 2 == 1 if beats == 4 else beat == 1
            if g == "ballad":
                backbeat = beat == 2 if beats == 4 else False
            keeper = 51 if ride and section == "chorus" else 42
            if sub == 0 or (sub == 2 and not quiet) or (g == "funk" and not quiet):
                if not (g == "ballad" and sub != 0 and rng.random() < 0.5):
                    vel = 85 if sub == 0 else 62 if sub == 2 else 48
                    hits.append((q, keeper, vel))
            if sub == 0 and backbeat:
                hits.append((q, 38 if g != "ballad" or rng.random() < 0.5 else 37, 100 if g != "ballad" else 75))
            kick = (sub == 0 and beat in ((0, 2) if beats == 4 else (0,))) or (
                g in ("rock", "pop") and s == 10 and rng.random() < 0.4) or (
                g == "funk" and s in (3, 6, 10, 11) and rng.random() < 0.35)
            if kick:
                hits.append((q, 36, 100 if sub == 0 else 85))
            if g == "funk" and sub in (1, 3) and rng.random() < 0.15:
                hits.append((q, 38, 40))  # ghost notes
            if g == "rock" and sub == 2 and beat == beats - 1 and rng.random() < 0.2:
                hits.append((q, 46, 75))
        if fill_from < beats:
            steps = int((beats - fill_from) * (4 if rng.random() < 0.6 else 2))
            toms = [50, 48, 47, 45, 43, 41] if rng.random() < 0.7 else [38]
            for k in range(steps):
                q = q0 + fill_from + k * (beats - fill_from) / steps
                hits.append((q, toms[min(int(k / steps * len(toms)), len(toms) - 1)], 85 + 20 * k / steps))
    hits.append((len(song.bars) * beats, 49, 100))
    q = np.array([h[0] for h in hits], dtype=np.float64)
    if song.swing > 0.5:
        q = _swing(q, song.swing) if g != "jazz" else np.where(np.isclose(q % 1, 0.5), np.floor(q) + song.swing, q)
    return [(float(a), 0.125, int(h[1]), float(h[2]) + rng.normal(0, 5)) for a, h in zip(q, hits)]


def _chord_pitch(song: _Song, b: int, low: int) -> list[int]:
    """The bar's chord, voiced upward from the first chord tone at or above LOW."""
    _, _, root, intervals = song.bars[b]
    pcs = [(song.key + root + iv) % 12 for iv in intervals]
    out = []
    for pc in pcs:
        p = low + (pc - low) % 12
        out.append(p)
    return sorted(out)


def _bass(song: _Song, rng, program: int) -> list:
    g, beats, notes = song.genre, song.beats, []
    low = 28 if rng.random() < 0.6 else int(rng.integers(28, 34))
    for b, (_, _, root, intervals) in enumerate(song.bars):
        q0 = b * beats
        r = low + (song.key + root - low) % 12
        fifth = r + 7
        if g == "jazz":  # walking quarters: root, chord tones, a chromatic approach to the next root
            nxt = song.bars[(b + 1) % len(song.bars)][2]
            nr = low + (song.key + nxt - low) % 12
            line = [r, r + intervals[1], fifth, nr + (1 if rng.random() < 0.5 else -1)][:beats]
            notes += [(q0 + k, 0.9, p, 80) for k, p in enumerate(line)]
        elif g == "funk":
            for s in range(beats * 4):
                if rng.random() < (0.9 if s == 0 else 0.35):
                    p = r + (12 if rng.random() < 0.25 else 0) + (7 if rng.random() < 0.1 else 0)
                    notes.append((q0 + s / 4, 0.2, p, 95 if s == 0 else 80))
        elif g == "latin":
            for q, p in ((0, r), (1.5, fifth), (3, r if beats == 4 else fifth))[: 3 if beats == 4 else 2]:
                notes.append((q0 + q, 1.2, p, 85))
        elif g == "electronic":
            for k in range(beats * 2):
                if k % 2 == 1 or rng.random() < 0.2:
                    notes.append((q0 + k / 2, 0.4, r + (12 if rng.random() < 0.15 else 0), 95))
        elif g == "ballad":
            notes.append((q0, beats * 0.5 if rng.random() < 0.5 else beats * 0.95, r, 75))
            if rng.random() < 0.5:
                notes.append((q0 + beats / 2, beats * 0.45, fifth if rng.random() < 0.5 else r, 70))
        else:  # pop and rock: eighths on the root, a fifth or octave now and then
            for k in range(beats * 2):
                p = r if rng.random() < 0.8 else (fifth if rng.random() < 0.5 else r + 12)
                notes.append((q0 + k / 2, 0.45, p, 90 if k % 2 == 0 else 78))
    return notes


def _comp(song: _Song, rng, program: int) -> list:
    g, beats, notes = song.genre, song.beats, []
    lo, hi = register(program)
    base = int(np.clip(rng.integers(50, 60), lo, max(lo, hi - 14)))
    power = program in (29, 30)
    for b in range(len(song.bars)):
        q0 = b * beats
        chord = _chord_pitch(song, b, base)
        if power:
            chord = [chord[0], chord[0] + 7, chord[0] + 12]
        if g in ("rock",) or power:
            pattern = [(k / 2, 0.45) for k in range(beats * 2)]
        elif g == "funk":
            pattern = [(s / 4, 0.15) for s in range(beats * 4) if rng.random() < 0.4]
        elif g == "jazz":
            pattern = [(float(rng.choice([0, 0.5, 1.5, 2.5])), 0.8)] + ([(3.5, 0.6)] if rng.random() < 0.5 else [])
        elif g == "latin":
            pattern = [(q, 0.4) for q in (0, 0.5, 1.5, 2, 3, 3.5) if q < beats]
        elif g == "ballad":  # arpeggios
            for k in range(beats * 2):
                notes.append((q0 + k / 2, 1.0, chord[k % len(chord)] + (12 if k >= len(chord) * 2 else 0), 65))
            continue
        elif g == "electronic":
            pattern = [(q, 0.3) for q in (0.5, 1.5, 2.5, 3.5) if q < beats]
        else:
            pattern = [(0, beats / 2 - 0.1), (beats / 2, beats / 2 - 0.1)]
        for q, d in pattern:
            if q < beats:
                notes += [(q0 + q, d, p, 75) for p in chord]
    return notes


def _pad(song: _Song, rng, program: int) -> list:
    lo, hi = register(program)
    base = int(np.clip(rng.integers(55, 64), lo, max(lo, hi - 12)))
    notes = []
    for b in range(len(song.bars)):
        if song.bars[b][0] in ("verse",) and rng.random() < 0.5:
            continue
        notes += [(b * song.beats, song.beats * 0.98, p, 60) for p in _chord_pitch(song, b, base)]
    return notes


def _melody(song: _Song, rng, program: int, counter: bool = False) -> list:
    """Two-bar phrases: a rhythm motif per section (repeated, as songs do), chord tones on strong beats, steps
    between them, rests between phrases. The counter-line is sparser and lower."""
    lo, hi = register(program)
    scale = MINOR if song.minor else MAJOR
    centre = int(np.clip((lo + hi) // 2 + (-5 if counter else 0), lo + 5, hi - 5))
    motifs: dict = {}
    notes = []
    prev = centre
    for b, (section, i, _, _) in enumerate(song.bars):
        if section == "intro" and not counter and rng.random() < 0.7:
            continue
        if counter and section == "verse" and rng.random() < 0.6:
            continue
        key = (section, i % 2)
        if key not in motifs:
            grid = np.arange(0, song.beats, 0.5)
            p_note = 0.35 if counter else 0.55 if song.genre != "ballad" else 0.4
            keep = rng.random(len(grid)) < p_note
            keep[0] = keep[0] or i % 2 == 0
            motifs[key] = grid[keep]
        onsets = motifs[key]
        if i % 2 == 1 and rng.random() < 0.4:
            onsets = onsets[onsets < song.beats - 1]  # breathe at the end of a phrase
        chord = [(song.key + song.bars[b][2] + iv) % 12 for iv in song.bars[b][3]]
        for k, q in enumerate(onsets):
            nxt = onsets[k + 1] if k + 1 < len(onsets) else song.beats
            if q % 1 == 0 and rng.random() < 0.7:  # strong beat: the nearest chord tone
                cands = [p for p in range(prev - 7, prev + 8) if p % 12 in chord]
            else:
                cands = [p for p in range(prev - 4, prev + 5) if (p - song.key) % 12 in scale]
            cands = [p for p in cands if lo <= p <= hi and abs(p - centre) <= 10] or [prev]
            p = int(rng.choice(cands))
            notes.append((b * song.beats + q, (nxt - q) * rng.uniform(0.7, 0.98), p, 85 if not counter else 72))
            prev = p
    return notes


def _effects(song: _Song, rng, program: int) -> list:
    lo, hi = register(program)
    notes = []
    for b, (section, i, _, _) in enumerate(song.bars):
        if i == 0 or rng.random() < 0.08:
            notes.append((b * song.beats, song.beats * rng.uniform(0.3, 1.0), int(rng.integers(lo, hi + 1)), 80))
    return notes


# ---------------------------------------------------------------------------------------------------------------
# The song as an arrangement


def arrange_song(seed: int, banks, max_seconds: float = 300.0, genre: str | None = None) -> Arrangement:
    """One generated song, a pure function of (seed, banks, max_seconds, genre)."""
    from .arrange import as_palette
    from .expression import express, mix_settings

    palette = as_palette(banks)
    rng = np.random.default_rng(seed)
    if genre is None:
        genre = GENRES[int(rng.choice(len(GENRES), p=np.asarray(GENRE_WEIGHTS) / sum(GENRE_WEIGHTS)))]
    song = _plan(rng, genre, max_seconds - 2.0)
    beats = song.beats
    lead_q = 1.0  # one beat of silence before the downbeat
    total_q = len(song.bars) * beats + 1
    # tempo: steady, drifting a little (more in ballads and jazz; none in electronic), a ritardando in ballads
    u = np.arange(int(np.ceil(total_q + lead_q)) + 8) + 0.5
    drift = {"electronic": 0.0, "ballad": 0.03, "jazz": 0.02}.get(genre, 0.01) * rng.uniform(0.3, 1.0)
    qpm = song.qpm * (1 + drift * np.sin(2 * np.pi * u / rng.uniform(16, 48) + rng.uniform(0, 6.3)))
    if genre == "ballad" and rng.random() < 0.6:
        qpm *= 1 - 0.25 * np.clip((u - (total_q + lead_q - 6)) / 6, 0, 1)
    mspq = np.round(60e6 / qpm).astype(np.int64)
    change = np.concatenate([[True], mspq[1:] != mspq[:-1]])
    tempo_tick, tempo_mspq = np.flatnonzero(change).astype(np.int64) * TPQ, mspq[change]
    seconds = Arrangement(tempo_tick, tempo_mspq, [], [], {}).seconds
    tightness = TIGHTNESS.get(genre, 1.0) * rng.uniform(0.6, 1.3)

    roles = [("drums", DRUM_PROGRAM), ("bass", _choose(rng, BASS[genre])), ("comp", _choose(rng, COMP[genre])),
             ("lead", _choose(rng, LEAD[genre]))]
    if rng.random() < 0.45:
        roles.insert(3, ("comp", _choose(rng, [c for c in COMP[genre] if c[0] != roles[2][1]])))
    if rng.random() < 0.6:
        roles.append(("pad", _choose(rng, PAD[genre])))
    if rng.random() < 0.45:
        roles.append(("counter", _choose(rng, COUNTER[genre])))
    if rng.random() < 0.2:
        roles.append(("fx", _choose(rng, EFFECTS)))
    if genre in ("jazz", "ballad") and rng.random() < 0.15:
        roles = [r for r in roles if r[0] != "drums"]  # a few songs without drums

    stems = []
    curve = (rng.uniform(4, 12), rng.uniform(8, 32), rng.uniform(0, 6.3))
    for role, program in roles:
        make = {"drums": _drums, "bass": _bass, "comp": _comp, "pad": _pad, "lead": _melody,
                "counter": lambda s, r, p: _melody(s, r, p, counter=True), "fx": _effects}[role]
        notes = make(song, rng, program) if role != "drums" else _drums(song, rng)
        if not notes:
            continue
        q = np.array([n[0] for n in notes], dtype=np.float64) + lead_q
        dur = np.array([n[1] for n in notes], dtype=np.float64)
        pitch = np.array([n[2] for n in notes], dtype=np.int32)
        vel = np.array([n[3] for n in notes], dtype=np.float64)
        if role != "drums":
            lo, hi = register(program)
            pitch = np.where(pitch < lo, pitch + 12 * np.ceil((lo - pitch) / 12), pitch).astype(np.int32)
            pitch = np.where(pitch > hi, pitch - 12 * np.ceil((pitch - hi) / 12), pitch).astype(np.int32)
            if song.swing > 0.5 and genre != "ballad":
                q = _swing(q, song.swing)
            # velocity: the section's level (choruses louder), a phrase curve, accents, noise
            sect = np.array([song.bars[min(int((x - lead_q) // beats), len(song.bars) - 1)][0] for x in q])
            vel = vel + np.where(sect == "chorus", 8, np.where(sect == "intro", -6, 0)) + curve[0] * np.sin(
                2 * np.pi * q / curve[1] + curve[2]) + rng.normal(0, 5, len(q))
        qps = qpm[np.clip(q.astype(int), 0, len(qpm) - 1)] / 60.0
        jitter = np.clip(rng.normal(0, 0.006 * tightness, len(q)), -0.03, 0.03) * qps
        on = np.maximum(np.round((q + jitter) * TPQ), 0).astype(np.int64)
        off = on + np.maximum(np.round(dur * TPQ), TPQ // 16).astype(np.int64)
        velocity = np.clip(np.round(vel), 1, 127).astype(np.int32)
        bank, fallback = pick_bank(palette, program, rng)
        if role == "drums":
            order = np.lexsort((pitch, on))
            on, pitch, velocity = on[order], pitch[order], velocity[order]
            keep = np.concatenate([[True], (np.diff(on) > 0) | (np.diff(pitch) != 0)])
            kit = int(rng.choice(KITS[genre]))
            stem = finish_drums(Stem(gm.DRUMS_NAME, DRUM_PROGRAM, kit, bank, on[keep], on[keep] + TPQ // 8,
                                     pitch[keep], velocity[keep], parts=(f"{genre} drums",), fallback=fallback))
            if stem is None:
                continue
        else:
            on, off, pitch, velocity = _resolve_overlaps(on, off, pitch, velocity)
            stem = Stem(gm.program_name(program), program, program, bank, on, off, pitch, velocity,
                        parts=(f"{genre} {role}",), fallback=fallback)
            if program in range(0, 8) and role == "comp" and rng.random() < 0.6:
                stem.pedal = _bar_pedal(len(song.bars), beats, lead_q)
            express(stem, seconds, rng)
        mix_settings(stem, role if role in ("drums", "bass", "lead", "comp", "pad", "counter") else "counter",
                     genre, rng)
        stems.append(stem)
    room = float(rng.uniform(0.3, 1.4)) if rng.random() < 0.6 else None
    info = {"style": f"song:{genre}", "genre": genre, "key": int(song.key), "minor": bool(song.minor),
            "median_qpm": round(float(np.median(60e6 / tempo_mspq)), 2), "bars": len(song.bars),
            "form": sorted({b[0] for b in song.bars}), "swing": round(song.swing, 3),
            "tightness": round(float(tightness), 4), "drums": any(s.is_drum for s in stems),
            "drum_kit": next((s.midi_program for s in stems if s.is_drum), None),
            "room_rt60": None if room is None else round(room, 3)}
    return Arrangement(tempo_tick, tempo_mspq, [(0, beats, 4)], stems, info)


def _bar_pedal(n_bars: int, beats: int, lead_q: float) -> np.ndarray:
    """Sustain pedal changed at every bar line (lifted just after it, down again a moment later)."""
    rows = []
    for b in range(n_bars):
        t = int((lead_q + b * beats) * TPQ)
        rows += [(t + TPQ // 16, 0), (t + TPQ // 8, 127)] if b else [(t + TPQ // 8, 127)]
    rows.append((int((lead_q + n_bars * beats) * TPQ), 0))
    return np.array(rows, dtype=np.int64)
