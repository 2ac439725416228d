"""The training loop around the DeepSpeed engine (docs/design.md §6).

    shard folders -> train_loader (mixing, augmentation, padded batches, on CPU workers)
                  -> LogMel on the device -> cast to the engine's dtype -> engine(features, batch=...) -> loss
                  -> engine.backward / engine.step (accumulation, clipping, AdamW, warmup + cosine: the ds_config)
                  -> EMA update -> metrics / validation / checkpoint at their cadence

`train()` in its named steps:
    check_inputs              what a user can get wrong, before DeepSpeed starts: the shard folders and their
                              manifests, the checkpoint to resume, the init_from model. Each file is read once here
                              and what was read travels on in `RunInputs` (a `pipe:` manifest is fetched once).
    build_run                 distributed start, the ds_config resolved and parsed by DeepSpeed, model, engine, EMA,
                              features, loaders, and the typed `RunState` (new, from an init_from model, or resumed).
    train_step                one micro-batch: features, forward, backward, engine step; `MetricSums` by name.
    log_metrics               every log_every steps: the interval's sums reduced across ranks into one record.
    validate_and_checkpoint   at their cadence and at the end; `Clock` leaves this time out of throughput and of
                              the run's training time.
`train()` runs on every rank; rank 0 alone writes the run folder's files (checkpoints are written by every rank).
"""
from __future__ import annotations

import json
import logging
import os
import random
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch

from .. import __version__
from ..config import AudioConfig, FeatureConfig
from ..errors import UserError, first_line
from ..files import write_text_atomic
from ..model.flops import peak_flops, train_flops
from ..tokens import vocab
from . import checkpoints as ckpt
from .config import TrainConfig, dump_yaml, resolve_ds_config
from .ema import EMA
from .metrics import MetricsLog, hardware

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine
    from torch.utils.data import DataLoader

    from ..data.loader import ShardSet
    from ..model.features import LogMel
    from ..model.transcriber import Transcriber


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


