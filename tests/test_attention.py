"""Attention backends agree, causality is bottom-right aligned, the KV cache writes and reorders what it should."""
import math

import pytest
import torch

from mt3ds.model import attention as A

BACKENDS = ("math", "sdpa", "flash", "auto")


def qkv(B=2, H=3, Tq=5, Tk=5, D=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g).to(dtype) for T in (Tq, Tk, Tk)]


def reference(q, k, v, allowed=None, bias=None):
    """Written out in float64 from the definition."""
    s = q.double() @ k.double().transpose(-2, -1) / math.sqrt(q.shape[-1])
    if bias is not None:
        s = s + bias.double()
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    return (s.softmax(-1) @ v.double()).float()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["plain", "causal", "causal_more_keys", "one_query_causal", "bias", "key_mask"])
def test_backends_agree_with_the_definition(backend, case):
    Tq, Tk = {"causal_more_keys": (3, 7), "one_query_causal": (1, 6)}.get(case, (5, 5))
    q, k, v = qkv(Tq=Tq, Tk=Tk)
    kw, allowed, bias = {}, None, None
    if case.startswith(("causal", "one_query")):
        kw["causal"] = True
        allowed = torch.ones(Tq, Tk, dtype=torch.bool).tril(diagonal=Tk - Tq)  # query i sits at Tk - Tq + i
    if case == "bias":
        bias = torch.randn(1, 3, Tq, Tk, generator=torch.Generator().manual_seed(5))
        kw["bias"] = bias
    if case == "key_mask":
        key_mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
        kw["key_mask"] = key_mask
        allowed = key_mask[:, None, None, :]
    out = A.attention(q, k, v, backend=backend, **kw)
    torch.testing.assert_close(out, reference(q, k, v, allowed, bias), atol=1e-5, rtol=1e-5)


def test_one_new_query_sees_every_cached_key():
    # SDPA's is_causal aligns top-left: one query would see only key 0. Ours must equal unmasked attention.
    q, k, v = qkv(Tq=1, Tk=9)
    for backend in BACKENDS:
        torch.testing.assert_close(A.attention(q, k, v, causal=True, backend=backend),
                                   A.attention(q, k, v, causal=False, backend="math"), atol=1e-6, rtol=1e-6)


def test_causal_chunk_equals_the_tail_of_full_causal_attention():
    q, k, v = qkv(Tq=8, Tk=8)
    full = A.attention(q, k, v, causal=True, backend="math")
    for backend in BACKENDS:
        tail = A.attention(q[:, :, 5:], k, v, causal=True, backend=backend)
        torch.testing.assert_close(tail, full[:, :, 5:], atol=1e-5, rtol=1e-5)


def test_force_backend_overrides_and_restores(monkeypatch):
    calls = []
    real = A._math_attention
    monkeypatch.setattr(A, "_math_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    q, k, v = qkv()
    A.force_backend("math")
    try:
        A.attention(q, k, v, backend="sdpa")
    finally:
        A.force_backend(None)
    A.attention(q, k, v, backend="sdpa")
    assert calls == [1]
    with pytest.raises(ValueError, match="unknown attention backend"):
        A.force_backend("cudnn")


def test_bf16_math_softmax_runs_in_fp32():
    q, k, v = qkv(dtype=torch.bfloat16)
    out = A.attention(q, k, v, causal=True, backend="math")
    assert out.dtype == torch.bfloat16
    allowed = torch.ones(5, 5, dtype=torch.bool).tril()
    torch.testing.assert_close(out.float(), reference(q, k, v, allowed), atol=2e-2, rtol=2e-2)


def test_kv_cache_writes_at_its_position_and_selects_rows():
    cache = A.KVCache(layers=2, batch=3, heads=2, max_len=6, head_dim=4, device="cpu", dtype=torch.float32)
    k1, v1 = torch.randn(3, 2, 2, 4), torch.randn(3, 2, 2, 4)
    k, v = cache.update(0, k1, v1)
    assert k.shape == (3, 2, 2, 4) and torch.equal(k, k1) and torch.equal(v, v1)
    cache.update(1, k1 * 2, v1 * 2)
    cache.advance(2)
    k2 = torch.randn(3, 2, 1, 4)
    k, _ = cache.update(0, k2, k2)
    assert k.shape == (3, 2, 3, 4) and torch.equal(k[:, :, :2], k1) and torch.equal(k[:, :, 2:], k2)
    cache.advance(1)
    cache.cross[0] = (torch.arange(3.0).view(3, 1, 1, 1), torch.arange(3.0).view(3, 1, 1, 1))
    cache.select(torch.tensor([2, 0]))
    assert cache.k.shape[1] == 2 and cache.pos == 3
    assert torch.equal(cache.k[0, :, :, :2], k1[[2, 0]]) and torch.equal(cache.k[1, :, :, :2], 2 * k1[[2, 0]])
    assert cache.cross[0][0].flatten().tolist() == [2.0, 0.0] and cache.cross[1] is None
    cache.select(torch.tensor([1, 0]), cross=False)  # beams: reorder the self-attention cache only
    assert torch.equal(cache.k[0, :, :, :2], k1[[0, 2]]) and cache.cross[0][0].flatten().tolist() == [2.0, 0.0]
    with pytest.raises(ValueError, match="KV cache full"):
        cache.update(0, torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_flash_matches_math_in_bf16():
    q, k, v = (t.cuda() for t in qkv(B=2, H=4, Tq=64, Tk=64, D=64, dtype=torch.bfloat16))
    for causal in (False, True):
        flash = A.attention(q, k, v, causal=causal, backend="flash")
        math_ = A.attention(q, k, v, causal=causal, backend="math")
        torch.testing.assert_close(flash.float(), math_.float(), atol=2e-2, rtol=2e-2)
