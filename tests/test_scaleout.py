"""Scale-out on one CPU box: 2 gloo ranks through DeepSpeed's own launcher (`deepspeed --num_gpus 2`, which runs on
DeepSpeed's CPU accelerator; torchrun is not needed), two "nodes" on localhost (`--no_ssh --node_rank 0/1`), a rank
killed and the run resumed at world size 2, and the real training loader under the launcher.

Three launches serve all tests (each costs ~20 s of imports and engine setup on 2 cores), module-scoped:
  two_ranks   one `deepspeed --num_gpus 2` launch of tests/scaleout_driver.py: the training loader's streams, a run
              started with different configs on the two ranks, then ZeRO-1 and ZeRO-2 runs on fixed batches;
  two_nodes   two launchers (node 0 and node 1, one rank each) running a ZeRO-2 run on the same fixed batches,
              validating and checkpointing every 2 steps; node 1's rank is SIGKILLed after the step-4 checkpoint;
  resumed     the same command through `deepspeed --num_gpus 2`, which resumes that run at world size 2.
The 1-rank reference (micro-batch 4 where the ranks take 2 each) runs in this process.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mt3ds.errors import UserError
from mt3ds.train import checkpoints as ckpt
from scaleout_driver import FixedLoader, fixed_batches, read_samples
from train_fixtures import CPU_DS_CONFIG, metrics, train_yaml, write_json, write_shards, write_yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
DRIVER = REPO / "tests" / "scaleout_driver.py"
STEPS = 12
GLOBAL_BATCH = 4  # 2 per rank on two ranks, 4 on one
KILL_AFTER = 4  # node 1's rank is killed once the step-4 checkpoint is complete
LAUNCH_TIMEOUT = 400


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads on a shared 2-core box cost 10x
    env["MT3DS_DIST_TIMEOUT_S"] = "120"  # a hung rank fails the test in minutes, not DeepSpeed's 30
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    """The raw weights at `step`: ema.decay is 0 in these runs, so the checkpoint's EMA file holds them."""
    from safetensors.torch import load_file

    return load_file(str(run_dir / "checkpoints" / ckpt.tag_for(step) / ckpt.EMA_FILE))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _update_gaps(ours: dict, ref: dict, ref_base: dict) -> tuple[float, float]:
    """How far `ours` is from `ref`, relative to how far `ref` moved from `ref_base` (L2 norms): over the whole model,
    and the largest over single tensors."""
    assert ours.keys() == ref.keys() == ref_base.keys()
    gaps = {k: (float((ours[k] - ref[k]).norm()), float((ref[k] - ref_base[k]).norm())) for k in ref}
    whole = sum(g * g for g, _ in gaps.values()) ** 0.5 / sum(m * m for _, m in gaps.values()) ** 0.5
    return whole, max(g / m for g, m in gaps.values() if m > 0)


# ----------------------------------------------------------------------------------------------------------------
# Data, configs and the three launches

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaleout")
    d = {"root": root,
         "train": write_shards(root / "train", n_tracks=2, chunks_per_track=4, seed=0),
         # one sample per shard: validation is split by shard, so both ranks get some
         "val": write_shards(root / "val", n_tracks=1, chunks_per_track=4, seed=1, split="validation",
                             samples_per_shard=1),
         "alpha": write_shards(root / "alpha", n_tracks=3, chunks_per_track=8, seed=5, dataset="alpha"),
         "beta": write_shards(root / "beta", n_tracks=1, chunks_per_track=8, seed=6, dataset="beta")}
    for stage in (1, 2):
        d[f"ds{stage}"] = write_json(root / f"ds_zero{stage}.json",
                                     {**CPU_DS_CONFIG, "zero_optimization": {"stage": stage}})

    def config(name: str, batch_size: int, **top) -> Path:
        data = train_yaml(root / name, d["train"], d["val"], steps=STEPS, batch_size=batch_size,
                          ema={"decay": 0.0}, optim={"lr": 3e-3, "warmup_steps": 3, "weight_decay": 0.01},
                          validation={"every": 2, "items": 64, "decode_items": 2, "decode_max_len": 8,
                                      "dump_midi": 0},
                          checkpoint={"every": 2, "keep_last": 20, "keep_best": 0}, **top)
        return write_yaml(root / f"{name}.yaml", data)

    d["config"] = config
    return d


