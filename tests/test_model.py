"""The transcriber module: shapes, causality, conditioning, losses, forced attention backends, activation
checkpointing and bf16 weights. Generation (greedy, beam, the KV cache) is tested in test_generate.py."""
import pytest
import torch
import torch.nn.functional as F

from mt3ds.model import attention as A
from mt3ds.model.conditioning import UNKNOWN, instrument_sequence
from mt3ds.model.generate import Search, generate
from mt3ds.model.transcriber import IGNORE
from mt3ds.tokens import vocab
from mt3ds.tokens.frames import N_KEYS

from model_fixtures import N_FRAMES, POSITIONS, build, features, instruments, token_batch

CONDITIONING = ("decoder_pool", "encoder_film", "dual_stream")


# ---------------------------------------------------------------------------------------------------------------
# forward


def test_forward_shapes_and_fp32_logits():
    model = build(aux_frame_loss=True)
    batch = token_batch([4, 7])
    logits = model(features(2), batch["decoder_input"])
    assert logits.shape == (2, 7, vocab.VOCAB_SIZE) and logits.dtype == torch.float32
    logits2, roll_logits = model.run(features(2), batch["decoder_input"])
    assert torch.equal(logits, logits2) and roll_logits.shape == (2, N_FRAMES, 2, N_KEYS)
    with pytest.raises(ValueError, match=r"features must be \[B, frames, 512\]"):
        model(torch.randn(2, 32, 128), batch["decoder_input"])


@pytest.mark.parametrize("positions", POSITIONS)
def test_no_gradient_from_future_tokens(positions):
    model = build(positions=positions)
    emb = {}

    def keep(module, inputs, out):
        out.retain_grad()
        emb["x"] = out

    model.tok_emb.register_forward_hook(keep)
    decoder_input = token_batch([9])["decoder_input"]
    logits = model(features(1), decoder_input)
    t = 4
    logits[0, t].square().sum().backward()
    grad = emb["x"].grad[0].abs().sum(-1)  # (T,) gradient reaching each input position
    assert (grad[t + 1:] == 0).all() and (grad[: t + 1] > 0).all()


@pytest.mark.parametrize("positions", POSITIONS)
def test_changing_future_tokens_leaves_earlier_logits_alone(positions):
    model = build(positions=positions)
    a = token_batch([9])["decoder_input"]
    b = a.clone()
    b[0, 6:] = 7
    la, lb = model(features(1), a), model(features(1), b)
    torch.testing.assert_close(la[0, :6], lb[0, :6], atol=1e-6, rtol=0)
    assert not torch.allclose(la[0, 6:], lb[0, 6:])


# ---------------------------------------------------------------------------------------------------------------
# conditioning


def test_instrument_sequence_layout():
    ids, valid = instrument_sequence(instruments([40, 0, 128], [], [5]), 3, "cpu")
    assert ids.tolist() == [[UNKNOWN, 0, 40, 128], [UNKNOWN, 0, 0, 0], [UNKNOWN, 5, 0, 0]]
    assert valid.tolist() == [[True, True, True, True], [True, False, False, False], [True, True, False, False]]
    ids, valid = instrument_sequence(None, 2, "cpu")
    assert ids.tolist() == [[UNKNOWN], [UNKNOWN]]
    torch.manual_seed(0)
    _, valid = instrument_sequence(instruments(*[[1, 2]] * 2000), 2000, "cpu", drop=0.1)
    dropped = (valid.sum(1) == 1).float().mean().item()  # the whole set goes, or none of it
    assert set(valid.sum(1).tolist()) == {1, 3} and 0.08 < dropped < 0.12


