"""Waveform augmentation: determinism per seed, each effect doing what docs/design.md §4.6 says (RIR up to RT60 1 s, noise at
10-30 dB SNR in three colours, EQ within +-6 dB, clipping 3 dB below the peak), and the pre-emphasis handling."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from mt3ds.config import AudioConfig
from mt3ds.data import augment as A
from mt3ds.data.augment import AugmentConfig, Augmenter, augment

SR = 16000
PRE = AudioConfig().pre_emphasis
OFF = dict(rir_prob=0.0, noise_prob=0.0, eq_prob=0.0, clip_prob=0.0)


def only(**kw) -> AugmentConfig:
    return AugmentConfig(**{**OFF, **kw})


@pytest.fixture(scope="module")
def chunk() -> np.ndarray:
    """A pre-emphasized chunk of a few decaying tones, as the shards hold it (float16)."""
    rng = np.random.default_rng(0)
    t = np.arange(32768) / SR
    x = sum(0.2 * np.sin(2 * np.pi * f * t) * np.exp(-2 * ((t - s) % 0.5)) for f, s in
            ((220, 0), (330, 0.1), (1250, 0.3))) + 0.001 * rng.standard_normal(len(t))
    x[1:] -= PRE * x[:-1].copy()
    return x.astype(np.float16)


def natural(x: np.ndarray) -> np.ndarray:
    return scipy.signal.lfilter([1.0], [1.0, -PRE], x.astype(np.float64))


def power(x) -> float:
    return float(np.mean(np.asarray(x, dtype=np.float64) ** 2))


def test_same_seed_same_audio_and_input_left_alone(chunk):
    before = chunk.copy()
    a = Augmenter(AugmentConfig(), seed=11)
    b = Augmenter(AugmentConfig(), seed=11)
    outs_a = [a(chunk) for _ in range(20)]
    outs_b = [b(chunk) for _ in range(20)]
    assert all(np.array_equal(x, y) for x, y in zip(outs_a, outs_b))
    assert np.array_equal(chunk, before)
    assert all(x.dtype == np.float32 and x.shape == chunk.shape for x in outs_a)
    assert not np.array_equal(augment(chunk, seed=11, cfg=only(noise_prob=1.0)),
                              augment(chunk, seed=12, cfg=only(noise_prob=1.0)))


def test_probabilities_are_the_documented_defaults_and_respected(chunk):
    c = AugmentConfig()
    assert (c.rir_prob, c.rir_rt60_max, c.noise_prob, c.snr_db_min, c.snr_db_max, c.eq_prob, c.eq_gain_db_max,
            c.clip_prob, c.clip_threshold_dbfs) == (0.3, 1.0, 0.5, 10.0, 30.0, 0.3, 6.0, 0.1, -3.0)
    assert np.array_equal(augment(chunk, 0, AugmentConfig(**OFF)), chunk.astype(np.float32))
    aug = Augmenter(AugmentConfig(), seed=1)
    x = chunk.astype(np.float32)
    changed = sum(not np.array_equal(aug(chunk), x) for _ in range(400))
    # P(nothing fires) = 0.7 * 0.7 * 0.5 * 0.9 = 0.2205
    assert abs((400 - changed) / 400 - 0.2205) < 0.07


def test_noise_snr_is_between_10_and_30_db(chunk):
    aug = Augmenter(only(noise_prob=1.0), seed=2)
    x = chunk.astype(np.float32)
    snrs = [10 * np.log10(power(x) / power(aug(chunk) - x)) for _ in range(60)]
    assert min(snrs) >= 10.0 - 1e-3 and max(snrs) <= 30.0 + 1e-3
    assert max(snrs) - min(snrs) > 10  # the SNR is drawn, not fixed
    silent = np.zeros(32768, dtype=np.float16)
    assert not aug(silent).any()  # digital silence stays silent


@pytest.mark.parametrize("colour, slope", [(0, 0.0), (1, -1.0), (2, -2.0)])
def test_noise_colours_white_pink_brown(colour, slope):
    bank = A.noise_bank(np.random.default_rng(0), 4, 65536)
    assert bank.shape == (3, 4, 65536)
    np.testing.assert_allclose(np.sqrt(np.mean(bank.astype(np.float64) ** 2, axis=2)), 1.0, rtol=1e-4)
    f, p = scipy.signal.welch(natural(bank[colour].ravel()), fs=SR, nperseg=4096)
    band = (f > 100) & (f < 4000)
    fitted = np.polyfit(np.log(f[band]), np.log(p[band]), 1)[0]  # power ~ f^slope in the natural waveform
    assert abs(fitted - slope) < 0.15


def test_room_impulse_response_decays_60_db_over_rt60():
    rng = np.random.default_rng(3)
    h = A.room_impulse_response(rng, AugmentConfig(rir_rt60_min=0.6, rir_rt60_max=0.6), SR)
    assert h[0] == 1.0 and 0.6 * SR <= len(h) <= 0.6 * SR + 0.012 * SR
    tail = h[1:].astype(np.float64)
    edc = 10 * np.log10(np.cumsum(tail[::-1] ** 2)[::-1] / np.sum(tail ** 2))  # Schroeder energy decay
    t5, t25 = np.argmax(edc < -5), np.argmax(edc < -25)
    rt60 = 3 * (t25 - t5) / SR  # T20 extrapolated to 60 dB
    assert abs(rt60 - 0.6) < 0.06
    for _ in range(20):  # docs/design.md §4.6: RT60 up to 1 s
        assert len(A.room_impulse_response(rng, AugmentConfig(), SR)) <= 1.0 * SR + 0.012 * SR


def test_reverb_keeps_the_level_and_smears_the_signal(chunk):
    x = chunk.astype(np.float32)
    y = augment(chunk, 4, only(rir_prob=1.0))
    assert abs(power(y) / power(x) - 1) < 1e-3
    assert np.corrcoef(x, y)[0, 1] < 0.99


def test_eq_curve_stays_within_6_db_and_is_applied_as_drawn():
    rng = np.random.default_rng(5)
    curves = np.array([A.eq_curve(rng, AugmentConfig()) for _ in range(50)])
    assert np.abs(curves).max() <= 6.0 + 1e-9 and np.abs(curves).max() > 3.0
    # the zero-phase filter's response to an impulse is the drawn curve, interpolated to the FFT bins
    curve = curves[0]
    impulse = np.zeros(32768, dtype=np.float32)
    impulse[16384] = 1.0
    y = A._filter(impulse, None, curve, SR)
    f = np.fft.rfftfreq(len(y), 1 / SR)
    response = 20 * np.log10(np.abs(np.fft.rfft(np.roll(y, -16384))))
    expect = np.interp(np.log(np.clip(f, 10, 8000)), np.log(A._EQ_GRID_HZ), curve)
    band = (f > 30) & (f < 7900)
    assert np.abs(response[band] - expect[band]).max() < 0.3


def test_clipping_is_3_db_below_the_peak_of_the_natural_waveform(chunk):
    y = augment(chunk, 6, only(clip_prob=1.0))
    before, after = natural(chunk), natural(y)
    ratio_db = 20 * np.log10(np.abs(after).max() / np.abs(before).max())
    assert abs(ratio_db - (-3.0)) < 0.01
    untouched = np.abs(before) < 0.5 * np.abs(before).max()
    np.testing.assert_allclose(after[untouched], before[untouched], atol=1e-4)  # only the peaks change


def test_config_checks_and_round_trip():
    c = AugmentConfig(noise_prob=0.2)
    assert AugmentConfig.from_dict(c.to_dict()) == c
    for bad in ({"noise_prob": 1.5}, {"rir_rt60_min": 2.0}, {"snr_db_min": 40.0}, {"clip_threshold_dbfs": 1.0}):
        with pytest.raises(ValueError):
            AugmentConfig(**bad)
