"""TrainConfig: what a training run learns and how often it reports (the YAML given to bin/train.py --config).

The split of responsibilities between the two files a run takes:
    ds_config (JSON, DeepSpeed's own format)  how to run: precision, ZeRO stage, optimizer implementation, gradient
                                               clipping, micro-batch per GPU, gradient accumulation;
    training config (YAML, this file)          what to learn: model preset and switches, shard folders and mixing,
                                               learning rate and schedule, steps, EMA, label smoothing, validation
                                               and checkpoint cadence, run folder.
The trainer writes the YAML's learning-rate values into the ds_config's optimizer and scheduler `params`
(`resolve_ds_config`); a ds_config that sets them itself is refused, so each number has one home.
Defaults are Step 1's (docs/design.md §6.2) plus the Step 2 EMA (§6.5); every one can be changed in the YAML.
"""
from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path

from ..data.loader_config import AugmentConfig, LoaderConfig
from ..errors import UserError, first_line
from ..model.config import PRESETS, ModelConfig


# ----------------------------------------------------------------------------------------------------------------
# Sections of the YAML: each checks its own values; a message names the field, and the YAML reader adds the section
# ("lr must be > 0" -> "PATH: optim.lr must be > 0").

def _require(*checks: tuple[bool, str]) -> None:
    """Raise ValueError with the message of the first check that fails."""
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


# data.loader keys a training config must not set, and where each comes from instead
LOADER_KEYS_FROM_ELSEWHERE = {"batch_size": "the ds_config's train_micro_batch_size_per_gpu (or batch_size at the "
                                            "top level of this file)",
                              "time_encoding": "model.time_encoding", "aux_frame_loss": "model.aux_frame_loss",
                              "note_heads": "model.note_heads",
                              "seed": "seed at the top level of this file"}


@dataclass(frozen=True)
class DataConfig:
    """Shard folders (each one dataset split with its manifest.json) and loader settings."""

    train: tuple[str, ...] = ()
    """Training shard folders, one per dataset; mixed with weights n_d^mix_alpha (loader.mix_alpha). A folder is a
    local path or a WebDataset pipe: command with {} for the file name ('pipe:aws s3 cp s3://b/maestro/train/{} -')."""
    validation: tuple[str, ...] = ()
    """Validation shard folders; empty: no validation (and no keep_best)."""
    loader: dict = field(default_factory=dict)
    """LoaderConfig fields (num_workers, mix_alpha, augment, augmentation, shuffle_buffer, ...). batch_size comes
    from the ds_config; time_encoding, aux_frame_loss and note_heads from the model."""

    def __post_init__(self):
        known = {f.name for f in fields(LoaderConfig)}
        for key in self.loader:
            _require((key not in LOADER_KEYS_FROM_ELSEWHERE,
                      f"loader.{key}: set by {LOADER_KEYS_FROM_ELSEWHERE.get(key)}, not here"),
                     (key in known, f"loader.{key}: unknown key; expected one of: "
                                    f"{', '.join(sorted(known - set(LOADER_KEYS_FROM_ELSEWHERE)))}"))
        try:
            LoaderConfig.from_dict({**self.loader, "batch_size": 1})
        except (TypeError, ValueError) as e:
            raise ValueError(f"loader: {first_line(e)}") from None


