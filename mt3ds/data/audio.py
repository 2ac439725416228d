"""The offline audio chain (docs/design.md §2.1), shared by the shard writer and transcription.

    load_audio   soundfile decode (any rate, any channels) -> mono mean -> soxr HQ to 16 kHz, float32
    prepare      DC removal -> 2nd-order Butterworth high-pass at 30 Hz, forward-backward (zero phase)
                 -> one whole-track gain: -23 LUFS (BS.1770-4, pyloudnorm) clamped to +-12 dB, lowered further
                    so the 4x-oversampled true peak stays under -1 dBFS
                 -> pre-emphasis 0.97 -> TPDF dither 1e-5 seeded from the audio itself (so the same audio gives
                    the same output under any file name or track id)
    chunk        -> [n, 32768], the last chunk zero-padded

Digital silence gets no gain and raises nothing. NaN or infinite samples raise UserError. Tracks shorter than
one 400 ms loudness block are measured looped to one block (the loudness of the clip repeated), so a short clip
is normalized like a long one instead of being left at whatever level it came in.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.signal as ss
import soundfile as sf
import soxr

from ..config import AudioConfig
from ..errors import UserError, first_line

_TP_UP = 4  # true peak: 4x oversampling, as BS.1770-4 Annex 2 asks
_TP_BLOCK = 2048  # samples per block when skipping blocks that cannot hold the true peak
_TP_MARGIN = 64  # > resample_poly's 10 input samples of filter half-length: block interiors come out exact


STREAM_BLOCK_SECONDS = 60.0  # longer files are decoded and resampled block by block
_FILTER_BLOCK = 1 << 20  # samples per block of the chain's whole-track passes: memory stays flat in track length


def load_audio(path, sample_rate: int = 16000) -> np.ndarray:
    """Decode PATH (wav/flac/ogg/mp3/..., any rate and channel count) to float32 mono at SAMPLE_RATE.
    Files longer than a minute are decoded and resampled in one-minute blocks (soxr's stream gives the same samples
    as one call), so an hour of 44.1 kHz stereo never sits in memory whole: only its 16 kHz mono result does.
    UserError naming the file when it is missing, unreadable, or holds no samples."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file")
    if not p.is_file():
        raise UserError(f"{p}: not a file")
    try:
        with sf.SoundFile(str(p)) as f:
            sr, frames = f.samplerate, f.frames
            block = int(STREAM_BLOCK_SECONDS * sr)
            if frames <= block:
                x = f.read(dtype="float32", always_2d=True)
                mono = downmix(x) if len(x) else np.zeros(0, np.float32)
                if len(mono) and sr != sample_rate:
                    mono = soxr.resample(mono, sr, sample_rate, quality="HQ")
            else:
                stream = soxr.ResampleStream(sr, sample_rate, 1, dtype="float32", quality="HQ") \
                    if sr != sample_rate else None
                parts = []
                for x in f.blocks(blocksize=block, dtype="float32", always_2d=True):
                    m = downmix(x)
                    parts.append(stream.resample_chunk(m, last=False) if stream else m.copy())
                if stream:
                    parts.append(stream.resample_chunk(np.zeros(0, np.float32), last=True))
                mono = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    except (RuntimeError, TypeError, ValueError) as e:  # sf.LibsndfileError is a RuntimeError
        raise UserError(f"{p}: unreadable audio ({first_line(e)})") from None
    if len(mono) == 0:
        raise UserError(f"{p}: no audio samples")
    return np.ascontiguousarray(mono, dtype=np.float32)


def downmix(x: np.ndarray) -> np.ndarray:
    """[N, C] -> [N] mean of the channels (column adds: numpy's mean over a short last axis is ~10x slower)."""
    if x.shape[1] == 1:
        return x[:, 0]
    mono = x[:, 0].copy()
    for c in range(1, x.shape[1]):
        mono += x[:, c]
    mono *= np.float32(1.0 / x.shape[1])
    return mono


