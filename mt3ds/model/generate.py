"""Generation: log-mel features of a batch of segments -> token sequences, greedy or beam search, grammar-constrained.

The model (model/transcriber.py) computes: encode, one decoder step, logits. This module decides which tokens to feed
it, the way nanochat keeps its engine.py apart from gpt.py.

    out = generate(model, features, instruments, allowed=instruments, search=Search(beam_size=1))
    out.tokens   # int64 (B, L): each row its tokens up to and including EOS, then PAD; L <= max_len
    out.logits   # fp32 (B, L, vocab) with with_logits=True (greedy), else None
    out.rolls    # fp32 (B, S, 2, N_KEYS) onset and active probabilities with with_rolls=True, else None

The encoder runs once; cross-attention keys and values are computed once per segment; each step feeds one token per
sequence through the KV cache (`Stepper`). A greedy sequence leaves the batch at its EOS, a beam-searched segment
when its search is done, so the rest of a batch never pays for the steps of its longest chunk. Decoding is
grammar-constrained by default (model/grammar.py): every emitted chunk parses.

No runaway decoding (`RunawayGuard`, limits in `Search`): a chunk is closed, i.e. it finishes the item it is inside and
then writes EOS (what it wrote is kept and parses), once it has written max_tokens_per_step tokens without moving in
time (since its last shift, or its start), and early enough to end within its budget: max_tokens_per_second times the
chunk's 2.05 s, never past max_len (the absolute cap). Defaults 192 and 256/s (525 a chunk), measured on the
reference notes, absolute encoding: the densest chunk of the real recordings validated on writes 27 tokens between
shifts and 336 in all (mean 69); of ~100k synthetic training chunks the densest writes 81 and 712, and 0.2% pass 525.
A step of 192 tokens holds 30 note-offs, 30 note-ons and 6 drum hits; a runaway chunk costs at most 525 tokens
instead of the model's 1,024, and closes after ~195 if it stalls in time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..tokens import vocab
from .attention import KVCache
from .grammar import CHUNK_STEPS, CLOSE_TOKENS, MAX_STEP, TokenGrammar
from .transcriber import Transcriber


@dataclass(frozen=True)
class Search:
    """How each segment's tokens are searched for."""

    beam_size: int = 1
    """1: greedy; K > 1: beam search with K beams per segment."""
    max_len: int | None = None
    """Most tokens per segment, EOS included; None: the model's max_tokens."""
    length_penalty: float = 1.0
    """Beam search ranks finished hypotheses by log-probability / length ** length_penalty."""
    constrain: bool = True
    """Mask every token that would make a chunk malformed (model/grammar.py); False decodes freely."""
    use_cache: bool = True
    """Decode through the KV cache; False re-runs the decoder over the whole prefix each step (the reference)."""
    ignore_eos: bool = False
    """Greedy only: decode to max_len whatever is emitted (benchmarks); the runaway limits are off."""
    max_tokens_per_step: int | None = 192
    """Close a chunk (its item, then EOS) after this many tokens since its last shift or its start; None: no limit."""
    max_tokens_per_second: float | None = 256.0
    """Close a chunk in time to end within this many tokens a second of its audio (and max_len); None: max_len only."""

    def __post_init__(self):
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.max_len is not None and self.max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {self.max_len}")
        if self.ignore_eos and self.beam_size > 1:
            raise ValueError("ignore_eos is for greedy decoding only (beam_size 1)")
        if not math.isfinite(self.length_penalty):
            raise ValueError(f"length_penalty must be finite, got {self.length_penalty}")
        if self.max_tokens_per_step is not None and self.max_tokens_per_step < 1:
            raise ValueError(f"max_tokens_per_step must be >= 1 or None, got {self.max_tokens_per_step}")
        if self.max_tokens_per_second is not None and not (0 < self.max_tokens_per_second < math.inf):
            raise ValueError(f"max_tokens_per_second must be positive and finite or None, "
                             f"got {self.max_tokens_per_second}")


@dataclass
class Generation:
    """What generate() decoded for a batch of B segments."""

    tokens: torch.Tensor
    """int64 (B, L): each row its tokens up to and including EOS, then PAD; L <= max_len."""
    logits: torch.Tensor | None = None
    """fp32 (B, L, vocab): the model's logits at every greedy step, before the grammar's mask (with_logits)."""
    rolls: torch.Tensor | None = None
    """fp32 (B, S, 2, N_KEYS): the aux frame head's onset and active probabilities, same encoder pass (with_rolls);
    mt3ds/tokens/frames.py reads them as notes."""


