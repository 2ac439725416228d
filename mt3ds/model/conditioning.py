"""Step 3 instrument conditioning (docs/design.md §5.3.1-§5.3.3), one module per mode.

The instrument set of a segment arrives as a multi-hot bool [B, 129] (programs 0..127, drums 128) or None
(unknown). It becomes a short sequence of instrument ids that always starts with a learned 'unknown' entry, so an
unknown or empty set is simply that one entry and no attention row is ever fully masked. In training mode the whole
set of a sample is replaced by 'unknown' with probability cfg.instrument_drop, so one model works with or without
a list.

    decoder_pool  (3.1) pooled set embedding -> linear -> added to every decoder token embedding
    encoder_film  (3.2) pooled set embedding -> MLP -> (gamma, beta) per encoder block, h <- gamma * h + beta
    dual_stream   (3.3) an instrument stream (cfg.instrument_layers deep) that exchanges cross-attention with
                  the audio stream in the last encoder blocks; the fused audio stream goes to the decoder as usual
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import CrossAttentionLayer, EncoderBlock
from .config import N_INSTRUMENTS, ModelConfig

UNKNOWN = N_INSTRUMENTS  # id of the 'unknown' entry, always first in the sequence


def instrument_sequence(instruments: torch.Tensor | None, batch: int, device, drop: float = 0.0
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-hot [B, 129] (or None) -> ids (B, K) and valid (B, K): 'unknown' first, then the present instruments in
    ascending order, padding after them (valid False). drop: probability of replacing a row's set by 'unknown'."""
    if instruments is None:
        present = torch.zeros(batch, N_INSTRUMENTS, dtype=torch.bool, device=device)
    else:
        if instruments.shape != (batch, N_INSTRUMENTS):
            raise ValueError(f"instruments must be [{batch}, {N_INSTRUMENTS}] multi-hot, "
                             f"got {tuple(instruments.shape)}")
        present = instruments.to(device) > 0
    if drop > 0:
        present = present & (torch.rand(batch, 1, device=device) >= drop)  # drop the whole set of a row
    counts = present.sum(1)  # (B,)
    k = int(counts.max()) if batch else 0
    order = torch.argsort((~present).to(torch.int8), dim=1, stable=True)[:, :k]  # present ids first, ascending
    valid = torch.arange(k, device=device)[None, :] < counts[:, None]  # (B, k)
    ids = torch.where(valid, order, torch.zeros_like(order))
    first = torch.full((batch, 1), UNKNOWN, dtype=ids.dtype, device=device)
    always = torch.ones(batch, 1, dtype=torch.bool, device=device)
    return torch.cat([first, ids], 1), torch.cat([always, valid], 1)  # (B, 1 + k)


class InstrumentSet(nn.Module):
    """Embeds an instrument set as a sequence (B, K, instrument_dim) and pools it (mean or attention pooling;
    dual_stream uses the sequence only)."""

    def __init__(self, cfg: ModelConfig, pooling: bool = True):
        super().__init__()
        self.cfg = cfg
        self.table = nn.Embedding(N_INSTRUMENTS + 1, cfg.instrument_dim)
        self.score = (nn.Sequential(nn.Linear(cfg.instrument_dim, cfg.instrument_dim), nn.GELU(),
                                    nn.Linear(cfg.instrument_dim, 1, bias=False))  # softmax ignores a shift
                      if pooling and cfg.instrument_pool == "attention" else None)

    def forward(self, instruments: torch.Tensor | None, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        drop = self.cfg.instrument_drop if self.training else 0.0
        ids, valid = instrument_sequence(instruments, batch, self.table.weight.device, drop)
        return self.table(ids), valid  # (B, K, instrument_dim), (B, K)

    def pooled(self, instruments: torch.Tensor | None, batch: int) -> torch.Tensor:
        emb, valid = self(instruments, batch)
        if self.score is None:
            w = valid.to(emb.dtype)[..., None] / valid.sum(1, keepdim=True)[..., None]  # (B, K, 1)
        else:
            s = self.score(emb).squeeze(-1).float().masked_fill(~valid, float("-inf"))  # (B, K)
            w = F.softmax(s, dim=1).to(emb.dtype)[..., None]
        return (w * emb).sum(1)  # (B, instrument_dim)


class DecoderPool(nn.Module):
    """3.1: a constant hint added to every decoder token embedding."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.set, self.proj = InstrumentSet(cfg), nn.Linear(cfg.instrument_dim, cfg.d_model)

    def forward(self, instruments: torch.Tensor | None, batch: int) -> torch.Tensor:
        return self.proj(self.set.pooled(instruments, batch))[:, None, :]  # (B, 1, d_model)


class EncoderFilm(nn.Module):
    """3.2: one small MLP from the pooled set to (gamma, beta) of every encoder block (gamma = 1 + output)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layers, self.d = cfg.enc_layers, cfg.d_model
        self.set = InstrumentSet(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.instrument_dim, cfg.d_model), nn.GELU(),
                                 nn.Linear(cfg.d_model, 2 * cfg.d_model * cfg.enc_layers))

    def forward(self, instruments: torch.Tensor | None, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = self.mlp(self.set.pooled(instruments, batch)).view(batch, self.layers, 2, 1, self.d)  # (B, L, 2, 1, D)
        return [(1 + out[:, i, 0], out[:, i, 1]) for i in range(self.layers)]  # gamma, beta: (B, 1, D) each


class DualStream(nn.Module):
    """3.3: in each of the last instrument_layers + 1 encoder blocks, Audio <- CrossAttn(Inst) and
    Inst <- CrossAttn(Audio), both from the previous layer's streams, then each stream's own self-attention and
    feed-forward. The last exchange layer updates the audio stream only: nothing would read the instrument
    stream after it. No gates: each cross-attention's output projection already scales the exchange."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n = cfg.instrument_layers
        self.set, self.inst_in = InstrumentSet(cfg, pooling=False), nn.Linear(cfg.instrument_dim, cfg.d_model)
        self.audio_cross = nn.ModuleList(CrossAttentionLayer(cfg) for _ in range(n + 1))
        self.inst_cross = nn.ModuleList(CrossAttentionLayer(cfg) for _ in range(n))
        self.inst_blocks = nn.ModuleList(EncoderBlock(cfg) for _ in range(n))

    def start(self, instruments: torch.Tensor | None, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        emb, valid = self.set(instruments, batch)
        return self.inst_in(emb), valid  # (B, K, d_model), (B, K)

    def layer(self, j: int, audio: torch.Tensor, inst: torch.Tensor, valid: torch.Tensor, audio_block: EncoderBlock,
              **audio_kw) -> tuple[torch.Tensor, torch.Tensor]:
        """Exchange layer j: audio (B, S, d_model), inst (B, K, d_model) -> both updated."""
        new_audio = audio_block(self.audio_cross[j](audio, inst, key_mask=valid), **audio_kw)
        if j == len(self.inst_blocks):
            return new_audio, inst
        return new_audio, self.inst_blocks[j](self.inst_cross[j](inst, audio), key_mask=valid)


def make_conditioning(cfg: ModelConfig) -> nn.Module | None:
    """The module of cfg.conditioning, or None for 'none'."""
    modes = {"decoder_pool": DecoderPool, "encoder_film": EncoderFilm, "dual_stream": DualStream}
    return modes[cfg.conditioning](cfg) if cfg.conditioning in modes else None