@dataclass(frozen=True)
class SpecAugmentConfig:
    """SpecAugment time masks on the log-mel features in training (docs/design.md §2.5). YAML key `spec_augment`;
    `features: {spec_augment: B, time_mask_width: W, time_mask_prob: P}`, its name before, is still read."""

    enabled: bool = False
    """Mask a random span of frames per training chunk."""
    time_mask_width: int = 48
    """Widest mask, in frames."""
    time_mask_prob: float = 0.5
    """Probability that a chunk gets a mask."""

    def __post_init__(self):
        _require((self.time_mask_width >= 0, "time_mask_width must be >= 0"),
                 (0 <= self.time_mask_prob <= 1, "time_mask_prob must be in [0, 1]"))


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and its warmup + cosine schedule (docs/design.md §6.2; base_v2 uses Step 2's values, §6.3)."""

    lr: float = 5e-4
    """Peak learning rate, reached at the end of warmup."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    eps: float = 1e-8
    """Adam epsilon."""
    weight_decay: float = 0.01
    """Decoupled (AdamW) weight decay."""
    warmup_steps: int = 4000
    """Optimizer steps of linear warmup from 0 to lr."""
    min_lr_ratio: float = 0.1
    """The cosine decays to lr * min_lr_ratio at the last step."""

    def __post_init__(self):
        _require((self.lr > 0, "lr must be > 0"),
                 (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas must be two numbers in [0, 1)"),
                 (self.eps > 0, "eps must be > 0"),
                 (self.weight_decay >= 0, "weight_decay must be >= 0"),
                 (self.warmup_steps >= 1, "warmup_steps must be >= 1"),
                 (0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio must be in [0, 1]"))


@dataclass(frozen=True)
class EmaConfig:
    """Exponential moving average of the weights, used for validation and export (docs/design.md §6.5)."""

    decay: float = 0.999
    """Per optimizer step; 0 disables the average (the raw weights are validated and exported)."""
    warmup: bool = True
    """Use min(decay, (1 + n) / (10 + n)) at update n, so early averages are not dominated by the random init."""

    def __post_init__(self):
        _require((0.0 <= self.decay < 1.0, "decay must be in [0, 1)"))


@dataclass(frozen=True)
class ValidationConfig:
    """Validation every N steps on the validation folders, with the EMA weights (docs/design.md §6.6)."""

    every: int = 2000
    """Optimizer steps between validations (0: only at the end)."""
    items: int = 256
    """Chunks scored with teacher forcing (token loss and accuracy) per validation, across all ranks."""
    decode_items: int = 16
    """Of those, chunks decoded for real (generate, decode_tokens) and scored with mir_eval (note F1)."""
    decode_max_len: int | None = None
    """Longest generated sequence; None: the model's max_tokens."""
    beam_size: int = 1
    """1: greedy decoding; more: beam search."""
    dump_midi: int = 8
    """Decoded chunks written as MIDI (prediction and reference) under run_dir/samples/step_N/."""

    def __post_init__(self):
        _require((self.every >= 0, "every must be >= 0"),
                 (self.items >= 1, "items must be >= 1"),
                 (0 <= self.decode_items <= self.items, "decode_items must be in 0..items"),
                 (self.decode_max_len is None or self.decode_max_len >= 1, "decode_max_len must be >= 1"),
                 (self.beam_size >= 1, "beam_size must be >= 1"),
                 (0 <= self.dump_midi <= self.decode_items, "dump_midi must be in 0..decode_items"))


@dataclass(frozen=True)
class CheckpointConfig:
    """Resumable DeepSpeed checkpoints under run_dir/checkpoints (docs/design.md §6.7)."""

    every: int = 5000
    """Optimizer steps between checkpoints (and always one at the end)."""
    keep_last: int = 3
    """Most recent checkpoints kept."""
    keep_best: int = 1
    """Checkpoints with the lowest validation token loss kept (a new best is checkpointed when it is found)."""

    def __post_init__(self):
        _require((self.every >= 1, "every must be >= 1"),
                 (self.keep_last >= 1, "keep_last must be >= 1"),
                 (self.keep_best >= 0, "keep_best must be >= 0"))


@dataclass(frozen=True)
class TrainConfig:
    """One training run: model, data, optimization, cadence and where it all goes."""

    run_dir: str = "runs/default"
    """Folder of the run: config, metrics.jsonl, checkpoints/, samples/. Relative paths are from the working dir."""
    model_preset: str = "small"
    """Name of the ModelConfig preset the model section started from (tiny, small, base, base_v2)."""
    model: ModelConfig = field(default_factory=lambda: PRESETS["small"])
    """The model: `model: {preset: small, time_encoding: absolute, ...}` in the YAML."""
    data: DataConfig = field(default_factory=DataConfig)
    """Shard folders and loader settings."""
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    """SpecAugment time masks in training."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Learning rate, Adam settings, warmup and cosine floor."""
    steps: int = 200_000
    """Optimizer steps in the whole run (the cosine schedule ends here)."""
    max_train_minutes: float | None = None
    """Stop early (validate and checkpoint first) once the run's training time reaches this many minutes, summed over
    resumes, validation and checkpoints left out: equal-budget comparisons. Checked at each metric line."""
    batch_size: int | None = None
    """Chunks per micro-batch per rank; None: the ds_config's train_micro_batch_size_per_gpu."""
    grad_accum: int | None = None
    """Micro-batches per optimizer step; None: the ds_config's gradient_accumulation_steps (default 1)."""
    label_smoothing: float = 0.0
    """Token cross-entropy label smoothing (0 in Step 1, 0.1 in Step 2)."""
    time_smoothing: float = 0.0
    """Sigma, in 10 ms steps, of a Gaussian soft target over neighbouring shift values (0: exact targets)."""
    ema: EmaConfig = field(default_factory=EmaConfig)
    """Weight averaging for validation and export."""
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    """Validation cadence and size."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoint cadence and retention."""
    log_every: int = 100
    """Optimizer steps between metric lines (stdout, metrics.jsonl, TensorBoard)."""
    seed: int = 42
    """Seeds the model init, dropout (seed + rank) and the data streams."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms(True) (slower; some CUDA kernels then raise)."""
    cudnn_benchmark: bool = True
    """Let cuDNN pick the fastest kernels (CUDA only)."""
    compile: bool = False
    """torch.compile the model through DeepSpeed (engine.compile()); GPU training only."""
    init_from: str | None = None
    """An exported model.safetensors whose weights start this run (same model config); training history adds up."""
    init_partial: bool = False
    """With init_from: the model config may differ (new heads, another front end or conditioning); weights whose name
    and shape match are loaded, the others start fresh, and both lists are printed."""
    resume: bool = True
    """Resume from run_dir's latest checkpoint when there is one; false refuses a run_dir that has checkpoints."""

    def __post_init__(self):
        # the sections checked themselves when they were made; these are the top-level keys
        _require((self.model_preset in PRESETS, f"model_preset must be one of {', '.join(PRESETS)}"),
                 (self.steps >= 1, "steps must be >= 1"),
                 (self.max_train_minutes is None or self.max_train_minutes > 0,
                  "max_train_minutes must be > 0 (or null)"),
                 (self.batch_size is None or self.batch_size >= 1, "batch_size must be >= 1"),
                 (self.grad_accum is None or self.grad_accum >= 1, "grad_accum must be >= 1"),
                 (0.0 <= self.label_smoothing < 1.0, "label_smoothing must be in [0, 1)"),
                 (0.0 <= self.time_smoothing <= 50.0, "time_smoothing must be in [0, 50] steps"),
                 (self.log_every >= 1, "log_every must be >= 1"))

    def to_dict(self) -> dict:
        """Plain dict (YAML-ready): the model section is written as preset + every field."""
        d = asdict(self)
        d["model"] = {"preset": d.pop("model_preset"), **d["model"]}
        return _plain(d)

    def loader_config(self, batch_size: int) -> LoaderConfig:
        """The LoaderConfig of this run (batch size from the resolved ds_config)."""
        return LoaderConfig.from_dict({**self.data.loader, "batch_size": batch_size, "seed": self.seed,
                                       "time_encoding": self.model.time_encoding,
                                       "aux_frame_loss": self.model.aux_frame_loss,
                                       "note_heads": self.model.note_heads})


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


# ----------------------------------------------------------------------------------------------------------------
# Loading the YAML: keys and value types are checked here (the message names the file and the dotted key); values
# are checked by the dataclasses above.

def load_train_config(path, overrides: dict | None = None) -> TrainConfig:
    """Read a training YAML (yaml.safe_load), apply dotted overrides ({"steps": 10, "optim.lr": 1e-3}), check
    every key and value. A mistake raises UserError("PATH: KEY: what was expected")."""
    import yaml

    name = str(path) if path is not None else "<defaults>"
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{p}: training config not found")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{p}: unreadable ({e})") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise UserError(f"{p}: not valid YAML{where} ({getattr(e, 'problem', None) or e})") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise UserError(f"{p}: expected a mapping of keys at the top level, got {type(data).__name__}")
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value, name)
    return train_config_from_dict(data, name)