@pytest.mark.parametrize("conditioning", CONDITIONING)
@pytest.mark.parametrize("pool", ["mean", "attention"])
def test_conditioning_changes_the_output_and_trains(conditioning, pool):
    model = build(conditioning=conditioning, instrument_pool=pool)
    feats, dec = features(2), token_batch([6, 6])["decoder_input"]
    piano_drums, strings = instruments([0], [128]), instruments([48, 49], [40])
    a, b, unknown = model(feats, dec, piano_drums), model(feats, dec, strings), model(feats, dec, None)
    for other in (b, unknown):  # logits move (at init the decoder hears encoder changes only faintly)
        assert ((a - other).abs() > 0).float().mean() > 0.9
        assert (a - other).abs().max() > (1e-3 if conditioning == "decoder_pool" else 1e-6)
    torch.testing.assert_close(model(feats, dec, piano_drums), a)  # eval mode: no instrument dropout
    if conditioning != "decoder_pool":  # at init the decoder hears the encoder faintly: look at the encoder itself
        ma, mb = model.encode(feats, piano_drums), model.encode(feats, strings)
        assert (ma - mb).abs().mean() > 1e-4 * ma.abs().mean()  # a residual branch: small at init, not zero
    # one training step moves the conditioning weights and lowers the loss on this batch
    model.train()
    batch = {**token_batch([6, 6]), "instruments": piano_drums}
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    before = {n: p.detach().clone() for n, p in model.cond.named_parameters()}
    loss0, _ = model.loss(feats, batch)
    opt.zero_grad()
    loss0.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.cond.named_parameters()
               if n != "set.table.weight")  # rows of absent instruments get no gradient; the table as a whole does
    assert model.cond.set.table.weight.grad.abs().sum() > 0
    opt.step()
    assert any(not torch.equal(before[n], p) for n, p in model.cond.named_parameters())
    model.eval()
    assert model.loss(feats, batch)[0] < loss0


def test_conditioning_none_ignores_instruments():
    model = build()
    feats, dec = features(2), token_batch([5, 5])["decoder_input"]
    assert torch.equal(model(feats, dec, instruments([0], [1])), model(feats, dec))


# ---------------------------------------------------------------------------------------------------------------
# losses


def test_loss_matches_cross_entropy_with_smoothing_and_padding():
    model = build()
    batch = token_batch([3, 8, 5])
    logits = model(features(3), batch["decoder_input"])
    for smoothing in (0.0, 0.1):
        loss, metrics = model.loss(features(3), batch, label_smoothing=smoothing)
        expected = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE,
                                   label_smoothing=smoothing)
        torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    assert metrics["tokens"] == 16 and 0 <= metrics["token_acc"] <= 1
    torch.testing.assert_close(metrics["token_loss"], F.cross_entropy(
        logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE))
    # the form DeepSpeed calls: engine(features, batch=...)
    torch.testing.assert_close(model(features(3), batch=batch, label_smoothing=0.1)[0], loss)


def test_time_smoothing_credits_near_shifts_and_leaves_other_tokens_alone():
    from mt3ds.model.transcriber import _soft_shift_nll

    shift = vocab.SHIFT.first_id
    labels = torch.tensor([[shift + 50, shift + 1, vocab.PITCH.first_id + 10, IGNORE]])

    def peaked(late: int) -> torch.Tensor:  # log-probs sure of the label's shift, `late` steps after it
        x = torch.full((1, 4, vocab.VOCAB_SIZE), -20.0)
        x[0, 0, shift + 50 + late] = x[0, 1, shift + 1 + late] = 0.0
        return F.log_softmax(x, -1)

    def exact(logp):
        return -logp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)[0, :2]

    on_time, late = peaked(0), peaked(1)
    soft_gap = _soft_shift_nll(late, labels, 2.0)[0, :2] - _soft_shift_nll(on_time, labels, 2.0)[0, :2]
    exact_gap = exact(late) - exact(on_time)  # ~20 nats for one step (10 ms)
    assert (soft_gap < 0.2 * exact_gap).all() and (soft_gap > 0).all()  # one step off: a small cost, not all
    torch.testing.assert_close(_soft_shift_nll(late, labels, 0.05)[0, :2], exact(late))  # tiny sigma: exact
    # shift 0 does not exist: at shift 1 the window is renormalized over 1, 2, ...
    model = build()
    batch = token_batch([6, 9])
    batch["labels"][0, :3] = torch.tensor([shift + 5, vocab.PITCH.first_id, shift + 9])
    plain, m = model.loss(features(2), batch)
    smooth, m2 = model.loss(features(2), batch, time_smoothing=2.0)
    assert not torch.isclose(plain, smooth) and torch.equal(m["token_loss"], m2["token_loss"])  # metric: exact NLL


