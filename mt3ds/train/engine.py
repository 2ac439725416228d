"""The training loop around the DeepSpeed engine (design.md §7, §10, Step 2; decisions §6).

    shard folders -> train_loader (mixing, augmentation, padded batches, on CPU workers)
                  -> LogMel on the device -> cast to the engine's dtype -> engine(features, batch=...) -> loss
                  -> engine.backward / engine.step (accumulation, clipping, AdamW, warmup + cosine: the ds_config)
                  -> EMA update -> metrics / validation / checkpoint at their cadence

Everything a user can get wrong is checked before the first step: the training config and ds_config (which key,
what was expected), the shard folders and their manifests, a checkpoint or init_from model of another model config.
`train()` runs on every rank; rank 0 alone writes the run folder's files (checkpoints are written by every rank).
"""
from __future__ import annotations

import json
import os
import random
import socket
import time
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..config import AudioConfig, FeatureConfig
from ..errors import UserError
from ..tokens import vocab
from . import checkpoints as ckpt
from .config import TrainConfig, dump_yaml, resolve_ds_config
from .ema import EMA
from .metrics import MetricsLog, hardware, peak_flops, train_flops


# ----------------------------------------------------------------------------------------------------------------
# Distributed setup

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Seconds a collective (or the rendezvous at start) may wait for a missing rank before failing. A rank that dies is
# noticed at once (its sockets close); this bounds the wait for one that hangs, or a node that never starts. The
# longest normal wait between collectives is one rank's share of a validation or a checkpoint save, far below it.
DIST_TIMEOUT_ENV = "MT3DS_DIST_TIMEOUT_S"
DIST_TIMEOUT_S = 600


def dist_timeout_seconds() -> float:
    """The collective timeout: MT3DS_DIST_TIMEOUT_S from the environment, else DIST_TIMEOUT_S."""
    text = os.environ.get(DIST_TIMEOUT_ENV)
    if text is None:
        return float(DIST_TIMEOUT_S)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UserError(f"{DIST_TIMEOUT_ENV}={text}: expected a number of seconds > 0")
    return value


def init_distributed() -> tuple[int, int, int]:
    """Start torch.distributed through DeepSpeed: nccl on GPUs, gloo on CPU. Without the launcher (plain `python
    bin/train.py`) the environment of one process is filled in first. Returns (rank, local rank, world size)."""
    from datetime import timedelta

    timeout = timedelta(seconds=dist_timeout_seconds())
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))  # a fixed port would clash with a run beside this
    os.environ.setdefault("LOCAL_RANK", "0")
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    accel = get_accelerator()
    if accel.device_name() == "cpu":
        # DeepSpeed JIT-compiles a shared-memory all-reduce op on every CPU init (~60 s on a fresh machine). Only
        # its inference_all_reduce (tensor-parallel inference) uses it; training's collectives go through gloo
        # whatever the world size, so it is not built.
        import importlib

        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    if accel.device_name() != "cpu":
        accel.set_device(int(os.environ["LOCAL_RANK"]))
    deepspeed.init_distributed(dist_backend=accel.communication_backend_name(), timeout=timeout)
    import torch.distributed as dist

    return dist.get_rank(), int(os.environ["LOCAL_RANK"]), dist.get_world_size()


def check_same_config(sections: dict, rank: int, world: int) -> None:
    """Refuse ranks started with different settings (another --set on one node, a run_dir that only some nodes
    see): each rank hashes every section, all ranks gather the hashes and all raise the same UserError naming the
    sections that differ from rank 0's, instead of training inconsistent replicas or hanging in a collective."""
    if world == 1:
        return
    import hashlib

    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator

    names = sorted(sections)
    digest = torch.tensor([int.from_bytes(hashlib.sha256(json.dumps(sections[n], sort_keys=True, default=str)
                                                         .encode()).digest()[:7], "big") for n in names],
                          dtype=torch.int64, device=get_accelerator().current_device_name())
    gathered = [torch.empty_like(digest) for _ in range(world)]
    dist.all_gather(gathered, digest)
    rows = [g.cpu().tolist() for g in gathered]
    for r, row in enumerate(rows[1:], start=1):
        differ = [n for n, a, b in zip(names, rows[0], row) if a != b]
        if differ:
            raise UserError(f"rank {r} was started with another {', '.join(differ)} than rank 0 (rank {rank} "
                            f"reporting); start every rank and node with the same --config, --set and --ds_config, "
                            f"with run_dir on storage all of them share")


