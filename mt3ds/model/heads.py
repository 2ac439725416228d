"""The encoder's front ends and note heads (docs/design.md §5.6).

Front ends (ModelConfig.front_end), log-mel [B, S, n_mels] -> [B, S, d_model]:
    linear  the seed's: one linear map of the 512 normalized bands
    conv    a small 2-D convolution stem over (time, mel): 3x3 convolutions share their weights across
            frequency, a bias towards "the same shape one pitch up is the same thing" that a linear map must learn
            band by band; pooled over frequency, then one linear map

Time pooling (ModelConfig.time_pool = p): the front end's frames are averaged p at a time before the encoder
blocks, so attention and feed-forward run on S / p frames; the heads give every pooled frame p sub-frames, so the
rolls keep the 8 ms frame (and the decoder cross-attends to the pooled memory).

Note heads (ModelConfig.note_heads): one linear map of each memory frame to
    onset, frame, offset  [GROUPS, N_KEYS] each   (group 0 any pitched instrument, 1 + c class c)
    drums                 [N_DRUM_CLASSES]        onsets per drum class
    programs              [128]                   General MIDI programs sounding (multi-label)
read by mt3ds/tokens/rolls.py into notes, instruments and drums without decoding.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..tokens.frames import N_KEYS
from ..tokens.rolls import GROUPS, N_DRUM_CLASSES, N_PROGRAMS
from .config import ModelConfig

ROLLS = ("onset", "frame", "offset")
HEAD_SIZES = {"onset": GROUPS * N_KEYS, "frame": GROUPS * N_KEYS, "offset": GROUPS * N_KEYS,
              "drums": N_DRUM_CLASSES, "programs": N_PROGRAMS}
CONV_CHANNELS = 16


class ConvFrontEnd(nn.Module):
    """(B, S, n_mels) -> (B, S, d_model): conv 3x3 -> GELU -> max-pool 4 over mel -> conv 3x3 -> GELU -> max-pool
    2 over mel -> linear. Time is never strided: every frame keeps its own output."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = CONV_CHANNELS
        self.conv1 = nn.Conv2d(1, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.bands = cfg.n_mels // 8
        self.proj = nn.Linear(c * self.bands, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, S, M = x.shape
        h = x.unsqueeze(1)  # (B, 1, S, M)
        h = F.max_pool2d(F.gelu(self.conv1(h)), (1, 4))
        h = F.max_pool2d(F.gelu(self.conv2(h)), (1, 2))  # (B, c, S, M / 8)
        return self.proj(h.permute(0, 2, 1, 3).reshape(B, S, -1))


def front_end(cfg: ModelConfig) -> nn.Module:
    if cfg.front_end == "conv":
        if cfg.n_mels % 8:
            raise ValueError(f"front_end conv needs n_mels divisible by 8, got {cfg.n_mels}")
        return ConvFrontEnd(cfg)
    return nn.Linear(cfg.n_mels, cfg.d_model, bias=False)


def pool_time(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, S, D) -> (B, ceil(S / p), D): means of p frames (the last group zero-padded)."""
    if p == 1:
        return x
    B, S, D = x.shape
    pad = (-S) % p
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
    return x.view(B, -1, p, D).mean(2)


# what the reading (tokens/rolls.py) uses: the class-agnostic onset and offset rolls (group 0), every frame roll,
# drums and programs; the class onset and offset rolls only train the encoder
READ_GROUPS = {"onset": 1, "frame": GROUPS, "offset": 1, "drums": None, "programs": None}


class NoteHeads(nn.Module):
    """Memory (B, S / p, d_model) -> logits fp32 per head, each (B, S, ...) at the full frame rate."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pool = cfg.time_pool
        self.width = sum(HEAD_SIZES.values())
        self.proj = nn.Linear(cfg.d_model, self.pool * self.width)
        self.register_buffer("read_rows", self._read_rows(), persistent=False)

    def _read_rows(self) -> torch.Tensor:
        """Rows of proj that the reading needs, for every sub-frame (READ_GROUPS): 1,457 of 3,569 per sub-frame."""
        cols, start = [], 0
        for name, size in HEAD_SIZES.items():
            keep = size if READ_GROUPS[name] is None else READ_GROUPS[name] * N_KEYS  # groups come first
            cols.append(torch.arange(start, start + keep))
            start += size
        cols = torch.cat(cols)
        return torch.cat([j * self.width + cols for j in range(self.pool)])

    def forward(self, memory: torch.Tensor, frames: int, reading: bool = False) -> dict[str, torch.Tensor]:
        """All heads (training); with reading, only what the reading uses (onset and offset with group 0 alone):
        less than half the head's work at inference."""
        B = memory.shape[0]
        if reading and isinstance(self.proj, nn.Linear):  # a quantized proj has no weight to slice: full pass
            rows = self.read_rows
            out = F.linear(memory, self.proj.weight[rows], self.proj.bias[rows]).float()
            sizes = {k: (v if READ_GROUPS[k] is None else READ_GROUPS[k] * N_KEYS) for k, v in HEAD_SIZES.items()}
            groups = {k: READ_GROUPS[k] or GROUPS for k in ROLLS}
        else:
            out = self.proj(memory).float()
            sizes, groups = HEAD_SIZES, dict.fromkeys(ROLLS, GROUPS)
        out = out.view(B, -1, sum(sizes.values()))[:, :frames]  # (B, S, width): p sub-frames per memory frame
        heads, start = {}, 0
        for name, size in sizes.items():
            part = out[..., start:start + size]
            heads[name] = part.reshape(B, frames, groups[name], N_KEYS) if name in ROLLS else part
            start += size
        if reading:
            heads = {k: (v[:, :, :READ_GROUPS[k]] if k in ROLLS and READ_GROUPS[k] else v) for k, v in heads.items()}
        return heads


def head_loss(logits: dict[str, torch.Tensor], batch: dict, pos_weight: float | None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum of BCEs: the class-agnostic onset, frame and offset rolls, the same rolls per class, drum onsets and
    programs; each with pos_weight sqrt(negatives / positives) of its batch (rare onsets would be ignored otherwise)
    unless pos_weight is set. Targets: batch["heads_" + name], uint8 from tokens/rolls.head_targets."""
    total, metrics = 0.0, {}
    for name in HEAD_SIZES:
        key = f"heads_{name}"
        if key not in batch:
            raise ValueError(f"note_heads is on but the batch has no {key}")
        target = batch[key].to(logits[name].device, torch.float32)
        if target.shape != logits[name].shape:
            raise ValueError(f"{key} {tuple(target.shape)} does not match the heads' {tuple(logits[name].shape)}")
        if name in ROLLS:  # group 0 and the classes are two terms: the classes' sparse rolls must not drown it
            parts = {f"head_{name}": (logits[name][:, :, 0], target[:, :, 0]),
                     f"head_{name}_class": (logits[name][:, :, 1:], target[:, :, 1:])}
        else:
            parts = {f"head_{name}": (logits[name], target)}
        for metric, (x, y) in parts.items():
            loss = bce(x, y, pos_weight)
            metrics[metric] = loss.detach()
            total = total + loss
    return total, metrics


def bce(logits: torch.Tensor, target: torch.Tensor, pos_weight: float | None) -> torch.Tensor:
    if pos_weight is not None:
        weight = torch.tensor(pos_weight, device=logits.device)
    else:
        pos = target.sum()
        weight = ((target.numel() - pos) / pos.clamp(min=1)).sqrt().clamp(min=1.0)
    return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)


def from_frame_head(frame_weight: torch.Tensor, frame_bias: torch.Tensor, heads: NoteHeads
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The note heads' (weight, bias), starting from a trained aux frame head's (2 * N_KEYS rows: onset, active):
    every group's onset rows (group 0 and each class) from its onset rows, every frame roll from its active rows, in
    every sub-frame; offsets, drums and programs keep their fresh rows. The classes then start as "any instrument"
    and specialize, instead of learning note timing from nothing."""
    weight, bias = heads.proj.weight.detach().clone(), heads.proj.bias.detach().clone()
    onset_w, active_w = frame_weight[:N_KEYS], frame_weight[N_KEYS:]
    onset_b, active_b = frame_bias[:N_KEYS], frame_bias[N_KEYS:]
    for j in range(heads.pool):
        base = j * heads.width
        for g in range(GROUPS):
            for start, (w, b) in ((0, (onset_w, onset_b)), (GROUPS * N_KEYS, (active_w, active_b))):
                rows = slice(base + start + g * N_KEYS, base + start + (g + 1) * N_KEYS)
                weight[rows], bias[rows] = w, b
    return weight, bias
