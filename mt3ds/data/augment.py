"""Waveform augmentation for training chunks, run on the CPU in the loader workers (docs/design.md §4.6).

Four effects, each drawn with its own probability (docs/design.md §4.6), in the order a recording chain meets them:
room (synthetic impulse response, RT60 up to 1 s) -> EQ (+-6 dB) -> noise (10-30 dB SNR, white, pink or brown) ->
clipping (3 dB below the chunk's peak: the recording driven 3 dB too hot). Every random draw comes from the
Augmenter's own Generator, seeded by the caller, so a given seed and input give the same audio; the four "does this
effect fire" draws are taken up front so that changing one probability does not shift the others. Validation
never calls this.

The shards hold pre-emphasized audio (AudioConfig.pre_emphasis). Room, EQ and the noise colours describe the
natural waveform; being linear, room and EQ commute with pre-emphasis and are applied to the stored audio as is,
and the noise is pre-emphasized like the shards. The SNR is measured on the audio the model sees (pre-emphasized).
Clipping is not linear, so it alone undoes the pre-emphasis and redoes it.

Library or our own code? audiomentations 0.43 (the well-kept numpy/CPU library) was timed against this module on
this machine (one 32768-sample chunk, every effect forced on, one core):
  - rooms: its RoomSimulator runs pyroomacoustics' image-source model: ~95 ms per call, and pulls a compiled
    dependency (and numba, llvmlite); ApplyImpulseResponse needs a folder of recorded IR files. A synthetic
    exponentially decaying noise IR (what "synthetic RIR up to RT60 1 s" asks for) costs ~0.8 ms here;
  - noise and EQ: AddColorNoise 0.8 ms and SevenBandParametricEQ 1.8 ms against 0.5 and 0.7 ms here;
  - determinism: audiomentations draws from the process-global `random` / `np.random` state, so a worker's stream
    depends on whatever else touched those globals; here every draw comes from the Generator passed in;
  - clipping: its ClippingDistortion clips at a random percentile, not at a level in dB.
With these probabilities its chain averaged ~49 ms per chunk, with no control over its seeding. So: our own
~100 lines of numpy/scipy, no new dependency, ~0.3 ms per chunk on average (`mt3ds bench loader` measures the
cost inside the loader against the no-augmentation rate).
Pitch shift and time stretch (probability 0 in the design; docs/design.md §4.6) are not implemented: they would also need the tokens
rewritten.
"""
from __future__ import annotations

import functools

import numpy as np
import scipy.fft
import scipy.signal

from ..config import AudioConfig
from .loader_config import AugmentConfig

_LN_1000 = np.log(1000.0)  # 60 dB of amplitude decay: exp(-ln(1000)) = 1e-3