def lost_rank_message(e: BaseException) -> str | None:
    """One line for a collective that failed because another rank died, hung or never came (torch.distributed's
    DistError, or gloo's RuntimeError from its transport); None for any other error, which stays a traceback."""
    import torch.distributed as dist

    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    gloo = isinstance(e, RuntimeError) and ("gloo/" in text or "Connection closed by peer" in text
                                            or "Connection reset by peer" in text)
    if not (isinstance(e, getattr(dist, "DistError", ())) or gloo):
        return None
    first = first.split("] ", 1)[-1] if first.startswith("[") else first  # gloo's source location first
    first = first.split(". ", 1)[0]  # gloo adds advice and an emoji after the facts
    rank = os.environ.get("RANK", "?")
    return (f"rank {rank} lost contact with another rank ({first[:200]}): a rank died, hung past "
            f"{DIST_TIMEOUT_ENV}={dist_timeout_seconds():g} s or never started (see its log); relaunch the same "
            f"command on every node to resume from the latest checkpoint")


def _barrier():
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _all_reduce(device):
    """A function summing a tensor across ranks in place (through the device for nccl)."""
    import torch.distributed as dist

    def reduce(t: torch.Tensor) -> None:
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return
        moved = t.to(device)
        dist.all_reduce(moved)
        t.copy_(moved.to(t.device))

    return reduce


# ----------------------------------------------------------------------------------------------------------------
# Checks before anything heavy

def check_inputs(cfg: TrainConfig) -> tuple[Path | None, dict | None]:
    """Shard folders, resume target and init_from model, checked on every rank before DeepSpeed starts.
    Returns (checkpoint folder to resume from or None, init_from meta or None)."""
    from ..data.loader import PIPE, read_manifest

    for folder in (*cfg.data.train, *cfg.data.validation):
        if not str(folder).startswith(PIPE) and not Path(folder).exists():
            raise UserError(f"{folder}: shard folder not found")
        read_manifest(folder)  # a pipe: folder (object storage) is checked by reading its manifest through the pipe
    ckpt_dir = Path(cfg.run_dir) / "checkpoints"
    resume = ckpt.latest_checkpoint(ckpt_dir)
    if resume is not None and not cfg.resume:
        raise UserError(f"{cfg.run_dir}: holds checkpoints ({resume.name}) but resume is false; set resume: true to "
                        f"continue that run or choose another run_dir")
    ours = cfg.model.to_dict()
    if resume is not None:
        state = ckpt.read_state(resume)
        diff = ckpt.model_config_differences(state.get("model_config", {}), ours)
        if diff:
            raise UserError(f"{resume}: checkpoint of another model config ({'; '.join(diff)}); use another run_dir")
        if state.get("step", 0) >= cfg.steps:
            raise UserError(f"{resume}: the run already reached step {state['step']} of steps: {cfg.steps}; raise "
                            f"steps to train on (the cosine schedule then stretches to the new end)")
    init_meta = None
    if cfg.init_from and resume is None:
        from ..model.io import read_meta

        init_meta = read_meta(cfg.init_from)
        diff = ckpt.model_config_differences(init_meta["model_config"], ours)
        if diff:
            raise UserError(f"{cfg.init_from}: init_from model of another model config ({'; '.join(diff)})")
    return resume, init_meta


def _check_ds_with_deepspeed(ds: dict, where: str) -> None:
    """Let DeepSpeed parse the resolved config now, so a bad key is one line before the model is built."""
    from deepspeed.runtime.config import DeepSpeedConfig

    try:
        DeepSpeedConfig(ds)
    except Exception as e:  # pydantic ValidationError, AssertionError, ValueError...: all mean a bad ds_config
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        raise UserError(f"{where}: DeepSpeed rejects this config: {' '.join(lines[:3]) or type(e).__name__}") from None