def _driver(setup, out: Path, *runs, loader: bool = False, expect: str | None = None) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [str(DRIVER), "--fixed-data", str(setup["train"]), "--global-batch", str(GLOBAL_BATCH), "--out", str(out)]
    for ds, cfg in runs:
        cmd += ["--run", str(ds), str(cfg)]
    if loader:
        cmd += ["--loader-folders", str(setup["alpha"]), str(setup["beta"])]
    if expect:
        cmd += ["--expect", expect]
    return cmd


@pytest.fixture(scope="module")
def two_ranks(setup):
    """One 2-rank launch: loader dump, a mismatched-config run (refused), ZeRO-1 and ZeRO-2 runs."""
    root, config = setup["root"], setup["config"]
    config("mismatch", 2, seed=42)  # rank 0 reads mismatch_0.yaml, rank 1 mismatch_1.yaml
    os.replace(root / "mismatch.yaml", root / "mismatch_0.yaml")
    config("mismatch", 2, seed=7)
    os.replace(root / "mismatch.yaml", root / "mismatch_1.yaml")
    runs = [(setup["ds1"], root / "mismatch_{rank}.yaml"), (setup["ds1"], config("zero1", 2)),
            (setup["ds2"], config("zero2", 2))]
    out = root / "two_ranks"
    p = subprocess.run(["deepspeed", "--num_gpus", "2", "--master_port", str(_free_port()),
                        *_driver(setup, out, *runs, loader=True, expect="1,0,0")],
                       capture_output=True, text=True, env=_env(), timeout=LAUNCH_TIMEOUT, cwd=root)
    return {"proc": p, "out": out, "log": p.stdout + p.stderr}


@pytest.fixture(scope="module")
def one_rank(setup):
    """The reference: one rank, micro-batch 4, the same picks, in this process (ZeRO-1; one rank partitions
    nothing, so it is the reference for both stages)."""
    import mt3ds.data.loader as loader_module
    from mt3ds.train.config import load_ds_config, load_train_config
    from mt3ds.train.engine import train

    cfg = load_train_config(setup["config"]("one_rank", GLOBAL_BATCH))
    samples = read_samples(setup["train"])
    picks = fixed_batches(setup["train"], GLOBAL_BATCH, STEPS, cfg.model.time_encoding)
    mp = pytest.MonkeyPatch()
    mp.setattr(loader_module, "train_loader",
               lambda folders, loader_cfg, rank=None, world_size=None: FixedLoader(samples, picks, 0, 1,
                                                                                   cfg.model.time_encoding))
    try:
        state = train(cfg, load_ds_config(setup["ds1"]))
    finally:
        mp.undo()
    return Path(cfg.run_dir), state


