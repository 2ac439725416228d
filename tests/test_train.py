"""Training with DeepSpeed on the CPU: configs and their errors, the launcher, overfitting 8 chunks, kill-and-resume,
checkpoint retention, EMA. Shards come from tests/train_fixtures.py (the agreed shard format, tiny)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mt3ds.errors import UserError
from mt3ds.train import checkpoints as ckpt
from mt3ds.train.config import (TrainConfig, dump_yaml, load_ds_config, load_train_config, parse_override,
                                resolve_ds_config, train_config_from_dict)
from mt3ds.train.ema import EMA
from train_fixtures import *  # noqa: F401,F403 (fixtures)
from train_fixtures import CPU_DS_CONFIG, metrics, train_yaml, write_json, write_shards, write_yaml

REPO = Path(__file__).resolve().parent.parent
TRAIN_PY = REPO / "bin" / "train.py"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads on a shared 2-core box cost 10x
    return env


# ----------------------------------------------------------------------------------------------------------------
# Training config and ds_config

def test_yaml_defaults_overrides_and_round_trip(tmp_path, shard_dirs):
    path = write_yaml(tmp_path / "t.yaml", {"model": {"preset": "small", "aux_frame_loss": True},
                                            "data": {"train": str(shard_dirs[0])}, "optim": {"lr": "1e-3"}})
    cfg = load_train_config(path, dict([parse_override("steps=50"), parse_override("ema.decay=0.99")]))
    assert cfg.model.d_model == 256 and cfg.model.aux_frame_loss and cfg.model_preset == "small"
    assert cfg.data.train == (str(shard_dirs[0]),) and cfg.optim.lr == 1e-3
    assert cfg.steps == 50 and cfg.ema.decay == 0.99
    # the Step 1 defaults (docs/design.md §6.2)
    d = TrainConfig()
    assert (d.optim.lr, d.optim.betas, d.optim.weight_decay, d.optim.warmup_steps, d.optim.min_lr_ratio) == \
        (5e-4, (0.9, 0.999), 0.01, 4000, 0.1)
    assert (d.steps, d.validation.every, d.log_every, d.checkpoint.every, d.checkpoint.keep_last) == \
        (200_000, 2000, 100, 5000, 3)
    assert d.ema.decay == 0.999 and d.validation.items == 256 and d.seed == 42
    again = write_yaml(tmp_path / "again.yaml", __import__("yaml").safe_load(dump_yaml(cfg)))
    assert load_train_config(again) == cfg
    loader = cfg.loader_config(batch_size=3)
    assert loader.batch_size == 3 and loader.aux_frame_loss and loader.time_encoding == "absolute"


@pytest.mark.parametrize("data, expected", [
    ({"stepz": 3}, "stepz: unknown key; expected one of: run_dir, model, data"),
    ({"steps": "many"}, "steps: expected an integer, got 'many'"),
    ({"optim": {"lr": "fast"}}, "optim.lr: expected a number, got 'fast'"),
    ({"optim": {"betas": [0.9]}}, "optim.betas: expected a list of 2"),
    ({"optim": {"warmup": 10}}, "optim.warmup: unknown key; expected one of: lr, betas"),
    ({"ema": {"decay": 1.5}}, "ema.decay must be in [0, 1)"),
    ({"model": {"preset": "huge"}}, "model.preset: expected one of tiny, small, base, base_v2, got 'huge'"),
    ({"model": {"d_modle": 3}}, "model.d_modle: unknown key"),
    ({"model": {"norm": "batchnorm"}}, "model: ModelConfig.norm must be one of layernorm, rmsnorm"),
    ({"model": {"aux_frame_loss": "yes"}}, "model.aux_frame_loss: expected true or false, got 'yes'"),
    ({"data": {"loader": {"batch_size": 4}}}, "data.loader.batch_size: set by the ds_config's"),
    ({"data": {"loader": {"num_workerz": 4}}}, "data.loader.num_workerz: unknown key"),
    ({"data": {"loader": {"mix_alpha": -1}}}, "data.loader: mix_alpha must be >= 0"),
    ({"data": {"train": []}}, "data.train: expected a list of at least one training shard folder"),
    ({"validation": {"decode_items": 300}}, "validation.decode_items must be in 0..items"),
])
def test_bad_training_config_names_the_key(tmp_path, data, expected):
    base = {"data": {"train": ["shards/train"]}}
    for k, v in data.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    path = write_yaml(tmp_path / "bad.yaml", base)
    with pytest.raises(UserError) as e:
        load_train_config(path)
    assert str(e.value).startswith(f"{path}: ") and expected in str(e.value)
    assert "\n" not in str(e.value)


def test_unreadable_training_config(tmp_path):
    with pytest.raises(UserError, match="training config not found"):
        load_train_config(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("model: {preset: tiny\nsteps: 3\n")
    with pytest.raises(UserError, match=r"broken.yaml: not valid YAML at line \d+, column \d+"):
        load_train_config(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="expected a mapping of keys at the top level"):
        load_train_config(tmp_path / "list.yaml")


@pytest.mark.parametrize("change, expected", [
    ({"optimizer": None}, "optimizer: missing"),
    ({"optimizer": {"type": "SGD", "params": {}}}, "optimizer.type: expected Adam or AdamW, got 'SGD'"),
    ({"optimizer": {"type": "Adam", "params": {"lr": 0.1}}}, "optimizer.params.lr: set it in the training config"),
    ({"scheduler": {"type": "WarmupLR", "params": {}}}, "scheduler.type: expected WarmupCosineLR"),
    ({"scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": 9}}},
     "scheduler.params.total_num_steps: set by the training config"),
    ({"zero_optimization": {"stage": 3}}, "zero_optimization.stage: expected 0, 1 or 2, got 3"),
    ({"fp16": {"enabled": True}}, "fp16.enabled: fp16 is not supported"),
    ({"bf16": {"enabled": "yes"}}, "bf16.enabled: expected true or false"),
    ({"train_micro_batch_size_per_gpu": 0}, "train_micro_batch_size_per_gpu: expected a positive integer"),
    ({"gradient_clipping": "max"}, "gradient_clipping: expected a number >= 0"),
])
def test_bad_ds_config_names_the_key(tmp_path, change, expected):
    ds = {**CPU_DS_CONFIG, **change}
    ds = {k: v for k, v in ds.items() if v is not None}
    path = write_json(tmp_path / "ds.json", ds)
    with pytest.raises(UserError) as e:
        load_ds_config(path)
    assert str(e.value).startswith(f"{path}: ") and expected in str(e.value)


def test_unreadable_ds_config(tmp_path):
    with pytest.raises(UserError, match="ds_config not found"):
        load_ds_config(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text('{"bf16": {"enabled": true},\n "optimizer": }')
    with pytest.raises(UserError, match=r"bad.json: not valid JSON at line 2, column \d+"):
        load_ds_config(tmp_path / "bad.json")


def test_shipped_ds_configs_are_valid_and_as_documented():
    configs = {name: load_ds_config(REPO / "ds_configs" / f"{name}.json") for name in ("bf16", "zero2", "cpu")}
    bf16 = configs["bf16"]
    assert bf16["bf16"]["enabled"] and bf16["zero_optimization"]["stage"] == 1 and bf16["gradient_clipping"] == 1.0
    assert bf16["optimizer"]["type"] == "Adam" and bf16["optimizer"]["params"]["adam_w_mode"]
    assert not bf16["optimizer"]["params"].get("torch_adam", False)  # fused Adam on GPUs
    assert bf16["scheduler"]["type"] == "WarmupCosineLR"
    assert configs["zero2"]["zero_optimization"]["stage"] == 2
    assert configs["cpu"]["optimizer"]["params"]["torch_adam"] is True  # no compiled ops on CPU


def test_resolve_ds_config_fills_schedule_and_batch(shard_dirs):
    cfg = train_config_from_dict({"data": {"train": [str(shard_dirs[0])]}, "steps": 1000,
                                  "optim": {"lr": 1e-3, "warmup_steps": 100, "min_lr_ratio": 0.05,
                                            "betas": [0.9, 0.98]}})
    ds = resolve_ds_config({**CPU_DS_CONFIG, "gradient_accumulation_steps": 2}, cfg, world_size=4)
    assert ds["train_batch_size"] == 4 * 2 * 4
    assert ds["optimizer"]["params"] == {"adam_w_mode": True, "torch_adam": True, "lr": 1e-3, "betas": [0.9, 0.98],
                                         "eps": 1e-8, "weight_decay": 0.01}
    assert ds["scheduler"]["params"] == {"warmup_type": "linear", "total_num_steps": 1000, "warmup_num_steps": 100,
                                         "warmup_min_ratio": 0.0, "cos_min_ratio": 0.05}
    assert "scheduler" not in CPU_DS_CONFIG["optimizer"]  # the input is not changed
    override = train_config_from_dict({"data": {"train": ["x"]}, "batch_size": 3, "grad_accum": 5})
    ds = resolve_ds_config(CPU_DS_CONFIG, override, world_size=2)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == \
        (3, 5, 30)
    with pytest.raises(UserError, match=r"train_batch_size 10 != train_micro_batch_size_per_gpu 4 x "
                                        r"gradient_accumulation_steps 1 x world size 2 = 8"):
        resolve_ds_config({**CPU_DS_CONFIG, "train_batch_size": 10}, cfg, world_size=2)


# ----------------------------------------------------------------------------------------------------------------
# Bad input through bin/train.py: one line, exit status 1, before DeepSpeed starts

@pytest.mark.slow
def test_train_py_bad_inputs_are_one_line(tmp_path, shard_dirs):
    ds = write_json(tmp_path / "ds.json", CPU_DS_CONFIG)
    cfg = write_yaml(tmp_path / "t.yaml", train_yaml(tmp_path / "run", tmp_path / "no_such_shards"))
    cases = [(["--ds_config", str(tmp_path / "nope.json"), "--config", str(cfg)], "nope.json: ds_config not found"),
             (["--ds_config", str(ds), "--config", str(cfg)], "no_such_shards: shard folder not found"),
             (["--ds_config", str(ds), "--config", str(cfg), "--set", "steps=0"], "steps must be >= 1")]
    for args, expected in cases:
        p = subprocess.run([sys.executable, str(TRAIN_PY), *args], capture_output=True, text=True, env=_env(),
                           timeout=120)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 1, p.stderr
        assert lines[-1].startswith("train.py: error: ") and expected in lines[-1], p.stderr
        assert "Traceback" not in p.stderr


def test_checkpoint_of_another_model_config_is_refused(finished_run, tmp_path):
    import yaml

    from mt3ds.train.engine import check_inputs

    run_dir, _ = finished_run
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    saved["model"]["d_model"] = 32
    saved["steps"] = 20
    with pytest.raises(UserError, match=r"checkpoint of another model config \(d_model: saved 64, config 32\)"):
        check_inputs(load_train_config(write_yaml(tmp_path / "other.yaml", saved)))
    again = check_inputs(load_train_config(run_dir / "config.yaml"))  # the same command again: nothing to train
    assert again.finished and again.resume_state["step"] == 6
    assert not check_inputs(load_train_config(run_dir / "config.yaml", {"steps": 7})).finished
    with pytest.raises(UserError, match="holds checkpoints .* but resume is false"):
        check_inputs(load_train_config(run_dir / "config.yaml", {"resume": False, "steps": 20}))


def test_a_finished_run_run_again_trains_nothing_and_succeeds(finished_run, capsys):
    from mt3ds.train.engine import train

    run_dir, state = finished_run
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    again = train(load_train_config(run_dir / "config.yaml"), CPU_DS_CONFIG)
    assert again["step"] == state["step"] == 6
    assert "already reached step 6 of steps: 6; nothing to train" in capsys.readouterr().out
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before


# ----------------------------------------------------------------------------------------------------------------
# Runs

@pytest.mark.slow
def test_launcher_runs_a_few_steps_and_checkpoints(tmp_path, shard_dirs):
    """`deepspeed --num_gpus 1 bin/train.py` (one gloo rank on the CPU) trains, validates and checkpoints."""
    ds = write_json(tmp_path / "ds.json", CPU_DS_CONFIG)
    run_dir = tmp_path / "run"
    cfg = write_yaml(tmp_path / "t.yaml", train_yaml(run_dir, *shard_dirs, steps=3))
    p = subprocess.run(["deepspeed", "--num_gpus", "1", str(TRAIN_PY), "--ds_config", str(ds), "--config", str(cfg)],
                       capture_output=True, text=True, env=_env(), timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "--local_rank=0" in p.stdout + p.stderr  # it really went through the launcher
    latest = (run_dir / "checkpoints" / "latest").read_text()
    assert latest == "step00000003"
    tag = run_dir / "checkpoints" / latest
    state = json.loads((tag / "state.json").read_text())
    assert state["step"] == 3 and state["samples"] == 12 and state["world_size"] == 1
    assert (tag / "ema.safetensors").is_file() and (tag / "mp_rank_00_model_states.pt").is_file()
    assert [r["step"] for r in metrics(run_dir)] == [1, 2, 3]
    val = metrics(run_dir, "validation")
    assert [r["step"] for r in val] == [3] and val[0]["chunks"] == 4 and val[0]["decoded"] == 2
    assert (run_dir / "config.yaml").is_file() and json.loads((run_dir / "ds_config.json").read_text())[
        "train_batch_size"] == 4
    assert sorted(p.name for p in (run_dir / "samples" / "step_00000003").iterdir()) == \
        ["synthetic_track000_00000.pred.mid", "synthetic_track000_00000.ref.mid"]


@pytest.mark.slow
def test_tiny_model_overfits_eight_chunks(tmp_path):
    """Token loss on the same 8 chunks falls by more than half within 40 optimizer steps (7.27 -> ~2.6)."""
    from mt3ds.train.engine import train

    shards = write_shards(tmp_path / "eight", n_tracks=2, chunks_per_track=4, seed=3)
    cfg = train_config_from_dict(train_yaml(tmp_path / "run", shards, None, steps=40, batch_size=8,
                                            optim={"lr": 1e-2, "warmup_steps": 5},
                                            checkpoint={"every": 1000, "keep_best": 0}))
    state = train(cfg, CPU_DS_CONFIG)
    losses = [r["token_loss"] for r in metrics(tmp_path / "run")]
    assert len(losses) == 40 and state["step"] == 40
    assert losses[0] > 6.5  # ~ln(1437) at the start
    assert np.mean(losses[-5:]) < 0.5 * losses[0], losses[::5]


def test_time_budget_stops_early_with_a_validation_and_a_checkpoint(tmp_path, shard_dirs):
    """max_train_minutes ends the run at the first metric line past the budget: validated, checkpointed, and the
    training time (validation left out) is in the records and the state."""
    from mt3ds.train.engine import train

    cfg = train_config_from_dict(train_yaml(tmp_path / "run", *shard_dirs, steps=1000, max_train_minutes=1e-4,
                                            validation={"every": 500}, checkpoint={"every": 500}))
    state = train(cfg, CPU_DS_CONFIG)
    assert state["step"] == 1 and 0 < state["train_seconds"] <= state["wall_seconds"]
    assert [r["step"] for r in metrics(tmp_path / "run", "validation")] == [1]
    assert metrics(tmp_path / "run")[0]["train_min"] > 0
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step00000001"
    more = train_config_from_dict(train_yaml(tmp_path / "run", *shard_dirs, steps=2))  # resumed: the time adds up
    resumed = train(more, CPU_DS_CONFIG)
    assert resumed["step"] == 2 and resumed["train_seconds"] > state["train_seconds"]


@pytest.mark.slow
def test_killed_run_resumes_at_the_same_step_and_learning_rate(tmp_path, shard_dirs):
    """SIGKILL a plain `python bin/train.py` mid-run; the same config resumes from the latest checkpoint: the next
    step and its learning rate are what the killed run had, and a half-written checkpoint is ignored and removed."""
    from mt3ds.train.engine import train

    steps = 30
    data = train_yaml(tmp_path / "run", shard_dirs[0], None, steps=steps, optim={"lr": 3e-3, "warmup_steps": 8},
                      checkpoint={"every": 2, "keep_last": 2, "keep_best": 0})
    ds = write_json(tmp_path / "ds.json", CPU_DS_CONFIG)
    cfg_path = write_yaml(tmp_path / "t.yaml", data)
    proc = subprocess.Popen([sys.executable, str(TRAIN_PY), "--ds_config", str(ds), "--config", str(cfg_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), cwd=tmp_path)
    latest = tmp_path / "run" / "checkpoints" / "latest"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if latest.is_file() and latest.read_text() >= "step00000006":
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert latest.is_file(), "the run wrote no checkpoint before the deadline"
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed = {r["step"]: r for r in metrics(tmp_path / "run")}
    resumed_from = json.loads((tmp_path / "run" / "checkpoints" / latest.read_text() / "state.json").read_text())
    k = resumed_from["step"]
    assert 6 <= k < steps
    junk = tmp_path / "run" / "checkpoints" / f"{ckpt.tag_for(k + 2)}.tmp"  # as if killed while saving
    junk.mkdir(exist_ok=True)
    (junk / "state.json").write_text("{}")

    state = train(load_train_config(cfg_path), CPU_DS_CONFIG)
    after = metrics(tmp_path / "run")
    assert [r["step"] for r in after] == list(range(1, steps + 1))  # one line per step, no repeats
    new = {r["step"]: r for r in after if r["step"] > k}
    common = [s for s in new if s in killed]
    for s in common:  # the steps both runs took: the same learning rate
        assert new[s]["lr"] == pytest.approx(killed[s]["lr"], rel=1e-12)
    assert new[k + 1]["lr"] == pytest.approx(_deepspeed_lr(k + 1, 3e-3, 8, steps, 0.1), rel=1e-9)
    assert state["step"] == steps and state["samples"] == steps * 4
    assert not junk.exists()
    kept = [p.name for _, p in ckpt.complete_checkpoints(tmp_path / "run" / "checkpoints")]
    assert kept == [ckpt.tag_for(steps - 2), ckpt.tag_for(steps)]


def _deepspeed_lr(step: int, lr: float, warmup: int, total: int, floor: float) -> float:
    """The rate WarmupCosineLR (linear warmup) gives optimizer step `step` (1-based): iteration step - 1."""
    import math

    it = step - 1
    if it < 0:
        return 0.0
    if it < warmup:
        return lr * it / warmup
    progress = min(1.0, (it - warmup + 1) / max(1, total - warmup))
    return lr * (floor + (1 - floor) * (1 + math.cos(math.pi * progress)) / 2)


# ----------------------------------------------------------------------------------------------------------------
# Pieces

def test_retention_keeps_last_best_and_latest(tmp_path):
    root = tmp_path / "checkpoints"
    losses = {2: 5.0, 4: 3.0, 6: 4.0, 8: None, 10: 4.5}
    for step, loss in losses.items():
        d = root / ckpt.tag_for(step)
        d.mkdir(parents=True)
        (d / "state.json").write_text(json.dumps({"step": step, "val_loss": loss}))
    (root / "latest").write_text(ckpt.tag_for(10))
    (root / "step00000012.tmp").mkdir()
    removed = ckpt.prune(root, keep_last=2, keep_best=1)
    assert sorted(p.name for p in removed) == ["step00000002", "step00000006", "step00000012.tmp"]
    assert [s for s, _ in ckpt.complete_checkpoints(root)] == [4, 8, 10]
    assert ckpt.best_checkpoint(root).name == "step00000004"
    (root / "latest").write_text("step00000099")  # names nothing: the newest complete one is used
    assert ckpt.latest_checkpoint(root).name == "step00000010"


def test_rng_state_round_trip():
    import random

    tensors, meta = ckpt._rng_state()
    tensors = {k: v.clone() for k, v in tensors.items()}
    expected = (torch.rand(3), np.random.rand(2), random.random())
    torch.rand(5), np.random.rand(5), random.random()
    ckpt._set_rng_state(tensors, json.loads(json.dumps(meta)))
    got = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_ema_average_and_warmup():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9, warmup=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    ema.update(model)
    assert torch.allclose(ema.state_dict(model)["weight"], torch.full((1, 2), 1 - 0.9 ** 2))
    warm = EMA(model, decay=0.999, warmup=True)
    assert warm.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    frozen = EMA(model, decay=0.0)
    with torch.no_grad():
        model.weight.fill_(7.0)
    frozen.update(model)
    assert torch.equal(frozen.state_dict(model)["weight"], model.weight)


def test_shipped_training_configs_load():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_train_config(path)
        assert cfg.data.train and cfg.run_dir.startswith("runs/"), path
    assert {p.name for p in (REPO / "configs").glob("*.yaml")} >= {"smoke_cpu.yaml", "base_gpu.yaml"}


def test_resume_with_another_precision_or_world_size_is_refused(finished_run):
    from mt3ds.train.engine import _check_resumable

    run_dir, _ = finished_run
    latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
    saved = ckpt.read_state(latest)
    _check_resumable(saved, saved["ds_config"], 1, latest)  # as it was: fine
    with pytest.raises(UserError, match=r"written by 1 ranks, ZeRO stage 1, bf16 False; this run has 1 ranks, "
                                        r"ZeRO stage 1, bf16 True"):
        _check_resumable(saved, {**saved["ds_config"], "bf16": {"enabled": True}}, 1, latest)
    with pytest.raises(UserError, match="this run has 4 ranks, ZeRO stage 2"):
        _check_resumable(saved, {**saved["ds_config"], "zero_optimization": {"stage": 2}}, 4, latest)


def test_validation_scores_decoded_chunks_with_mir_eval():
    """The scoring validation applies to each decoded chunk: a perfect prediction scores 1, a 100 ms late one 0 on
    onsets, a malformed token is counted."""
    from mt3ds.tokens.codec import encode_notes, to_absolute
    from mt3ds.tokens.notes import Notes
    from mt3ds.train.validate import score_chunk

    notes = Notes([0.1, 0.5, 1.0], [0.4, 0.9, 1.5], [60, 64, 67], [100, 100, 100], [0, 0, 0])
    ref = to_absolute(encode_notes(notes, n_chunks=1).chunk(0))
    late = to_absolute(encode_notes(Notes(notes.onset + 0.1, notes.offset + 0.1, notes.pitch, notes.velocity,
                                          notes.program), n_chunks=1).chunk(0))
    _, est, counts, bad = score_chunk(ref, ref, 2.048, "absolute")
    assert len(est) == 3 and bad == 0
    assert all(counts[m].scores()["f1"] == 1.0 for m in ("onset", "onset_offset", "multi_full"))
    _, _, counts, _ = score_chunk(ref, late, 2.048, "absolute")
    assert counts["onset"].tp == 0 and counts["onset"].n_ref == 3 and counts["onset"].n_est == 3
    _, _, _, bad = score_chunk(ref, np.concatenate([[2], ref]), 2.048, "absolute")  # UNK first
    assert bad == 1


def test_trains_from_pipe_shard_folders(tmp_path, shard_dirs):
    """Shard folders given as WebDataset pipe: commands (object storage) train like local ones; each manifest is
    fetched once (checked before DeepSpeed starts, then handed to the loaders)."""
    from mt3ds.train.engine import train

    fetched = {name: tmp_path / f"{name}.log" for name in ("train", "validation")}
    pipe = {name: f"pipe:echo {{}} >> {fetched[name]}; cat {folder}/{{}}"
            for name, folder in zip(fetched, shard_dirs)}
    cfg = train_config_from_dict(train_yaml(tmp_path / "run", "x", None, steps=2,
                                            data={"train": [pipe["train"]], "validation": [pipe["validation"]]},
                                            validation={"every": 2, "items": 2, "decode_items": 1, "dump_midi": 0,
                                                        "decode_max_len": 8}))
    state = train(cfg, CPU_DS_CONFIG)
    assert state["step"] == 2 and metrics(tmp_path / "run", "validation")[0]["chunks"] == 2
    for log in fetched.values():
        names = log.read_text().split()
        assert names.count("manifest.json") == 1 and any(n.endswith(".tar") for n in names), names
    bad = train_config_from_dict(train_yaml(tmp_path / "bad", "x", data={"train": [f"pipe:cat {tmp_path}/none/{{}}"]}))
    with pytest.raises(UserError, match="fetching manifest.json failed"):
        train(bad, CPU_DS_CONFIG)


def test_validation_of_a_model_with_the_frame_head_scores_the_hybrid_notes(tmp_path, shard_dirs):
    """With aux_frame_loss, validation also scores the notes `transcribe --notes frames` would write."""
    from mt3ds.train.engine import train

    cfg = train_config_from_dict(train_yaml(tmp_path / "run", *shard_dirs, steps=2,
                                            model={"aux_frame_loss": True},
                                            validation={"every": 2, "items": 2, "decode_items": 2, "dump_midi": 0,
                                                        "decode_max_len": 8}))
    assert train(cfg, CPU_DS_CONFIG)["step"] == 2
    (val,) = metrics(tmp_path / "run", "validation")
    assert val["decoded"] == 2
    for name in ("onset", "onset_offset", "multi_full"):
        assert 0.0 <= val[f"frames_{name}_f1"] <= 1.0 and 0.0 <= val[f"{name}_f1"] <= 1.0


def test_a_model_with_note_heads_trains_exports_and_transcribes_without_decoding(tmp_path, shard_dirs):
    """Heads alone (token_weight 0, conv front end, time pooling, encoder FiLM): train, validate by reading the
    heads, export with reading settings in half precision, transcribe with --notes frames; then a run with another
    config starts from that export with init_partial."""
    import soundfile as sf

    from mt3ds.cli import cli
    from mt3ds.model.io import load_model
    from mt3ds.train.engine import train
    from mt3ds.train.export import export_run
    from click.testing import CliRunner

    model = {"note_heads": True, "token_weight": 0.0, "front_end": "conv", "time_pool": 2,
             "conditioning": "encoder_film"}
    cfg = train_config_from_dict(train_yaml(tmp_path / "run", *shard_dirs, steps=2, model=model,
                                            validation={"every": 2, "items": 2, "decode_items": 0, "dump_midi": 0}))
    assert train(cfg, CPU_DS_CONFIG)["step"] == 2
    (val,) = metrics(tmp_path / "run", "validation")
    assert val["val_loss"] == val["heads_loss"] > 0 and val["token_loss"] is None
    for name in ("onset", "onset_offset", "multi_full", "multi_class", "drum_onset"):
        assert val[f"heads_{name}_f1"] is None or 0.0 <= val[f"heads_{name}_f1"] <= 1.0
    out = tmp_path / "heads.safetensors"
    meta = export_run(tmp_path / "run", out, reading={"onset_threshold": 0.3, "min_gap_s": 0.05}, half=True)
    assert meta["reading"]["onset_threshold"] == 0.3 and meta["training"]["learning_curve"][0]["heads_loss"] > 0
    loaded, _ = load_model(out)
    assert loaded.note_heads is not None and next(loaded.parameters()).dtype == torch.float32
    src = tmp_path / "a.wav"
    sf.write(src, np.random.default_rng(0).normal(0, 0.1, 16000 * 3).astype(np.float32), 16000)
    result = CliRunner().invoke(cli, ["transcribe", str(src), "-o", str(tmp_path / "a.mid"), "--model", str(out),
                                      "--quiet", "--instruments", "piano,drums"], catch_exceptions=False)
    assert result.exit_code == 0 and (tmp_path / "a.mid").is_file(), result.output
    again = train_config_from_dict(train_yaml(tmp_path / "run2", *shard_dirs, steps=1, init_from=str(out),
                                              init_partial=True, model={**model, "front_end": "linear"},
                                              validation={"every": 1, "items": 2, "decode_items": 0,
                                                          "dump_midi": 0}))
    assert train(again, CPU_DS_CONFIG)["step"] == 1
    strict = train_config_from_dict(train_yaml(tmp_path / "run3", *shard_dirs, steps=1, init_from=str(out),
                                               model={**model, "front_end": "linear"}))
    with pytest.raises(UserError, match="init_from model of another model config"):
        train(strict, CPU_DS_CONFIG)


def test_deepspeed_lines_below_error_are_left_out(monkeypatch):
    import logging

    from mt3ds.train.engine import DEEPSPEED_LOG_ENV, quiet_deepspeed_logs

    logger, seen = logging.getLogger("DeepSpeed"), []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.levelname)
    saved = (logger.level, list(logger.filters))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        quiet_deepspeed_logs()
        for level in ("info", "warning", "error"):
            getattr(logger, level)("x")
        assert seen == ["ERROR"]
        monkeypatch.setenv(DEEPSPEED_LOG_ENV, "info")
        quiet_deepspeed_logs()  # replaces the filter, does not add a second
        logger.info("x")
        assert seen == ["ERROR", "INFO"]
        monkeypatch.setenv(DEEPSPEED_LOG_ENV, "loud")
        with pytest.raises(UserError, match="MT3DS_DEEPSPEED_LOG=loud"):
            quiet_deepspeed_logs()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.filters[:] = saved[1]