def test_aux_frame_loss_adds_weighted_bce():
    model = build(aux_frame_loss=True, aux_frame_weight=0.5)
    batch = token_batch([4, 6])
    loss, m = model.loss(features(2), batch)
    _, roll_logits = model.run(features(2), batch["decoder_input"])
    target = batch["frame_onsets"]
    pw = ((target.numel() - target.sum()) / target.sum()).sqrt()
    onset = F.binary_cross_entropy_with_logits(roll_logits[:, :, 0], target, pos_weight=pw)
    torch.testing.assert_close(m["frame_onset_loss"], onset)
    torch.testing.assert_close(loss, m["token_loss"] + 0.5 * (m["frame_onset_loss"] + m["frame_active_loss"]))
    fixed = build(aux_frame_loss=True, aux_pos_weight=3.0)
    assert fixed.loss(features(2), batch)[1]["frame_onset_loss"] > 0
    with pytest.raises(ValueError, match="frame_onsets"):
        model.loss(features(2), {k: v for k, v in batch.items() if k != "frame_onsets"})


# ---------------------------------------------------------------------------------------------------------------
# backends, checkpointing, bf16


@pytest.mark.parametrize("positions", POSITIONS)
def test_forced_backends_agree(positions):
    model = build(positions=positions, conditioning="dual_stream")  # dual_stream adds padded instrument keys
    feats, dec, inst = features(2), token_batch([7, 4])["decoder_input"], instruments([0, 1, 2], [128])
    results = {}
    for backend in ("math", "sdpa", "flash", "auto"):
        A.force_backend(backend)
        try:
            results[backend] = (model(feats, dec, inst), generate(model, feats, inst, search=Search(max_len=8)).tokens)
        finally:
            A.force_backend(None)
    for backend, (logits, tokens) in results.items():
        torch.testing.assert_close(logits, results["math"][0], atol=1e-4, rtol=0)
        assert torch.equal(tokens, results["math"][1]), backend


@pytest.mark.parametrize("conditioning", ["none", "dual_stream", "encoder_film"])
def test_activation_checkpointing_gives_the_same_gradients(conditioning):
    grads = []
    for ckpt in (False, True):
        model = build(activation_checkpointing=ckpt, conditioning=conditioning, instrument_drop=0.0).train()
        batch = token_batch([5, 7])
        model.loss(features(2), batch)[0].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_bf16_weights_like_deepspeed():
    model = build(positions="rope", conditioning="decoder_pool", aux_frame_loss=True).to(torch.bfloat16)
    batch = token_batch([5, 9])
    feats = features(2).to(torch.bfloat16)
    logits = model(feats, batch["decoder_input"], batch["instruments"])
    assert logits.dtype == torch.float32  # LM head in fp32
    model.train()
    loss, _ = model.loss(feats, batch)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert model.tok_emb.weight.grad.dtype == torch.bfloat16
    out = generate(model.eval(), feats, batch["instruments"], search=Search(max_len=6))
    assert out.tokens.shape[0] == 2
    # bf16 logits stay close to fp32 logits of the same (bf16-rounded) weights
    ref = model.float()(feats.float(), batch["decoder_input"], batch["instruments"])
    assert (ref - logits).abs().max() < 0.1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_flash_model_matches_math():
    model = build(positions="rope").cuda().to(torch.bfloat16)
    feats = features(2).cuda().to(torch.bfloat16)
    dec = token_batch([7, 4])["decoder_input"].cuda()
    out = {}
    for backend in ("flash", "math"):
        A.force_backend(backend)
        try:
            out[backend] = model(feats, dec)
        finally:
            A.force_backend(None)
    assert (out["flash"] - out["math"]).abs().max() < 5e-2
    cached = generate(model, feats, search=Search(max_len=8), with_logits=True).logits
    plain = generate(model, feats, search=Search(max_len=8, use_cache=False), with_logits=True).logits
    assert (cached - plain).abs().max() < 5e-2
