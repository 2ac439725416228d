"""Building blocks of the transcriber, top to bottom: norms, positions (sinusoidal, learned, RoPE, ALiBi),
multi-head attention, feed-forward (GELU, SwiGLU), and the pre-norm encoder and decoder blocks.

Position tables are computed in fp32 on the fly rather than stored as buffers: DeepSpeed's bf16 mode casts every
floating buffer to bf16, which would round RoPE angles and sinusoids at large positions.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import KVCache, attention
from .config import ModelConfig

# ---------------------------------------------------------------------------------------------------------------
# norms


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 (Step 2)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or cfg.d_model
    return nn.LayerNorm(dim, eps=cfg.norm_eps) if cfg.norm == "layernorm" else RMSNorm(dim, cfg.norm_eps)


# ---------------------------------------------------------------------------------------------------------------
# positions


def sinusoidal_table(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed sinusoidal embeddings, fp32 (T, dim): sin on the first half of the features, cos on the second."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    angles = positions.float()[:, None] * freqs[None, :]  # (T, half)
    table = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return F.pad(table, (0, dim - 2 * half))  # odd dim: one zero feature


def rope_angles(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (T, head_dim / 2), fp32, for rotating q and k at these positions."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]  # (T, head_dim/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate (B, H, T, D) by the angles of its T positions (halves layout, as GPT-NeoX and Llama)."""
    cos, sin = rope
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, H, T, D/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


def alibi_slopes(heads: int, device=None) -> torch.Tensor:
    """Per-head slopes of ALiBi (Press et al.): a geometric series, interleaved when heads is not a power of 2."""
    def series(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    p = 2 ** math.floor(math.log2(heads))
    slopes = series(p) + series(2 * p)[0::2][: heads - p]
    return torch.tensor(slopes, dtype=torch.float32, device=device)


def alibi_bias(q_pos: torch.Tensor, k_pos: torch.Tensor, heads: int) -> torch.Tensor:
    """-slope * |i - j|, fp32 (1, H, Tq, Tk). Symmetric, so it also serves the bidirectional encoder."""
    distance = (q_pos[:, None] - k_pos[None, :]).abs().float()  # (Tq, Tk)
    return (-alibi_slopes(heads, q_pos.device)[:, None, None] * distance)[None]  # (1, H, Tq, Tk)


class Positions(nn.Module):
    """What one stack (encoder or decoder) needs for positions `offset .. offset + T - 1`: an additive embedding
    (sinusoidal, learned) or, inside attention, RoPE angles or an ALiBi bias over keys 0 .. offset + T - 1."""

    def __init__(self, cfg: ModelConfig, max_len: int):
        super().__init__()
        self.kind, self.max_len, self.cfg = cfg.positions, max_len, cfg
        self.table = nn.Embedding(max_len, cfg.d_model) if cfg.positions == "learned" else None

    def embed(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Add the position embedding to (B, T, d_model) inputs (no-op for rope and alibi)."""
        T = x.shape[1]
        if offset + T > self.max_len:
            raise ValueError(f"sequence of {offset + T} positions exceeds the model's maximum of {self.max_len}")
        if self.kind not in ("sinusoidal", "learned"):
            return x
        pos = torch.arange(offset, offset + T, device=x.device)
        pe = self.table(pos) if self.kind == "learned" else sinusoidal_table(pos, x.shape[-1])
        return x + pe.to(x.dtype)

    def attention_args(self, T: int, offset: int, device) -> dict:
        """Keyword arguments for self-attention: rope=(cos, sin) for the T new positions or bias=ALiBi."""
        pos = torch.arange(offset, offset + T, device=device)
        if self.kind == "rope":
            return {"rope": rope_angles(pos, self.cfg.head_dim, self.cfg.rope_base)}
        if self.kind == "alibi":
            return {"bias": alibi_bias(pos, torch.arange(offset + T, device=device), self.cfg.heads)}
        return {}


# ---------------------------------------------------------------------------------------------------------------
# attention and feed-forward


class Attention(nn.Module):
    """Multi-head attention, heads x head_dim independent of d_model; self-attention or cross-attention."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads, self.head_dim, self.cfg = cfg.heads, cfg.head_dim, cfg
        self.q = nn.Linear(cfg.d_model, cfg.inner_dim, bias=False)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.inner_dim, bias=False)
        self.out = nn.Linear(cfg.inner_dim, cfg.d_model, bias=False)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(context).chunk(2, dim=-1)  # (B, S, inner) each
        return self.split(k), self.split(v)  # (B, H, S, D) each

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, *, causal: bool = False,
                rope=None, bias=None, key_mask=None, kv=None, cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        """x (B, T, d_model) attends to itself (context None) or to context (B, S, d_model), or to precomputed
        cross keys/values kv. With a cache, self-attention writes its keys at cache.pos and reads 0..pos+T-1."""
        B, T, _ = x.shape
        q = self.split(self.q(x))  # (B, H, T, D)
        if kv is not None:
            k, v = kv
        else:
            k, v = self.project_kv(x if context is None else context)
        if rope is not None:  # self-attention only: q and the new keys share positions
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H, pos+T, D)
        dropout = self.cfg.attn_dropout if self.training else 0.0
        y = attention(q, k, v, causal=causal, bias=bias, key_mask=key_mask, dropout_p=dropout,
                      backend=self.cfg.attention_backend)  # (B, H, T, D)
        return self.out(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, inner) -> (B, T, d_model)


