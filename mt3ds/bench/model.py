"""`mt3ds bench model`: what the transcription model costs to train and to decode.

For each preset (default `small` and `base`), on the CPU:
    parameter count; one training step (forward + backward of model.loss, no optimizer) in fp32 and in bf16;
    bf16 here means what DeepSpeed's bf16 mode does: weights cast to bf16, bf16 inputs, no autocast (the LM head
    and the losses still run in fp32 inside the model);
    greedy decoding of a batch of segments to the full length (EOS ignored) with the KV cache, measured, and
    without it, estimated: re-running the decoder over the whole prefix costs one uncached step per token, so the
    uncached step is timed at a few prefix lengths, interpolated linearly in between and summed over every length
    (timing all 1024 uncached steps would take over 15 minutes for `small` on 2 cores). A short uncached run of
    `check_tokens` tokens is also timed in full, beside the cached one, as a direct check on the estimate.
On CUDA, in addition: the bf16 training step with attention forced to flash and to math, its model FLOPs
utilization (MFU, analytic FLOPs / time / peak bf16 dense FLOP/s of the GPU: mt3ds/model/flops.py), and cached
decoding.

`kv_cache_speedup` is the smallest of the presets' estimated uncached / measured cached decoding times.
"""
from __future__ import annotations

import time

import torch

from ..model import attention as attn
from ..model.config import ModelConfig
from ..model.flops import peak_bf16_flops, train_flops
from ..model.generate import Search, Stepper, generate
from ..model.transcriber import Transcriber
from ..tokens import vocab


def bench_model(presets=("small", "base"), batch: int = 8, train_tokens: int = 1024, frames: int = 256,
                decode_batch: int = 16, decode_tokens: int = 1024, check_tokens: int = 32, repeats: int = 2) -> dict:
    """Return the figures (flat dict) for each preset; see the module docstring."""
    torch.manual_seed(0)
    fig: dict = {"device": "cpu", "threads": torch.get_num_threads(),
                 "train_batch": f"{batch} x {train_tokens} tokens, {frames} frames",
                 "decode_batch": f"{decode_batch} segments x {decode_tokens} tokens",
                 "bf16": "weights cast to bf16 (as DeepSpeed), no autocast"}
    speedups = []
    for name in presets:
        cfg = ModelConfig.preset(name)
        model = Transcriber(cfg)
        fig[f"{name}_params"] = model.num_params()
        fig[f"{name}_train_step_fp32_s"] = _train_step_time(model, torch.float32, batch, train_tokens, frames, repeats)
        fig[f"{name}_train_step_bf16_s"] = _train_step_time(model, torch.bfloat16, batch, train_tokens, frames, repeats)
        model = model.float().eval()
        model.zero_grad(set_to_none=True)
        features = torch.randn(decode_batch, frames, cfg.n_mels)
        cached = _time(lambda: _decode(model, features, decode_tokens), 1,
                       warmup=lambda: _decode(model, features, check_tokens))
        uncached = _uncached_estimate(model, features, decode_tokens)
        n = decode_batch * decode_tokens
        fig[f"{name}_greedy_cached_tok_s"] = n / cached
        fig[f"{name}_greedy_uncached_tok_s_est"] = n / uncached
        fig[f"{name}_kv_cache_speedup"] = uncached / cached
        short_cached = _time(lambda: _decode(model, features, check_tokens), 1)
        short_uncached = _time(lambda: _decode(model, features, check_tokens, use_cache=False), 1)
        fig[f"{name}_kv_cache_speedup_{check_tokens}_tokens_measured"] = short_uncached / short_cached
        speedups.append(uncached / cached)
        if torch.cuda.is_available():
            fig.update(_cuda_figures(name, cfg, batch, train_tokens, frames, decode_batch, decode_tokens, repeats))
    fig["kv_cache_speedup"] = min(speedups)
    return fig


def _decode(model: Transcriber, features: torch.Tensor, n_tokens: int, use_cache: bool = True) -> None:
    """Greedy decoding of n_tokens per segment whatever is emitted, as transcribe decodes (grammar on)."""
    generate(model, features, search=Search(max_len=n_tokens, ignore_eos=True, use_cache=use_cache))