def parse_override(text: str) -> tuple[str, object]:
    """'optim.lr=1e-3' -> ('optim.lr', 0.001); the value is read as YAML (numbers, booleans, lists, null)."""
    import yaml

    if "=" not in text:
        raise UserError(f"--set {text}: expected KEY=VALUE (e.g. --set steps=100)")
    key, value = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        return key.strip(), value


def _set_dotted(data: dict, key: str, value, name: str) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"{name}: {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def train_config_from_dict(data: dict, name: str = "<config>") -> TrainConfig:
    """Build and check a TrainConfig from a plain dict (the parsed YAML)."""
    data = dict(data)
    model = data.pop("model", {}) or {}
    if not isinstance(model, dict):
        raise UserError(f"{name}: model: expected a mapping (preset: NAME plus ModelConfig fields)")
    model = dict(model)
    preset = model.pop("preset", "small")
    if preset not in PRESETS:
        raise UserError(f"{name}: model.preset: expected one of {', '.join(PRESETS)}, got {preset!r}")
    model_fields = {f.name for f in fields(ModelConfig)}
    for key in model:
        if key not in model_fields:
            raise UserError(f"{name}: model.{key}: unknown key; expected preset or one of: {', '.join(model_fields)}")
    try:
        model_cfg = replace(PRESETS[preset], **_values(ModelConfig, model, "model.", name))
    except ValueError as e:
        raise UserError(f"{name}: model: {e}") from None
    if "model_preset" in data:
        raise UserError(f"{name}: model_preset: write it as model.preset")
    if "features" in data:
        if "spec_augment" in data:
            raise UserError(f"{name}: features: the old name of spec_augment; give only spec_augment")
        data["spec_augment"] = _old_features_section(data.pop("features"), name)
    if isinstance(data.get("data"), dict) and isinstance(data["data"].get("loader"), dict):
        data["data"] = {**data["data"], "loader": _loader_values(data["data"]["loader"], name)}
    cfg = _build(TrainConfig, data, "", name, {"model": model_cfg, "model_preset": preset})
    if not cfg.data.train:
        raise UserError(f"{name}: data.train: expected a list of at least one training shard folder")
    return cfg


