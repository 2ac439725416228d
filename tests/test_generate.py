"""Generation (model/generate.py): cached decoding equals uncached decoding, greedy and beam search find memorized
sequences, a beam of one walks greedy's path, the result dataclass holds what was asked, and bad settings are
refused."""
import pytest
import torch

from mt3ds.model.generate import Generation, Search, Stepper, beam_search, generate, greedy
from mt3ds.tokens import vocab
from mt3ds.tokens.frames import N_KEYS

from model_fixtures import MEMORIZED_LENGTHS, POSITIONS, build, features, instruments, memorized, tiny


@pytest.fixture(scope="module", params=POSITIONS)
def trained(request):
    """A tiny model (each position type) that decodes four memorized sequences ending at EOS at different steps."""
    return memorized(tiny(positions=request.param))


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("conditioning", ["none", "decoder_pool"])
@pytest.mark.parametrize("constrain", [False, True])
def test_cached_equals_uncached_random_model(positions, conditioning, constrain):
    model = build(positions=positions, conditioning=conditioning)
    feats, inst = features(3), instruments([0, 33], [128], [])
    cached = generate(model, feats, inst, allowed=inst, search=Search(max_len=24, constrain=constrain),
                      with_logits=True)
    plain = generate(model, feats, inst, allowed=inst, search=Search(max_len=24, constrain=constrain,
                                                                      use_cache=False), with_logits=True)
    assert torch.equal(cached.tokens, plain.tokens)
    torch.testing.assert_close(cached.logits, plain.logits, atol=1e-4, rtol=0)


def test_stepper_cached_logits_equal_uncached():
    """The public stepper (bench model times it): one token at a time through the cache gives the logits of the
    decoder re-run over the whole prefix, and select() reorders both alike."""
    model = build(positions="rope")
    with torch.no_grad():
        memory = model.encode(features(3))
        cached, plain = Stepper(model, memory, None, 8), Stepper(model, memory, None, 8, use_cache=False)
        token = torch.full((3,), vocab.PAD, dtype=torch.long)
        for t, order in enumerate([None, None, torch.tensor([2, 0, 1]), None]):
            if order is not None:
                cached.select(order)
                plain.select(order)
                token = token[order]
            a, b = cached(token), plain(token)
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
            token = a.argmax(-1)
        assert cached.cache.pos == 4 and plain.prefix.shape == (3, 4)


# The memorized sequences are random ids, not chunks: these tests decode without the grammar (constrain=False).
FREE = Search(max_len=20, constrain=False)


def test_trained_model_learns_and_decodes_its_sequences(trained):
    model, feats, batch, curve = trained
    assert curve[-1] < 0.1 * curve[0]
    out = generate(model, feats, search=FREE, with_logits=True)
    # each row stops at its own EOS; finished rows left the batch and hold PAD afterwards
    assert out.tokens.shape == (4, max(MEMORIZED_LENGTHS))
    assert torch.equal(out.tokens, batch["tokens"])
    plain = generate(model, feats, search=Search(max_len=20, constrain=False, use_cache=False), with_logits=True)
    assert torch.equal(plain.tokens, out.tokens)
    torch.testing.assert_close(plain.logits, out.logits, atol=1e-4, rtol=0)


def test_beam_size_one_equals_greedy(trained):
    model, feats, _, _ = trained
    out = generate(model, feats, search=FREE).tokens
    assert torch.equal(generate(model, feats, search=Search(max_len=20, beam_size=1, constrain=False)).tokens, out)
    with torch.no_grad():
        memory = model.encode(feats)
        assert torch.equal(greedy(model, memory, None, FREE).tokens, out)
        assert torch.equal(beam_search(model, memory, None, FREE).tokens, out)  # the beam code path, K = 1


def test_beam_search_cached_equals_uncached_and_finds_the_sequences(trained):
    model, feats, batch, _ = trained
    beam = generate(model, feats, search=Search(max_len=20, beam_size=3, constrain=False)).tokens
    assert torch.equal(beam, batch["tokens"])
    plain = generate(model, feats, search=Search(max_len=20, beam_size=3, use_cache=False, constrain=False))
    assert torch.equal(plain.tokens, beam)
    random = build(seed=3)
    for constrain in (False, True):
        a = generate(random, features(2), search=Search(max_len=12, beam_size=2, constrain=constrain)).tokens
        b = generate(random, features(2), search=Search(max_len=12, beam_size=2, use_cache=False,
                                                        constrain=constrain)).tokens
        assert torch.equal(b, a)


def test_generate_arguments_and_training_mode_restored():
    model = build()
    model.train()
    out = generate(model, features(2), search=Search(max_len=5, ignore_eos=True))
    assert out.tokens.shape == (2, 5) and model.training
    assert (out.tokens != vocab.PAD).all()  # PAD is never emitted: in the output it only ever follows EOS
    with pytest.raises(ValueError, match="max_len"):
        generate(model, features(1), search=Search(max_len=5000))
    with pytest.raises(ValueError, match="greedy decoding only"):
        generate(model, features(1), search=Search(max_len=5, beam_size=2), with_logits=True)


@pytest.mark.parametrize("settings,message", [
    (dict(beam_size=0), "beam_size"), (dict(max_len=0), "max_len"),
    (dict(beam_size=2, ignore_eos=True), "greedy decoding only"), (dict(length_penalty=float("nan")), "finite"),
])
def test_bad_search_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        Search(**settings)


@pytest.mark.parametrize("beam_size", [1, 2])
def test_the_result_holds_what_was_asked(beam_size):
    """One result type for every setting: tokens always; logits only when asked (greedy); the head's rolls only when
    asked, equal to the head's probabilities from the same encoder pass."""
    model = build(aux_frame_loss=True)
    feats = features(2)
    search = Search(max_len=6, beam_size=beam_size)
    plain = generate(model, feats, search=search)
    assert isinstance(plain, Generation) and plain.logits is None and plain.rolls is None
    both = generate(model, feats, search=search, with_rolls=True, with_logits=beam_size == 1)
    assert torch.equal(both.tokens, plain.tokens)
    assert both.rolls.shape == (2, feats.shape[1], 2, N_KEYS) and both.rolls.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(both.rolls, model.frame_probs(model.encode(feats)))
    if beam_size == 1:
        assert both.logits.shape == (*both.tokens.shape, vocab.VOCAB_SIZE)
    with pytest.raises(ValueError, match="aux frame head"):
        generate(build(), feats, search=search, with_rolls=True)
