"""synth/render.py and expression.py: every engine sounds a known note at its time (within 10 ms) and pitch,
controllers never move a target onset, the mix is the sum of its stems, a silent render is refused."""
from __future__ import annotations

import numpy as np
import pytest

from synth_fixtures import FREEPATS, TIM, first_rise, make_kit, need_fluidsynth, need_timidity

need_fluidsynth()

from mt3ds.synth import banks  # noqa: E402
from mt3ds.synth.arrange import TPQ, Arrangement, Stem  # noqa: E402
from mt3ds.synth.expression import VOICING, express, voicing  # noqa: E402
from mt3ds.synth.render import (SAMPLE_RATE, BadRender, loudness, mix_stems, process_stems,  # noqa: E402
                                render_stem)
from mt3ds.tokens import gm  # noqa: E402

TICKS = np.array([TPQ, 3 * TPQ + 37, 5 * TPQ + 500], dtype=np.int64)  # 0.5 s, ~1.52 s, ~2.76 s at 120 qpm


def _arr(stem: Stem) -> Arrangement:
    return Arrangement(np.array([0]), np.array([500000]), [(0, 4, 4)], [stem], {})


def _stem(bank, program: int, pitch: int, ticks=TICKS, length=TPQ // 4) -> Stem:
    drum = program == 128
    return Stem(gm.program_name(program), program, 0 if drum else program, bank, ticks, ticks + length,
                np.full(len(ticks), pitch, np.int32), np.full(len(ticks), 100, np.int32))


def _f0(audio: np.ndarray, start_s: float, seconds: float = 0.3) -> float:
    """The fundamental of a stretch of audio: the peak of the harmonic product spectrum (three harmonics), so a
    note whose second harmonic is its loudest partial (a guitar) still reads at its own pitch."""
    seg = audio[int((start_s + 0.05) * SAMPLE_RATE):int((start_s + 0.05 + seconds) * SAMPLE_RATE)].astype(np.float64)
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), 16 * len(seg)))
    freqs = np.fft.rfftfreq(16 * len(seg), 1 / SAMPLE_RATE)
    n = len(spec) // 3
    hps = spec[:n] * spec[: 2 * n: 2] * spec[: 3 * n: 3]
    band = (freqs[:n] > 80) & (freqs[:n] < 2000)
    return float(freqs[:n][band][np.argmax(hps[band])])


def _check_onsets_and_pitch(bank, program: int, pitch: int, check_pitch=True):
    stem = _stem(bank, program, pitch)
    arr = _arr(stem)
    audio = render_stem(arr, stem, int(4 * SAMPLE_RATE))
    for t in arr.seconds(TICKS):
        lag = first_rise(audio, float(t), SAMPLE_RATE)
        assert 0.0 <= lag < 0.010, (bank.name, t, lag)
    if check_pitch:
        expected = 440.0 * 2 ** ((pitch - 69) / 12)
        assert abs(np.log2(_f0(audio, float(arr.seconds(TICKS[0]))) / expected)) < 0.04  # within a quarter tone
    return audio


def test_fluidsynth_sounds_the_note_on_time_and_in_tune():
    _check_onsets_and_pitch(banks.soundfont_bank(TIM), 25, 57)  # steel guitar A3 (a sharp attack)
    _check_onsets_and_pitch(banks.soundfont_bank(TIM), 128, 38, check_pitch=False)  # snare


def test_timidity_sounds_the_note_on_time_and_in_tune():
    need_timidity()
    bank = banks.timidity_bank(FREEPATS)
    audio = _check_onsets_and_pitch(bank, 25, 57)
    twice = render_stem(_arr(_stem(bank, 25, 57)), _stem(bank, 25, 57), int(4 * SAMPLE_RATE))
    assert np.array_equal(audio, twice)  # same MIDI, same bytes


def test_hydrogen_kit_plays_its_samples_on_time(tmp_path):
    bank = banks.kit_bank(make_kit(tmp_path / "Kit"))
    stem = _stem(bank, 128, 38)
    audio = render_stem(_arr(stem), stem, int(4 * SAMPLE_RATE), seed=3)
    for t in _arr(stem).seconds(TICKS):
        assert 0.0 <= first_rise(audio, float(t), SAMPLE_RATE) < 0.002  # a sample player: to the sample
    soft = _stem(bank, 128, 36)
    soft.velocity[:] = 30
    loud = _stem(bank, 128, 36)
    a_soft = render_stem(_arr(soft), soft, 4 * SAMPLE_RATE, seed=0)
    a_loud = render_stem(_arr(loud), loud, 4 * SAMPLE_RATE, seed=0)
    assert np.abs(a_loud).max() > 3 * np.abs(a_soft).max()  # velocity layers and curve


def test_real_hydrogen_kits_play_a_groove_on_time():
    from synth_fixtures import KIT_ROOT

    kits = sorted(p for p in KIT_ROOT.glob("*/drumkit.xml")) if KIT_ROOT.is_dir() else []
    if not kits:
        pytest.skip("Hydrogen kits missing: apt-get install hydrogen-drumkits")
    bank = banks.kit_bank(kits[0].parent)
    stem = _stem(bank, 128, 36)
    audio = render_stem(_arr(stem), stem, 4 * SAMPLE_RATE)
    for t in _arr(stem).seconds(TICKS):
        assert 0.0 <= first_rise(audio, float(t), SAMPLE_RATE) < 0.010


