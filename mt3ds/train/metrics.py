"""Metric lines of a run: stdout, RUN_DIR/metrics.jsonl and, when the package is installed, TensorBoard.

Every line is one JSON object with `step` and `kind` ("train" or "validation"). Only rank 0 writes. On resume the
lines after the resumed step (written by the killed run) are dropped, so the file reads as one run.
The engine figures throughput and MFU from mt3ds/model/flops.py (analytic FLOPs of the forward and backward passes /
time / the GPU's peak dense bf16 FLOP/s); `hardware` names what the run ran on.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..files import write_text_atomic


def hardware(device, world_size: int) -> str:
    """'8 x NVIDIA H100 80GB HBM3' or '1 x cpu (2 threads)'."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return f"{world_size} x {torch.cuda.get_device_name(device)}"
    return f"{world_size} x cpu ({torch.get_num_threads()} threads)"


class MetricsLog:
    """Writes metric records on rank 0; other ranks' calls do nothing."""

    def __init__(self, run_dir, rank: int, resume_step: int | None = None, tensorboard: bool = True):
        self.enabled = rank == 0
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            keep_until = resume_step if resume_step is not None else -1
            lines = [ln for ln in self.path.read_text(encoding="utf-8").splitlines() if _step_of(ln) <= keep_until]
            write_text_atomic(self.path, "".join(ln + "\n" for ln in lines))
        self.file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step)
            except ImportError:  # tensorboard is optional
                self.tb = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {k: _jsonable(v) for k, v in record.items()}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        print(format_line(record), flush=True)
        if self.tb is not None:
            prefix = record.get("kind", "train")
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self.tb.add_scalar(f"{prefix}/{k}", v, record["step"])

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
        return 1 << 62  # a torn last line from a kill: dropped


def _jsonable(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def format_line(record: dict) -> str:
    """'train step 100 | loss 3.2100 | lr 1.00e-04 | ...' for stdout."""
    parts = [f"{record.get('kind', 'train')} step {record['step']}"]
    for k, v in record.items():
        if k in ("kind", "step"):
            continue
        if v is None:
            shown = "-"
        elif isinstance(v, float):
            shown = f"{v:.2e}" if k == "lr" or (v != 0 and abs(v) < 1e-3) else f"{v:.4g}"
        else:
            shown = str(v)
        parts.append(f"{k} {shown}")
    return " | ".join(parts)
