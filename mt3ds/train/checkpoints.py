"""Resumable checkpoints under RUN_DIR/checkpoints, safe against a kill at any moment.

    checkpoints/
      latest                 the tag of the newest complete checkpoint (written last, by rename)
      step00005000/          DeepSpeed's files (module, optimizer and scheduler states, per rank)
        ema.safetensors      the fp32 weight average (what validation and export use)
        state.json           step, counters, validation, best, model config, resolved configs, history
        rng/rank00000.safetensors + .json   this rank's torch (CPU, CUDA), NumPy and Python RNG states

A checkpoint is written under the tag `stepNNNNNNNN.tmp`, renamed to its final tag when every rank is done, and only
then named in `latest`; a kill before the rename leaves a `.tmp` folder that is ignored and removed. Retention keeps
the `keep_last` newest checkpoints, the `keep_best` ones with the lowest validation token loss, and whatever `latest`
names; a checkpoint is renamed to a `.tmp` name before it is deleted.

DeepSpeed's own `load_checkpoint` unpickles its files (torch.load with weights_only=False): a run folder is trusted
local state written by this code. Exported models never contain pickles (model/io.py).
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..files import write_text_atomic

TMP_SUFFIX = ".tmp"
LATEST = "latest"
STATE = "state.json"
EMA_FILE = "ema.safetensors"

# ModelConfig fields that only change how the model is trained or run, not what its weights mean: a checkpoint or
# init_from model may differ in these. Any other difference is a different model.
TRAINING_ONLY_FIELDS = ("attn_dropout", "resid_dropout", "mlp_dropout", "activation_checkpointing",
                        "attention_backend", "instrument_drop", "aux_frame_weight", "aux_pos_weight", "max_tokens",
                        "heads_weight", "token_weight")


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def model_config_differences(saved: dict, ours: dict) -> list[str]:
    """'key: saved X, config Y' for every field that changes what the weights mean."""
    keys = sorted((set(saved) | set(ours)) - set(TRAINING_ONLY_FIELDS))
    return [f"{k}: saved {saved.get(k)!r}, config {ours.get(k)!r}" for k in keys if saved.get(k) != ours.get(k)]


def read_state(tag_dir: Path) -> dict:
    path = Path(tag_dir) / STATE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable checkpoint state ({e})") from None


def complete_checkpoints(ckpt_dir) -> list[tuple[int, Path]]:
    """(step, folder) of every finished checkpoint, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    out = []
    for p in ckpt_dir.iterdir():
        if p.is_dir() and p.name.startswith("step") and p.name[4:].isdigit() and (p / STATE).is_file():
            out.append((int(p.name[4:]), p))
    return sorted(out)


def latest_checkpoint(ckpt_dir) -> Path | None:
    """The folder `latest` names; if `latest` is missing or names nothing, the newest complete checkpoint."""
    ckpt_dir = Path(ckpt_dir)
    marker = ckpt_dir / LATEST
    if marker.is_file():
        tag = marker.read_text(encoding="utf-8").strip()
        if tag and (ckpt_dir / tag / STATE).is_file():
            return ckpt_dir / tag
    done = complete_checkpoints(ckpt_dir)
    return done[-1][1] if done else None


def best_checkpoint(ckpt_dir) -> Path | None:
    """The complete checkpoint with the lowest recorded validation token loss (None if none was validated)."""
    scored = [(s["val_loss"], step, p) for step, p in complete_checkpoints(ckpt_dir)
              if (s := read_state(p)).get("val_loss") is not None]
    return min(scored)[2] if scored else None


def _remove(folder: Path) -> None:
    """Rename to a .tmp name first (atomic), then delete: a kill midway leaves no half-deleted checkpoint that still
    looks complete."""
    trash = folder.with_name(f"{folder.name}.deleting{TMP_SUFFIX}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    np_state = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np_state[1].astype(np.int64))
    py = random.getstate()
    meta = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [py[0], list(py[1]), py[2]]}
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("torch_cuda_")),
                                       key=lambda k: int(k.rsplit("_", 1)[1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[:torch.cuda.device_count()])
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(engine, ckpt_dir, step: int, state: dict, ema_tensors: dict[str, torch.Tensor], rank: int,
                    barrier) -> Path:
    """Write a checkpoint for `step` on every rank (collective), commit it by rename, then point `latest` at it."""
    from safetensors.torch import save_file

    ckpt_dir = Path(ckpt_dir)
    tag = tag_for(step)
    tmp_dir, final = ckpt_dir / (tag + TMP_SUFFIX), ckpt_dir / tag
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp_dir, ignore_errors=True)  # a leftover of a kill during an earlier save
    barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tag + TMP_SUFFIX, client_state={}, save_latest=False)
    rng_dir = tmp_dir / "rng"
    rng_dir.mkdir(parents=True, exist_ok=True)
    tensors, meta = _rng_state()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(rng_dir / f"rank{rank:05d}.safetensors"))
    (rng_dir / f"rank{rank:05d}.json").write_text(json.dumps(meta), encoding="utf-8")
    if rank == 0:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in ema_tensors.items()}, str(tmp_dir / EMA_FILE))
        (tmp_dir / STATE).write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
    barrier()
    if rank == 0:
        if final.exists():  # the same step saved again after a resume
            _remove(final)
        os.replace(tmp_dir, final)
        write_text_atomic(ckpt_dir / LATEST, tag)
    barrier()
    return final


def load_checkpoint(engine, tag_dir: Path, rank: int) -> None:
    """Restore engine (module, optimizer, scheduler) and this rank's RNG states (state.json is the caller's to read:
    `read_state`, once)."""
    from safetensors.torch import load_file

    tag_dir = Path(tag_dir)
    path, _ = engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name, load_optimizer_states=True,
                                     load_lr_scheduler_states=True)
    if path is None:
        raise UserError(f"{tag_dir}: DeepSpeed could not load this checkpoint")
    rng = tag_dir / "rng" / f"rank{rank:05d}.safetensors"
    if rng.is_file():  # a run resumed on more ranks than it was saved with starts the new ranks' RNGs fresh
        _set_rng_state(load_file(str(rng)), json.loads(rng.with_suffix(".json").read_text(encoding="utf-8")))


def load_ema_tensors(tag_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(tag_dir) / EMA_FILE
    if not path.is_file():
        raise UserError(f"{path}: missing (not a complete mt3ds checkpoint)")
    return load_file(str(path))


def prune(ckpt_dir, keep_last: int, keep_best: int) -> list[Path]:
    """Remove checkpoints beyond the retention rule and leftover .tmp folders (rank 0 only); return the removed."""
    ckpt_dir = Path(ckpt_dir)
    done = complete_checkpoints(ckpt_dir)
    keep = {p for _, p in done[-keep_last:]}
    scored = sorted((s["val_loss"], step, p) for step, p in done if (s := read_state(p)).get("val_loss") is not None)
    keep |= {p for _, _, p in scored[:keep_best]}
    latest = latest_checkpoint(ckpt_dir)
    if latest is not None:
        keep.add(latest)
    leftovers = [p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.endswith(TMP_SUFFIX)]
    for p in leftovers:
        shutil.rmtree(p, ignore_errors=True)
    removed = [p for _, p in done if p not in keep]
    for p in removed:
        _remove(p)
    return removed + leftovers