def _check_resumable(saved: dict, ds: dict, world: int, where: Path) -> None:
    """DeepSpeed's checkpoint files are per rank and per precision: refuse what it cannot load, in one line."""
    old_ds = saved.get("ds_config", {})
    then = (saved.get("world_size", world), old_ds.get("zero_optimization", {}).get("stage", 0),
            bool(old_ds.get("bf16", {}).get("enabled", False)))
    now = (world, ds.get("zero_optimization", {}).get("stage", 0), bool(ds.get("bf16", {}).get("enabled", False)))
    if then != now:
        raise UserError(f"{where}: written by {then[0]} ranks, ZeRO stage {then[1]}, bf16 {then[2]}; this run has "
                        f"{now[0]} ranks, ZeRO stage {now[1]}, bf16 {now[2]}; resume as it was, or export it and "
                        f"start a new run with init_from")


# ----------------------------------------------------------------------------------------------------------------
# The run

def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def _batch_to(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and embeddings only; norms' gains and biases (1-D) are not decayed (nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def train(cfg: TrainConfig, ds_config: dict, ds_path: str = "ds_config") -> dict:
    """Run (or resume) training to cfg.steps; returns the final state dict (step, counters, best validation)."""

    resume_dir, init_meta = check_inputs(cfg)  # before DeepSpeed starts: a mistake costs a second, not a minute
    import deepspeed

    from ..data.loader import train_loader, validation_loader
    from ..model.features import LogMel
    from ..model.transcriber import Transcriber
    from .validate import validate

    rank, _, world = init_distributed()
    ds = resolve_ds_config(ds_config, cfg, world, ds_path)
    _check_ds_with_deepspeed(ds, ds_path)
    check_same_config({**cfg.to_dict(), "ds_config": ds, "resume": resume_dir.name if resume_dir else None},
                      rank, world)
    if resume_dir is not None:
        _check_resumable(ckpt.read_state(resume_dir), ds, world, resume_dir)

    run_dir = Path(cfg.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        _atomic_text(run_dir / "config.yaml", dump_yaml(cfg))
        _atomic_text(run_dir / "ds_config.json", json.dumps(ds, indent=2) + "\n")
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark and not cfg.deterministic

    # the model: the same initial weights on every rank, then per-rank dropout streams
    _seed_all(cfg.seed)
    model = Transcriber(cfg.model)
    history = []
    if init_meta is not None:
        from ..model.io import load_weights

        tensors, _ = load_weights(cfg.init_from)
        model.load_state_dict(tensors, strict=True)
        prior = init_meta.get("training", {})
        history = list(prior.get("runs", []))
    _seed_all(cfg.seed + rank)
    engine, _, _, _ = deepspeed.initialize(model=model, config=ds, model_parameters=param_groups(model,
                                                                                              cfg.optim.weight_decay))
    if cfg.compile:
        engine.compile()
    device = engine.device
    dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float32
    module = engine.module
    ema = EMA(module, cfg.ema.decay, cfg.ema.warmup)
    logmel = LogMel(FeatureConfig(), AudioConfig(), spec_augment=cfg.features.spec_augment,
                    time_mask_width=cfg.features.time_mask_width, time_mask_prob=cfg.features.time_mask_prob).to(device)
    reduce = _all_reduce(device)
    hw = hardware(device, world)

    state = {"step": 0, "samples": 0, "wall_seconds": 0.0, "best": None, "history": history,
             "init_from": str(cfg.init_from) if init_meta is not None else None}
    if resume_dir is not None:
        saved = ckpt.load_checkpoint(engine, resume_dir, rank)
        ema.load(ckpt.load_ema_tensors(resume_dir), saved.get("ema_updates", 0))
        state.update({k: saved[k] for k in ("step", "samples", "wall_seconds", "train_seconds", "best", "history",
                                            "init_from") if k in saved})
        # the schedule's position is restored; its shape comes from this config (steps may have been raised)
        engine.lr_scheduler.step(engine.lr_scheduler.last_batch_iteration)
        if engine.global_steps != state["step"]:
            raise UserError(f"{resume_dir}: DeepSpeed restored step {engine.global_steps}, state.json says "
                            f"{state['step']}")
    else:
        # DeepSpeed sets the first step's rate before its scheduler has started (iteration -1, rate 0); one step
        # puts optimizer step k at schedule iteration k - 1, so warmup runs 0 -> lr and the last step ends the cosine.
        engine.lr_scheduler.step()
    state.update(run_dir=str(run_dir), hardware=hw, world_size=world)
    start_step = state["step"]
    if rank == 0:
        where = f"resumed from {resume_dir.name}" if resume_dir else (
            f"initialized from {cfg.init_from}" if init_meta else "new run")
        print(f"mt3ds train: {where}; step {start_step} of {cfg.steps}; {module.num_params():,} parameters; "
              f"{hw}; {'bf16' if dtype == torch.bfloat16 else 'fp32'}; micro-batch "
              f"{ds['train_micro_batch_size_per_gpu']} x accumulation {ds['gradient_accumulation_steps']} x "
              f"{world} ranks = {ds['train_batch_size']} chunks per step", flush=True)

    # data: the streams move on with the step a session starts at, so a resumed run reads new samples
    loader_cfg = cfg.loader_config(ds["train_micro_batch_size_per_gpu"])
    loader = train_loader(list(cfg.data.train), loader_cfg, rank=rank, world_size=world)
    loader.dataset.set_epoch(start_step)
    val_loader = eval_model = None
    if cfg.data.validation:
        val_loader = validation_loader(list(cfg.data.validation), loader_cfg, rank=rank, world_size=world)
        eval_model = Transcriber(cfg.model).to(device)
        eval_logmel = LogMel(FeatureConfig(), AudioConfig()).to(device)

    log = MetricsLog(run_dir, rank, resume_step=start_step)
    peak = peak_flops(device) if dtype == torch.bfloat16 else None
    chunk_s = AudioConfig().chunk_seconds
    session_t0 = time.perf_counter()
    wall_at_start = state["wall_seconds"]
    train_at_start = state.get("train_seconds", 0.0)  # checkpoints from before train_seconds existed: 0
    paused_total = 0.0  # validation and checkpoint time of this session, left out of train_seconds

    def train_seconds() -> float:
        return train_at_start + time.perf_counter() - session_t0 - paused_total

    def run_validation(step: int) -> dict:
        eval_model.load_state_dict(ema.state_dict(module))
        dump = run_dir / "samples" / f"step_{step:08d}"
        out = validate(eval_model, eval_logmel, val_loader, cfg.validation, device=device, rank=rank,
                       world_size=world, chunk_seconds=chunk_s, dump_dir=dump, all_reduce=reduce)
        return {"step": step, "train_min": train_seconds() / 60, **out}

    def save(step: int, val: dict | None) -> None:
        state.update(step=step, wall_seconds=wall_at_start + time.perf_counter() - session_t0,
                     train_seconds=train_seconds())
        full = {**state, "ema_updates": ema.updates, "val_loss": val["token_loss"] if val else None,
                "validation": val, "model_config": cfg.model.to_dict(), "model_preset": cfg.model_preset,
                "train_config": cfg.to_dict(), "ds_config": ds, "code_version": __version__,
                "vocab_version": vocab.VOCAB_VERSION, "audio_version": AudioConfig().version}
        ckpt.save_checkpoint(engine, ckpt_dir, step, full, ema.state_dict(module), rank, _barrier)
        if rank == 0:
            ckpt.prune(ckpt_dir, cfg.checkpoint.keep_last, cfg.checkpoint.keep_best)

    # interval sums on this rank, kept on the device (no host sync per step) and reduced at each metric line:
    # loss, token loss x tokens, correct tokens, tokens, [frame onset loss, frame active loss]
    sums = torch.zeros(6, dtype=torch.float64, device=device)
    micro = samples = skipped = 0
    flops = 0.0
    interval_t0 = time.perf_counter()
    batches = iter(loader)
    engine.train()
    logmel.train()
    step = start_step
    lr = float(engine.get_lr()[0])
    out_of_time = False  # max_train_minutes reached (decided at a metric line, where the ranks already sync)
    while step < cfg.steps and not out_of_time:
        batch = next(batches)
        b = _batch_to(batch, device)
        features = logmel(b["audio"]).to(dtype)  # float32 log-mel -> the dtype of the engine's weights
        lr = float(engine.get_lr()[0])  # the rate this step's update uses
        loss, m = engine(features, batch=b, label_smoothing=cfg.label_smoothing, time_smoothing=cfg.time_smoothing)
        engine.backward(loss)
        engine.step()
        tok = m["tokens"].double()
        zero = torch.zeros((), dtype=torch.float64, device=device)
        sums += torch.stack([m["loss"].double(), m["token_loss"].double() * tok, m["token_acc"].double() * tok, tok,
                             m.get("frame_onset_loss", zero).double(), m.get("frame_active_loss", zero).double()])
        micro, samples, skipped = micro + 1, samples + len(batch["keys"]), skipped + int(batch.get("skipped", 0))
        flops += train_flops(cfg.model, features.shape[0], b["decoder_input"].shape[1], features.shape[1])
        if engine.global_steps == step:
            continue  # inside a gradient accumulation window
        step = engine.global_steps
        state["samples"] += ds["train_batch_size"]  # every rank reads full micro-batches
        ema.update(module)
        if step % cfg.log_every == 0 or step == cfg.steps:
            over = cfg.max_train_minutes is not None and train_seconds() >= cfg.max_train_minutes * 60
            totals = torch.cat([sums.cpu(), torch.tensor([micro, samples, skipped, flops, over], dtype=torch.float64)])
            reduce(totals)
            out_of_time = bool(totals[-1] > 0)
            totals = totals[:-1]
            dt = time.perf_counter() - interval_t0
            loss_sum, tl, ta, tok, onset, active, n_micro, n_samples, n_skipped, n_flops = totals.tolist()
            grad_norm = engine.get_global_grad_norm()
            record = {"kind": "train", "step": step, "lr": lr, "loss": loss_sum / n_micro,
                      "token_loss": tl / max(tok, 1), "token_acc": ta / max(tok, 1),
                      "grad_norm": float(grad_norm) if grad_norm is not None else None,
                      "samples_per_s": n_samples / dt, "tokens_per_s": tok / dt,
                      "step_s": dt / max(n_micro / ds["gradient_accumulation_steps"] / world, 1),
                      "samples": state["samples"], "hours_of_data": state["samples"] * chunk_s / 3600,
                      "wall_min": (wall_at_start + time.perf_counter() - session_t0) / 60,
                      "train_min": train_seconds() / 60, "skipped": int(n_skipped)}
            if cfg.model.aux_frame_loss:
                record["frame_onset_loss"] = onset / n_micro
                record["frame_active_loss"] = active / n_micro
            if peak:
                record["mfu"] = n_flops / dt / (peak * world)
            if device.type == "cuda":
                record["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
            log.write(record)
            sums.zero_()
            micro = samples = skipped = 0
            flops = 0.0
            interval_t0 = time.perf_counter()
        paused = time.perf_counter()  # validation and checkpoints are left out of the throughput figures
        val, is_best = None, False
        last = step == cfg.steps or out_of_time
        if val_loader is not None and (last or (cfg.validation.every and step % cfg.validation.every == 0)):
            val = run_validation(step)
            log.write(val)
            engine.train()
            logmel.train()
            best = state["best"]
            if val["token_loss"] is not None and (best is None or val["token_loss"] < best["val_loss"]):
                state["best"] = {"step": step, "val_loss": val["token_loss"],
                                 "metrics": {k: v for k, v in val.items() if k != "kind"}}
                is_best = True
        if step % cfg.checkpoint.every == 0 or last or (is_best and cfg.checkpoint.keep_best > 0):
            save(step, val)
        interval_t0 += time.perf_counter() - paused
        paused_total += time.perf_counter() - paused
    state.update(step=step, wall_seconds=wall_at_start + time.perf_counter() - session_t0,
                 train_seconds=train_seconds())
    log.close()
    if rank == 0:
        best = state["best"]
        print(f"mt3ds train: done at step {step}; best validation token loss "
              f"{best['val_loss']:.4f} at step {best['step']}" if best else f"mt3ds train: done at step {step}",
              flush=True)
    return {**state, "last_lr": lr}
