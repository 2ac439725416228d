"""mt3ds/model/flops.py: the analytic FLOP count behind MFU and the GPU peak table, without a GPU."""
import ast
from pathlib import Path

import pytest

from mt3ds.model.config import ModelConfig
from mt3ds.model.flops import forward_flops, peak_bf16_flops, peak_flops, train_flops

PACKAGE = Path(__file__).resolve().parent.parent / "mt3ds"


def test_forward_flops_counts_matmuls():
    cfg = ModelConfig.preset("tiny")  # d 64, 2+2 layers, inner 32, MLP 128, gelu
    d, inner, mlp, V = 64, 32, 128, 1437
    S, T = 8, 4
    enc = 2 * (2 * S * 4 * d * inner + 4 * S * S * inner + 2 * S * 2 * d * mlp)
    dec = 2 * (2 * T * 4 * d * inner + 2 * T * T * inner + 2 * T * 2 * d * inner + 2 * S * 2 * d * inner
               + 4 * T * S * inner + 2 * T * 2 * d * mlp)
    assert forward_flops(cfg, 3, T, S) == 3 * (2 * S * 512 * d + enc + dec + 2 * T * d * V)
    assert train_flops(cfg, 3, T, S) == 3 * forward_flops(cfg, 3, T, S)


def test_swiglu_adds_a_third_mlp_matrix():
    gelu, swiglu = ModelConfig.preset("tiny"), ModelConfig.preset("tiny", mlp="swiglu")
    S, T, d, mlp = 8, 4, 64, 128
    assert forward_flops(swiglu, 1, T, S) - forward_flops(gelu, 1, T, S) == 2 * (2 * S * d * mlp + 2 * T * d * mlp)


@pytest.mark.parametrize("name, expected", [
    ("NVIDIA H100 80GB HBM3", 989e12),  # SXM
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA GH200 480GB", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A100-PCIE-40GB", 312e12),
    ("NVIDIA L40S", 362e12),  # not the L4's figure, though "L4" is in its name
    ("NVIDIA L4", 121e12),
    ("NVIDIA GeForce RTX 4090", None),  # not in the table: no MFU rather than a wrong one
])
def test_peak_by_device_name(name, expected):
    assert peak_bf16_flops(name) == expected


def test_no_peak_on_the_cpu():
    assert peak_flops("cpu") is None


def test_flops_and_peaks_have_one_home():
    """No other module of the package defines a FLOP count or a peak table, and library code never imports bench/
    (only the command line, which runs the benches, does)."""
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = path.relative_to(PACKAGE).as_posix()
        if where != "model/flops.py":
            defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            defined |= {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets
                        if isinstance(t, ast.Name)}
            assert not defined & {"forward_flops", "train_flops", "PEAK_BF16", "PEAK_BF16_FLOPS"}, where
        if not where.startswith("bench/") and where != "cli.py":
            imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
            assert not any(m == "bench" or m.startswith("bench.") for m in imported), where