def _old_features_section(section, name: str) -> dict:
    """`features: {spec_augment: B, time_mask_width: W, time_mask_prob: P}` (the section's old name) -> the keys
    of the spec_augment section."""
    section = {} if section is None else section
    if not isinstance(section, dict):
        raise UserError(f"{name}: features: expected a mapping, got {section!r}")
    new_names = {"spec_augment": "enabled", "time_mask_width": "time_mask_width", "time_mask_prob": "time_mask_prob"}
    for key in section:
        if key not in new_names:
            raise UserError(f"{name}: features.{key}: unknown key; expected one of: {', '.join(new_names)}")
    return {new_names[k]: v for k, v in section.items()}


def _loader_values(loader: dict, name: str) -> dict:
    """data.loader's values in their LoaderConfig types (augmentation as a dict of AugmentConfig values). Keys that
    are not LoaderConfig's are left for DataConfig to refuse, with the keys it takes."""
    hints = typing.get_type_hints(LoaderConfig)
    out = {}
    for key, value in loader.items():
        if key == "augmentation":
            out[key] = _values(AugmentConfig, value, "data.loader.augmentation.", name)
        elif key in hints:
            out[key] = _convert(value, hints[key], f"data.loader.{key}", name)
        else:
            out[key] = value
    return out


def _values(cls, data, prefix: str, name: str, given: dict | None = None) -> dict:
    """A mapping's values checked against the fields of dataclass `cls` and converted to their types (a section of
    another dataclass becomes that dataclass). Messages name the dotted key."""
    where = prefix.rstrip(".") or "top level"
    if not isinstance(data, dict):
        raise UserError(f"{name}: {where}: expected a mapping, got {type(data).__name__}")
    given = given or {}
    known = {f.name for f in fields(cls)}
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in data.items():
        if key not in known or key in given:
            allowed = [f.name for f in fields(cls) if f.name not in given or f.name == "model"]
            raise UserError(f"{name}: {prefix}{key}: unknown key; expected one of: {', '.join(allowed)}")
        hint = hints[key]
        if is_dataclass(hint):
            out[key] = _build(hint, value if value is not None else {}, f"{prefix}{key}.", name)
        else:
            out[key] = _convert(value, hint, prefix + key, name)
    return out


