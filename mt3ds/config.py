"""Configs shared by several stages. Model and training configs live beside their code (model/config.py,
train/config.py); this file holds what the offline chain, the shards, the loader and transcription must agree on."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class AudioConfig:
    """The offline audio chain (docs/design.md §2.1); its version string is recorded in manifests and exported models."""

    sample_rate: int = 16000
    """Hz, mono."""
    chunk_samples: int = 32768
    """Samples per chunk: 2.048 s; hop = chunk (no overlap), the last chunk zero-padded."""
    hp_cutoff_hz: float = 30.0
    """2nd-order high-pass, applied forward-backward (zero phase)."""
    target_lufs: float = -23.0
    """ITU-R BS.1770-4 integrated loudness over the whole track."""
    gain_clamp_db: float = 12.0
    """The loudness gain is limited to +- this many dB."""
    true_peak_dbfs: float = -1.0
    """True-peak ceiling after the loudness gain."""
    pre_emphasis: float = 0.97
    """y[n] = x[n] - a x[n-1]; 0 disables."""
    dither: float = 1e-5
    """TPDF amplitude; the seed derives from the audio's samples (never its name)."""

    def __post_init__(self):
        if self.sample_rate <= 0 or self.chunk_samples <= 0:
            raise ValueError("sample_rate and chunk_samples must be positive")
        if not 0.0 <= self.pre_emphasis < 1.0:
            raise ValueError("pre_emphasis must be in [0, 1)")

    @property
    def chunk_seconds(self) -> float:
        return self.chunk_samples / self.sample_rate

    @property
    def version(self) -> str:
        """Everything that changes the audio a model sees, in one string."""
        return (f"mt3ds-audio-v1:sr{self.sample_rate}:chunk{self.chunk_samples}:hp{self.hp_cutoff_hz:g}"
                f":lufs{self.target_lufs:g}:clamp{self.gain_clamp_db:g}:tp{self.true_peak_dbfs:g}"
                f":pre{self.pre_emphasis:g}:dither{self.dither:g}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AudioConfig":
        return cls(**d)


@dataclass(frozen=True)
class FeatureConfig:
    """On-device log-mel features (docs/design.md §2.4): [B, 256, 512] for a 32768-sample chunk."""

    n_fft: int = 2048
    """STFT window and FFT size, samples."""
    hop_length: int = 128
    """STFT hop, samples (8 ms at 16 kHz)."""
    n_mels: int = 512
    """Mel bands."""
    fmin_hz: float = 20.0
    """Lowest mel band edge."""
    fmax_hz: float = 8000.0
    """Highest mel band edge (Nyquist at 16 kHz)."""
    log_eps: float = 1e-5
    """Added before the log: log(mel + log_eps)."""
    frames: int = 256
    """Frames kept per chunk: center=True gives 257 for 32768 samples; the first 256 are kept."""

    def __post_init__(self):
        if min(self.n_fft, self.hop_length, self.n_mels, self.frames) <= 0:
            raise ValueError("n_fft, hop_length, n_mels and frames must be positive")
        if not 0.0 <= self.fmin_hz < self.fmax_hz:
            raise ValueError("need 0 <= fmin_hz < fmax_hz")
        if self.log_eps <= 0:
            raise ValueError("log_eps must be > 0")