def _batch(cfg: ModelConfig, B: int, T: int, S: int, device, dtype) -> tuple[torch.Tensor, dict]:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(3, cfg.vocab_size, (B, T), generator=g)
    tokens[:, -1] = vocab.EOS
    decoder_input = torch.cat([torch.full((B, 1), vocab.PAD), tokens[:, :-1]], 1)
    features = torch.randn(B, S, cfg.n_mels, generator=g).to(device, dtype)
    return features, {"decoder_input": decoder_input.to(device), "labels": tokens.to(device)}


def _train_step_time(model: Transcriber, dtype, B, T, S, repeats, device="cpu") -> float:
    model = model.to(device, dtype).train()
    features, batch = _batch(model.cfg, B, T, S, device, dtype)

    def step():
        model.zero_grad(set_to_none=True)
        loss, _ = model.loss(features, batch)
        loss.backward()

    return _time(step, repeats, device)


def _uncached_estimate(model: Transcriber, features: torch.Tensor, n_tokens: int) -> float:
    """Seconds to greedily decode n_tokens without the cache: sum over t of the step time at prefix length t,
    interpolated from steps timed at a few prefix lengths."""
    with torch.no_grad():
        memory = model.encode(features)
        lengths = sorted({1, n_tokens // 4, n_tokens // 2, 3 * n_tokens // 4, n_tokens} - {0})
        times = []
        token = torch.full((features.shape[0],), vocab.PAD, dtype=torch.long)
        for i, t in enumerate(lengths):
            step = Stepper(model, memory, None, n_tokens, use_cache=False)

            def one():
                step.prefix = torch.randint(3, model.cfg.vocab_size, (features.shape[0], t - 1))
                step(token)  # one uncached step at prefix length t

            times.append(_time(one, 1, warmup=None if i == 0 else (lambda: None)))  # one warm-up is enough
    all_t = torch.arange(1, n_tokens + 1, dtype=torch.float64)
    xs, ys = torch.tensor(lengths, dtype=torch.float64), torch.tensor(times, dtype=torch.float64)
    idx = torch.searchsorted(xs, all_t).clamp(1, len(xs) - 1)
    x0, x1, y0, y1 = xs[idx - 1], xs[idx], ys[idx - 1], ys[idx]
    return float((y0 + (y1 - y0) * (all_t - x0) / (x1 - x0)).sum())


def _time(fn, repeats: int, device="cpu", warmup=None) -> float:
    """Best of `repeats` timed calls of fn after one call of warmup (default: fn itself)."""
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    (warmup or fn)()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def _cuda_figures(name, cfg, B, T, S, decode_batch, decode_tokens, repeats) -> dict:
    device = torch.device("cuda")
    gpu = torch.cuda.get_device_name(device)
    peak = peak_bf16_flops(gpu)
    fig = {f"{name}_cuda_device": gpu}
    model = Transcriber(cfg)
    for backend in ("flash", "math"):
        attn.force_backend(backend)
        try:
            fig[f"{name}_cuda_train_step_bf16_{backend}_s"] = _train_step_time(model, torch.bfloat16, B, T, S,
                                                                               repeats, device)
        finally:
            attn.force_backend(None)
    fig[f"{name}_cuda_flash_speedup"] = (fig[f"{name}_cuda_train_step_bf16_math_s"]
                                         / fig[f"{name}_cuda_train_step_bf16_flash_s"])
    step = fig[f"{name}_cuda_train_step_bf16_flash_s"]
    fig[f"{name}_cuda_train_step_fp32_s"] = _train_step_time(model, torch.float32, B, T, S, repeats, device)
    if peak:
        fig[f"{name}_cuda_mfu_bf16"] = train_flops(cfg, B, T, S) / step / peak
    model = model.to(device, torch.bfloat16).eval()
    features = torch.randn(decode_batch, S, cfg.n_mels, device=device, dtype=torch.bfloat16)
    cached = _time(lambda: _decode(model, features, decode_tokens), 1, device,
                   warmup=lambda: _decode(model, features, 16))
    fig[f"{name}_cuda_greedy_cached_bf16_tok_s"] = decode_batch * decode_tokens / cached
    return fig