def _build(cls, data, prefix: str, name: str, given: dict | None = None):
    """A dataclass from a mapping: keys and types checked here, values by the dataclass itself."""
    kwargs = {**(given or {}), **_values(cls, data, prefix, name, given)}
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise UserError(f"{name}: {prefix}{e}") from None


def _convert(value, hint, key: str, name: str):
    """Check one YAML value against a type hint and return it in that type (lists become tuples)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key, name)
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"{name}: {key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise UserError(f"{name}: {key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"{name}: {key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise UserError(f"{name}: {key}: expected a string, got {value!r}")
        return value
    if hint is dict:
        if not isinstance(value, dict):
            raise UserError(f"{name}: {key}: expected a mapping, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str) and args[-1] is Ellipsis:
            value = [value]  # one folder may be written without a list
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{name}: {key}: expected a list, got {value!r}")
        if args[-1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]", name) for i, v in enumerate(value))
        if len(value) != len(args):
            raise UserError(f"{name}: {key}: expected a list of {len(args)}, got {value!r}")
        return tuple(_convert(v, a, f"{key}[{i}]", name) for i, (v, a) in enumerate(zip(value, args)))
    raise TypeError(f"no converter for {hint}")  # a programming error, not a user's


def dump_yaml(cfg: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


# ----------------------------------------------------------------------------------------------------------------
# The ds_config

# Keys the trainer fills from the training config: a ds_config that sets them is refused (one home per number).
FILLED_OPTIMIZER_PARAMS = ("lr", "betas", "eps", "weight_decay")
FILLED_SCHEDULER_PARAMS = ("total_num_steps", "warmup_num_steps", "warmup_min_ratio", "cos_min_ratio")
OPTIMIZER_TYPES = ("adam", "adamw")


def load_ds_config(path) -> dict:
    """Read a DeepSpeed JSON config, checking what the trainer relies on; UserError naming the key otherwise."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: ds_config not found")
    try:
        ds = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: unreadable ({e})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{p}: not valid JSON at line {e.lineno}, column {e.colno} ({e.msg})") from None
    if not isinstance(ds, dict):
        raise UserError(f"{p}: expected a JSON object at the top level")
    _check_ds_config(ds, str(p))
    return ds


def _section(ds: dict, key: str, where: str) -> dict:
    value = ds.get(key, {})
    if not isinstance(value, dict):
        raise UserError(f"{where}: {key}: expected an object, got {value!r}")
    return value


