"""The GPU check's CPU dry run (`mt3ds bench gpu --dry-run`): every part runs at tiny sizes and stdout is one JSON
object; and `bench train --ranks` refuses a bad list in one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


@pytest.mark.slow
def test_gpu_check_dry_run_prints_one_json_object_with_every_part(tmp_path):
    p = subprocess.run([sys.executable, "-m", "mt3ds", "bench", "gpu", "--dry-run"], capture_output=True, text=True,
                       env=_env(), timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    fig = json.loads(p.stdout)  # the whole of stdout: DeepSpeed's and the profiler's logs went to stderr
    assert fig["dry_run"] is True
    tiny = fig["training_bf16"]["tiny"]
    assert tiny["flash_check"]["flash_verified"] and tiny["flash_check"]["flash_kernels"]
    for backend in ("flash", "math"):
        assert tiny[backend]["ckpt_off_step_s"] > 0 and tiny[backend]["ckpt_off_samples_per_s"] > 0
    assert tiny["flash"]["ckpt_on_step_s"] > 0 and tiny["checkpointing_memory_ratio"] > 0
    assert fig["optimizer"] == {"built": "AdamW", "fused_adam_loaded": False}  # cpu.json: the torch optimizer
    assert fig["zero"]["stage1"]["step_s"] > 0 and fig["zero"]["stage2"]["step_s"] > 0
    assert fig["zero"]["stage2"]["saved_per_gpu_gb_at_8_gpus"] > fig["zero"]["stage1"]["saved_per_gpu_gb_at_8_gpus"]
    assert fig["kv_cache"]["cached_tok_s"] > 0 and fig["kv_cache"]["uncached_tok_s"] > 0
    assert fig["loader"]["samples_per_s"] > 0 and fig["loader"]["loader_over_demand"] > 0
    assert fig["transcribe"]["rtf_tokens"] > 0 and fig["transcribe"]["device"] == "cpu"


def test_gpu_check_without_a_gpu_says_so_in_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    p = subprocess.run([sys.executable, "-m", "mt3ds", "bench", "gpu"], capture_output=True, text=True, env=_env(),
                       timeout=300, cwd=tmp_path)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "bench gpu: no CUDA GPU here" in p.stderr.strip().splitlines()[-1] and "--dry-run" in p.stderr


@pytest.mark.parametrize("ranks", ["0", "1,x", ""])
def test_bench_train_bad_ranks_is_one_line(tmp_path, ranks):
    p = subprocess.run([sys.executable, "-m", "mt3ds", "bench", "train", "--ranks", ranks], capture_output=True,
                       text=True, env=_env(), timeout=300, cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr  # a usage error (mt3ds --help: exit status)
    err = p.stderr.strip()
    assert err.startswith("mt3ds: error: Invalid value for '--ranks'") and "expected positive integers" in err
    assert len(err.splitlines()) == 1


def test_bench_train_defaults_suit_the_machine(monkeypatch):
    import torch

    from mt3ds.bench.train import CPU_DS, DEFAULT_DS, machine_defaults

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert machine_defaults(None, None) == ("small", CPU_DS) and CPU_DS.name == "cpu.json" and CPU_DS.is_file()
    assert machine_defaults("tiny", "x.json") == ("tiny", Path("x.json"))  # given values are kept
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert machine_defaults(None, None) == ("base", DEFAULT_DS) and DEFAULT_DS.name == "bf16.json"


@pytest.mark.slow
def test_bench_train_prints_progress_while_it_runs(capsys):
    from mt3ds.bench.train import bench_train

    fig = bench_train("tiny", batch=2, tokens=16, steps=2, warmup=1, checkpointing=("off",))
    err = capsys.readouterr().err
    assert "bench train: checkpointing off: building the DeepSpeed engine" in err
    assert "warm-up step 1/1" in err and "timed step 2/2" in err
    assert fig["ckpt_off_step_s"] > 0
