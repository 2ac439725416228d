"""What a corpus covers, so it can be checked before hours of training are spent on it.

Per track (track_stats, from its arrangement): seconds, and per stem its General MIDI family, bank and engine, notes,
an octave histogram of its pitches, drum hits; the track's pitched polyphony. Over a corpus (coverage): hours per
family (a track counts once per family it has), stem-hours per bank and per engine and which split heard each
bank, the pitch histogram per family with the bass register below MIDI 36 and 40, the drum-hit rate, polyphony,
the share of tracks with drums, bank fallbacks and songs per genre.
"""
from __future__ import annotations

import numpy as np

from ..tokens import gm

SPLIT_ABBREV = {"train": "tr", "validation": "va", "test": "te"}
OCTAVES = 11  # MIDI octaves 0..10 (octave k holds pitches 12k..12k+11; MIDI 28 = E1 is in octave 2)


def track_stats(arr) -> dict:
    """The figures of one arrangement that coverage() adds up."""
    seconds = float(arr.seconds(arr.end_tick))
    stems, starts, ends = [], [], []
    for s in arr.stems:
        hist = np.bincount(np.asarray(s.pitch) // 12, minlength=OCTAVES)[:OCTAVES] if not s.is_drum else None
        stems.append({"family": gm.program_class(s.program), "program": int(s.program), "bank": s.bank.name,
                      "engine": s.bank.engine, "notes": int(len(s.onset)), "fallback": bool(s.fallback),
                      "octaves": None if hist is None else hist.tolist(),
                      "below36": int(np.sum(s.pitch < 36)) if not s.is_drum else 0,
                      "below40": int(np.sum(s.pitch < 40)) if not s.is_drum else 0,
                      "lowest": int(s.pitch.min()) if len(s.pitch) and not s.is_drum else None})
        if not s.is_drum and len(s.onset):
            starts.append(arr.seconds(s.onset))
            ends.append(arr.seconds(s.offset))
    poly_mean = poly_max = 0.0
    if starts:
        on, off = np.concatenate(starts), np.concatenate(ends)
        t = np.concatenate([on, off])
        d = np.concatenate([np.ones(len(on)), -np.ones(len(off))])
        order = np.lexsort((d, t))  # at one time, offs first
        t, level = t[order], np.cumsum(d[order])
        dt = np.diff(t)
        sounding = level[:-1] > 0
        if dt[sounding].sum() > 0:
            poly_mean = float(np.sum(level[:-1][sounding] * dt[sounding]) / dt[sounding].sum())
        poly_max = float(level.max())
    return {"seconds": round(seconds, 3), "stems": stems, "polyphony": round(poly_mean, 4),
            "polyphony_max": poly_max, "style": str(arr.info.get("style", ""))}


def coverage(tracks: list[tuple[str, float, dict]]) -> dict:
    """Corpus figures from (split, audio seconds, track_stats) of every track."""
    fam_s: dict[str, float] = {}
    bank_s: dict[str, float] = {}
    engine_s: dict[str, float] = {}
    bank_splits: dict[str, set] = {}
    octaves: dict[str, np.ndarray] = {}
    below36 = below40 = bass_notes = 0
    lowest = 128
    drum_hits = drum_s = poly_w = poly_s = 0.0
    with_drums = fallbacks = stems_n = 0
    split_s: dict[str, float] = {}
    styles: dict[str, int] = {}
    for split, seconds, st in tracks:
        split_s[split] = split_s.get(split, 0.0) + seconds
        styles[st["style"]] = styles.get(st["style"], 0) + 1
        for fam in {s["family"] for s in st["stems"]}:
            fam_s[fam] = fam_s.get(fam, 0.0) + seconds
        has_drums = False
        for s in st["stems"]:
            stems_n += 1
            fallbacks += s["fallback"]
            bank_s[s["bank"]] = bank_s.get(s["bank"], 0.0) + seconds
            engine_s[s["engine"]] = engine_s.get(s["engine"], 0.0) + seconds
            bank_splits.setdefault(s["bank"], set()).add(split)
            if s["family"] == gm.DRUMS_NAME:
                has_drums = True
                drum_hits += s["notes"]
                continue
            octaves[s["family"]] = octaves.get(s["family"], np.zeros(OCTAVES, np.int64)) + np.asarray(s["octaves"])
            if s["family"] == "Bass":
                below36 += s["below36"]
                below40 += s["below40"]
                bass_notes += s["notes"]
            if s["lowest"] is not None:
                lowest = min(lowest, s["lowest"])
        if has_drums:
            with_drums += 1
            drum_s += seconds
        poly_w += st["polyphony"] * seconds
        poly_s += seconds
    total = sum(split_s.values())
    return {
        "tracks": len(tracks), "hours": round(total / 3600, 4),
        "hours_per_split": {k: round(v / 3600, 4) for k, v in sorted(split_s.items())},
        "hours_per_family": {f: round(fam_s.get(f, 0.0) / 3600, 4) for f in (*gm.CLASS_NAMES, gm.DRUMS_NAME)},
        "stem_hours_per_bank": {k: round(v / 3600, 4) for k, v in sorted(bank_s.items())},
        "stem_hours_per_engine": {k: round(v / 3600, 4) for k, v in sorted(engine_s.items())},
        "bank_splits": {k: sorted(v) for k, v in sorted(bank_splits.items())},
        "octave_histogram_per_family": {k: v.tolist() for k, v in sorted(octaves.items())},
        "bass_notes": int(bass_notes), "bass_below_36": int(below36), "bass_below_40": int(below40),
        "lowest_pitch": None if lowest == 128 else int(lowest),
        "drum_hits_per_second": round(drum_hits / drum_s, 3) if drum_s else 0.0,
        "share_tracks_with_drums": round(with_drums / len(tracks), 4) if tracks else 0.0,
        "polyphony_mean": round(poly_w / poly_s, 3) if poly_s else 0.0,
        "bank_fallbacks": int(fallbacks), "stems": int(stems_n),
        "tracks_per_style": dict(sorted(styles.items())),
    }


def report_lines(cov: dict) -> list[str]:
    """The coverage figures as the command prints them."""
    h = cov["hours_per_split"]
    lines = [f"coverage: {cov['tracks']} tracks, {cov['hours']:.2f} h ("
             + ", ".join(f"{k} {v:.2f} h" for k, v in h.items()) + ")",
             "  hours per family: " + ", ".join(f"{k} {v:.2f}" for k, v in cov["hours_per_family"].items()),
             "  stem-hours per engine: " + ", ".join(f"{k} {v:.2f}" for k, v in cov["stem_hours_per_engine"].items()),
             "  stem-hours per bank (splits): " + ", ".join(
                 f"{k} {v:.2f} ({'/'.join(SPLIT_ABBREV.get(s, s) for s in cov['bank_splits'][k])})"
                 for k, v in cov["stem_hours_per_bank"].items())]
    lines.append("  pitch octaves per family (share of notes in octaves 0..10; octave 2 = C1..B1):")
    for fam, hist in cov["octave_histogram_per_family"].items():
        n = max(sum(hist), 1)
        lines.append(f"    {fam:<20} " + " ".join(f"{100 * c / n:4.0f}" for c in hist) + f"  ({sum(hist)} notes)")
    bass = max(cov["bass_notes"], 1)
    lines.append(f"  bass register: {100 * cov['bass_below_40'] / bass:.1f}% of bass notes below MIDI 40, "
                 f"{100 * cov['bass_below_36'] / bass:.1f}% below 36; lowest pitch {cov['lowest_pitch']}")
    lines.append(f"  drums: {100 * cov['share_tracks_with_drums']:.1f}% of tracks, "
                 f"{cov['drum_hits_per_second']:.2f} hits/s; polyphony {cov['polyphony_mean']:.2f} notes sounding; "
                 f"bank fallbacks {cov['bank_fallbacks']} of {cov['stems']} stems")
    lines.append("  tracks per style: " + ", ".join(f"{k} {v}" for k, v in cov["tracks_per_style"].items()))
    return lines