def _check_ds_config(ds: dict, where: str) -> None:
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size"):
        if key in ds and (isinstance(ds[key], bool) or not isinstance(ds[key], int) or ds[key] < 1):
            raise UserError(f"{where}: {key}: expected a positive integer, got {ds[key]!r}")
    for key in ("bf16", "fp16"):
        enabled = _section(ds, key, where).get("enabled", False)
        if not isinstance(enabled, bool):
            raise UserError(f"{where}: {key}.enabled: expected true or false, got {enabled!r}")
    if _section(ds, "fp16", where).get("enabled", False):
        raise UserError(f"{where}: fp16.enabled: fp16 is not supported by mt3ds (its LM head and losses are fp32 and "
                        f"it is tested with bf16); use \"bf16\": {{\"enabled\": true}}")
    stage = _section(ds, "zero_optimization", where).get("stage", 0)
    if stage not in (0, 1, 2):
        raise UserError(f"{where}: zero_optimization.stage: expected 0, 1 or 2, got {stage!r} (stage 3 partitions "
                        f"the weights, which the EMA and the exporter read whole)")
    opt = _section(ds, "optimizer", where)
    if not opt:
        raise UserError(f"{where}: optimizer: missing; expected {{\"type\": \"Adam\", \"params\": {{\"adam_w_mode\": "
                        f"true}}}} (learning rate and betas come from the training config)")
    if str(opt.get("type", "")).lower() not in OPTIMIZER_TYPES:
        raise UserError(f"{where}: optimizer.type: expected Adam or AdamW, got {opt.get('type')!r}")
    params = _section(opt, "params", f"{where}: optimizer")
    for key in FILLED_OPTIMIZER_PARAMS:
        if key in params:
            raise UserError(f"{where}: optimizer.params.{key}: set it in the training config (optim.{key}), "
                            f"not in the ds_config")
    sched = _section(ds, "scheduler", where)
    if sched:
        if sched.get("type") != "WarmupCosineLR":
            raise UserError(f"{where}: scheduler.type: expected WarmupCosineLR (or no scheduler section), "
                            f"got {sched.get('type')!r}")
        for key in FILLED_SCHEDULER_PARAMS:
            if key in _section(sched, "params", f"{where}: scheduler"):
                raise UserError(f"{where}: scheduler.params.{key}: set by the training config (steps, "
                                f"optim.warmup_steps, optim.min_lr_ratio), not in the ds_config")
    clip = ds.get("gradient_clipping", 0.0)
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip < 0:
        raise UserError(f"{where}: gradient_clipping: expected a number >= 0, got {clip!r}")


def resolve_ds_config(ds: dict, cfg: TrainConfig, world_size: int, where: str = "ds_config") -> dict:
    """The ds_config DeepSpeed gets: batch sizes settled for this world size, the training config's learning rate,
    Adam settings and warmup + cosine schedule written in. The input dict is not changed."""
    ds = json.loads(json.dumps(ds))
    micro = cfg.batch_size or ds.get("train_micro_batch_size_per_gpu")
    accum = cfg.grad_accum or ds.get("gradient_accumulation_steps", 1)
    if micro is None:
        if "train_batch_size" not in ds:
            raise UserError(f"{where}: train_micro_batch_size_per_gpu: missing (or set batch_size in the training "
                            f"config)")
        micro, rem = divmod(ds["train_batch_size"], accum * world_size)
        if rem or micro < 1:
            raise UserError(f"{where}: train_batch_size {ds['train_batch_size']} is not a multiple of "
                            f"gradient_accumulation_steps {accum} x world size {world_size}")
    total = micro * accum * world_size
    if "train_batch_size" in ds and cfg.batch_size is None and cfg.grad_accum is None and ds["train_batch_size"] != total:
        raise UserError(f"{where}: train_batch_size {ds['train_batch_size']} != train_micro_batch_size_per_gpu {micro}"
                        f" x gradient_accumulation_steps {accum} x world size {world_size} = {total}")
    ds.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=accum, train_batch_size=total)
    o = cfg.optim
    opt = ds["optimizer"]
    opt["params"] = {**opt.get("params", {}), "lr": o.lr, "betas": list(o.betas), "eps": o.eps,
                     "weight_decay": o.weight_decay}
    sched = ds.setdefault("scheduler", {"type": "WarmupCosineLR", "params": {"warmup_type": "linear"}})
    sched["params"] = {"warmup_type": "linear", **sched.get("params", {}), "total_num_steps": cfg.steps,
                       "warmup_num_steps": o.warmup_steps, "warmup_min_ratio": 0.0, "cos_min_ratio": o.min_lr_ratio}
    ds.setdefault("steps_per_print", 10 ** 9)  # the trainer prints its own metric lines
    return ds


def ds_dtype_name(ds: dict) -> str:
    """'bf16' or 'fp32': the dtype of the engine's weights, and so of the inputs fed to it."""
    return "bf16" if ds.get("bf16", {}).get("enabled", False) else "fp32"
