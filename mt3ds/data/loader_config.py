"""The data loader's settings: LoaderConfig and its augmentation section, AugmentConfig.

Plain dataclasses that check themselves, importable without torch, webdataset or scipy: a training config's
`data.loader` section is checked with them before anything heavy is imported (bin/train.py refuses a bad key in a
second, not after DeepSpeed has started). The loader (data/loader.py) and the augmentation (data/augment.py) import
them from here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class AugmentConfig:
    """Waveform augmentation (docs/design.md §4.6): probabilities and ranges."""

    rir_prob: float = 0.3
    """Probability of convolving with a synthetic room impulse response."""
    rir_rt60_min: float = 0.1
    """Shortest reverberation time drawn, seconds (the design gives only the maximum; docs/design.md §4.6)."""
    rir_rt60_max: float = 1.0
    """Longest reverberation time drawn, seconds."""
    rir_drr_db_min: float = -3.0
    """Lowest direct-to-reverberant energy ratio, dB."""
    rir_drr_db_max: float = 10.0
    """Highest direct-to-reverberant energy ratio, dB."""
    noise_prob: float = 0.5
    """Probability of adding noise."""
    snr_db_min: float = 10.0
    """Lowest signal-to-noise ratio, dB (measured on this chunk)."""
    snr_db_max: float = 30.0
    """Highest signal-to-noise ratio, dB."""
    eq_prob: float = 0.3
    """Probability of a random EQ curve."""
    eq_gain_db_max: float = 6.0
    """The EQ curve stays within +- this many dB at every frequency."""
    eq_bands: int = 3
    """Peaking bands summed into the EQ curve (centres log-uniform 60 Hz - 6 kHz, Q 0.7-2)."""
    clip_prob: float = 0.1
    """Probability of hard clipping."""
    clip_threshold_dbfs: float = -3.0
    """Clip level relative to the chunk's peak taken as full scale (the recording driven 3 dB too hot)."""

    def __post_init__(self):
        for name in ("rir_prob", "noise_prob", "eq_prob", "clip_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if not 0.0 < self.rir_rt60_min <= self.rir_rt60_max:
            raise ValueError("need 0 < rir_rt60_min <= rir_rt60_max")
        if self.snr_db_min > self.snr_db_max or self.rir_drr_db_min > self.rir_drr_db_max:
            raise ValueError("a minimum exceeds its maximum")
        if self.eq_gain_db_max < 0 or self.eq_bands < 1 or self.clip_threshold_dbfs > 0:
            raise ValueError("eq_gain_db_max >= 0, eq_bands >= 1 and clip_threshold_dbfs <= 0 are required")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AugmentConfig":
        return cls(**d)


@dataclass(frozen=True)
class LoaderConfig:
    """The data loader (docs/design.md §4.7): batching, workers, mixing, augmentation and targets."""

    batch_size: int = 16
    """Samples per batch, per rank."""
    num_workers: int = 8
    """DataLoader worker processes per rank (0: read in the main process)."""
    prefetch_factor: int = 4
    """Batches each worker prepares ahead (only with workers)."""
    pin_memory: bool = True
    """Pin batches in page-locked memory for faster host-to-GPU copies (only when CUDA is present)."""
    shuffle_buffer: int = 1000
    """Samples held per dataset per worker for shuffling (~66 KB each)."""
    shuffle_initial: int = 100
    """Samples gathered before the first one leaves the shuffle buffer."""
    mix_alpha: float = 0.7
    """Temperature exponent: dataset d is drawn with weight n_d^alpha / sum (1 = proportional, 0 = uniform)."""
    seed: int = 0
    """Seeds shard picks, shuffling, mixing phase and augmentation, together with rank, worker and epoch."""
    augment: bool = True
    """Waveform augmentation of training samples (never of validation samples)."""
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)
    """Probabilities and ranges of the augmentation."""
    time_encoding: str = "absolute"
    """Shift tokens the model reads: absolute (rewritten from the shards' delta) or delta (docs/design.md §3.5)."""
    aux_frame_loss: bool = False
    """Also build per-frame onset and active 88-key rolls from each chunk's tokens (docs/design.md §5.5)."""
    note_heads: bool = False
    """Also build the note heads' targets from each chunk's tokens: heads_onset, heads_frame, heads_offset,
    heads_drums, heads_programs (mt3ds/tokens/rolls.py)."""
    velocity_bins: int | None = None
    """Quantize target note-on velocities to this many bins (1: one velocity, MT3's multi-instrument choice);
    None keeps the shards' exact velocities."""
    max_bad_in_a_row: int = 1000
    """Unreadable samples or shards in a row after which a dataset is declared unreadable (UserError)."""

    def __post_init__(self):
        if self.batch_size < 1 or self.num_workers < 0 or self.prefetch_factor < 1:
            raise ValueError("batch_size >= 1, num_workers >= 0 and prefetch_factor >= 1 are required")
        if self.shuffle_buffer < 1 or not 1 <= self.shuffle_initial <= self.shuffle_buffer:
            raise ValueError("need shuffle_buffer >= 1 and 1 <= shuffle_initial <= shuffle_buffer")
        if self.mix_alpha < 0:
            raise ValueError("mix_alpha must be >= 0")
        if self.time_encoding not in ("absolute", "delta"):
            raise ValueError(f"time_encoding must be absolute or delta, not {self.time_encoding!r}")
        if self.max_bad_in_a_row < 1:
            raise ValueError("max_bad_in_a_row must be >= 1")
        if self.velocity_bins is not None and not 1 <= self.velocity_bins <= 127:
            raise ValueError("velocity_bins must be in 1..127 (or null)")

    @classmethod
    def tiny(cls) -> "LoaderConfig":
        """Small batches read in the main process: tests and smoke runs."""
        return cls(batch_size=4, num_workers=0, prefetch_factor=1, pin_memory=False, shuffle_buffer=16,
                   shuffle_initial=4)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LoaderConfig":
        d = dict(d)
        if isinstance(d.get("augmentation"), dict):
            d["augmentation"] = AugmentConfig.from_dict(d["augmentation"])
        return cls(**d)