@pytest.fixture(scope="module")
def two_nodes(setup):
    """Two launchers on localhost, one rank each (the README's --no_ssh line); node 1's rank killed after step 4."""
    root = setup["root"]
    hostfile = root / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")  # two names for this box: two "nodes"
    cfg = setup["config"]("nodes", 2)
    out = root / "nodes_out"
    port = str(_free_port())
    logs = [open(root / f"node{i}.log", "w") for i in (0, 1)]
    procs = [subprocess.Popen(["deepspeed", "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(i),
                               "--master_addr", "127.0.0.1", "--master_port", port,
                               *_driver(setup, out, (setup["ds2"], cfg))],
                              stdout=logs[i], stderr=subprocess.STDOUT, env=_env(), cwd=root) for i in (0, 1)]
    latest = root / "nodes" / "checkpoints" / "latest"
    deadline = time.time() + LAUNCH_TIMEOUT
    killed_at = None
    try:
        while time.time() < deadline and all(p.poll() is None for p in procs):
            if latest.is_file() and latest.read_text() >= ckpt.tag_for(KILL_AFTER):
                os.kill(int((out / "pid_rank1").read_text()), signal.SIGKILL)
                killed_at = time.time()
                break
            time.sleep(0.02)
        codes = [p.wait(timeout=max(1, deadline - time.time())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs:
            f.close()
    return {"codes": codes, "killed_at": killed_at, "ended": time.time(), "cfg": cfg,
            "logs": [(root / f"node{i}.log").read_text() for i in (0, 1)], "run_dir": root / "nodes"}


@pytest.fixture(scope="module")
def resumed(setup, two_nodes):
    """The killed run relaunched with `deepspeed --num_gpus 2` (world size 2 again)."""
    root = setup["root"]
    killed = {r["step"]: r for r in metrics(two_nodes["run_dir"])}
    resumed_from = ckpt.read_state(ckpt.latest_checkpoint(two_nodes["run_dir"] / "checkpoints"))["step"]
    p = subprocess.run(["deepspeed", "--num_gpus", "2", "--master_port", str(_free_port()),
                        *_driver(setup, root / "resumed_out", (setup["ds2"], two_nodes["cfg"]))],
                       capture_output=True, text=True, env=_env(), timeout=LAUNCH_TIMEOUT, cwd=root)
    return {"proc": p, "killed": killed, "from": resumed_from, "log": p.stdout + p.stderr}


# ----------------------------------------------------------------------------------------------------------------
# 1. Data-parallel equivalence

# Tolerances. Both runs are fp32 on the same CPU; they differ only in summation order (gloo adds the two ranks'
# half-batch gradients, one rank sums the whole batch; matmuls over 2 vs 4 rows).
# - Losses and learning rates: 1e-5 relative; gradient norms: 1e-4 (measured: at most 4e-7 and 2.7e-6, the latter
#   with ATEN_CPU_CAPABILITY=avx2). These are the sharp checks: one sample doubled at step 7 or at step 11 of 12
#   moves that step's loss by 3e-3 to 9e-3 and its gradient norm by 2e-2.
# - Weights cannot be held to rounding level. Early in training the encoder's gradients are tiny sums that nearly
#   cancel, and Adam scales each element's update to about lr whatever its size, so a rounding-level gradient
#   difference there becomes a visible weight difference. Measured after 12 steps, as the L2 distance between the two
#   runs' weights over the distance the reference moved from step 2 to step 12: 2e-7 in most runs, and 1.0e-3 to
#   1.7e-3 in the runs where a rounding difference lands on such an element (at most 5e-3 on one tensor; seen with
#   both AVX-512 and AVX2 kernels, ZeRO-1 and ZeRO-2). A sample doubled at step 7 gives 1.0e-2.
#   The weight check therefore guards gross faults the losses could miss in the saved state: a tensor left
#   untouched or a rank's partition of the optimizer step lost gives ~1 on that tensor. The same holds for a
#   resumed run against the uninterrupted one (measured 1.0e-3 at most there).
LOSS_RTOL = 1e-5
GRAD_NORM_RTOL = 1e-4
WEIGHT_GAP_WHOLE = 1e-2
WEIGHT_GAP_TENSOR = 0.1


@pytest.mark.parametrize("stage", [1, 2])
def test_two_ranks_train_like_one_rank_with_twice_the_micro_batch(setup, two_ranks, one_rank, stage):
    assert two_ranks["proc"].returncode == 0, two_ranks["log"][-4000:]
    ref_dir, ref_state = one_rank
    run_dir = setup["root"] / f"zero{stage}"
    ours, ref = metrics(run_dir), metrics(ref_dir)
    assert [r["step"] for r in ours] == [r["step"] for r in ref] == list(range(1, STEPS + 1))
    for a, b in zip(ours, ref):
        for key in ("loss", "token_loss", "token_acc", "lr"):
            assert a[key] == pytest.approx(b[key], rel=LOSS_RTOL, abs=1e-12), (stage, a["step"], key)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=GRAD_NORM_RTOL), (stage, a["step"])
    assert ours[-1]["samples"] == ref[-1]["samples"] == STEPS * GLOBAL_BATCH
    whole, worst = _update_gaps(_weights(run_dir, STEPS), _weights(ref_dir, STEPS), _weights(ref_dir, 2))
    assert whole <= WEIGHT_GAP_WHOLE and worst <= WEIGHT_GAP_TENSOR, (stage, whole, worst)
    # the runs did learn (the comparison is not between two untouched models)
    assert _max_diff(_weights(ref_dir, STEPS), _weights(ref_dir, 2)) > 1e-3
    state = json.loads((run_dir / "checkpoints" / ckpt.tag_for(STEPS) / ckpt.STATE).read_text())
    assert state["world_size"] == 2 and state["ds_config"]["zero_optimization"]["stage"] == stage
    assert state["ds_config"]["train_batch_size"] == GLOBAL_BATCH == ref_state["samples"] // STEPS
    optim_files = sorted(p.name for p in (run_dir / "checkpoints" / ckpt.tag_for(STEPS)).glob("*optim_states.pt"))
    assert optim_files == ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]


