"""The transcription model: one encoder-decoder whose config selects Step 1, Step 2 and Step 3 (docs/design.md §5).

    log-mel [B, S, 512] -> learnable frequency LayerNorm -> linear -> (+ positions) -> encoder blocks -> memory
    tokens  [B, T]      -> embedding * sqrt(d) (+ positions, + instrument hint) -> decoder blocks
                           (causal self-attention, cross-attention to memory, MLP) -> LM head (fp32) -> logits
    memory              -> optional aux frame head: onset and active key rolls per frame (a training loss, and
                           the notes of hybrid transcription: mt3ds/tokens/frames.py)
    memory              -> optional note heads (model/heads.py): per-class onset, frame and offset rolls, drum onsets,
                           programs: notes, instruments and drums without decoding (mt3ds/tokens/rolls.py)

The front end (linear, or a conv stem) and time pooling before the encoder blocks are config switches too
(model/heads.py). With token_weight 0 the loss never runs the decoder.

The decoder starts from PAD (T5/MT3): decoder_input = [PAD] + tokens[:-1]. The LM head, the softmax and the losses
run in fp32 even when the weights are bf16 (DeepSpeed bf16 casts weights, not activations: docs/design.md §6.3).

    model = Transcriber(ModelConfig.preset("small"))
    logits = model(features, decoder_input, instruments)              # fp32 [B, T, 1437]
    loss, metrics = model.loss(features, batch, label_smoothing=0.1)  # or engine(features, batch=batch, ...)

Generation (greedy, beam search, the stepper) lives beside the model in model/generate.py; the model gives it one
decoder step: `new_cache`, `decode` with the cache, `logits`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..tokens import vocab
from ..tokens.frames import N_KEYS
from .attention import KVCache
from .blocks import DecoderBlock, EncoderBlock, Positions, make_norm
from .conditioning import DecoderPool, DualStream, EncoderFilm, make_conditioning
from .config import ModelConfig
from .heads import NoteHeads, front_end, head_loss, pool_time

IGNORE = -100  # label of padding positions (the loader's contract)


class Transcriber(nn.Module):
    """Encoder-decoder transformer from log-mel features to Option 1 tokens."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        # encoder
        self.freq_norm = nn.LayerNorm(cfg.n_mels, eps=cfg.norm_eps)  # learnable per-frequency normalization
        self.in_proj = front_end(cfg)
        self.enc_pos = Positions(cfg, cfg.max_enc_len)
        self.enc_blocks = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.enc_layers))
        self.enc_norm = make_norm(cfg)
        # decoder
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.dec_pos = Positions(cfg, cfg.max_dec_len)
        self.dec_blocks = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.dec_layers))
        self.dec_norm = make_norm(cfg)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        # extras
        self.frame_head = nn.Linear(cfg.d_model, 2 * N_KEYS) if cfg.aux_frame_loss else None
        self.note_heads = NoteHeads(cfg) if cfg.note_heads else None
        self.cond = make_conditioning(cfg)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        # residual branches scaled down with depth (GPT-2)
        depth_std = 0.02 / math.sqrt(2 * (self.cfg.enc_layers + self.cfg.dec_layers))
        for name, p in self.named_parameters():
            if name.endswith(("attn.out.weight", "mlp.down.weight")):
                nn.init.normal_(p, std=depth_std)
        if self.cond is not None:  # unit-scale instrument embeddings, so the hint is felt from the first step
            nn.init.normal_(self.cond.set.table.weight, std=1.0)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _block(self, fn, *args, **kw):
        """Run one block, recomputed in the backward pass when activation checkpointing is on."""
        if self.cfg.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False, **kw)
        return fn(*args, **kw)

    # -----------------------------------------------------------------------------------------------------------
    # encoder and decoder

    def encode(self, features: torch.Tensor, instruments: torch.Tensor | None = None) -> torch.Tensor:
        """Log-mel features (B, S, n_mels) -> memory (B, S, d_model)."""
        if features.dim() != 3 or features.shape[-1] != self.cfg.n_mels:
            raise ValueError(f"features must be [B, frames, {self.cfg.n_mels}], got {tuple(features.shape)}")
        B, S, _ = features.shape
        x = pool_time(self.in_proj(self.freq_norm(features)), self.cfg.time_pool)  # (B, S / time_pool, d_model)
        B, S, _ = x.shape
        x = self.enc_pos.embed(x)
        pos_kw = self.enc_pos.attention_args(S, 0, x.device)
        film = self.cond(instruments, B) if isinstance(self.cond, EncoderFilm) else None
        dual = isinstance(self.cond, DualStream)
        first_dual = self.cfg.enc_layers - self.cfg.instrument_layers - 1 if dual else self.cfg.enc_layers
        if dual:
            inst, valid = self.cond.start(instruments, B)
        for i, block in enumerate(self.enc_blocks):
            if i >= first_dual:
                x, inst = self._block(self.cond.layer, i - first_dual, x, inst, valid, block, **pos_kw)
            else:
                x = self._block(block, x, film[i] if film else None, **pos_kw)
        return self.enc_norm(x)

    def decode(self, decoder_input: torch.Tensor, memory: torch.Tensor | None, hint: torch.Tensor | None = None,
               cache: KVCache | None = None) -> torch.Tensor:
        """Tokens (B, T) -> decoder hidden states (B, T, d_model). With a cache the tokens sit at positions
        cache.pos .. cache.pos + T - 1, cross-attention uses the cached encoder keys, and cache.pos moves on."""
        B, T = decoder_input.shape
        offset = cache.pos if cache is not None else 0
        x = self.tok_emb(decoder_input) * math.sqrt(self.cfg.d_model)  # (B, T, d_model)
        if hint is not None:
            x = x + hint  # decoder_pool: (B, 1, d_model) on every position
        x = self.dec_pos.embed(x, offset)
        pos_kw = self.dec_pos.attention_args(T, offset, x.device)
        for i, block in enumerate(self.dec_blocks):
            if cache is None:
                x = self._block(block, x, memory, **pos_kw)
            else:
                x = block(x, memory, cache=cache, layer=i, **pos_kw)
        if cache is not None:
            cache.advance(T)
        return self.dec_norm(x)

    def new_cache(self, memory: torch.Tensor, max_len: int) -> KVCache:
        """An empty KV cache for decoding up to max_len tokens per row of memory (B, S, d_model), holding each
        decoder layer's cross-attention keys and values: computed here, once per segment."""
        cfg = self.cfg
        cache = KVCache(cfg.dec_layers, memory.shape[0], cfg.heads, max_len, cfg.head_dim, device=memory.device,
                        dtype=memory.dtype)
        for i, block in enumerate(self.dec_blocks):
            cache.cross[i] = block.cross_attn.attn.project_kv(memory)  # (B, H, S, D) each
        return cache

    def decoder_hint(self, instruments: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """decoder_pool conditioning: the instrument set as one vector added to every decoder position (else None)."""
        return self.cond(instruments, batch) if isinstance(self.cond, DecoderPool) else None

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head in fp32, whatever the weights' dtype."""
        weight = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden.float(), weight.float())  # (..., vocab)

    def run(self, features: torch.Tensor, decoder_input: torch.Tensor, instruments: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher-forced pass: (logits fp32 (B, T, vocab), roll logits fp32 (B, S, 2, N_KEYS) or None)."""
        memory = self.encode(features, instruments)
        hidden = self.decode(decoder_input, memory, self.decoder_hint(instruments, features.shape[0]))
        roll_logits = None
        if self.frame_head is not None:
            roll_logits = self._roll_logits(memory)
        return self.logits(hidden), roll_logits

    def _roll_logits(self, memory: torch.Tensor) -> torch.Tensor:
        memory = memory.repeat_interleave(self.cfg.time_pool, dim=1) if self.cfg.time_pool > 1 else memory
        return self.frame_head(memory).float().view(*memory.shape[:2], 2, N_KEYS)  # (B, S, onset|active, N_KEYS)

    def head_probs(self, memory: torch.Tensor, frames: int) -> dict[str, torch.Tensor]:
        """Note heads on the encoder's memory -> what the reading (mt3ds/tokens/rolls.py) uses, as probabilities
        fp32: onset and offset (B, frames, 1, N_KEYS) (group 0), frame (B, frames, GROUPS, N_KEYS), drums (B, frames,
        N_DRUM_CLASSES), programs (B, frames, 128)."""
        if self.note_heads is None:
            raise ValueError("this model has no note heads (note_heads)")
        return {name: torch.sigmoid(x) for name, x in self.note_heads(memory, frames, reading=True).items()}

    def frame_probs(self, memory: torch.Tensor) -> torch.Tensor:
        """Aux frame head on the encoder's memory -> roll probabilities fp32 (B, S, 2, N_KEYS): onset, active."""
        if self.frame_head is None:
            raise ValueError("this model has no aux frame head (aux_frame_loss)")
        return torch.sigmoid(self._roll_logits(memory))

    def forward(self, features: torch.Tensor, decoder_input: torch.Tensor | None = None,
                instruments: torch.Tensor | None = None, *, batch: dict | None = None, label_smoothing: float = 0.0,
                time_smoothing: float = 0.0):
        """logits fp32 (B, T, vocab); or, given batch=, (loss, metrics) as loss() does, which is the form to call
        through a DeepSpeed engine: engine(features, batch=batch, label_smoothing=0.1)."""
        if batch is not None:
            return self.loss(features, batch, label_smoothing=label_smoothing, time_smoothing=time_smoothing)
        return self.run(features, decoder_input, instruments)[0]

    # -----------------------------------------------------------------------------------------------------------
    # training loss

    def loss(self, features: torch.Tensor, batch: dict, label_smoothing: float = 0.0, time_smoothing: float = 0.0
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Token cross-entropy (fp32, padding ignored, optional label smoothing) plus, with aux_frame_loss,
        aux_frame_weight * (onset BCE + active BCE). time_smoothing = sigma > 0 (in 10 ms steps) replaces the
        one-hot target of every shift token with a Gaussian over its neighbouring shift values, so a shift one
        step off earns most of the credit instead of none (onset F1 forgives 50 ms; exact cross-entropy does not).
        Metrics are detached scalars: loss, token_loss (unsmoothed), token_acc, tokens (when token_weight > 0),
        frame_onset_loss / frame_active_loss with the aux head, heads_loss and each head's term with note_heads
        (plus heads_weight * their sum in the loss)."""
        instruments = batch.get("instruments")
        memory = self.encode(features, instruments)
        loss, metrics = torch.zeros((), device=memory.device), {}
        if self.cfg.token_weight > 0:
            hidden = self.decode(batch["decoder_input"], memory, self.decoder_hint(instruments, features.shape[0]))
            token_loss, metrics = self._token_loss(self.logits(hidden), batch, label_smoothing, time_smoothing)
            loss = self.cfg.token_weight * token_loss
        if self.note_heads is not None:
            heads, head_metrics = head_loss(self.note_heads(memory, features.shape[1]), batch, self.cfg.aux_pos_weight)
            loss = loss + self.cfg.heads_weight * heads
            metrics.update(head_metrics, heads_loss=heads.detach())
        roll_logits = self._roll_logits(memory) if self.frame_head is not None else None
        if roll_logits is not None:
            if "frame_onsets" not in batch or "frame_active" not in batch:
                raise ValueError("aux_frame_loss is on but the batch has no frame_onsets / frame_active")
            onset = self._frame_bce(roll_logits[:, :, 0], batch["frame_onsets"])
            active = self._frame_bce(roll_logits[:, :, 1], batch["frame_active"])
            loss = loss + self.cfg.aux_frame_weight * (onset + active)
            metrics.update(frame_onset_loss=onset.detach(), frame_active_loss=active.detach())
        metrics["loss"] = loss.detach()
        return loss, metrics

    def _token_loss(self, logits: torch.Tensor, batch: dict, label_smoothing: float, time_smoothing: float
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = batch["labels"].to(logits.device)
        valid = labels != IGNORE
        logp = F.log_softmax(logits, dim=-1)  # (B, T, vocab) fp32
        safe = labels.clamp(min=0)[..., None]
        nll = -logp.gather(-1, safe).squeeze(-1)  # (B, T)
        per_token = (1 - label_smoothing) * nll - label_smoothing * logp.mean(-1) if label_smoothing else nll
        if time_smoothing > 0:
            per_token = torch.where(_is_shift(labels), _soft_shift_nll(logp, labels, time_smoothing), per_token)
        n = valid.sum().clamp(min=1)
        with torch.no_grad():
            metrics = {"token_loss": (nll * valid).sum() / n,
                       "token_acc": ((logits.argmax(-1) == labels) & valid).sum() / n,
                       "tokens": valid.sum()}
        return (per_token * valid).sum() / n, metrics

    def _frame_bce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(logits.device, torch.float32)
        if target.shape != logits.shape:
            raise ValueError(f"frame targets {tuple(target.shape)} do not match the encoder frames "
                             f"{tuple(logits.shape)}")
        if self.cfg.aux_pos_weight is not None:
            pos_weight = torch.tensor(self.cfg.aux_pos_weight, device=logits.device)
        else:  # rare positives (onsets) would otherwise be ignored: sqrt(neg / pos) of this batch, at least 1
            pos = target.sum()
            pos_weight = ((target.numel() - pos) / pos.clamp(min=1)).sqrt().clamp(min=1.0)
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)


def _is_shift(ids: torch.Tensor) -> torch.Tensor:
    return (ids >= vocab.SHIFT.first_id) & (ids <= vocab.SHIFT.last_id)


def _soft_shift_nll(logp: torch.Tensor, labels: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, T) cross-entropy against a Gaussian (sigma steps, cut at 3 sigma) over the shift values around each
    label, renormalized inside 1..1000; meaningful only where the label is a shift."""
    reach = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-reach, reach + 1, device=logp.device)
    ids = labels.clamp(min=0)[..., None] + offsets  # (B, T, window)
    inside = (ids >= vocab.SHIFT.first_id + 1) & (ids <= vocab.SHIFT.last_id)  # shift 0 is never written
    weight = torch.exp(-0.5 * (offsets.float() / sigma) ** 2) * inside
    weight = weight / weight.sum(-1, keepdim=True).clamp(min=1e-12)
    return -(weight * logp.gather(-1, ids.clamp(0, logp.shape[-1] - 1))).sum(-1)