# DeepSpeed logs INFO and WARNING lines to stdout on every run (the CPU accelerator fallback, the scheduler read before
# its first step, its config): the lowest level of its lines that are shown, errors always; "info" shows them all.
DEEPSPEED_LOG_ENV = "MT3DS_DEEPSPEED_LOG"
_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _AtLeast(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


def quiet_deepspeed_logs() -> None:
    """Show DeepSpeed's log lines from MT3DS_DEEPSPEED_LOG's level up (default error). A filter on its logger, set
    before deepspeed is imported: deepspeed sets its logger's level when imported and logs during the import."""
    text = os.environ.get(DEEPSPEED_LOG_ENV, "error")
    if text.lower() not in _LOG_LEVELS:
        raise UserError(f"{DEEPSPEED_LOG_ENV}={text}: expected one of {', '.join(_LOG_LEVELS)}")
    logger = logging.getLogger("DeepSpeed")
    for f in [f for f in logger.filters if isinstance(f, _AtLeast)]:
        logger.removeFilter(f)
    logger.addFilter(_AtLeast(_LOG_LEVELS[text.lower()]))


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
    quiet_deepspeed_logs()
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
    first = first_line(e)
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
# Step 1: checks before anything heavy, each file read once

@dataclass
class RunInputs:
    """What `check_inputs` read, passed on so that no file is read twice."""

    train_sets: list[ShardSet]
    """The training folders' manifests, checked (one per folder, in order)."""
    validation_sets: list[ShardSet]
    """The validation folders' manifests, checked."""
    resume_dir: Path | None = None
    """The checkpoint folder to resume from; None: a new run."""
    resume_state: dict | None = None
    """That checkpoint's state.json."""
    init_meta: dict | None = None
    """The metadata of the init_from model (a new run with init_from only)."""
    finished: bool = False
    """The run to resume already reached cfg.steps: nothing to train (the command run again, say)."""


def check_inputs(cfg: TrainConfig) -> RunInputs:
    """Shard folders, resume target and init_from model, checked on every rank before DeepSpeed starts."""
    from ..data.loader import PIPE, read_manifest

    def shard_set(folder: str) -> ShardSet:
        if not str(folder).startswith(PIPE) and not Path(folder).exists():
            raise UserError(f"{folder}: shard folder not found")
        return read_manifest(folder)  # a pipe: folder (object storage) is checked by reading its manifest through it

    inputs = RunInputs([shard_set(f) for f in cfg.data.train], [shard_set(f) for f in cfg.data.validation])
    resume = ckpt.latest_checkpoint(Path(cfg.run_dir) / "checkpoints")
    if resume is not None and not cfg.resume:
        raise UserError(f"{cfg.run_dir}: holds checkpoints ({resume.name}) but resume is false; set resume: true to "
                        f"continue that run or choose another run_dir")
    ours = cfg.model.to_dict()
    if resume is not None:
        state = ckpt.read_state(resume)
        diff = ckpt.model_config_differences(state.get("model_config", {}), ours)
        if diff:
            raise UserError(f"{resume}: checkpoint of another model config ({'; '.join(diff)}); use another run_dir")
        inputs.resume_dir, inputs.resume_state = resume, state
        inputs.finished = state.get("step", 0) >= cfg.steps
    elif cfg.init_from:
        from ..model.io import read_meta

        inputs.init_meta = read_meta(cfg.init_from)
        diff = ckpt.model_config_differences(inputs.init_meta["model_config"], ours)
        if diff and not cfg.init_partial:
            raise UserError(f"{cfg.init_from}: init_from model of another model config ({'; '.join(diff)})")
    return inputs


def _check_ds_with_deepspeed(ds: dict, where: str) -> None:
    """Let DeepSpeed parse the resolved config now, so a bad key is one line before the model is built."""
    from deepspeed.runtime.config import DeepSpeedConfig

    try:
        DeepSpeedConfig(ds)
    except Exception as e:  # pydantic ValidationError, AssertionError, ValueError...: all mean a bad ds_config
        # not first_line(e): pydantic's first line only counts the errors, the next two name the key and the problem
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
# Step 2: the run, built once

# state.json keys a resumed run carries on with; the others (run folder, hardware, world size) are this session's
RESUMED = ("step", "samples", "wall_seconds", "train_seconds", "best", "history", "init_from")


@dataclass
class RunState:
    """What a run carries from step to step and from session to session: every checkpoint's state.json holds it
    (beside the configs and the last validation), and `train()` returns it."""

    step: int = 0
    """Optimizer steps taken."""
    samples: int = 0
    """Chunks trained on, all ranks together."""
    wall_seconds: float = 0.0
    """Wall time of every session, at the last checkpoint (or the end)."""
    train_seconds: float = 0.0
    """Of that, time spent training: validation and checkpoints left out."""
    best: dict | None = None
    """{step, val_loss, metrics} of the lowest validation token loss so far; None before a validation."""
    history: list[dict] = field(default_factory=list)
    """The training records of the runs this one continues (init_from chain), oldest first."""
    init_from: str | None = None
    """The exported model this run started from."""
    run_dir: str = ""
    """The run folder."""
    hardware: str = ""
    """What this session runs on ('1 x cpu (2 threads)')."""
    world_size: int = 1
    """Ranks of this session."""

    @classmethod
    def resumed(cls, saved: dict, **session) -> RunState:
        """The state of a checkpoint's state.json (checkpoints older than train_seconds count it as 0)."""
        return cls(**{k: saved[k] for k in RESUMED if k in saved}, **session)

    def note_validation(self, val: dict) -> bool:
        """Keep `val` as the best if its loss (val_loss: token loss, or the heads' loss without a token loss) is the
        lowest so far; True when it is."""
        if val["val_loss"] is None or (self.best is not None and val["val_loss"] >= self.best["val_loss"]):
            return False
        self.best = {"step": val["step"], "val_loss": val["val_loss"],
                     "metrics": {k: v for k, v in val.items() if k != "kind"}}
        return True

    def to_dict(self) -> dict:
        return asdict(self)


class Clock:
    """Wall and training seconds of the run, summed over its sessions. Validation and checkpoints are paused time:
    left out of training time (equal-budget comparisons) and so of the throughput figures."""

    def __init__(self, wall_before: float = 0.0, train_before: float = 0.0):
        self.t0 = time.perf_counter()
        self.wall_before, self.train_before = wall_before, train_before
        self.paused = 0.0

    def wall_seconds(self) -> float:
        return self.wall_before + time.perf_counter() - self.t0

    def train_seconds(self) -> float:
        return self.train_before + time.perf_counter() - self.t0 - self.paused


@dataclass
class Validation:
    """What validation needs beside the training engine: an fp32 copy of the model for the EMA weights."""

    loader: DataLoader
    """One pass over the validation folders per iteration."""
    model: Transcriber
    """Loaded with the EMA weights before each validation."""
    logmel: LogMel
    """Features without SpecAugment."""


@dataclass
class Run:
    """One training session: configs, the engine and what surrounds it, the state and the clocks."""

    cfg: TrainConfig
    """The training config."""
    ds: dict
    """The resolved ds_config (batch sizes, learning rate and schedule written in)."""
    rank: int
    """This process's rank."""
    world: int
    """Ranks in all."""
    engine: DeepSpeedEngine
    """The DeepSpeed engine around the model."""
    dtype: torch.dtype
    """The engine's weights' dtype, and so the features' (bf16 or fp32)."""
    ema: EMA
    """The fp32 weight average (validation and export)."""
    logmel: LogMel
    """Training features (with SpecAugment when on)."""
    all_reduce: Callable[[torch.Tensor], None]
    """Sums a tensor across ranks in place."""
    batches: Iterator[dict]
    """The endless training batches."""
    validation: Validation | None
    """None: no validation folders."""
    log: MetricsLog
    """metrics.jsonl, stdout and TensorBoard (rank 0)."""
    state: RunState
    """Step, counters, best validation, history."""
    clock: Clock
    """Wall and training time."""
    peak_flops: float | None
    """Peak bf16 FLOP/s of one device, for MFU (None: not a known GPU, or not bf16)."""

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def module(self) -> Transcriber:
        return self.engine.module

    @property
    def ckpt_dir(self) -> Path:
        return Path(self.cfg.run_dir) / "checkpoints"


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def _read_init_weights(path) -> dict[str, torch.Tensor]:
    """The init_from model's tensors (its metadata was read and checked by check_inputs)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise UserError(f"{path}: unreadable weights ({first_line(e)})") from None


def _matching(model: torch.nn.Module, weights: dict, path, rank: int) -> dict:
    """init_partial: the tensors of `weights` whose name and shape match the model's; prints what was left. New note
    heads start from an init model's aux frame head when it has one (model/heads.py from_frame_head)."""
    own = model.state_dict()
    kept = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    if (getattr(model, "note_heads", None) is not None and "note_heads.proj.weight" not in kept
            and "frame_head.weight" in weights):
        from ..model.heads import from_frame_head

        kept["note_heads.proj.weight"], kept["note_heads.proj.bias"] = from_frame_head(
            weights["frame_head.weight"], weights["frame_head.bias"], model.note_heads)
        if rank == 0:
            print(f"mt3ds train: note heads' onset and frame rolls start from {path}'s aux frame head", flush=True)
    fresh = sorted(set(own) - set(kept))
    dropped = sorted(set(weights) - set(kept))
    if rank == 0:
        print(f"mt3ds train: init_from {path}: {len(kept)} tensors loaded; fresh: {', '.join(fresh) or 'none'}; "
              f"not used: {', '.join(dropped) or 'none'}", flush=True)
    return kept


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and embeddings only; norms' gains and biases (1-D) are not decayed (nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def build_run(cfg: TrainConfig, ds_config: dict, ds_path: str, inputs: RunInputs) -> Run:
    """Start the distributed run and build everything a session holds; a resumed run gets its engine, EMA, RNG and
    state back. The order of what draws from the RNGs is fixed: a resumed run draws what the killed one would have."""
    import deepspeed

    from ..data.loader import train_loader, validation_loader
    from ..model.features import LogMel
    from ..model.transcriber import Transcriber

    rank, _, world = init_distributed()
    ds = resolve_ds_config(ds_config, cfg, world, ds_path)
    _check_ds_with_deepspeed(ds, ds_path)
    resume_dir = inputs.resume_dir
    check_same_config({**cfg.to_dict(), "ds_config": ds, "resume": resume_dir.name if resume_dir else None},
                      rank, world)
    if resume_dir is not None:
        _check_resumable(inputs.resume_state, ds, world, resume_dir)
    run_dir = Path(cfg.run_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", dump_yaml(cfg))
        write_text_atomic(run_dir / "ds_config.json", json.dumps(ds, indent=2) + "\n")
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark and not cfg.deterministic

    # the model: the same initial weights on every rank, then per-rank dropout streams
    _seed_all(cfg.seed)
    model = Transcriber(cfg.model)
    if inputs.init_meta is not None:
        weights = _read_init_weights(cfg.init_from)
        if cfg.init_partial:
            weights = _matching(model, weights, cfg.init_from, rank)
        model.load_state_dict(weights, strict=not cfg.init_partial)
    _seed_all(cfg.seed + rank)
    engine, _, _, _ = deepspeed.initialize(model=model, config=ds, model_parameters=param_groups(model,
                                                                                              cfg.optim.weight_decay))
    if cfg.compile:
        engine.compile()
    device = engine.device
    dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float32
    ema = EMA(engine.module, cfg.ema.decay, cfg.ema.warmup)
    aug = cfg.spec_augment
    logmel = LogMel(FeatureConfig(), AudioConfig(), spec_augment=aug.enabled, time_mask_width=aug.time_mask_width,
                    time_mask_prob=aug.time_mask_prob).to(device)
    session = {"run_dir": str(run_dir), "hardware": hardware(device, world), "world_size": world}

    if resume_dir is not None:
        ckpt.load_checkpoint(engine, resume_dir, rank)
        ema.load(ckpt.load_ema_tensors(resume_dir), inputs.resume_state.get("ema_updates", 0))
        state = RunState.resumed(inputs.resume_state, **session)
        # the schedule's position is restored; its shape comes from this config (steps may have been raised)
        engine.lr_scheduler.step(engine.lr_scheduler.last_batch_iteration)
        if engine.global_steps != state.step:
            raise UserError(f"{resume_dir}: DeepSpeed restored step {engine.global_steps}, state.json says "
                            f"{state.step}")
    else:
        # DeepSpeed sets the first step's rate before its scheduler has started (iteration -1, rate 0); one step
        # puts optimizer step k at schedule iteration k - 1, so warmup runs 0 -> lr and the last step ends the cosine.
        engine.lr_scheduler.step()
        prior = inputs.init_meta.get("training", {}) if inputs.init_meta is not None else {}
        state = RunState(history=list(prior.get("runs", [])),
                         init_from=str(cfg.init_from) if inputs.init_meta is not None else None, **session)
    if rank == 0:
        where = f"resumed from {resume_dir.name}" if resume_dir else (
            f"initialized from {cfg.init_from}" if inputs.init_meta is not None else "new run")
        print(f"mt3ds train: {where}; step {state.step} of {cfg.steps}; {engine.module.num_params():,} parameters; "
              f"{state.hardware}; {'bf16' if dtype == torch.bfloat16 else 'fp32'}; micro-batch "
              f"{ds['train_micro_batch_size_per_gpu']} x accumulation {ds['gradient_accumulation_steps']} x "
              f"{world} ranks = {ds['train_batch_size']} chunks per step", flush=True)

    # data: the streams move on with the step a session starts at, so a resumed run reads new samples
    loader_cfg = cfg.loader_config(ds["train_micro_batch_size_per_gpu"])
    loader = train_loader(inputs.train_sets, loader_cfg, rank=rank, world_size=world)
    loader.dataset.set_epoch(state.step)
    validation = None
    if inputs.validation_sets:
        validation = Validation(validation_loader(inputs.validation_sets, loader_cfg, rank=rank, world_size=world),
                                Transcriber(cfg.model).to(device), LogMel(FeatureConfig(), AudioConfig()).to(device))
    return Run(cfg=cfg, ds=ds, rank=rank, world=world, engine=engine, dtype=dtype, ema=ema, logmel=logmel,
               all_reduce=_all_reduce(device), batches=iter(loader), validation=validation,
               log=MetricsLog(run_dir, rank, resume_step=state.step), state=state,
               clock=Clock(state.wall_seconds, state.train_seconds),
               peak_flops=peak_flops(device) if dtype == torch.bfloat16 else None)


# ----------------------------------------------------------------------------------------------------------------
# Step 3: one micro-batch

class MetricSums:
    """Sums over the micro-batches since the last metric line on this rank, by name. The model's sums stay on the
    device (no host sync per step); all are reduced across ranks at the metric line."""

    ON_DEVICE = ("loss", "token_loss", "correct_tokens", "tokens", "frame_onset_loss", "frame_active_loss",
                 "heads_loss")
    """Loss per micro-batch, token loss x tokens, correct tokens, tokens, aux frame losses and the note heads' loss
    per micro-batch."""
    ON_HOST = ("micro_batches", "samples", "skipped", "flops")
    """Micro-batches, chunks, unreadable samples skipped by the loader, analytic training FLOPs."""

    def __init__(self, device: torch.device, clock: Clock):
        self.device, self.clock = device, clock
        self.zero = torch.zeros((), dtype=torch.float64, device=device)
        self.model_sums = torch.zeros(len(self.ON_DEVICE), dtype=torch.float64, device=device)
        self.restart()

    def restart(self) -> None:
        """Zero the sums; the interval's training time starts now."""
        self.model_sums.zero_()
        self.host = dict.fromkeys(self.ON_HOST, 0.0)
        self.start = self.clock.train_seconds()

    def add(self, m: dict, samples: int, skipped: int, flops: float) -> None:
        """One micro-batch: the model's metrics `m`, its chunks, the loader's skips, its FLOPs."""
        tokens = m.get("tokens", self.zero).double()  # none with token_weight 0
        named = {"loss": m["loss"].double(), "token_loss": m.get("token_loss", self.zero).double() * tokens,
                 "correct_tokens": m.get("token_acc", self.zero).double() * tokens, "tokens": tokens,
                 "frame_onset_loss": m.get("frame_onset_loss", self.zero).double(),
                 "frame_active_loss": m.get("frame_active_loss", self.zero).double(),
                 "heads_loss": m.get("heads_loss", self.zero).double()}
        self.model_sums += torch.stack([named[k] for k in self.ON_DEVICE])
        for k, v in (("micro_batches", 1), ("samples", samples), ("skipped", skipped), ("flops", flops)):
            self.host[k] += v

    def reduce(self, all_reduce, stop: bool) -> tuple[dict[str, float], bool, float]:
        """(every rank's totals by name, whether any rank asked to stop, seconds of training in the interval)."""
        flat = torch.cat([self.model_sums.cpu(), torch.tensor([*(self.host[k] for k in self.ON_HOST), stop],
                                                              dtype=torch.float64)])
        all_reduce(flat)
        totals = dict(zip(self.ON_DEVICE + self.ON_HOST + ("stop",), flat.tolist()))
        return totals, totals.pop("stop") > 0, self.clock.train_seconds() - self.start


def _batch_to(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def train_step(run: Run, batch: dict, sums: MetricSums) -> float:
    """One micro-batch: log-mel on the device, forward, backward, engine step (an optimizer step at the end of an
    accumulation window). Returns the learning rate the step used."""
    cfg = run.cfg
    b = _batch_to(batch, run.device)
    features = run.logmel(b["audio"]).to(run.dtype)  # float32 log-mel -> the dtype of the engine's weights
    lr = float(run.engine.get_lr()[0])
    loss, m = run.engine(features, batch=b, label_smoothing=cfg.label_smoothing, time_smoothing=cfg.time_smoothing)
    run.engine.backward(loss)
    run.engine.step()
    sums.add(m, samples=len(batch["keys"]), skipped=int(batch.get("skipped", 0)),
             flops=train_flops(cfg.model, features.shape[0], b["decoder_input"].shape[1], features.shape[1]))
    return lr


# ----------------------------------------------------------------------------------------------------------------
# Step 4: the metric line

def log_metrics(run: Run, sums: MetricSums, lr: float) -> bool:
    """Write the interval's record (every rank takes part: the sums are reduced); returns True when the run's time
    budget is spent on any rank, decided here where the ranks already synchronize."""
    cfg, state, world = run.cfg, run.state, run.world
    over = cfg.max_train_minutes is not None and run.clock.train_seconds() >= cfg.max_train_minutes * 60
    t, out_of_time, dt = sums.reduce(run.all_reduce, over)
    micro, tokens = t["micro_batches"], t["tokens"]
    grad_norm = run.engine.get_global_grad_norm()
    record = {"kind": "train", "step": state.step, "lr": lr, "loss": t["loss"] / micro,
              "token_loss": t["token_loss"] / max(tokens, 1), "token_acc": t["correct_tokens"] / max(tokens, 1),
              "grad_norm": float(grad_norm) if grad_norm is not None else None,
              "samples_per_s": t["samples"] / dt, "tokens_per_s": tokens / dt,
              "step_s": dt / max(micro / run.ds["gradient_accumulation_steps"] / world, 1),
              "samples": state.samples, "hours_of_data": state.samples * AudioConfig().chunk_seconds / 3600,
              "wall_min": run.clock.wall_seconds() / 60, "train_min": run.clock.train_seconds() / 60,
              "skipped": int(t["skipped"])}
    if cfg.model.aux_frame_loss:
        record["frame_onset_loss"] = t["frame_onset_loss"] / micro
        record["frame_active_loss"] = t["frame_active_loss"] / micro
    if cfg.model.note_heads:
        record["heads_loss"] = t["heads_loss"] / micro
    if run.peak_flops:
        record["mfu"] = t["flops"] / dt / (run.peak_flops * world)
    if run.device.type == "cuda":
        record["peak_mem_gb"] = torch.cuda.max_memory_allocated(run.device) / 2 ** 30
    run.log.write(record)
    sums.restart()
    return out_of_time


# ----------------------------------------------------------------------------------------------------------------
# Step 5: validation and checkpoints

def run_validation(run: Run) -> dict:
    """Validate the EMA weights (every rank takes part); the validation record."""
    from .validate import validate

    v, step = run.validation, run.state.step
    v.model.load_state_dict(run.ema.state_dict(run.module))
    out = validate(v.model, v.logmel, v.loader, run.cfg.validation, device=run.device, rank=run.rank,
                   world_size=run.world, chunk_seconds=AudioConfig().chunk_seconds,
                   dump_dir=Path(run.cfg.run_dir) / "samples" / f"step_{step:08d}", all_reduce=run.all_reduce)
    return {"step": step, "train_min": run.clock.train_seconds() / 60, **out}


def save(run: Run, val: dict | None) -> None:
    """Checkpoint the run at its step (every rank takes part), then apply the retention rule."""
    cfg, state = run.cfg, run.state
    state.wall_seconds, state.train_seconds = run.clock.wall_seconds(), run.clock.train_seconds()
    full = {**state.to_dict(), "ema_updates": run.ema.updates, "val_loss": val["val_loss"] if val else None,
            "validation": val, "model_config": cfg.model.to_dict(), "model_preset": cfg.model_preset,
            "train_config": cfg.to_dict(), "ds_config": run.ds, "code_version": __version__,
            "vocab_version": vocab.VOCAB_VERSION, "audio_version": AudioConfig().version}
    ckpt.save_checkpoint(run.engine, run.ckpt_dir, state.step, full, run.ema.state_dict(run.module), run.rank,
                         _barrier)
    if run.rank == 0:
        ckpt.prune(run.ckpt_dir, cfg.checkpoint.keep_last, cfg.checkpoint.keep_best)


def validate_and_checkpoint(run: Run, last: bool) -> None:
    """Validate at the validation cadence, checkpoint at the checkpoint cadence, both at the end (`last`); a new
    best validation is checkpointed when best checkpoints are kept."""
    cfg, step = run.cfg, run.state.step
    val, is_best = None, False
    if run.validation is not None and (last or (cfg.validation.every and step % cfg.validation.every == 0)):
        val = run_validation(run)
        run.log.write(val)
        run.engine.train()
        run.logmel.train()
        is_best = run.state.note_validation(val)
    if step % cfg.checkpoint.every == 0 or last or (is_best and cfg.checkpoint.keep_best > 0):
        save(run, val)


# ----------------------------------------------------------------------------------------------------------------
# The loop

def train(cfg: TrainConfig, ds_config: dict, ds_path: str = "ds_config") -> dict:
    """Run (or resume) training to cfg.steps; returns the final RunState as a dict, with the last learning rate."""
    inputs = check_inputs(cfg)  # before DeepSpeed starts: a mistake costs a second, not a minute
    if inputs.finished:  # the same command again succeeds without training, as a re-run of shard or synth does
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"mt3ds train: {inputs.resume_dir} already reached step {inputs.resume_state['step']} of steps: "
                  f"{cfg.steps}; nothing to train (raise steps to train on: the cosine schedule then stretches to "
                  f"the new end)", flush=True)
        return {**inputs.resume_state, "last_lr": None}
    run = build_run(cfg, ds_config, ds_path, inputs)
    state, clock = run.state, run.clock
    sums = MetricSums(run.device, clock)
    run.engine.train()
    run.logmel.train()
    lr = float(run.engine.get_lr()[0])
    out_of_time = False  # max_train_minutes reached (decided at a metric line, where the ranks already sync)
    while state.step < cfg.steps and not out_of_time:
        lr = train_step(run, next(run.batches), sums)
        if run.engine.global_steps == state.step:
            continue  # inside a gradient accumulation window
        state.step = run.engine.global_steps
        state.samples += run.ds["train_batch_size"]  # every rank reads full micro-batches
        run.ema.update(run.module)
        if state.step % cfg.log_every == 0 or state.step == cfg.steps:
            out_of_time = log_metrics(run, sums, lr)
        paused = time.perf_counter()  # validation and checkpoints are left out of the throughput figures
        validate_and_checkpoint(run, last=state.step == cfg.steps or out_of_time)
        clock.paused += time.perf_counter() - paused
    state.wall_seconds, state.train_seconds = clock.wall_seconds(), clock.train_seconds()
    run.log.close()
    if run.rank == 0:
        best = state.best
        print(f"mt3ds train: done at step {state.step}; best validation loss "
              f"{best['val_loss']:.4f} at step {best['step']}" if best else f"mt3ds train: done at step {state.step}",
              flush=True)
    return {**state.to_dict(), "last_lr": lr}