def test_ranks_started_with_different_configs_are_refused(two_ranks):
    codes = [json.loads((two_ranks["out"] / f"returncodes_rank{r}.json").read_text()) for r in (0, 1)]
    assert codes == [[1, 0, 0], [1, 0, 0]], two_ranks["log"][-4000:]
    refusals = [ln for ln in two_ranks["log"].splitlines() if "train.py: error: rank 1 was started with another" in ln]
    assert refusals and "another seed than rank 0" in refusals[0], two_ranks["log"][-4000:]
    assert "Traceback" not in two_ranks["log"]


# ----------------------------------------------------------------------------------------------------------------
# 2. Two nodes on one box, and a rank that dies

def _expected_validation(setup) -> tuple[int, int]:
    """(chunks, target tokens) of the whole validation folder, read by one process."""
    from mt3ds.data.loader import collate

    samples = read_samples(setup["val"])
    return len(samples), sum(int(collate([s], "absolute")["attention_mask"].sum()) for s in samples)


def test_two_nodes_train_validate_and_checkpoint(setup, two_nodes):
    log0, log1 = two_nodes["logs"]
    assert two_nodes["killed_at"] is not None, "the run ended or stalled before step 4: " + log0[-3000:]
    assert "--node_rank=0" in log0 and "--node_rank=1" in log1  # two launchers, one per "node"
    assert "micro-batch 2 x accumulation 1 x 2 ranks = 4 chunks per step" in log0
    chunks, tokens = _expected_validation(setup)
    val = [r for r in metrics(two_nodes["run_dir"], "validation") if r["step"] <= KILL_AFTER]
    assert [r["step"] for r in val] == [2, 4]
    for r in val:  # every validation sample read once across the two ranks: all chunks, all their target tokens
        assert r["chunks"] == chunks == 4 and r["tokens"] == tokens
    for step in (2, 4):
        tag = two_nodes["run_dir"] / "checkpoints" / ckpt.tag_for(step)
        assert json.loads((tag / ckpt.STATE).read_text())["world_size"] == 2
        assert (tag / "zero_pp_rank_1_mp_rank_00_optim_states.pt").is_file()  # node 1's partition, same folder
        assert sorted(p.name for p in (tag / "rng").iterdir()) == ["rank00000.json", "rank00000.safetensors",
                                                                  "rank00001.json", "rank00001.safetensors"]


def test_a_killed_rank_stops_the_other_node_with_one_line(two_nodes):
    log0, _ = two_nodes["logs"]
    assert two_nodes["codes"][0] != 0 and two_nodes["codes"][1] != 0
    assert two_nodes["ended"] - two_nodes["killed_at"] < 60  # noticed at once, not after a collective timeout
    lines = [ln for ln in log0.splitlines() if "train.py: error:" in ln]
    assert len(lines) == 1, log0[-3000:]
    assert "rank 0 lost contact with another rank" in lines[0] and "relaunch the same command" in lines[0]
    assert "Traceback" not in log0


# ----------------------------------------------------------------------------------------------------------------
# 3. Resume at world size 2

