"""`mt3ds bench train`: the DeepSpeed training step as bin/train.py runs it, on synthetic batches.

One process, the real engine from a ds_config (precision, ZeRO stage, optimizer implementation, clipping, the warmup +
cosine scheduler), a model preset, and per step: log-mel on the device, cast to the engine's dtype, forward + loss,
backward, optimizer step. Batches are random audio and random full-length token sequences made once on the device,
so the figures are the engine's, not the loader's (`mt3ds bench loader` measures that). For each activation
checkpointing setting: samples/s, tokens/s (target tokens), seconds per step, peak memory and, on GPUs with a known
peak, MFU (analytic FLOPs of forward + backward / time / peak dense bf16 FLOP/s; recomputation not counted;
mt3ds/model/flops.py).
`--precision fp32|bf16` overrides the ds_config's bf16 switch (how cpu.json's choice was measured).
The defaults suit the machine (machine_defaults): `base` with bf16.json where a GPU is visible, `small` with cpu.json
on a CPU-only one (base with the GPU config there ran over five minutes, one of them compiling fused Adam). Progress
lines go to stderr as the work runs: the engine's build (and a note when DeepSpeed may compile an op first), every
warm-up step and every timed step.
"""
from __future__ import annotations

import gc
import resource
import sys
import time
from pathlib import Path

import torch

from ..config import AudioConfig, FeatureConfig
from ..tokens import vocab

DS_CONFIGS = Path(__file__).resolve().parents[2] / "ds_configs"
DEFAULT_DS = DS_CONFIGS / "bf16.json"  # with a GPU
CPU_DS = DS_CONFIGS / "cpu.json"  # CPU-only: torch AdamW (nothing to compile), the micro-batch a CPU step can take
GPU_PRESET, CPU_PRESET = "base", "small"  # small: the CPU-trainable shape (mt3ds/model/config.py)


def machine_defaults(preset: str | None, ds_config) -> tuple[str, Path]:
    """The preset and ds_config to run when not given: the GPU pair where CUDA is available, else the CPU pair."""
    gpu = torch.cuda.is_available()
    return (preset or (GPU_PRESET if gpu else CPU_PRESET),
            Path(ds_config) if ds_config else (DEFAULT_DS if gpu else CPU_DS))


def _say(message: str) -> None:
    print(f"bench train: {message}", file=sys.stderr, flush=True)


