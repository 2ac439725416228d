"""Shared synthetic inputs for the model tests: random log-mel features, teacher-forcing batches, instrument sets,
and a tiny model that has memorized a few token sequences of different lengths (so that greedy decoding stops at
EOS at different steps)."""
from __future__ import annotations

import torch

from mt3ds.model.config import ModelConfig
from mt3ds.model.transcriber import IGNORE, Transcriber
from mt3ds.tokens import vocab
from mt3ds.tokens.frames import N_KEYS

N_FRAMES = 32  # fewer than the 256 of a real chunk: the model takes any length, and the tests stay fast
POSITIONS = ("sinusoidal", "learned", "rope", "alibi")


def tiny(**overrides) -> ModelConfig:
    """The tiny preset without dropout (deterministic comparisons), with overrides."""
    return ModelConfig.preset("tiny", **{"resid_dropout": 0.0, "mlp_dropout": 0.0, **overrides})


def build(seed: int = 0, **overrides) -> Transcriber:
    """A tiny model (tiny() with overrides) with seeded weights, in eval mode."""
    torch.manual_seed(seed)
    return Transcriber(tiny(**overrides)).eval()


def features(batch: int, n_frames: int = N_FRAMES, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, n_frames, 512, generator=torch.Generator().manual_seed(seed))


def instruments(*sets: list[int]) -> torch.Tensor:
    """Multi-hot [len(sets), 129] from lists of programs (128 = drums)."""
    out = torch.zeros(len(sets), 129, dtype=torch.bool)
    for i, programs in enumerate(sets):
        out[i, programs] = True
    return out


def token_batch(lengths: list[int], seed: int = 1, n_frames: int = N_FRAMES) -> dict:
    """The loader's batch contract: tokens PAD-padded, EOS-terminated; decoder_input = [PAD] + tokens[:-1];
    labels -100 on padding; attention_mask; frame rolls [B, n_frames, N_KEYS]."""
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    tokens = torch.full((B, T), vocab.PAD, dtype=torch.long)
    for i, n in enumerate(lengths):
        tokens[i, : n - 1] = torch.randint(3, vocab.VOCAB_SIZE, (n - 1,), generator=g)
        tokens[i, n - 1] = vocab.EOS
    mask = tokens != vocab.PAD
    return {"tokens": tokens,
            "decoder_input": torch.cat([torch.full((B, 1), vocab.PAD), tokens[:, :-1]], 1),
            "labels": tokens.masked_fill(~mask, IGNORE),
            "attention_mask": mask,
            "instruments": instruments(*[[i % 129] for i in range(B)]),
            "frame_onsets": (torch.rand(B, n_frames, N_KEYS, generator=g) < 0.02).float(),
            "frame_active": (torch.rand(B, n_frames, N_KEYS, generator=g) < 0.1).float()}


MEMORIZED_LENGTHS = [3, 6, 9, 13]


def memorized(cfg: ModelConfig, steps: int = 80) -> tuple[Transcriber, torch.Tensor, dict, list[float]]:
    """A model trained until it reproduces four sequences of MEMORIZED_LENGTHS tokens from four random inputs.
    Returns (model in eval mode, features, batch, the loss curve)."""
    torch.manual_seed(0)
    model = Transcriber(cfg)
    feats, batch = features(len(MEMORIZED_LENGTHS)), token_batch(MEMORIZED_LENGTHS)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    curve = []
    for _ in range(steps):
        loss, metrics = model.loss(feats, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(float(metrics["token_loss"]))
    return model.eval(), feats, batch, curve