@torch.no_grad()
def generate(model: Transcriber, features: torch.Tensor, instruments: torch.Tensor | None = None, *,
             allowed: torch.Tensor | None = None, search: Search = Search(), with_logits: bool = False,
             with_rolls: bool = False) -> Generation:
    """Decode a batch of segments, log-mel features (B, S, n_mels), as `search` says.

    instruments: the conditioning's multi-hot (B, 129), 128 = drums (None: unknown). allowed: with
    search.constrain, a row writes only those programs and drums (multi-hot (B, 129); an all-False row: anything);
    ignored when decoding freely. Beam search masks the log-probabilities, so scores stay the model's own.
    with_logits (greedy only) keeps the logits of every step; with_rolls (a model with the aux frame head) the
    head's probabilities. The model is in eval mode while decoding and goes back to its mode after."""
    if with_logits and search.beam_size > 1:
        raise ValueError("with_logits is for greedy decoding only (beam_size 1)")
    if with_rolls and model.frame_head is None:
        raise ValueError("with_rolls needs a model with the aux frame head (aux_frame_loss)")
    max_len = _max_len(model, search)
    was_training = model.training
    model.eval()
    try:
        memory = model.encode(features, instruments)
        hint = model.decoder_hint(instruments, features.shape[0])
        grammar = None
        if search.constrain:
            if allowed is not None and search.beam_size > 1:
                allowed = allowed.repeat_interleave(search.beam_size, 0)  # beams of a segment are adjacent rows
            grammar = TokenGrammar(features.shape[0] * search.beam_size, memory.device, model.cfg.time_encoding,
                                   MAX_STEP, allowed)
        if search.beam_size == 1:
            out = greedy(model, memory, hint, search, grammar, with_logits)
        else:
            out = beam_search(model, memory, hint, search, grammar)
        return replace(out, rolls=model.frame_probs(memory)) if with_rolls else out
    finally:
        model.train(was_training)


def _max_len(model: Transcriber, search: Search) -> int:
    max_len = search.max_len or model.cfg.max_tokens
    if not 1 <= max_len <= model.cfg.max_dec_len:
        raise ValueError(f"max_len must be in 1..{model.cfg.max_dec_len}, got {max_len}")
    return max_len


@torch.no_grad()
def greedy(model: Transcriber, memory: torch.Tensor, hint: torch.Tensor | None, search: Search = Search(),
           grammar: TokenGrammar | None = None, with_logits: bool = False) -> Generation:
    """Greedy decoding from the encoder's memory (B, S, d_model): the likeliest allowed token at every step.
    grammar (B rows) masks the logits; search.constrain is generate()'s switch and is not read here."""
    B, device = memory.shape[0], memory.device
    max_len = _max_len(model, search)
    step = Stepper(model, memory, hint, max_len, search.use_cache)
    guard = RunawayGuard.of(search, B, max_len, grammar, device)
    out = torch.full((B, max_len), vocab.PAD, dtype=torch.long, device=device)
    all_logits = torch.zeros(B, max_len, model.cfg.vocab_size, device=device) if with_logits else None
    rows = torch.arange(B, device=device)  # original row of each sequence still decoding
    token = torch.full((B,), vocab.PAD, dtype=torch.long, device=device)  # the start token
    length = 0
    for t in range(max_len):
        logits = step(token)  # (n, vocab)
        token = _allowed(_never_pad(logits), grammar, guard, t).argmax(-1)
        if grammar is not None:
            grammar.advance(token)
        if guard is not None:
            guard.advance(token)
        out[rows, t] = token
        if all_logits is not None:
            all_logits[rows, t] = logits
        length = t + 1
        if search.ignore_eos:
            continue
        done = token == vocab.EOS
        if bool(done.all()):
            break
        if bool(done.any()):  # finished sequences leave the batch
            keep = (~done).nonzero().squeeze(1)
            _keep_rows(keep, step, grammar, guard)
            rows, token = rows[keep], token[keep]
    return Generation(out[:, :length], all_logits[:, :length] if all_logits is not None else None)