@lru_cache(maxsize=8)
def _highpass(sample_rate: int, cutoff_hz: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b, a = ss.butter(2, cutoff_hz, btype="highpass", fs=sample_rate)
    return b, a, ss.lfilter_zi(b, a)


def highpass_zero_phase(x: np.ndarray, sample_rate: int, cutoff_hz: float, inplace: bool = False) -> np.ndarray:
    """2nd-order Butterworth high-pass run forward then backward (zero phase), float64; what scipy's filtfilt
    does (odd extension of 9 samples, steady-state initial conditions), block by block with no copy of the track
    beyond the float64 one (INPLACE and X float64: not even that; X is overwritten)."""
    x = np.asarray(x, dtype=np.float64) if inplace else np.array(x, dtype=np.float64)
    b, a, zi = _highpass(sample_rate, cutoff_hz)
    pad = min(9, len(x) - 1)
    if pad < 1:
        return x.copy()
    head = 2 * x[0] - x[pad:0:-1]
    tail = 2 * x[-1] - x[-2:-pad - 2:-1]  # read before the forward pass overwrites X
    _, state = ss.lfilter(b, a, head, zi=zi * head[0])
    for s in range(0, len(x), _FILTER_BLOCK):  # a filter's state carried across blocks: the same samples as one call
        x[s:s + _FILTER_BLOCK], state = ss.lfilter(b, a, x[s:s + _FILTER_BLOCK], zi=state)
    tail, _ = ss.lfilter(b, a, tail, zi=state)
    _, state = ss.lfilter(b, a, tail[::-1], zi=zi * tail[-1])  # the backward pass starts at the extension's end
    for e in range(len(x), 0, -_FILTER_BLOCK):
        s = max(0, e - _FILTER_BLOCK)
        y, state = ss.lfilter(b, a, x[s:e][::-1], zi=state)
        x[s:e] = y[::-1]
    return x


@lru_cache(maxsize=8)
def _meter(sample_rate: int):
    import pyloudnorm

    return pyloudnorm.Meter(sample_rate)  # ITU-R BS.1770-4: K-weighting, 400 ms blocks, 75 % overlap, gating


@lru_cache(maxsize=1)
def _tp_filter() -> tuple[np.ndarray, float]:
    """scipy resample_poly's 4x interpolation filter, and the largest gain any of its phases applies:
    |interpolated| <= bound x the largest |sample| within the filter's reach."""
    h = ss.firwin(2 * 10 * _TP_UP + 1, 1.0 / _TP_UP, window=("kaiser", 5.0)) * _TP_UP
    return h, float(max(np.abs(h[p::_TP_UP]).sum() for p in range(_TP_UP)))


def seed_from_samples(x: np.ndarray) -> int:
    """A stable 64-bit seed from float32 samples: their bytes hashed (Python's hash() changes between runs), so the
    seed follows the audio, never its name."""
    return int.from_bytes(hashlib.blake2b(np.ascontiguousarray(x, dtype=np.float32), digest_size=8).digest(), "little")


def loudness_gain_db(x: np.ndarray, cfg: AudioConfig) -> float:
    """The gain that brings X's integrated loudness to cfg.target_lufs, clamped; 0 for silence."""
    if not np.any(x):
        return 0.0
    block = int(np.ceil(_meter(cfg.sample_rate).block_size * cfg.sample_rate)) + 1
    if len(x) < block:  # too short to gate: measure the clip looped to one block
        x = np.tile(x, -(-block // len(x)))
    lufs = integrated_loudness(x, cfg.sample_rate)
    if not np.isfinite(lufs):  # every block under the -70 LUFS absolute gate: leave it as it is
        return 0.0
    return float(np.clip(cfg.target_lufs - lufs, -cfg.gain_clamp_db, cfg.gain_clamp_db))


@lru_cache(maxsize=8)
def _k_weighting(sample_rate: int) -> np.ndarray:
    """pyloudnorm's two K-weighting stages (high shelf, then RLB high-pass) as one second-order-sections array."""
    stages = list(_meter(sample_rate)._filters.values())
    sos = np.array([np.concatenate([st.b, st.a]) for st in stages], dtype=np.float64)
    sos[0, :3] *= np.prod([st.passband_gain for st in stages])
    return sos


def integrated_loudness(x: np.ndarray, sample_rate: int) -> float:
    """pyloudnorm's Meter.integrated_loudness for mono X (BS.1770-4): its K-weighting coefficients and block
    arithmetic, run as one sosfilt and vectorized gating instead of two lfilters and per-block Python loops
    (pinned equal to pyloudnorm by the tests). -inf when every block is under the absolute gate."""
    meter = _meter(sample_rate)
    n, t_g, step = len(x), meter.block_size, 1.0 - meter.overlap
    n_blocks = int(np.round((n / sample_rate - t_g) / (t_g * step))) + 1
    j = np.arange(n_blocks)
    lo = (t_g * (j * step) * sample_rate).astype(np.int64)  # the same truncations as pyloudnorm
    hi = np.minimum((t_g * (j * step + 1) * sample_rate).astype(np.int64), n)
    cuts = np.unique(np.concatenate([lo, hi]))
    cuts = cuts[cuts < n]
    sums = _segment_energy(x, cuts, _k_weighting(sample_rate))
    energy = np.concatenate([[0.0], np.cumsum(sums)])  # energy before each cut, then total
    z = (energy[np.searchsorted(cuts, hi)] - energy[np.searchsorted(cuts, lo)]) / (t_g * sample_rate)
    with np.errstate(divide="ignore"):
        block_lufs = -0.691 + 10.0 * np.log10(z)
    above = block_lufs >= -70.0  # absolute gate
    if not above.any():
        return float("-inf")
    relative = -0.691 + 10.0 * np.log10(z[above].mean()) - 10.0
    gated = (block_lufs > relative) & (block_lufs > -70.0)
    if not gated.any():
        return float("-inf")
    return float(-0.691 + 10.0 * np.log10(z[gated].mean()))


def _segment_energy(x: np.ndarray, cuts: np.ndarray, sos: np.ndarray) -> np.ndarray:
    """Sum of squares of X filtered by SOS between consecutive CUTS (cuts[0] == 0; the last runs to the end):
    filtered a run of whole segments at a time, so no filtered copy of the whole track is made."""
    sums, state, start = [], np.zeros((len(sos), 2)), 0
    while start < len(cuts):
        stop = max(start + 1, int(np.searchsorted(cuts, cuts[start] + _FILTER_BLOCK)))  # whole segments, ~a block
        end = cuts[stop] if stop < len(cuts) else len(x)
        y, state = ss.sosfilt(sos, np.asarray(x[cuts[start]:end], dtype=np.float64), zi=state)
        y *= y
        sums.append(np.add.reduceat(y, cuts[start:stop] - cuts[start]))
        start = stop
    return np.concatenate(sums) if sums else np.zeros(0)


def true_peak(x: np.ndarray, above: float = 0.0) -> float:
    """Peak |x| of X oversampled 4x (resample_poly's filter), exact wherever it exceeds ABOVE (below that, a lower
    bound). Only blocks that could hold it are oversampled: a block whose nearby sample peak times the filter's
    bound is under ABOVE or under a peak already found cannot exceed it."""
    n = len(x)
    if n == 0:
        return 0.0
    h, bound = _tp_filter()
    delay = (len(h) - 1) // 2
    nb = -(-n // _TP_BLOCK)
    local = np.zeros(nb)
    span = _TP_BLOCK * (_FILTER_BLOCK // _TP_BLOCK)
    for s in range(0, n, span):  # each block's peak |sample|, a span of blocks at a time
        part = np.abs(x[s:s + span])
        full = len(part) // _TP_BLOCK
        local[s // _TP_BLOCK:s // _TP_BLOCK + full] = part[:full * _TP_BLOCK].reshape(full, _TP_BLOCK).max(axis=1)
        if len(part) > full * _TP_BLOCK:
            local[s // _TP_BLOCK + full] = part[full * _TP_BLOCK:].max()
    near = local.copy()  # the filter reaches 10 samples into the neighbouring blocks
    near[1:] = np.maximum(near[1:], local[:-1])
    near[:-1] = np.maximum(near[:-1], local[1:])
    found = float(local.max())  # the samples themselves are one phase of the oversampled signal
    for b in np.argsort(-near, kind="stable"):  # loudest first, so the bar rises fast
        if near[b] * bound <= max(found, above):
            break
        s, e = b * _TP_BLOCK, min(n, (b + 1) * _TP_BLOCK)
        a, z = max(0, s - _TP_MARGIN), min(n, e + _TP_MARGIN)
        up = ss.upfirdn(h, x[a:z], up=_TP_UP)[delay:]
        found = max(found, float(np.abs(up[(s - a) * _TP_UP:(e - a) * _TP_UP]).max()))
    return found


def prepare(audio: np.ndarray, cfg: AudioConfig, name: str = "audio", reuse: bool = False) -> np.ndarray:
    """The chain after decoding (module docstring) on float mono AUDIO at cfg.sample_rate -> float32.
    NAME (a track id or a path) only names the audio in messages: the dither is seeded from the samples it is added
    to, so the same audio gives the same output whatever it is called. reuse: AUDIO (float32) is not needed after
    this call and its array holds the result, so a long file is not held three times over (its float64 working copy
    and two float32 arrays)."""
    x = np.asarray(audio)
    if x.ndim != 1:
        raise ValueError(f"prepare expects mono audio, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise UserError(f"{name}: audio contains NaN or infinite samples")
    x = x.astype(np.float64)
    x -= x.mean()  # DC removal before the filter so its start-up transient is not a step
    x = highpass_zero_phase(x, cfg.sample_rate, cfg.hp_cutoff_hz, inplace=True)
    gain = 10.0 ** (loudness_gain_db(x, cfg) / 20.0)
    ceiling = 10.0 ** (cfg.true_peak_dbfs / 20.0)
    peak = float(np.abs(x).max()) if len(x) else 0.0
    if peak * gain * _tp_filter()[1] > ceiling:  # only then can the true peak pass the ceiling
        tp = true_peak(x, above=ceiling / gain)
        if tp * gain > ceiling:
            gain = ceiling / tp
    x *= gain
    if cfg.pre_emphasis:
        for e in range(len(x), 1, -_FILTER_BLOCK):  # back to front: each block reads samples not yet changed
            s = max(1, e - _FILTER_BLOCK)
            x[s:e] -= cfg.pre_emphasis * x[s - 1:e - 1]  # the right side is a new array, read before the write
    reusable = reuse and isinstance(audio, np.ndarray) and audio.dtype == np.float32 and audio.flags.c_contiguous \
        and audio.flags.writeable
    out = audio if reusable else np.empty(len(x), np.float32)
    np.copyto(out, x, casting="same_kind")
    del x
    if cfg.dither:
        rng = np.random.default_rng(seed_from_samples(out))
        tpdf = rng.random(len(out), dtype=np.float32)
        for s in range(0, len(out), _FILTER_BLOCK):  # the stream goes on from call to call: the same draws as one
            tpdf[s:s + _FILTER_BLOCK] -= rng.random(min(_FILTER_BLOCK, len(out) - s), dtype=np.float32)
        tpdf *= np.float32(cfg.dither)  # difference of two uniforms: triangular on (-1, 1), scaled
        out += tpdf
    return out


def chunk(audio: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """[N] -> [ceil(N / chunk_samples), chunk_samples] float32, hop = chunk, the last chunk zero-padded."""
    cs = cfg.chunk_samples
    n = -(-len(audio) // cs)
    out = np.zeros((n, cs), dtype=np.float32)
    out.reshape(-1)[: len(audio)] = audio
    return out


def de_emphasis(x: np.ndarray, alpha: float) -> np.ndarray:
    """The inverse of pre-emphasis, y[n] = x[n] + alpha y[n-1]: to listen to a shard's audio as it sounded."""
    if not alpha:
        return np.asarray(x, dtype=np.float32)
    return ss.lfilter([1.0], [1.0, -alpha], np.asarray(x, dtype=np.float64)).astype(np.float32)


def load_prepared(path, cfg: AudioConfig) -> np.ndarray:
    """load_audio + prepare: a file as the model's training audio (float32, 16 kHz, not chunked)."""
    return prepare(load_audio(path, cfg.sample_rate), cfg, str(path))
