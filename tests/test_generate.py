"""Generation (model/generate.py): cached decoding equals uncached decoding, greedy and beam search find memorized
sequences, a beam of one walks greedy's path, the result dataclass holds what was asked, bad settings are refused,
and the runaway guard stops a model that never ends (stalled in time, or always moving) with well-formed chunks while
finished chunks leave the batch."""
import math

import pytest
import torch

from mt3ds.model.generate import Generation, Search, Stepper, beam_search, generate, greedy
from mt3ds.model.grammar import CHUNK_STEPS, CLOSE_TOKENS, TokenGrammar
from mt3ds.tokens import vocab
from mt3ds.tokens.codec import decode_tokens
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
    (dict(max_tokens_per_step=0), "max_tokens_per_step"), (dict(max_tokens_per_second=0.0), "max_tokens_per_second"),
    (dict(max_tokens_per_second=float("inf")), "max_tokens_per_second"),
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


# --- the runaway guard -------------------------------------------------------------------------------------------

STEP_LIMIT = Search().max_tokens_per_step
BUDGET = math.ceil(Search().max_tokens_per_second * CHUNK_STEPS / vocab.STEPS_PER_SECOND)  # tokens a chunk
UNGUARDED = dict(max_tokens_per_step=None, max_tokens_per_second=None)


def never_ending(model, monkeypatch, shifts_first: bool = False) -> list[int]:
    """Replace the model's LM head by fixed logits that never prefer EOS: any note or drum hit beats it. Note-ons
    (loudest velocity) climb from the lowest program and pitch (88 notes of a program in one step, 264 tokens), a
    drum hit takes the highest drum (which fills the step); shifts rank below EOS, or with shifts_first above all,
    the smallest first (one note per step, step after step). Returns the rows fed at each decoder step."""
    bias = torch.full((vocab.VOCAB_SIZE,), -20.0)
    bias[vocab.EOS] = 0.0

    def ramp(r, first, slope):
        bias[r.first_id: r.last_id + 1] = first + slope * torch.arange(r.size, dtype=torch.float32)

    ramp(vocab.PROGRAM, 7.0, -0.001)  # a note before a drum hit
    ramp(vocab.VELOCITY, 5.0, 0.001)
    ramp(vocab.PITCH, 5.0, -0.001)
    ramp(vocab.DRUM, 5.0, 0.001)
    shifts = slice(vocab.SHIFT.first_id, vocab.SHIFT.last_id + 1)
    bias[shifts] = 10.0 - 0.001 * torch.arange(vocab.SHIFT.size) if shifts_first else -10.0
    rows = []

    def logits(hidden):
        rows.append(hidden.shape[0])
        return bias.expand(hidden.shape[0], -1).clone()

    monkeypatch.setattr(model, "logits", logits)
    return rows


def chunks_of(tokens: torch.Tensor) -> list[list[int]]:
    """Each row up to and including its EOS (every row must have one)."""
    out = []
    for row in tokens.tolist():
        assert vocab.EOS in row, row
        out.append(row[: row.index(vocab.EOS) + 1])
    return out


def assert_parses(chunk: list[int], encoding: str, allowed=None) -> None:
    """The grammar takes every token (so EOS came between whole items) and the codec reads it without a skip."""
    grammar = TokenGrammar(1, "cpu", encoding, allowed=allowed)
    for token in chunk:
        assert grammar.allowed_tokens()[0, token], (chunk, token)
        grammar.advance(torch.tensor([token]))
    notes, stats = decode_tokens([chunk], time_encoding=encoding)
    assert stats.malformed == 0 and len(notes) > 0


@pytest.mark.parametrize("encoding", ["absolute", "delta"])
@pytest.mark.parametrize("beam_size", [1, 2])
def test_a_model_that_never_ends_is_stopped_at_the_step_limit(monkeypatch, encoding, beam_size):
    model = build(time_encoding=encoding)
    never_ending(model, monkeypatch)
    out = generate(model, features(3), search=Search(beam_size=beam_size))
    for chunk in chunks_of(out.tokens):
        # no shift at all: closed after STEP_LIMIT tokens, the note it was writing finished, then EOS
        assert STEP_LIMIT < len(chunk) <= STEP_LIMIT + CLOSE_TOKENS
        assert_parses(chunk, encoding)
    if beam_size == 1 and encoding == "absolute":
        unguarded = generate(model, features(3), search=Search(**UNGUARDED)).tokens
        assert unguarded.shape[1] > 2 * out.tokens.shape[1]  # the guard is what stopped it


@pytest.mark.parametrize("beam_size", [1, 2])
def test_a_model_that_keeps_moving_in_time_is_capped_by_the_budget(monkeypatch, beam_size):
    """shift, note, shift, note...: never STEP_LIMIT tokens without a shift, so the budget per second ends it, in
    time to finish with EOS inside the budget; a smaller max_len stays the cap, also ending with EOS."""
    model = build(time_encoding="absolute")
    never_ending(model, monkeypatch, shifts_first=True)
    for search, cap in [(Search(beam_size=beam_size), BUDGET),
                        (Search(beam_size=beam_size, max_tokens_per_second=50.0), math.ceil(50 * 2.05)),
                        (Search(beam_size=beam_size, max_len=64), 64)]:
        for chunk in chunks_of(generate(model, features(2), search=search).tokens):
            assert cap - CLOSE_TOKENS < len(chunk) <= cap
            shifts = sum(vocab.SHIFT.first_id <= t <= vocab.SHIFT.last_id for t in chunk)
            assert shifts >= len(chunk) // 4  # it did keep moving: one shift per note
            assert_parses(chunk, "absolute")


def test_the_guard_without_the_grammar_ends_with_eos_at_once(monkeypatch):
    model = build()
    never_ending(model, monkeypatch)
    out = generate(model, features(2), search=Search(constrain=False, max_tokens_per_step=10))
    assert [len(c) for c in chunks_of(out.tokens)] == [11, 11]  # ten tokens, then EOS in place of the eleventh
    out = generate(model, features(2), search=Search(constrain=False, max_len=30, max_tokens_per_step=None))
    assert [len(c) for c in chunks_of(out.tokens)] == [30, 30]  # the budget: EOS is the 30th token


@pytest.mark.parametrize("beam_size", [1, 2])
def test_one_runaway_chunk_does_not_hold_the_batch(monkeypatch, beam_size):
    """Row 0 may write only program 0 (it writes notes until the step limit); rows 1-3 only drums (one hit fills the
    step, then EOS). Those leave the batch after a few steps; row 0 decodes on alone and stops at the guard."""
    model = build()
    fed = never_ending(model, monkeypatch)
    allowed = instruments([0], [128], [128], [128])
    out = generate(model, features(4), allowed=allowed, search=Search(beam_size=beam_size))
    chunks = chunks_of(out.tokens)
    assert STEP_LIMIT < len(chunks[0]) <= STEP_LIMIT + CLOSE_TOKENS
    assert all(len(c) <= 6 for c in chunks[1:])
    for chunk, row in zip(chunks, allowed):
        assert_parses(chunk, "absolute", row[None])
    assert len(fed) == len(chunks[0])
    assert all(n == beam_size for n in fed[8:])  # only the runaway's beams are still fed
    assert sum(fed) < beam_size * (len(chunks[0]) + 3 * 8)
