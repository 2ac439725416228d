"""The one place where attention is computed, and the KV cache used by generation.

`attention(q, k, v, ...)` dispatches to one backend:
    flash  the `flash_attn` package (CUDA, fp16/bf16) when installed, else PyTorch SDPA limited to its flash
           kernel. Flash takes no explicit mask or bias on CUDA, so a call that needs one (ALiBi, instrument
           padding, a causal mask with more keys than queries) runs on SDPA's memory-efficient kernel instead.
    sdpa   torch.nn.functional.scaled_dot_product_attention, which picks its own kernel.
    math   softmax(q k^T / sqrt(d) + bias) v written out, softmax in fp32: the reference the tests compare with.
    auto   flash_attn when it can run the call, else SDPA (which uses flash on GPUs that support it).

Causal attention is aligned bottom-right: query i of Tq sits at position Tk - Tq + i. SDPA's `is_causal` aligns
top-left, which is only right when Tq == Tk; a single new query with a cache needs no mask at all.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

try:  # optional, GPU only (no usable wheel on CPU machines: docs/design.md §5.4)
    from flash_attn import flash_attn_func
except ImportError:  # pragma: no cover - depends on the machine
    flash_attn_func = None

_FORCED: str | None = None


def force_backend(name: str | None) -> None:
    """Override every model's attention_backend (tests and benchmarks); None restores each model's own."""
    global _FORCED
    if name not in (None, "auto", "flash", "sdpa", "math"):
        raise ValueError(f"unknown attention backend {name!r}")
    _FORCED = name


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
              bias: torch.Tensor | None = None, key_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
              backend: str = "auto") -> torch.Tensor:
    """Scaled dot-product attention. q (B, H, Tq, D), k and v (B, H, Tk, D) -> (B, H, Tq, D).

    causal: bottom-right causal mask. bias: additive float (B or 1, H or 1, Tq, Tk), e.g. ALiBi.
    key_mask: bool (B, Tk), True where a key may be attended to (padding is False).
    """
    backend = _FORCED or backend
    Tq, Tk = q.shape[2], k.shape[2]
    if causal and Tq == 1:
        causal = False  # one new query sees every cached key
    if backend == "math":
        mask = _combine(bias, key_mask, causal, Tq, Tk, q)
        return _math_attention(q, k, v, bias=mask, dropout_p=dropout_p)
    needs_mask = bias is not None or key_mask is not None or (causal and Tq != Tk)
    if backend in ("auto", "flash") and not needs_mask and _flash_attn_usable(q):
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),  # (B, T, H, D)
                              dropout_p=dropout_p, causal=causal)
        return out.transpose(1, 2)  # (B, H, Tq, D)
    mask = _combine(bias, key_mask, causal, Tq, Tk, q) if needs_mask else None
    is_causal = causal and not needs_mask
    if backend == "flash":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        kernels = [SDPBackend.FLASH_ATTENTION]
        if mask is not None:  # flash takes no mask on CUDA: the next kernels in line take it
            kernels += [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
        with sdpa_kernel(kernels):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)


def _flash_attn_usable(q: torch.Tensor) -> bool:
    return flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def _combine(bias, key_mask, causal: bool, Tq: int, Tk: int, q: torch.Tensor) -> torch.Tensor | None:
    """One additive float mask (broadcastable to (B, H, Tq, Tk)) from a bias, a key mask and causality."""
    if bias is None and key_mask is None and not causal:
        return None
    neg = torch.finfo(q.dtype).min
    mask = torch.zeros((1, 1, Tq, Tk), dtype=q.dtype, device=q.device) if bias is None else bias.to(q.dtype)
    if causal:
        allowed = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - Tq)
        mask = mask.masked_fill(~allowed, neg)
    if key_mask is not None:
        mask = mask.masked_fill(~key_mask[:, None, None, :], neg)  # (B, 1, 1, Tk)
    return mask


def _math_attention(q, k, v, *, bias: torch.Tensor | None, dropout_p: float) -> torch.Tensor:
    scores = torch.matmul(q.float(), k.float().transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    if bias is not None:
        scores = scores + bias.float()
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p)
    return torch.matmul(probs, v.float()).to(q.dtype)  # (B, H, Tq, D)


class KVCache:
    """Preallocated keys and values for the decoder's self-attention, with an explicit write position, plus the
    cross-attention keys and values of each layer, computed once per segment from the encoder output.

    A decoder step writes its new keys at `pos` in every layer (`update`), then moves `pos` on once (`advance`).
    `select` keeps some rows of the batch, in a given order: finished sequences leave, beams are reordered.
    """

    def __init__(self, layers: int, batch: int, heads: int, max_len: int, head_dim: int, *,
                 device: torch.device, dtype: torch.dtype):
        self.k = torch.zeros(layers, batch, heads, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * layers
        self.pos = 0
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, H, T, D) new keys/values at pos; return this layer's keys/values for positions 0..pos+T-1."""
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions > max_len {self.max_len}")
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, t: int) -> None:
        self.pos += t

    def select(self, index: torch.Tensor, cross: bool = True) -> None:
        """Keep batch rows `index` (1-D long), in that order. Only the filled positions are copied, in place.
        cross=False leaves the cross-attention keys alone (beams of one segment share them)."""
        n = index.numel()
        self.k[:, :n, :, :self.pos] = self.k[:, index, :, :self.pos]  # the right side is a copy: no aliasing
        self.v[:, :n, :, :self.pos] = self.v[:, index, :, :self.pos]
        self.k, self.v = self.k[:, :n], self.v[:, :n]
        if cross:
            self.cross = [None if kv is None else (kv[0].index_select(0, index), kv[1].index_select(0, index))
                          for kv in self.cross]
