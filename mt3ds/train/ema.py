"""Exponential moving average of the model's weights (docs/design.md §6.5), kept in fp32.

With DeepSpeed bf16 the module's weights are bf16 copies of the optimizer's fp32 master weights; the average is
accumulated in fp32 from them (the bf16 rounding of one step is averaged away over ~1/(1 - decay) steps). Under ZeRO
stages 0-2 every rank holds the whole module, so every rank's average is the same and rank 0 writes it.
"""
from __future__ import annotations

import torch
from torch import nn


class EMA:
    """shadow = d * shadow + (1 - d) * weights after every optimizer step; d = decay, or with warmup
    min(decay, (1 + n) / (10 + n)) at the n-th update (TensorFlow's ExponentialMovingAverage num_updates rule)."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError("decay must be in [0, 1)")
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.shadow = [params[n].detach().float().clone() for n in self.names]

    def current_decay(self) -> float:
        if self.warmup:
            return min(self.decay, (1 + self.updates) / (10 + self.updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        params = dict(model.named_parameters())
        current = [params[n].detach().float() for n in self.names]
        torch._foreach_lerp_(self.shadow, current, 1.0 - d)  # shadow += (1 - d) * (p - shadow)
        self.updates += 1

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's state dict with the averaged weights in place of the parameters (buffers as they are)."""
        out = {k: v.detach() for k, v in model.state_dict().items()}
        for n, s in zip(self.names, self.shadow):
            out[n] = s
        return out

    def load(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        """Restore the average from a checkpoint's tensors (the names must match this model's)."""
        missing = [n for n in self.names if n not in tensors]
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} parameters, e.g. {missing[0]}")
        for i, n in enumerate(self.names):
            self.shadow[i].copy_(tensors[n].to(self.shadow[i].device, torch.float32))
        self.updates = int(updates)