class MLP(nn.Module):
    """Feed-forward: GELU (Step 1) or SwiGLU (Step 2), hidden width mlp_dim, no biases."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        self.up = nn.Linear(cfg.d_model, cfg.mlp_dim, bias=False)
        self.gate = nn.Linear(cfg.d_model, cfg.mlp_dim, bias=False) if self.swiglu else None
        self.down = nn.Linear(cfg.mlp_dim, cfg.d_model, bias=False)
        self.drop = nn.Dropout(cfg.mlp_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.gate(x)) * self.up(x) if self.swiglu else F.gelu(self.up(x))
        return self.down(self.drop(h))


# ---------------------------------------------------------------------------------------------------------------
# residual sub-layers (pre-norm) and blocks


class SelfAttentionLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm, self.attn, self.drop = make_norm(cfg), Attention(cfg), nn.Dropout(cfg.resid_dropout)

    def forward(self, x, **kw):
        return x + self.drop(self.attn(self.norm(x), **kw))


class CrossAttentionLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm, self.attn, self.drop = make_norm(cfg), Attention(cfg), nn.Dropout(cfg.resid_dropout)

    def forward(self, x, context=None, *, key_mask=None, kv=None):
        return x + self.drop(self.attn(self.norm(x), context, key_mask=key_mask, kv=kv))


class FeedForwardLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm, self.mlp, self.drop = make_norm(cfg), MLP(cfg), nn.Dropout(cfg.resid_dropout)

    def forward(self, x):
        return x + self.drop(self.mlp(self.norm(x)))


class EncoderBlock(nn.Module):
    """Bidirectional self-attention then feed-forward. film=(gamma, beta), each (B, 1, d_model), modulates the
    residual stream on entry (encoder_film, docs/design.md §5.3.2)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn, self.ff = SelfAttentionLayer(cfg), FeedForwardLayer(cfg)

    def forward(self, x, film=None, key_mask=None, rope=None, bias=None):
        if film is not None:
            x = film[0] * x + film[1]
        return self.ff(self.self_attn(x, rope=rope, bias=bias, key_mask=key_mask))


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention to the encoder output, feed-forward."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn, self.cross_attn, self.ff = (SelfAttentionLayer(cfg), CrossAttentionLayer(cfg),
                                                    FeedForwardLayer(cfg))

    def forward(self, x, memory=None, rope=None, bias=None, cache: KVCache | None = None, layer: int = 0):
        x = self.self_attn(x, causal=True, rope=rope, bias=bias, cache=cache, layer=layer)
        kv = cache.cross[layer] if cache is not None else None
        return self.ff(self.cross_attn(x, memory, kv=kv))