def test_controllers_leave_target_onsets_alone_and_the_sound_on_time():
    bank = banks.soundfont_bank(TIM)
    for program in (40, 56, 73):  # violin, trumpet, flute: swells, vibrato, legato
        stem = _stem(bank, program, 67, ticks=np.arange(8, dtype=np.int64) * TPQ + TPQ, length=TPQ - 30)
        before = (stem.onset.copy(), stem.pitch.copy(), stem.velocity.copy())
        arr = _arr(stem)
        for seed in range(6):
            express(stem, arr.seconds, np.random.default_rng(seed), amount=1.5)
            assert np.array_equal(stem.onset, before[0]) and np.array_equal(stem.pitch, before[1])
            assert (stem.offset > stem.onset).all() and np.array_equal(stem.velocity, before[2])
        assert len(stem.controls) or len(stem.bend)
        audio = render_stem(arr, stem, int(10 * SAMPLE_RATE))
        lag = first_rise(audio, float(arr.seconds(stem.onset[0])), SAMPLE_RATE)
        assert 0.0 <= lag < 0.010


def _high_share(audio: np.ndarray, start_s: float, hz: float = 1500.0) -> float:
    """Share of a note's spectral energy above HZ (its first 0.3 s)."""
    seg = audio[int(start_s * SAMPLE_RATE):int((start_s + 0.3) * SAMPLE_RATE)].astype(np.float64)
    power = np.abs(np.fft.rfft(seg)) ** 2
    freqs = np.fft.rfftfreq(len(seg), 1 / SAMPLE_RATE)
    return float(power[freqs > hz].sum() / power.sum())


def test_voicing_changes_the_sound_not_the_note():
    """A darker, resonant voicing takes the highs out of a bright preset; the onsets and the pitch stay."""
    bank = banks.soundfont_bank(TIM)
    plain = _check_onsets_and_pitch(bank, 25, 57)
    stem = _stem(bank, 25, 57)
    stem.voicing = {"filter_cutoff": -4200.0, "filter_q": 120.0, "release": 600.0}
    arr = _arr(stem)
    dark = render_stem(arr, stem, int(4 * SAMPLE_RATE))
    start = float(arr.seconds(TICKS[0]))
    assert _high_share(dark, start) < 0.5 * _high_share(plain, start)
    for t in arr.seconds(TICKS):
        assert 0.0 <= first_rise(dark, float(t), SAMPLE_RATE) < 0.010
    assert abs(np.log2(_f0(dark, start) / (440.0 * 2 ** ((57 - 69) / 12)))) < 0.04


def test_voicing_draws_within_ranges_and_spares_drum_attacks():
    bank = banks.soundfont_bank(TIM)
    pitched, drums = _stem(bank, 0, 60), _stem(bank, 128, 38)
    seen = set()
    for seed in range(40):
        v = voicing(pitched, np.random.default_rng(seed))
        assert v == voicing(pitched, np.random.default_rng(seed))  # reproducible
        seen |= set(v)
        for name, value in v.items():
            assert VOICING[name][1] <= value <= VOICING[name][2], (name, value)
        assert "filter_q" not in v or "filter_cutoff" in v
        half = voicing(pitched, np.random.default_rng(seed), amount=0.5)
        assert half.keys() == v.keys() and all(abs(half[k] - v[k] / 2) <= 0.1 for k in v)
        assert not voicing(pitched, np.random.default_rng(seed), amount=0.0)
        assert "attack" not in voicing(drums, np.random.default_rng(seed))
    assert seen == set(VOICING)


def test_mix_is_the_sum_of_processed_stems_and_loudness_matches_pyloudnorm():
    import pyloudnorm

    bank = banks.soundfont_bank(TIM)
    a, b = _stem(bank, 0, 60), _stem(bank, 33, 36)
    a.eq_tilt_db, a.reverb, b.eq_tilt_db = 4.0, 0.4, -3.0
    arr = Arrangement(np.array([0]), np.array([500000]), [(0, 4, 4)], [a, b], {"room_rt60": 0.8})
    n = 4 * SAMPLE_RATE
    dry = [render_stem(arr, s, n) for s in arr.stems]
    wet = process_stems(arr, dry, seed=5)
    assert not np.allclose(wet[0], dry[0]) and np.array_equal(wet, process_stems(arr, dry, seed=5))
    mix, stems, overall, lufs = mix_stems(wet, [0.0, -6.0])
    assert np.abs(np.sum(stems, axis=0) - mix).max() < 1e-6 and np.abs(mix).max() <= 10 ** (-1 / 20) + 1e-6
    assert abs(lufs[1] - lufs[0] + 6.0) < 0.1  # -6 dB relative to the other at equal loudness
    ref = pyloudnorm.Meter(SAMPLE_RATE).integrated_loudness(wet[0].astype(np.float64))
    assert abs(loudness(wet[0]) - ref) < 1e-6


def test_a_silent_render_is_refused_as_bad_material():
    bank = banks.soundfont_bank(TIM)
    stem = _stem(bank, 0, 60)
    with pytest.raises(BadRender, match="silent"):
        render_stem(_arr(stem), stem, int(0.3 * SAMPLE_RATE))  # ends before the first note sounds