class Augmenter:
    """chunk -> augmented chunk: callable, every draw from its own Generator seeded at construction.

    The cheap way to the same effects: room and EQ are linear filters, so they share one FFT pass, and because
    pre-emphasis is linear too they are applied to the stored (pre-emphasized) audio directly. Noise is drawn from a
    bank of long white, pink and brown noises made once per Augmenter (at a random offset, sign and level), which
    turns a full inverse FFT per sample into a slice. Only clipping is not linear: it alone undoes the pre-emphasis
    and redoes it.
    """

    def __init__(self, cfg: AugmentConfig = AugmentConfig(), seed: int = 0, audio: AudioConfig = AudioConfig(),
                 noise_bank: int = 8):
        self.cfg, self.audio = cfg, audio
        draws, bank = np.random.SeedSequence([seed]).spawn(2)
        self.rng = np.random.default_rng(draws)
        self._bank_rng = np.random.default_rng(bank)
        self._bank_size = noise_bank
        self._noise: np.ndarray | None = None  # [3 colours, bank, 2 * chunk] unit-RMS, pre-emphasized; made lazily

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """One pre-emphasized chunk -> an augmented float32 copy of the same length."""
        cfg, rng = self.cfg, self.rng
        fire = rng.random(4) < (cfg.rir_prob, cfg.eq_prob, cfg.noise_prob, cfg.clip_prob)
        x = np.array(audio, dtype=np.float32)  # always a copy: the caller's array is left alone
        if fire[0] or fire[1]:
            h = room_impulse_response(rng, cfg, self.audio.sample_rate) if fire[0] else None
            eq = eq_curve(rng, cfg) if fire[1] else None
            x = _filter(x, h, eq, self.audio.sample_rate)
        if fire[2]:
            x = self._add_noise(x)
        if fire[3]:
            x = _clip_natural(x, cfg.clip_threshold_dbfs, self.audio.pre_emphasis)
        return x

    def _add_noise(self, x: np.ndarray) -> np.ndarray:
        power = float(np.dot(x, x)) / len(x)
        if power <= 0.0:
            return x  # digital silence has no SNR to speak of
        if self._noise is None:
            self._noise = noise_bank(self._bank_rng, self._bank_size, 2 * len(x), self.audio)
        rng = self.rng
        colour, i = int(rng.integers(0, 3)), int(rng.integers(0, self._bank_size))
        start = int(rng.integers(0, self._noise.shape[2] - len(x) + 1))
        snr_db = rng.uniform(self.cfg.snr_db_min, self.cfg.snr_db_max)
        piece = self._noise[colour, i, start:start + len(x)]
        level = np.sqrt(power / 10.0 ** (snr_db / 10.0) / (float(np.dot(piece, piece)) / len(x)))
        return x + np.float32(level * rng.choice((-1.0, 1.0))) * piece


def augment(audio: np.ndarray, seed: int, cfg: AugmentConfig = AugmentConfig()) -> np.ndarray:
    """One chunk augmented with a fresh Augmenter(cfg, seed): for single uses and tests (the loader keeps one per
    worker)."""
    return Augmenter(cfg, seed)(audio)


def room_impulse_response(rng: np.random.Generator, cfg: AugmentConfig, sr: int) -> np.ndarray:
    """A synthetic RIR: a unit direct path, a short pre-delay, then Gaussian noise decaying by 60 dB over RT60."""
    rt60 = rng.uniform(cfg.rir_rt60_min, cfg.rir_rt60_max)
    drr_db = rng.uniform(cfg.rir_drr_db_min, cfg.rir_drr_db_max)
    delay = int(rng.uniform(0.002, 0.012) * sr)  # first reflections arrive a few ms after the direct sound
    n = int(rt60 * sr)
    tail = rng.standard_normal(n, dtype=np.float32) * np.exp(-_LN_1000 / (rt60 * sr) * np.arange(n, dtype=np.float32))
    tail *= np.sqrt(10.0 ** (-drr_db / 10.0) / np.sum(tail ** 2))  # tail energy relative to the direct path
    h = np.zeros(delay + n, dtype=np.float32)
    h[0] = 1.0
    h[delay:] += tail
    return h


_EQ_GRID_HZ = np.geomspace(10.0, 8000.0, 128)  # the EQ curve is computed here and interpolated to FFT bins


