"""bin/train.py with a fixed data source, run under DeepSpeed's launcher by tests/test_scaleout.py.

Data-parallel equivalence needs the same samples in a 1-rank run (micro-batch 2b) and a 2-rank run (micro-batch b
per rank), which the real training loader cannot give: its streams are seeded per rank. So `fixed_batches` picks,
for every optimizer step, 2b samples of a shard folder (the same on every rank, from a fixed seed); rank r of R
trains on the r-th of R equal slices, one rank on all of them. Everything else is bin/train.py's `main()`: the
config and ds_config checks, DeepSpeed, the engine's loop, validation with the real validation loader, checkpoints.

Our loss is the token mean of a micro-batch and DeepSpeed averages the ranks' gradients, so the two runs compute the
same gradient only when every slice holds the same number of target tokens; the picks are made so (any data-parallel
trainer with a per-batch token-mean loss has this property; the token-loss metric is exact either way).

    deepspeed --num_gpus 2 tests/scaleout_driver.py --fixed-data FOLDER --global-batch 4 --out DIR \\
        --run ds.json t.yaml [--run ds2.json t2.yaml ...] [--loader-folders A B]

Each rank writes its pid (DIR/pid_rankR) first, so a test can kill one rank, and the runs' exit statuses last
(DIR/returncodes_rankR.json). With --loader-folders it first reads a few batches of the real training loader on every
rank (2 workers; rank and world size found by the loader itself) and writes the keys and datasets of each batch to
DIR/loader_rankR.json.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def read_samples(folder) -> list[dict]:
    """Every decoded sample of a shard folder, in manifest order."""
    import webdataset as wds

    from mt3ds.data.loader import decode_sample, read_manifest

    pipeline = wds.DataPipeline(wds.SimpleShardList(list(read_manifest(folder).urls)), wds.tarfile_to_samples())
    return [decode_sample(raw) for raw in pipeline]


def fixed_batches(folder, global_batch: int, steps: int, time_encoding: str, slices: int = 2, seed: int = 0
                  ) -> list[list[int]]:
    """For each step, `global_batch` sample indices whose `slices` equal slices hold equal target-token counts (the
    same picks at every world size: one rank trains on all slices of a step, `slices` ranks on one each)."""
    from mt3ds.data.loader import collate

    samples = read_samples(folder)
    tokens = [int(collate([s], time_encoding)["attention_mask"].sum()) for s in samples]
    per = global_batch // slices
    picks = []
    for combo in itertools.permutations(range(len(samples)), global_batch):
        parts = [combo[i * per:(i + 1) * per] for i in range(slices)]
        if all(list(s) == sorted(s) for s in parts) and len({sum(tokens[i] for i in s) for s in parts}) == 1:
            picks.append(list(combo))
        if len(picks) >= 50 * steps:
            break
    if len(picks) < steps:
        raise ValueError(f"{folder}: too few equal-token splits ({len(picks)}) for {steps} steps")
    order = np.random.default_rng(seed).permutation(len(picks))[:steps]
    return [picks[i] for i in order]


class FixedLoader:
    """Stands in for train_loader(): this rank's slice of each step's picks; set_epoch(step) resumes at `step`."""

    def __init__(self, samples: list[dict], picks: list[list[int]], rank: int, world: int, time_encoding: str):
        self.samples, self.picks, self.rank, self.world, self.time_encoding = samples, picks, rank, world, time_encoding
        self.dataset = self
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.start = int(epoch)

    def __iter__(self):
        from mt3ds.data.loader import collate

        for pick in self.picks[self.start:]:
            per = len(pick) // self.world
            mine = pick[self.rank * per:(self.rank + 1) * per]
            batch = collate([self.samples[i] for i in mine], self.time_encoding)
            batch["skipped"] = 0
            yield batch


def dump_loader(folders: list[str], out: Path, batches: int = 12) -> None:
    """This rank's first batches from the real training loader (2 workers): keys and dataset names per batch."""
    import torch.distributed as dist

    from mt3ds.data.loader import LoaderConfig, train_loader

    cfg = LoaderConfig(batch_size=4, num_workers=2, prefetch_factor=1, pin_memory=False, shuffle_buffer=8,
                       shuffle_initial=2, augment=False, seed=42, time_encoding="delta")
    loader = train_loader(folders, cfg)  # rank and world size from torch.distributed, as the launcher set them
    rows = []
    for batch in itertools.islice(iter(loader), batches):
        rows.append({"keys": batch["keys"], "datasets": [m["dataset"] for m in batch["meta"]]})
    rank = dist.get_rank()
    (out / f"loader_rank{rank}.json").write_text(json.dumps({"rank": rank, "world": dist.get_world_size(),
                                                             "workers": 2, "batches": rows}))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--fixed-data", required=True, help="Shard folder the fixed batches are picked from.")
    p.add_argument("--global-batch", type=int, required=True, help="Samples per optimizer step over all ranks.")
    p.add_argument("--run", nargs=2, action="append", required=True, metavar=("DS_CONFIG", "CONFIG"),
                   help="One bin/train.py run (repeatable, run in order); {rank} in CONFIG becomes this rank.")
    p.add_argument("--out", required=True, help="Folder for pid_rankR, returncodes_rankR.json, loader_rankR.json.")
    p.add_argument("--loader-folders", nargs="*", default=[], help="Dump the real training loader over these first.")
    p.add_argument("--expect", default=None,
                   help="Comma-separated exit statuses the runs should have (default: all 0).")
    p.add_argument("--local_rank", type=int, default=None)
    args = p.parse_args()
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))

    import importlib.util

    import mt3ds.data.loader as loader_module
    from mt3ds.train.config import load_train_config
    from mt3ds.train.engine import init_distributed

    spec = importlib.util.spec_from_file_location("train_py", REPO / "bin" / "train.py")
    train_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_py)
    out = Path(args.out)
    rank, _, world = init_distributed()
    (out / f"pid_rank{rank}").write_text(str(os.getpid()))
    if args.loader_folders:
        dump_loader(args.loader_folders, out)
    samples = read_samples(args.fixed_data)
    codes = []
    for ds_path, cfg_path in args.run:
        cfg_path = cfg_path.replace("{rank}", str(rank))
        cfg = load_train_config(cfg_path)
        picks = fixed_batches(args.fixed_data, args.global_batch, cfg.steps, cfg.model.time_encoding)

        def fixed_train_loader(folders, loader_cfg, rank=None, world_size=None, picks=picks, cfg=cfg):
            assert loader_cfg.batch_size * world_size == args.global_batch, "micro-batch x ranks != --global-batch"
            return FixedLoader(samples, picks, rank, world_size, cfg.model.time_encoding)

        loader_module.train_loader = fixed_train_loader  # train() imports it from the module when it runs
        codes.append(train_py.main(["--ds_config", ds_path, "--config", cfg_path]))
    (out / f"returncodes_rank{rank}.json").write_text(json.dumps(codes))
    expected = [int(c) for c in args.expect.split(",")] if args.expect else [0] * len(codes)
    return 0 if codes == expected else 1  # a refusal can be what a test wants; anything else fails the launch


if __name__ == "__main__":
    sys.exit(main())