@torch.no_grad()
def beam_search(model: Transcriber, memory: torch.Tensor, hint: torch.Tensor | None, search: Search,
                grammar: TokenGrammar | None = None) -> Generation:
    """Beam search with K = search.beam_size beams per segment, scores normalized by length ** length_penalty.

    A segment is done when its best ended beam (EOS emitted) scores at least as well as its best open beam (the
    usual heuristic: an open beam's raw log-probability can only fall); it then takes its best hypothesis and its K
    beams leave the batch. An ended beam of a segment still searching extends with PAD at no cost. A grammar (B*K
    rows) masks each beam's log-probabilities before the top-K and follows the beams as they reorder. K = 1 walks
    the same path as greedy decoding (tests hold it to that)."""
    K, length_penalty = search.beam_size, search.length_penalty
    B, V, device = memory.shape[0], model.cfg.vocab_size, memory.device
    max_len = _max_len(model, search)
    memory = memory.repeat_interleave(K, 0)  # (B*K, S, d_model): beams of a segment are adjacent rows
    hint = hint.repeat_interleave(K, 0) if hint is not None else None
    step = Stepper(model, memory, hint, max_len, search.use_cache)
    guard = RunawayGuard.of(search, B * K, max_len, grammar, device)
    out = torch.full((B, max_len), vocab.PAD, dtype=torch.long, device=device)
    out_len = torch.zeros(B, dtype=torch.long, device=device)
    segments = torch.arange(B, device=device)  # original segment of each segment still searching
    scores = torch.zeros(B, K, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: expand only the first
    seqs = torch.full((B * K, max_len), vocab.PAD, dtype=torch.long, device=device)
    lengths = torch.zeros(B * K, device=device)
    ended = torch.zeros(B * K, dtype=torch.bool, device=device)  # emitted EOS
    token = torch.full((B * K,), vocab.PAD, dtype=torch.long, device=device)
    for t in range(max_len):
        n = segments.shape[0]
        base = torch.arange(n, device=device)[:, None] * K  # (n, 1): first row of each segment
        logp = _allowed(F.log_softmax(_never_pad(step(token)), dim=-1), grammar, guard, t)  # (n*K, V)
        logp[ended] = float("-inf")  # an ended beam only continues with PAD, at no cost
        logp[ended, vocab.PAD] = 0.0
        top, idx = (scores.view(-1, 1) + logp).view(n, K * V).topk(K, dim=1)  # (n, K)
        src = (base + idx // V).view(-1)  # the beam each new beam extends
        token = (idx % V).view(-1)
        seqs, ended, lengths, frozen = seqs[src], ended[src], lengths[src], ended[src]
        seqs[:, t] = token
        lengths = torch.where(frozen, lengths, torch.full_like(lengths, t + 1))
        ended = ended | (~frozen & (token == vocab.EOS))
        scores = top
        step.select(src, cross=False)
        if grammar is not None:
            grammar.select(src)
            grammar.advance(token)
        if guard is not None:
            guard.select(src)
            guard.advance(token)
        norm = scores / lengths.view(n, K).clamp(min=1) ** length_penalty
        best_ended = norm.masked_fill(~ended.view(n, K), float("-inf")).amax(1)
        best_open = norm.masked_fill(ended.view(n, K), float("-inf")).amax(1)
        done = best_ended >= best_open  # (n,)
        if t == max_len - 1:
            done = torch.ones_like(done)
        if not bool(done.any()):
            continue
        # done segments take their best hypothesis and leave the batch
        fin = done.nonzero().squeeze(1)
        best = (base.squeeze(1) + _best_beam(scores, lengths, ended, length_penalty))[fin]  # rows
        out[segments[fin]] = seqs[best]
        out_len[segments[fin]] = lengths[best].long()
        keep = (~done).nonzero().squeeze(1)
        if keep.numel() == 0:
            break
        rows = (keep[:, None] * K + torch.arange(K, device=device)).view(-1)  # (n_keep*K,)
        _keep_rows(rows, step, grammar, guard)
        segments, scores = segments[keep], scores[keep]
        seqs, lengths, ended, token = seqs[rows], lengths[rows], ended[rows], token[rows]
    return Generation(out[:, : int(out_len.max())])


def _best_beam(scores: torch.Tensor, lengths: torch.Tensor, ended: torch.Tensor, length_penalty: float) -> torch.Tensor:
    """The best beam (n,) of each of n segments, by normalized score; a beam that ended beats one that did not."""
    n, K = scores.shape
    norm = scores / lengths.view(n, K).clamp(min=1) ** length_penalty
    has_ended = ended.view(n, K).any(1, keepdim=True)
    return norm.masked_fill(has_ended & ~ended.view(n, K), float("-inf")).argmax(1)


def _allowed(scores: torch.Tensor, grammar: TokenGrammar | None, guard: "RunawayGuard | None",
             t: int) -> torch.Tensor:
    """Logits or log-probs (n, V) of step t -> -inf on what may not come next: what the grammar forbids, and for a
    chunk the guard stops, anything that does not end it (with a grammar: after its item; without: EOS at once)."""
    stop = guard.stop(t) if guard is not None else None
    if grammar is not None:
        if stop is not None:
            grammar.close(stop)
        return grammar.mask(scores)
    if stop is None:
        return scores
    not_eos = torch.arange(scores.shape[-1], device=scores.device) != vocab.EOS
    return scores.masked_fill(stop[:, None] & not_eos, float("-inf"))


class RunawayGuard:
    """Decides which chunks must stop (Search.max_tokens_per_step, max_tokens_per_second): per row, the tokens
    written since its last shift. A stopped chunk ends with EOS within `closing` more tokens (the grammar's
    CLOSE_TOKENS: it finishes its item; 1 when decoding freely)."""

    def __init__(self, rows: int, budget: int, max_run: int | None, closing: int, device):
        self.close_from = max(budget - closing, 0)  # from this step on every chunk closes
        self.max_run = max_run
        self.since_time = torch.zeros(rows, dtype=torch.long, device=device)  # tokens since the last shift

    @classmethod
    def of(cls, search: Search, rows: int, max_len: int, grammar: TokenGrammar | None,
           device) -> "RunawayGuard | None":
        """The guard of `search` over `rows` sequences, None when its limits are off (or with ignore_eos)."""
        if search.ignore_eos or (search.max_tokens_per_step is None and search.max_tokens_per_second is None):
            return None
        budget = max_len
        if search.max_tokens_per_second is not None:
            # every chunk spans CHUNK_STEPS steps of audio (the last one of a file is padded to it)
            seconds = CHUNK_STEPS / vocab.STEPS_PER_SECOND
            budget = min(budget, math.ceil(search.max_tokens_per_second * seconds))
        return cls(rows, budget, search.max_tokens_per_step, CLOSE_TOKENS if grammar is not None else 1, device)

    def stop(self, t: int) -> torch.Tensor:
        """bool (n,): the chunks that must end, at step t (t tokens written)."""
        if t >= self.close_from:
            return torch.ones_like(self.since_time, dtype=torch.bool)
        if self.max_run is None:
            return torch.zeros_like(self.since_time, dtype=torch.bool)
        return self.since_time >= self.max_run

    def advance(self, token: torch.Tensor) -> None:
        is_time = (token >= vocab.SHIFT.first_id) & (token <= vocab.SHIFT.last_id)
        self.since_time = torch.where(is_time, 0, self.since_time + 1)

    def select(self, index: torch.Tensor) -> None:
        """Row i becomes old row index[i]."""
        self.since_time = self.since_time[index]


def _keep_rows(rows: torch.Tensor, step, grammar, guard) -> None:
    """Keep only `rows` of the decoder state and of the grammar and runaway guard (when there are)."""
    step.select(rows)
    for state in (grammar, guard):
        if state is not None:
            state.select(rows)


def _never_pad(logits: torch.Tensor) -> torch.Tensor:
    """PAD is never a target (labels are -100 there), so decoding never emits it: PAD in the output means 'after
    EOS'. An untrained model would otherwise echo its PAD start token forever."""
    return logits.index_fill(-1, torch.tensor([vocab.PAD], device=logits.device), float("-inf"))


class Stepper:
    """Feeds one token per sequence to the decoder and returns next-token logits (fp32), with the KV cache or, for
    reference, by re-running the decoder over the whole prefix (`prefix`, int64 (n, t)). select() keeps or
    reorders sequences."""

    def __init__(self, model: Transcriber, memory: torch.Tensor, hint: torch.Tensor | None, max_len: int,
                 use_cache: bool = True):
        self.model, self.memory, self.hint = model, memory, hint
        self.prefix = torch.zeros(memory.shape[0], 0, dtype=torch.long, device=memory.device)
        self.cache: KVCache | None = model.new_cache(memory, max_len) if use_cache else None

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        """token (n,) -> next-token logits (n, vocab)."""
        if self.cache is not None:
            hidden = self.model.decode(token[:, None], None, self.hint, cache=self.cache)  # (n, 1, d_model)
        else:
            self.prefix = torch.cat([self.prefix, token[:, None]], 1)
            hidden = self.model.decode(self.prefix, self.memory, self.hint)  # (n, t, d_model)
        return self.model.logits(hidden[:, -1])  # (n, vocab)

    def select(self, index: torch.Tensor, cross: bool = True) -> None:
        """Row i becomes old row index[i]. cross=False leaves the cached cross-attention keys alone (beams of one
        segment share them)."""
        if self.cache is not None:
            self.cache.select(index, cross=cross)
        else:
            self.prefix, self.memory = self.prefix[index], self.memory[index]
        if self.hint is not None:
            self.hint = self.hint[index]