def eq_curve(rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """A random EQ curve in dB on _EQ_GRID_HZ: the sum of a few peaking filters (RBJ cookbook magnitudes; centres
    log-uniform 60 Hz - 6 kHz, gains within +-eq_gain_db_max, Q 0.7-2), clamped to +-eq_gain_db_max."""
    centre = np.exp(rng.uniform(np.log(60.0), np.log(6000.0), cfg.eq_bands))
    gain_db = rng.uniform(-cfg.eq_gain_db_max, cfg.eq_gain_db_max, cfg.eq_bands)
    q = rng.uniform(0.7, 2.0, cfg.eq_bands)
    a = 10.0 ** (gain_db / 40.0)  # [bands]
    s = _EQ_GRID_HZ[:, None] / centre[None, :]  # [grid, bands]
    s2 = (1.0 - s * s) ** 2
    curve = 10.0 * np.log10((s2 + (s * a / q) ** 2) / (s2 + (s / (a * q)) ** 2)).sum(axis=1)
    return np.clip(curve, -cfg.eq_gain_db_max, cfg.eq_gain_db_max)


def _filter(x: np.ndarray, h: np.ndarray | None, eq_db: np.ndarray | None, sr: int) -> np.ndarray:
    """Room (linear convolution with h, the chunk's own tail only, RMS kept) and zero-phase EQ in one FFT pass."""
    n = _fft_size(len(x) + (len(h) - 1 if h is not None else 4096))  # 4096: room for the EQ's short response
    spec = scipy.fft.rfft(x, n)
    if h is not None:
        spec *= scipy.fft.rfft(h, n)
    if eq_db is not None:
        idx, frac = _eq_interp(n, sr)
        gain = (10.0 ** (eq_db / 20.0)).astype(np.float32)
        spec *= gain[idx] * (1.0 - frac) + gain[idx + 1] * frac
    y = scipy.fft.irfft(spec, n)[:len(x)].astype(np.float32, copy=False)
    if h is not None:
        ry, rx = float(np.dot(y, y)), float(np.dot(x, x))
        if ry > 0.0:
            y *= np.float32(np.sqrt(rx / ry))
    return y


def _fft_size(m: int) -> int:
    """The smallest FFT size >= m among a few that pocketfft does fast (2^a 3^b beat next_fast_len's 2^a 3^b 5^c
    here)."""
    return next((n for n in (36864, 40960, 49152, 65536) if n >= m), scipy.fft.next_fast_len(m, real=True))


@functools.lru_cache(maxsize=8)
def _eq_interp(n: int, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation in log frequency from _EQ_GRID_HZ to the n-point FFT's bins: (left index, weight)."""
    logf = np.log(np.clip(np.fft.rfftfreq(n, 1.0 / sr), _EQ_GRID_HZ[0], _EQ_GRID_HZ[-1]))
    grid = np.log(_EQ_GRID_HZ)
    idx = np.clip(np.searchsorted(grid, logf, side="right") - 1, 0, len(grid) - 2)
    frac = ((logf - grid[idx]) / (grid[idx + 1] - grid[idx])).astype(np.float32)
    return idx, frac


def noise_bank(rng: np.random.Generator, count: int, length: int, audio: AudioConfig = AudioConfig()) -> np.ndarray:
    """[3, count, length] float32 noises, white / pink / brown in the natural waveform (power ~ f^0, f^-1, f^-2
    above 20 Hz, flat below so there is no DC drift), then pre-emphasized like the shards, at unit RMS."""
    bins = length // 2 + 1
    f = np.fft.rfftfreq(length, 1.0 / audio.sample_rate)
    emphasis = 1.0 - audio.pre_emphasis * np.exp(-2j * np.pi * f / audio.sample_rate)
    out = np.empty((3, count, length), dtype=np.float32)
    for beta in range(3):
        shape = (np.maximum(f, 20.0) / 20.0) ** (-beta / 2.0) * emphasis
        for i in range(count):
            spec = rng.standard_normal((bins, 2)).view(np.complex128)[:, 0] * shape
            noise = scipy.fft.irfft(spec, length)
            out[beta, i] = noise / np.sqrt(np.mean(noise ** 2))
    return out


def clip(x: np.ndarray, threshold_db: float) -> np.ndarray:
    """Hard clipping at threshold_db below the peak of x."""
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if peak <= 0.0:
        return x
    level = peak * 10.0 ** (threshold_db / 20.0)
    return np.clip(x, -level, level)


def _clip_natural(x: np.ndarray, threshold_db: float, pre_emphasis: float) -> np.ndarray:
    """Clip the natural waveform of a pre-emphasized chunk: undo the pre-emphasis, clip, redo it (an exact inverse
    pair for a chunk: both start from a zero state)."""
    if not pre_emphasis:
        return clip(x, threshold_db)
    natural = scipy.signal.lfilter([1.0], [1.0, -pre_emphasis], x).astype(np.float32)
    y = clip(natural, threshold_db)
    y[1:] -= np.float32(pre_emphasis) * y[:-1]
    return y
