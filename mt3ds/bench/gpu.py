"""`mt3ds bench gpu`: the GPU-only figures in one run, printed as one JSON object (sized for under 8 minutes on one
H100/H200; not yet timed on one).

    bf16 training step (DeepSpeed engine, ds_configs/bf16.json) of base and base_v2 with the flash and the math
        attention backend: seconds per step, samples/s, MFU; flash verified by profiling a forward pass and finding
        SDPA's flash kernel (or flash_attn's) among the ops that ran;
    the optimizer DeepSpeed built: FusedAdam (the compiled CUDA op), not the torch fallback;
    ZeRO stage 1 vs 2 peak memory and step time (one GPU partitions nothing, so the figures show each stage's own
        overhead; what a stage saves per GPU at N GPUs is printed beside them: 12 bytes/parameter of fp32 master
        weights and Adam moments divided by N, and for stage 2 the gradients too);
    activation checkpointing off vs on: peak memory and step time;
    KV-cache decoding: greedy tokens/s with and without the cache, and the speed-up;
    the training loader's samples/s (CPU workers) against the samples/s one GPU trains at, and their ratio;
    transcription real-time factor of the bundled model on the GPU.

`--dry-run` runs every part on the CPU at tiny sizes (tiny preset, a few steps, a 4-second recording, ds_configs/
cpu.json): the same code paths, for the test suite and for checking the script before a GPU session.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def _flash_verified(preset: str, device, dry_run: bool) -> dict:
    """Profile one bf16 forward pass with the flash backend forced; list the attention kernels that ran."""
    from torch.profiler import ProfilerActivity, profile

    from ..model import attention as attn
    from ..model.config import ModelConfig
    from ..model.transcriber import Transcriber
    from .model import _batch

    cfg = ModelConfig.preset(preset)
    model = Transcriber(cfg).to(device, torch.bfloat16).eval()
    T, S = (16, 32) if dry_run else (1024, 256)
    features, batch = _batch(cfg, 2, T, S, device, torch.bfloat16)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    attn.force_backend("flash")
    try:
        with torch.no_grad(), profile(activities=activities) as prof:
            model.run(features, batch["decoder_input"], batch.get("instruments"))
    finally:
        attn.force_backend(None)
    names = {e.key for e in prof.key_averages()}
    flash = sorted(n for n in names if "flash" in n.lower())
    other = sorted(n for n in names
                   if "efficient_attention" in n.lower() or n == "aten::_scaled_dot_product_attention_math")
    return {"flash_kernels": flash, "other_attention_kernels": other, "flash_verified": bool(flash)}


def _kv_cache(preset: str, device, dry_run: bool) -> dict:
    from ..model.config import ModelConfig
    from ..model.generate import Search, generate
    from ..model.transcriber import Transcriber

    cfg = ModelConfig.preset(preset)
    model = Transcriber(cfg).to(device, torch.bfloat16 if device.type == "cuda" else torch.float32).eval()
    B, n = (2, 16) if dry_run else (16, 256)
    features = torch.randn(B, 32 if dry_run else 256, cfg.n_mels, device=device,
                           dtype=next(model.parameters()).dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = {}
    for cached in (True, False):
        generate(model, features, search=Search(max_len=4, ignore_eos=True, use_cache=cached))  # warm-up
        sync()
        t0 = time.perf_counter()
        generate(model, features, search=Search(max_len=n, ignore_eos=True, use_cache=cached))
        sync()
        out["cached" if cached else "uncached"] = B * n / (time.perf_counter() - t0)
    return {"preset": preset, "batch": B, "tokens": n, "cached_tok_s": out["cached"],
            "uncached_tok_s": out["uncached"], "speedup": out["cached"] / out["uncached"]}


def _loader_rate(dry_run: bool) -> dict:
    from ..data.loader import LoaderConfig, train_loader
    from .loader import _rate, write_synthetic_shards

    workers = 0 if dry_run else min(8, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_synthetic_shards(Path(tmp), "synthetic", "train", tracks=4 if dry_run else 40,
                                        chunks_per_track=4 if dry_run else 15, samples_per_shard=8 if dry_run else 100)
        cfg = LoaderConfig(batch_size=4 if dry_run else 16, num_workers=workers, prefetch_factor=4, pin_memory=False,
                           shuffle_buffer=16 if dry_run else 200, shuffle_initial=4 if dry_run else 50, augment=True)
        rate = _rate(train_loader([folder], cfg), 16 if dry_run else 3000)
    return {"workers": workers, "augment": True, "samples_per_s": rate}


def bench_gpu(dry_run: bool = False, steps: int | None = None) -> dict:
    """Every figure of the module docstring; dry_run: the CPU path at tiny sizes."""
    from ..errors import UserError
    from ..model import attention as attn
    from ..train.config import load_ds_config
    from ..train.engine import init_distributed
    from .train import bench_train
    from .transcribe import bench_transcribe

    if not dry_run and not torch.cuda.is_available():
        raise UserError("bench gpu: no CUDA GPU here (torch.cuda.is_available() is False); --dry-run runs the same "
                        "code on the CPU at tiny sizes")
    t_start = time.perf_counter()
    device = torch.device("cpu" if dry_run else "cuda")
    init_distributed()
    presets = ("tiny",) if dry_run else ("base", "base_v2")
    ds = REPO / "ds_configs" / ("cpu.json" if dry_run else "bf16.json")
    zero2 = REPO / "ds_configs" / ("cpu.json" if dry_run else "zero2.json")
    kw = dict(batch=2 if dry_run else 16, tokens=32 if dry_run else 1024, steps=steps or (2 if dry_run else 10),
              precision="bf16")
    out: dict = {"device": torch.cuda.get_device_name(0) if not dry_run else "cpu (dry run)",
                 "dry_run": dry_run, "torch": torch.__version__, "micro_batch": kw["batch"],
                 "tokens_per_chunk": kw["tokens"]}

    # bf16 step and MFU per preset and attention backend; checkpointing off and on from the flash runs
    training = {}
    for preset in presets:
        row = {"flash_check": _flash_verified(preset, device, dry_run)}
        for backend in ("flash", "math"):
            attn.force_backend(backend)
            try:
                fig = bench_train(preset, ds, checkpointing=("off", "on") if backend == "flash" else ("off",), **kw)
            finally:
                attn.force_backend(None)
            row[backend] = {k: v for k, v in fig.items() if k.startswith("ckpt_")}
            row["params"], row["optimizer"] = fig["params"], fig["optimizer"]
        row["flash_speedup"] = row["math"]["ckpt_off_step_s"] / row["flash"]["ckpt_off_step_s"]
        row["checkpointing_time_ratio"] = row["flash"]["ckpt_on_step_s"] / row["flash"]["ckpt_off_step_s"]
        mem = "peak_mem_gb" if not dry_run else "peak_rss_gb"
        row["checkpointing_memory_ratio"] = row["flash"][f"ckpt_on_{mem}"] / row["flash"][f"ckpt_off_{mem}"]
        training[preset] = row
    out["training_bf16"] = training
    optimizer = training[presets[0]]["optimizer"]
    out["optimizer"] = {"built": optimizer, "fused_adam_loaded": optimizer == "FusedAdam"}

    # ZeRO stages on one device
    zero = {}
    for stage, path in ((1, ds), (2, zero2)):
        cfg = load_ds_config(path)
        cfg["zero_optimization"] = {**cfg.get("zero_optimization", {}), "stage": stage}
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(cfg, f)
        try:
            fig = bench_train(presets[0], f.name, checkpointing=("off",), **kw)
        finally:
            os.unlink(f.name)
        params = fig["params"]
        zero[f"stage{stage}"] = {k[len("ckpt_off_"):]: v for k, v in fig.items() if k.startswith("ckpt_off_")}
        saved = 12 * params if stage == 1 else 12 * params + 2 * params  # bf16 gradients partitioned too
        zero[f"stage{stage}"]["saved_per_gpu_gb_at_8_gpus"] = saved * (1 - 1 / 8) / 2 ** 30
    out["zero"] = zero

    out["kv_cache"] = _kv_cache(presets[0], device, dry_run)

    loader = _loader_rate(dry_run)
    demand = training[presets[0]]["flash"]["ckpt_off_samples_per_s"]
    out["loader"] = {**loader, "gpu_demand_samples_per_s": demand,
                     "loader_over_demand": loader["samples_per_s"] / demand}

    out["transcribe"] = bench_transcribe(None, seconds=4.0 if dry_run else 60.0, uncached_chunks=1,
                                         device=str(device))
    out["seconds"] = time.perf_counter() - t_start
    return out
