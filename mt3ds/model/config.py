"""ModelConfig: every switch of the one transcription model (docs/design.md §5), and its named presets.

Step 1, Step 2 and Step 3 (docs/design.md §5.1-§5.3) are settings of this one dataclass, not three models:
`base` is Step 1, `base_v2` Step 2, and any preset with `conditioning` set is Step 3.
An exported model stores `to_dict()` beside its weights; `from_dict()` refuses keys it does not know.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from ..tokens import vocab

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
POSITIONS = ("sinusoidal", "learned", "rope", "alibi")
BACKENDS = ("auto", "flash", "sdpa", "math")
CONDITIONING = ("none", "decoder_pool", "encoder_film", "dual_stream")
POOLS = ("mean", "attention")
TIME_ENCODINGS = ("absolute", "delta")
FRONT_ENDS = ("linear", "conv")
N_INSTRUMENTS = 129  # programs 0..127 and drums as 128 (docs/design.md §1.1)


@dataclass(frozen=True)
class ModelConfig:
    """The encoder-decoder transcriber: sizes, Step 2 switches, Step 3 conditioning and the aux frame head."""

    # sizes
    d_model: int = 512
    """Width of the residual stream in the encoder and the decoder."""
    enc_layers: int = 8
    """Encoder blocks."""
    dec_layers: int = 8
    """Decoder blocks."""
    heads: int = 6
    """Attention heads (the same in every attention layer)."""
    head_dim: int = 64
    """Size of one head; heads * head_dim need not equal d_model (T5: 6 x 64 = 384 inside a 512 model)."""
    mlp_dim: int = 1024
    """Hidden width of the feed-forward block (of each of the two SwiGLU branches)."""
    n_mels: int = 512
    """Mel bands of the input features [B, frames, n_mels] (FeatureConfig.n_mels)."""
    vocab_size: int = vocab.VOCAB_SIZE
    """Output vocabulary (Option 1, 1437 ids; PAD is also the decoder's start token)."""
    max_enc_len: int = 4096
    """Longest encoder input in frames (sizes the sinusoidal/learned table; 256 frames per chunk)."""
    max_dec_len: int = 2048
    """Longest decoder sequence (sizes the sinusoidal/learned table)."""
    max_tokens: int = 1024
    """Tokens per chunk, EOS included: the default generation length."""

    # Step 1 / Step 2 switches
    norm: str = "layernorm"
    """Pre-norm type: layernorm (Step 1) or rmsnorm (Step 2)."""
    norm_eps: float = 1e-5
    """Epsilon of every norm, the input frequency LayerNorm included."""
    mlp: str = "gelu"
    """Feed-forward type: gelu (Step 1) or swiglu (Step 2)."""
    positions: str = "sinusoidal"
    """Positions in encoder and decoder self-attention: sinusoidal, learned (added), rope or alibi (in attention)."""
    rope_base: float = 10000.0
    """RoPE frequency base."""
    attn_dropout: float = 0.0
    """Dropout on attention probabilities."""
    resid_dropout: float = 0.1
    """Dropout on each attention branch before it joins the residual stream."""
    mlp_dropout: float = 0.1
    """Dropout inside and after the feed-forward block."""
    tie_embeddings: bool = True
    """LM head shares the token embedding matrix."""
    activation_checkpointing: bool = False
    """Recompute each encoder/decoder block in the backward pass (torch.utils.checkpoint, non-reentrant)."""
    attention_backend: str = "auto"
    """auto (flash_attn package or SDPA, which picks flash on capable GPUs), or force flash, sdpa or math."""
    time_encoding: str = "absolute"
    """Shift tokens the model was trained on: absolute (default, docs/design.md §3.5) or delta."""

    # front end and note heads (docs/design.md §5.6, model/heads.py)
    front_end: str = "linear"
    """Log-mel -> d_model: linear (the seed's) or conv (a 2-D convolution stem over time and mel bands)."""
    time_pool: int = 1
    """Average this many frames before the encoder blocks (the note heads still write every 8 ms frame)."""
    note_heads: bool = False
    """Heads on the encoder: per-class onset, frame and offset rolls, drum onsets per drum class and programs, read
    into notes, instruments and drums without decoding (`transcribe --notes frames`, mt3ds/tokens/rolls.py)."""
    heads_weight: float = 1.0
    """Weight of the note heads' loss."""
    token_weight: float = 1.0
    """Weight of the decoder's token loss; 0 trains the encoder and heads alone (the decoder is not run)."""

    # aux frame head (docs/design.md §5.5)
    aux_frame_loss: bool = False
    """Add a head on the encoder output predicting onset and active 88-key rolls per frame: a training loss, and the
    notes of hybrid transcription (`transcribe --notes frames`, mt3ds/tokens/frames.py)."""
    aux_frame_weight: float = 1.0
    """Weight of the aux BCE (onset + active) added to the token loss."""
    aux_pos_weight: float | None = None
    """BCE pos_weight for both rolls; None: sqrt(negatives / positives) of each batch and roll."""

    # Step 3 conditioning
    conditioning: str = "none"
    """Instrument conditioning: none, decoder_pool (3.1), encoder_film (3.2) or dual_stream (3.3)."""
    instrument_dim: int = 128
    """Size of an instrument embedding (129 instruments + one 'unknown' entry)."""
    instrument_pool: str = "mean"
    """How the instrument set is pooled for decoder_pool and encoder_film: mean or attention."""
    instrument_drop: float = 0.1
    """Probability, per sample in training mode, that the whole instrument set is replaced by 'unknown'."""
    instrument_layers: int = 2
    """dual_stream: depth of the instrument stream; the last instrument_layers + 1 encoder blocks attend to it."""

    def __post_init__(self):
        _choice("norm", self.norm, NORMS)
        _choice("mlp", self.mlp, MLPS)
        _choice("positions", self.positions, POSITIONS)
        _choice("attention_backend", self.attention_backend, BACKENDS)
        _choice("conditioning", self.conditioning, CONDITIONING)
        _choice("instrument_pool", self.instrument_pool, POOLS)
        _choice("time_encoding", self.time_encoding, TIME_ENCODINGS)
        _choice("front_end", self.front_end, FRONT_ENDS)
        for name in ("d_model", "enc_layers", "dec_layers", "heads", "head_dim", "mlp_dim", "n_mels", "vocab_size",
                     "max_enc_len", "max_dec_len", "max_tokens", "instrument_dim", "time_pool"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ("attn_dropout", "resid_dropout", "mlp_dropout", "instrument_drop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"ModelConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim must be even for rope, got {self.head_dim}")
        if self.max_tokens > self.max_dec_len:
            raise ValueError(f"ModelConfig.max_tokens ({self.max_tokens}) exceeds max_dec_len ({self.max_dec_len})")
        if self.vocab_size <= vocab.EOS:
            raise ValueError("ModelConfig.vocab_size must hold PAD and EOS")
        if self.conditioning == "dual_stream" and not 0 <= self.instrument_layers < self.enc_layers:
            raise ValueError(f"ModelConfig.instrument_layers must be in 0..enc_layers - 1 ({self.enc_layers - 1}), "
                             f"got {self.instrument_layers}")
        if self.aux_frame_weight < 0 or (self.aux_pos_weight is not None and self.aux_pos_weight <= 0):
            raise ValueError("ModelConfig.aux_frame_weight must be >= 0 and aux_pos_weight > 0 (or None)")
        if self.heads_weight < 0 or self.token_weight < 0:
            raise ValueError("ModelConfig.heads_weight and token_weight must be >= 0")
        if self.token_weight == 0 and not (self.note_heads or self.aux_frame_loss):
            raise ValueError("ModelConfig.token_weight 0 leaves nothing to train: turn note_heads on")
        if self.front_end == "conv" and self.n_mels % 8:
            raise ValueError(f"ModelConfig.front_end conv needs n_mels divisible by 8, got {self.n_mels}")
        if self.norm_eps <= 0 or self.rope_base <= 1:
            raise ValueError("ModelConfig.norm_eps must be > 0 and rope_base > 1")

    @property
    def inner_dim(self) -> int:
        """Width of q, k and v: heads * head_dim."""
        return self.heads * self.head_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides) -> "ModelConfig":
        """A named preset with some fields changed: ModelConfig.preset('small', conditioning='dual_stream')."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        return replace(PRESETS[name], **overrides)


def _choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"ModelConfig.{name} must be one of {', '.join(allowed)}, got {value!r}")


PRESETS: dict[str, ModelConfig] = {
    # for tests and smoke runs: builds and runs a step in milliseconds
    "tiny": ModelConfig(d_model=64, enc_layers=2, dec_layers=2, heads=2, head_dim=16, mlp_dim=128,
                        instrument_dim=32, instrument_layers=1),
    # the CPU-trainable default: the 7.9M-parameter shape of the bundled default model (docs/design.md §5.7)
    "small": ModelConfig(d_model=256, enc_layers=4, dec_layers=4, heads=4, head_dim=64, mlp_dim=1024,
                         instrument_dim=64),
    # Step 1 (docs/design.md §5.1): d 512, 8+8 layers, 6 heads x 64, MLP 1024, pre-LN, GELU, dropout 0.1, sinusoidal, tied
    "base": ModelConfig(),
    # Step 2 (docs/design.md §5.2): RMSNorm, SwiGLU, RoPE, dropout 0.05, checkpointing on (label smoothing is a train setting)
    "base_v2": ModelConfig(norm="rmsnorm", mlp="swiglu", positions="rope", resid_dropout=0.05, mlp_dropout=0.05,
                           activation_checkpointing=True),
}