def bench_train(preset: str | None = None, ds_config=None, batch: int | None = None, tokens: int = 1024,
                steps: int = 10, warmup: int = 3, precision: str = "config",
                checkpointing: tuple[str, ...] = ("off", "on")) -> dict:
    import deepspeed

    from ..model.config import ModelConfig
    from ..model.features import LogMel
    from ..model.flops import peak_flops, train_flops
    from ..model.transcriber import Transcriber
    from ..train.config import OptimConfig, TrainConfig, load_ds_config, resolve_ds_config
    from ..train.engine import init_distributed, param_groups
    from ..train.metrics import hardware

    preset, ds_path = machine_defaults(preset, ds_config)
    ds_raw = load_ds_config(ds_path)
    if precision != "config":
        ds_raw = {**ds_raw, "bf16": {"enabled": precision == "bf16"}}
    rank, _, world = init_distributed()
    cfg = TrainConfig(steps=10 ** 6, batch_size=batch, optim=OptimConfig(warmup_steps=1))  # lr settings only
    ds = resolve_ds_config(ds_raw, cfg, world, str(ds_path))
    B = ds["train_micro_batch_size_per_gpu"]
    fig: dict = {"preset": preset, "ds_config": ds_path.name,
                 "precision": "bf16" if ds.get("bf16", {}).get("enabled") else "fp32",
                 "zero_stage": ds.get("zero_optimization", {}).get("stage", 0),
                 "micro_batch": B, "tokens_per_chunk": tokens, "steps_timed": steps}
    for setting in checkpointing:
        model_cfg = ModelConfig.preset(preset, activation_checkpointing=setting == "on")
        torch.manual_seed(0)
        model = Transcriber(model_cfg)
        fig["params"] = model.num_params()
        optim_params = ds.get("optimizer", {}).get("params", {})
        compiles = ds.get("optimizer", {}).get("type", "").lower().startswith("adam") and \
            not optim_params.get("torch_adam", False)
        _say(f"checkpointing {setting}: building the DeepSpeed engine ({preset}, {ds_path.name}, micro-batch {B})"
             + ("; its fused/CPU Adam op may be JIT-compiled first, about a minute once per machine" if compiles
                else ""))
        engine, optimizer, _, _ = deepspeed.initialize(model=model, config=ds,
                                                       model_parameters=param_groups(model, 0.01))
        device = engine.device
        fig["device"] = hardware(device, world)
        fig["optimizer"] = type(getattr(optimizer, "optimizer", optimizer)).__name__
        dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float32
        logmel = LogMel(FeatureConfig(), AudioConfig()).to(device)
        g = torch.Generator(device="cpu").manual_seed(1)
        audio = (0.1 * torch.randn(B, AudioConfig().chunk_samples, generator=g)).to(device)
        toks = torch.randint(vocab.UNK + 1, model_cfg.vocab_size, (B, tokens), generator=g)
        toks[:, -1] = vocab.EOS
        batch_d = {"decoder_input": torch.cat([torch.full((B, 1), vocab.PAD), toks[:, :-1]], 1).to(device),
                   "labels": toks.to(device), "instruments": torch.zeros(B, 129, dtype=torch.bool, device=device)}
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def step():
            features = logmel(audio).to(dtype)
            loss, _ = engine(features, batch=batch_d)
            engine.backward(loss)
            engine.step()

        t_start = time.perf_counter()
        for i in range(warmup):
            step()
            _say(f"checkpointing {setting}: warm-up step {i + 1}/{warmup} ({time.perf_counter() - t_start:.1f} s)")
        sync()
        t0 = time.perf_counter()
        for i in range(steps):
            step()
            if device.type != "cuda" or i + 1 == steps:  # a GPU step is milliseconds: no line each, no sync each
                _say(f"checkpointing {setting}: timed step {i + 1}/{steps} ({time.perf_counter() - t0:.1f} s)")
        sync()
        dt = (time.perf_counter() - t0) / steps
        key = f"ckpt_{setting}"
        fig[f"{key}_step_s"] = dt
        fig[f"{key}_samples_per_s"] = B * world / dt
        fig[f"{key}_tokens_per_s"] = B * tokens * world / dt
        peak = peak_flops(device) if dtype == torch.bfloat16 else None
        if peak:
            fig[f"{key}_mfu"] = train_flops(model_cfg, B, tokens, FeatureConfig().frames) / dt / peak
        if device.type == "cuda":
            fig[f"{key}_peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        else:  # the process's peak resident memory so far (Linux reports KiB)
            fig[f"{key}_peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        del engine, optimizer, model, logmel
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return fig


def bench_train_ranks(ranks: tuple[int, ...], preset: str | None = None, ds_config=None, batch: int | None = None,
                      tokens: int = 1024, steps: int = 10, precision: str = "config",
                      checkpointing: tuple[str, ...] = ("off",)) -> dict:
    """`bench_train` at several data-parallel world sizes: one `deepspeed --num_gpus R` launch per R (gloo ranks on
    a CPU, one GPU each on a GPU node), rank 0's figures collected, and the scaling of samples/s against the
    first R. On a CPU every rank gets cores // R OpenMP threads, so the ranks share the machine rather than
    oversubscribe it and the ratio shows what data parallelism costs or gains on the same cores."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    from ..errors import UserError
    from ..train.engine import _free_port

    preset, ds_config = machine_defaults(preset, ds_config)
    launcher = shutil.which("deepspeed")
    if launcher is None:
        raise UserError("deepspeed: launcher not found on PATH (pip install deepspeed)")
    on_gpu = torch.cuda.is_available()
    cores = os.cpu_count() or 1
    runs = {}
    for r in ranks:
        if on_gpu and r > torch.cuda.device_count():
            raise UserError(f"--ranks {r}: only {torch.cuda.device_count()} GPUs here", exit_code=2)
        args = [launcher, "--num_gpus", str(r), "--master_port", str(_free_port()), "--no_local_rank", "--module",
                "mt3ds", "bench", "train", "--json", "--ranks", str(r), "--preset", preset, "--tokens", str(tokens),
                "--steps", str(steps), "--precision", precision, "--checkpointing", ",".join(checkpointing)]
        if ds_config:
            args += ["--ds-config", str(Path(ds_config).resolve())]
        if batch:
            args += ["--batch", str(batch)]
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                                "MASTER_PORT")}
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
        if not on_gpu:
            env["OMP_NUM_THREADS"] = str(max(1, cores // r))
        _say(f"launching {r} rank(s)")
        # stderr passes through: the ranks' progress lines show while they run
        done = subprocess.run(args, stdout=subprocess.PIPE, text=True, env=env)
        figures = None
        for line in done.stdout.splitlines():
            if line.startswith("{"):
                try:
                    figures = json.loads(line)
                except json.JSONDecodeError:
                    continue
        if done.returncode != 0 or figures is None:
            tail = done.stdout.strip().splitlines()
            raise UserError(f"bench train --ranks {r}: the launch failed (exit {done.returncode}): "
                            f"{tail[-1] if tail else 'see its output above'}")
        runs[str(r)] = figures
    base = ranks[0]
    out = {"ranks": list(ranks), "runs": runs, "cores": cores, "load_average_1min": os.getloadavg()[0]}
    for setting in checkpointing:
        key = f"ckpt_{setting}_samples_per_s"
        first = runs[str(base)][key]
        out[f"ckpt_{setting}_scaling"] = {str(r): runs[str(r)][key] / first for r in ranks}
        out[f"ckpt_{setting}_efficiency"] = {str(r): runs[str(r)][key] / first * base / r for r in ranks}
    return out
