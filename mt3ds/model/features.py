"""Waveform -> log-mel features on the device, per batch (docs/design.md §2.4): [B, 32768] -> [B, 256, 512] float32.

STFT (n_fft 2048, hop 128, periodic Hann, center=True with reflect padding) -> magnitude (power 1) -> 512 Slaney
mel bands 20-8000 Hz -> log(x + 1e-5). center=True gives 257 frames for 32768 samples; the first 256 are kept so
frame t covers the samples around t * 128 and a chunk maps to exactly 256 encoder positions.

The mel filterbank is built here (no torchaudio: its PyPI build is CUDA-only, docs/design.md §2.4) and is checked against
librosa.filters.mel(htk=False, norm="slaney") by tests/test_features.py. With 512 bands over 20-8000 Hz and a
7.8 Hz FFT bin spacing, the lowest bands are narrower than a bin and some hold no bin at all: they stay all-zero
(log(1e-5) in the output), as librosa's do. The learnable frequency LayerNorm that follows belongs to the model.

SpecAugment time masks (Step 2, docs/design.md §2.5: width 48, p 0.5) are an option applied only in training mode.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..config import AudioConfig, FeatureConfig

# Slaney's mel scale (Auditory Toolbox, librosa htk=False): linear below 1 kHz, logarithmic above.
_F_SP = 200.0 / 3  # Hz per mel in the linear part
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # 15 mel
_LOG_STEP = math.log(6.4) / 27.0  # the log part: 27 mel per factor 6.4 in frequency


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel of each frequency in Hz."""
    hz = np.asarray(hz, dtype=np.float64)
    log_part = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOG_STEP
    return np.where(hz >= _MIN_LOG_HZ, log_part, hz / _F_SP)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Frequency in Hz of each Slaney mel value (inverse of hz_to_mel)."""
    mel = np.asarray(mel, dtype=np.float64)
    log_part = _MIN_LOG_HZ * np.exp(_LOG_STEP * (np.maximum(mel, _MIN_LOG_MEL) - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, log_part, mel * _F_SP)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular Slaney-scale filters with Slaney area normalization: float32 [n_mels, n_fft // 2 + 1].

    Filter i rises from edge i to its peak at edge i + 1 and falls to edge i + 2, the n_mels + 2 edges being evenly
    spaced in mel between fmin and fmax; each filter is scaled by 2 / (its width in Hz) so all have the same area.
    """
    fft_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges_hz)  # [n_mels + 1]
    rel = edges_hz[:, None] - fft_hz[None, :]  # [n_mels + 2, bins]: edge minus bin frequency
    rising = -rel[:-2] / widths[:-1, None]  # 0 at edge i, 1 at edge i + 1
    falling = rel[2:] / widths[1:, None]  # 1 at edge i + 1, 0 at edge i + 2
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return weights.astype(np.float32)


class LogMel(nn.Module):
    """[B, samples] waveform -> [B, frames, n_mels] log-mel, float32 on the input's device.

    Computed in float32 whatever the surrounding autocast: log-magnitudes of quiet bins lose too much in bf16.
    """

    def __init__(self, features: FeatureConfig = FeatureConfig(), audio: AudioConfig = AudioConfig(),
                 spec_augment: bool = False, time_mask_width: int = 48, time_mask_prob: float = 0.5):
        super().__init__()
        if time_mask_width < 0 or not 0.0 <= time_mask_prob <= 1.0:
            raise ValueError("time_mask_width must be >= 0 and time_mask_prob in [0, 1]")
        self.cfg = features
        self.spec_augment = spec_augment
        self.time_mask_width = time_mask_width
        self.time_mask_prob = time_mask_prob
        fb = mel_filterbank(audio.sample_rate, features.n_fft, features.n_mels, features.fmin_hz, features.fmax_hz)
        # Buffers, not parameters: they move with .to(device) and are rebuilt from the config, never saved.
        self.register_buffer("mel_basis", torch.from_numpy(fb.T.copy()), persistent=False)  # [bins, n_mels]
        self.register_buffer("window", torch.hann_window(features.n_fft, periodic=True), persistent=False)

    def forward(self, audio: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """audio [B, samples] -> [B, frames, n_mels]; `generator` seeds the SpecAugment masks (training only)."""
        c = self.cfg
        with torch.autocast(device_type=audio.device.type, enabled=False):
            spec = torch.stft(audio.float(), n_fft=c.n_fft, hop_length=c.hop_length, window=self.window,
                              center=True, pad_mode="reflect", return_complex=True)  # [B, bins, frames + 1]
            re_im = torch.view_as_real(spec[:, :, :c.frames])  # [B, bins, frames, 2]
            mag = torch.hypot(re_im[..., 0], re_im[..., 1])  # the same values as .abs(), in half its CPU time
            mel = torch.matmul(mag.transpose(1, 2), self.mel_basis)  # [B, frames, n_mels]
            logmel = torch.log(mel + c.log_eps)
        if self.training and self.spec_augment and self.time_mask_width > 0:
            logmel = time_mask(logmel, self.time_mask_width, self.time_mask_prob, generator)
        return logmel


def time_mask(x: torch.Tensor, max_width: int, prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """SpecAugment time masking on [B, frames, n_mels]: with probability `prob` per example, frames
    [t0, t0 + w) with w ~ U{0..max_width} and t0 ~ U{0..frames - w} are set to that example's mean value
    (SpecAugment's zero for mean-normalized features; after the model's frequency LayerNorm any constant frame reads
    the same)."""
    b, frames, _ = x.shape
    dev = x.device
    u = torch.rand(b, 3, generator=generator, device=generator.device if generator is not None else dev).to(dev)
    apply = u[:, 0] < prob
    width = torch.floor(u[:, 1] * (min(max_width, frames) + 1)).long()  # 0..max_width
    start = torch.floor(u[:, 2] * (frames - width + 1).float()).long()  # 0..frames - width
    t = torch.arange(frames, device=dev)[None, :]  # [1, frames]
    masked = apply[:, None] & (t >= start[:, None]) & (t < (start + width)[:, None])  # [B, frames]
    fill = x.mean(dim=(1, 2), keepdim=True)  # [B, 1, 1]
    return torch.where(masked[:, :, None], fill, x)
