"""Inference cost of the encoder and note heads for the width/depth side-by-side shapes (BENCHMARKS.md).

    python bench/encoder_shapes.py [--threads 1] [--repeats 10]

Times `encode` + `head_probs` (what `mt3ds transcribe --notes frames` runs per batch) on 30 chunks of random log-mel
(61.4 s of audio) in batches of 8, with random weights (the cost does not depend on them), and prints seconds and
real-time factor per shape: the shapes take turns, best of the timed turns after one warm-up turn.
"""
from __future__ import annotations

import argparse
import time

import torch

from mt3ds.model.config import ModelConfig
from mt3ds.model.transcriber import Transcriber

SHAPES = {  # name: ModelConfig overrides on the small preset
    "small d256x4": dict(d_model=256, enc_layers=4, heads=4, mlp_dim=1024),
    "wide d384x2": dict(d_model=384, enc_layers=2, heads=6, mlp_dim=1536),
    "deep d192x7": dict(d_model=192, enc_layers=7, heads=3, mlp_dim=768),
}
CHUNKS, BATCH = 30, 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = ModelConfig.preset("small")
    frames = 256
    audio_s = CHUNKS * 2.048
    feats = torch.randn(CHUNKS, frames, base.n_mels)
    models = {}
    for name, shape in SHAPES.items():
        cfg = ModelConfig.preset("small", **shape, conditioning="encoder_film", aux_frame_loss=False,
                                 note_heads=True, front_end="linear", time_pool=2, token_weight=0.0)
        models[name] = Transcriber(cfg).eval()
    times = {name: [] for name in models}
    with torch.no_grad():
        for _ in range(args.repeats + 1):  # the shapes take turns, so a busy moment of the machine hits them alike
            for name, model in models.items():
                start = time.perf_counter()
                for i in range(0, CHUNKS, BATCH):
                    model.head_probs(model.encode(feats[i:i + BATCH], None), frames)
                times[name].append(time.perf_counter() - start)
    for name, model in models.items():
        blocks = sum(p.numel() for n, p in model.named_parameters() if n.startswith("enc_blocks"))
        best = min(times[name][1:])  # the first turn warms up
        print(f"{name}: encoder blocks {blocks / 1e6:.2f} M params, {best:.3f} s for {audio_s:.1f} s of audio, "
              f"RTF {best / audio_s:.4f}")


if __name__ == "__main__":
    main()