def test_resume_at_world_size_two_equals_the_uninterrupted_run(setup, two_ranks, resumed):
    assert resumed["proc"].returncode == 0, resumed["log"][-4000:]
    k = resumed["from"]
    assert KILL_AFTER <= k < STEPS
    assert f"resumed from {ckpt.tag_for(k)}; step {k} of {STEPS}" in resumed["log"]
    run_dir, reference = setup["root"] / "nodes", setup["root"] / "zero2"
    after = metrics(run_dir)
    assert [r["step"] for r in after] == list(range(1, STEPS + 1))  # one line per step, no repeats
    ref = {r["step"]: r for r in metrics(reference)}
    for r in after:  # the same step, schedule, optimizer state and data position as the uninterrupted run
        for key in ("loss", "token_loss", "lr"):
            assert r[key] == pytest.approx(ref[r["step"]][key], rel=LOSS_RTOL, abs=1e-12), (r["step"], key)
        assert r["grad_norm"] == pytest.approx(ref[r["step"]]["grad_norm"], rel=GRAD_NORM_RTOL), r["step"]
    for s in resumed["killed"]:
        if s > k:  # steps the killed run took past its checkpoint: taken again alike
            assert resumed["killed"][s]["loss"] == pytest.approx({r["step"]: r for r in after}[s]["loss"],
                                                                 rel=LOSS_RTOL)
    whole, worst = _update_gaps(_weights(run_dir, STEPS), _weights(reference, STEPS), _weights(reference, 2))
    assert whole <= WEIGHT_GAP_WHOLE and worst <= WEIGHT_GAP_TENSOR, (whole, worst)
    state = ckpt.read_state(ckpt.latest_checkpoint(run_dir / "checkpoints"))
    assert state["step"] == STEPS and state["samples"] == STEPS * GLOBAL_BATCH and state["world_size"] == 2
    assert [r["step"] for r in metrics(run_dir, "validation")][-1] == STEPS


def test_resume_at_another_world_size_is_refused_with_the_way_out(setup, two_nodes, resumed):
    from mt3ds.train.config import load_ds_config, load_train_config
    from mt3ds.train.engine import train

    cfg = load_train_config(two_nodes["cfg"], {"steps": STEPS + 2})
    with pytest.raises(UserError) as e:
        train(cfg, load_ds_config(setup["ds2"]))  # this process is one rank
    message = str(e.value)
    assert "written by 2 ranks, ZeRO stage 2, bf16 False; this run has 1 ranks" in message
    assert "resume as it was, or export it and start a new run with init_from" in message and "\n" not in message


# ----------------------------------------------------------------------------------------------------------------
# 4. The training loader under the launcher

def test_loader_streams_are_distinct_per_rank_and_worker_and_mix_per_rank(two_ranks):
    assert two_ranks["proc"].returncode == 0, two_ranks["log"][-4000:]
    dumps = [json.loads((two_ranks["out"] / f"loader_rank{r}.json").read_text()) for r in (0, 1)]
    assert [(d["rank"], d["world"]) for d in dumps] == [(0, 2), (1, 2)]  # found by the loader, not passed
    # DataLoader hands out batches from its workers in turn: batch i came from worker i % workers
    streams = {(d["rank"], i % d["workers"]): [] for d in dumps for i in range(len(d["batches"]))}
    for d in dumps:
        for i, b in enumerate(d["batches"]):
            streams[(d["rank"], i % d["workers"])].append(b)
    assert len(streams) == 4
    pool = 24 + 8
    names = sorted(streams)
    for x in range(len(names)):
        for y in range(x + 1, len(names)):
            a, b = streams[names[x]], streams[names[y]]
            assert all(p["keys"] != q["keys"] for p, q in zip(a, b)), (names[x], names[y])  # no batch drawn twice
            same = sum(ka == kb for p, q in zip(a, b) for ka, kb in zip(p["keys"], q["keys"]))
            positions = sum(len(p["keys"]) for p in a)
            assert same <= max(3, 3 * positions / pool), (names[x], names[y], same)  # chance level, not a copy
    # mixing weights n^0.7 (the default mix_alpha): alpha 24 samples, beta 8
    target = 24 ** 0.7 / (24 ** 0.7 + 8 ** 0.7)
    for d in dumps:
        datasets = [n for b in d["batches"] for n in b["datasets"]]
        assert abs(datasets.count("alpha") / len(datasets) - target) < 0.05, (d["rank"], datasets)


# ----------------------------------------------------------------------------------------------------------------
# Bad input: a hostfile naming a host that does not exist

def test_hostfile_with_a_missing_host_fails_in_one_line(setup):
    hostfile = setup["root"] / "bad_hostfile"
    hostfile.write_text("nohost.invalid slots=1\nlocalhost slots=1\n")
    p = subprocess.run(["deepspeed", "--hostfile", str(hostfile), str(REPO / "bin" / "train.py"), "--ds_config",
                        str(setup["ds2"]), "--config", str(setup["config"]("unused", 2))],
                       capture_output=True, text=True, env=_env(), timeout=120, cwd=setup["root"])
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert "host=nohost.invalid was not reachable via ssh" in last, p.stderr[-2000:]
