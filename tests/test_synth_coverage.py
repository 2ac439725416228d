"""synth/coverage.py: the figures of a small corpus made here, checked against what was put in it."""
from __future__ import annotations

import numpy as np

from mt3ds.synth.arrange import TPQ, Arrangement, Stem
from mt3ds.synth.banks import DRUMKIT, FLUIDSYNTH, TIMIDITY, Bank
from mt3ds.synth.coverage import coverage, report_lines, track_stats
from mt3ds.tokens import gm

SF = Bank("sf", FLUIDSYNTH, "/x/sf.sf2", "", tuple((p, 0, p) for p in range(128)), (0,))
TIMI = Bank("tim", TIMIDITY, "/x/t.cfg", "", tuple((p, 0, p) for p in range(128)), (0,))
KIT = Bank("kit:K", DRUMKIT, "/x/K", "", (), (0,))
QPS = 2  # 120 qpm: a quarter is half a second


def _stem(bank, program, on_s, off_s, pitch, fallback=False):
    ticks = lambda s: np.round(np.asarray(s, dtype=np.float64) * QPS * TPQ).astype(np.int64)  # noqa: E731
    return Stem(gm.program_name(program), program, 0 if program == 128 else program, bank, ticks(on_s),
                ticks(off_s), np.asarray(pitch, np.int32), np.full(len(pitch), 90, np.int32), fallback=fallback)


def _arr(stems, style):
    return Arrangement(np.array([0]), np.array([500000]), [(0, 4, 4)], stems, {"style": style})


def test_coverage_figures_of_a_known_corpus():
    # track 1 (train, 10 s): a 3-note piano chord for 2 s then one note for 2 s (polyphony 2.0), a bass line
    # touching E1, 20 drum hits on a Hydrogen kit
    piano = _stem(SF, 0, [0, 0, 0, 2], [2, 2, 2, 4], [60, 64, 67, 72])
    bass = _stem(TIMI, 33, [0, 1, 2, 3], [1, 2, 3, 4], [28, 35, 40, 45], fallback=True)
    drums = _stem(KIT, 128, np.arange(20) * 0.2, np.arange(20) * 0.2 + 0.1, [36, 42] * 10)
    one = track_stats(_arr([piano, bass, drums], "song:rock"))
    # track 2 (validation, 20 s): a violin alone
    violin = _stem(TIMI, 40, [0, 5], [5, 10], [76, 79])
    two = track_stats(_arr([violin], "orchestra"))
    cov = coverage([("train", 10.0, one), ("validation", 20.0, two)])

    assert cov["tracks"] == 2 and abs(cov["hours"] - 30 / 3600) < 1e-4
    fam = cov["hours_per_family"]
    assert abs(fam["Piano"] - 10 / 3600) < 1e-4 and abs(fam["Bass"] - 10 / 3600) < 1e-4
    assert abs(fam["Strings"] - 20 / 3600) < 1e-4 and abs(fam["Drums"] - 10 / 3600) < 1e-4 and fam["Organ"] == 0
    assert cov["stem_hours_per_engine"] == {"drumkit": round(10 / 3600, 4), "fluidsynth": round(10 / 3600, 4),
                                            "timidity": round(30 / 3600, 4)}
    assert cov["bank_splits"] == {"kit:K": ["train"], "sf": ["train"], "tim": ["train", "validation"]}
    assert cov["octave_histogram_per_family"]["Bass"] == [0, 0, 2, 2, 0, 0, 0, 0, 0, 0, 0]  # 28, 35 | 40, 45
    assert cov["bass_notes"] == 4 and cov["bass_below_36"] == 2 and cov["bass_below_40"] == 2
    assert cov["lowest_pitch"] == 28
    assert cov["drum_hits_per_second"] == 2.0 and cov["share_tracks_with_drums"] == 0.5
    assert cov["bank_fallbacks"] == 1 and cov["stems"] == 4
    assert cov["tracks_per_style"] == {"orchestra": 1, "song:rock": 1}
    # polyphony, time-weighted over sounding time: track 1 has piano 3+bass 1 for 2 s, piano 1+bass 1 for 2 s
    assert abs(one["polyphony"] - 3.0) < 1e-9 and abs(two["polyphony"] - 1.0) < 1e-9
    assert abs(cov["polyphony_mean"] - (3.0 * 10 + 1.0 * 20) / 30) < 1e-3
    text = "\n".join(report_lines(cov))
    assert "Bass" in text and "below MIDI 40" in text and "hits/s" in text and "tim 0.01 (tr/va)" in text
