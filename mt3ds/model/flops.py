"""What the model costs in FLOPs, and what a GPU can do: the figures behind MFU (model FLOPs utilization).

    MFU = train_flops(cfg, B, T, S) per step / seconds per step / (peak_flops(device) x ranks)

The count is analytic (matmuls only, from the config's shapes): training and `mt3ds bench` report the same MFU for
the same step. Recomputation by activation checkpointing is not counted, as in the PaLM paper's MFU. Torch is imported
only by `peak_flops`, which asks a CUDA device its name.
"""
from __future__ import annotations

from .config import ModelConfig

# Peak dense (no sparsity) bf16 tensor-core FLOP/s by CUDA device name, from NVIDIA's data sheets. A name is looked
# up by substring, longest key first, so "H100 PCIe" is not read as an SXM "H100" and "L40S" not as an "L4".
PEAK_BF16_FLOPS = {
    "H100": 989e12,  # SXM (torch reports "NVIDIA H100 80GB HBM3")
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H200": 989e12,
    "H200 NVL": 835e12,
    "GH200": 989e12,
    "A100": 312e12,  # SXM and PCIe alike
    "L40S": 362e12,
    "L4": 121e12,
}


def forward_flops(cfg: ModelConfig, B: int, T: int, S: int) -> float:
    """Analytic FLOPs of one teacher-forced forward pass of B chunks (S encoder frames, T decoder tokens): matmuls
    only (2 FLOPs per multiply-add), causal self-attention counted at half."""
    d, inner, mult = cfg.d_model, cfg.inner_dim, 3 if cfg.mlp == "swiglu" else 2
    enc = cfg.enc_layers * (2 * S * 4 * d * inner + 4 * S * S * inner + 2 * S * mult * d * cfg.mlp_dim)
    dec = cfg.dec_layers * (2 * T * 4 * d * inner + 2 * T * T * inner  # self-attention, causal
                            + 2 * T * 2 * d * inner + 2 * S * 2 * d * inner + 4 * T * S * inner  # cross-attention
                            + 2 * T * mult * d * cfg.mlp_dim)
    return float(B * (2 * S * cfg.n_mels * d + enc + dec + 2 * T * d * cfg.vocab_size))


def train_flops(cfg: ModelConfig, B: int, T: int, S: int) -> float:
    """Forward + backward of one training micro-batch (the backward pass costs twice the forward)."""
    return 3.0 * forward_flops(cfg, B, T, S)


def peak_bf16_flops(device_name: str) -> float | None:
    """Peak dense bf16 FLOP/s of a GPU by its name ('NVIDIA H100 80GB HBM3'), or None for one not in the table."""
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key in device_name:
            return PEAK_BF16_FLOPS[key]
    return None


def peak_flops(device) -> float | None:
    """Peak dense bf16 FLOP/s of a torch device: None on the CPU, or on a GPU not in the table."""
    import torch

    if getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        return None
    return peak_bf16_flops(torch.cuda.get_device_name(device))
