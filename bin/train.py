#!/usr/bin/env python3
"""Train the mt3ds transcriber with DeepSpeed. The same script runs one CPU process and many H100 nodes.

CPU smoke run (a few minutes on 2 cores; tiny model, shards from `mt3ds shard`; on a small or shared CPU box
export OMP_WAIT_POLICY=PASSIVE first, see ds_configs/README.md):
    deepspeed --num_gpus 1 bin/train.py --ds_config ds_configs/cpu.json --config configs/smoke_cpu.yaml
  or without the launcher (one process; RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT are filled in):
    python bin/train.py --ds_config ds_configs/cpu.json --config configs/smoke_cpu.yaml

One GPU:
    deepspeed --num_gpus 1 bin/train.py --ds_config ds_configs/bf16.json --config configs/base_gpu.yaml

8 GPUs on one node:
    deepspeed --num_gpus 8 bin/train.py --ds_config ds_configs/bf16.json --config configs/base_gpu.yaml

Several nodes (passwordless ssh between them, the repository and shard folders at the same path on every node,
run_dir on shared storage); hostfile lines are `HOSTNAME slots=GPUS`:
    deepspeed --hostfile hostfile --master_addr node1 --master_port 29500 \\
        bin/train.py --ds_config ds_configs/zero2.json --config configs/base_gpu.yaml

Any training-config key can be overridden on the command line: --set steps=1000 --set optim.lr=1e-3.
DeepSpeed's own INFO and WARNING lines are left out (its errors are not); MT3DS_DEEPSPEED_LOG=info shows them. The
deepspeed launcher's lines are its own: `deepspeed -q` leaves out most of them.
Killed at any moment, the same command resumes from the run folder's latest checkpoint (step, learning-rate
schedule, optimizer, EMA and RNG states). Export the result with `mt3ds export RUN_DIR -o model.safetensors`.
A mistake in the inputs is one line on stderr and exit status 1, before any training starts.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from mt3ds.errors import UserError  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train the mt3ds transcriber with DeepSpeed (see the module docstring).")
    p.add_argument("--ds_config", required=True, help="DeepSpeed JSON config (ds_configs/bf16.json, zero2.json, "
                                                       "cpu.json).")
    p.add_argument("--config", default=None, help="Training config YAML (configs/*.yaml): model, data, schedule, "
                                                   "cadence, run_dir.")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="Override one training-config key (dotted, value read as YAML); repeatable.")
    p.add_argument("--local_rank", type=int, default=None, help="Set by the deepspeed launcher.")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import os

        if args.local_rank is not None:
            os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
        from mt3ds.train.config import load_ds_config, load_train_config, parse_override

        overrides = dict(parse_override(o) for o in args.overrides)
        cfg = load_train_config(args.config, overrides)
        ds = load_ds_config(args.ds_config)
        from mt3ds.train.engine import quiet_deepspeed_logs, train

        quiet_deepspeed_logs()  # before deepspeed is first imported

        train(cfg, ds, args.ds_config)
    except UserError as e:
        print(f"train.py: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except RuntimeError as e:  # torch.distributed's errors are RuntimeErrors; only a lost rank becomes one line
        from mt3ds.train.engine import lost_rank_message

        message = lost_rank_message(e)
        if message is None:
            raise
        print(f"train.py: error: {message}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
