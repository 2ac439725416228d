"""Validation during training (docs/design.md §6.6), with the EMA weights in a separate fp32 model (no autocast: the
numbers do not depend on the training precision).

Teacher-forced: token loss (unsmoothed cross-entropy) and token accuracy over the first `items` validation chunks,
split across ranks by the validation loader. Decoded for real: the first `decode_items` of those are generated
(greedy or beam, KV cache, grammar-constrained, to the batch's instruments too when the model is conditioned on
them), turned into notes with decode_tokens exactly as transcription does, and scored against the chunk's reference
tokens with mir_eval (mt3ds.evaluate.score_notes): onset F1, onset+offset F1 and multi-instrument F1, pooled over
the decoded chunks. A model with note heads is read the way `transcribe --notes frames` reads it (mt3ds/tokens/
rolls.py, each chunk as a file of its own) on every validation chunk, no decoding needed: heads_onset_f1,
heads_onset_offset_f1, heads_multi_full_f1, heads_multi_class_f1, heads_drum_onset_f1; and its loss is heads_loss.
val_loss, which picks the best checkpoint, is the token loss, or the heads' loss for a model without one. A model
with the aux frame head is also scored the way `transcribe --notes frames` reads it (mt3ds/tokens/frames.py: notes
from the head's rolls, programs from the tokens): frames_onset_f1, frames_onset_offset_f1, frames_multi_full_f1.
Each chunk is read on its own, so notes tied in from the previous chunk are left out of both sides (their onsets
belong to that chunk). The first `dump_midi` chunks' predictions and references are written as MIDI under
RUN_DIR/samples/step_NNNNNNNN/ (rank 0).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ..evaluate import Counts, score_notes
from ..model.generate import Search, generate
from ..tokens.codec import decode_tokens
from ..tokens.frames import frame_seconds, hybrid_notes
from ..tokens.rolls import ReadSettings, RollReader, read_heads
from ..tokens.midi import write_midi
from .config import ValidationConfig

SCORED = ("onset", "onset_offset", "multi_full")
FRAME_SCORED = tuple(f"frames_{name}" for name in SCORED)  # the same, for notes from the aux frame head
CHUNK_READING = ReadSettings(min_track_notes=0)  # a chunk is too short to drop its small classes
HEADS_SCORED = tuple(f"heads_{name}" for name in SCORED + ("multi_class", "drum_onset"))  # from the note heads


def _take(batch: dict, n: int) -> dict:
    return {k: (v[:n] if isinstance(v, (torch.Tensor, list)) else v) for k, v in batch.items()}


def _to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def score_chunk(reference_ids, generated_ids, chunk_seconds: float, time_encoding: str):
    """One chunk's reference and generated ids -> (reference Notes, estimated Notes, score_notes counts, malformed
    tokens in the generated ids). Both are read on their own: tied-in notes are left out of both."""
    est, stats = decode_tokens([generated_ids], chunk_seconds=chunk_seconds, time_encoding=time_encoding)
    ref, _ = decode_tokens([reference_ids], chunk_seconds=chunk_seconds, time_encoding=time_encoding)
    return ref, est, score_notes(ref, est), stats.malformed


@torch.no_grad()
def validate(model, logmel, loader, cfg: ValidationConfig, *, device, rank: int, world_size: int,
             chunk_seconds: float, dump_dir: Path | None = None, all_reduce=None) -> dict:
    """One validation pass; returns global metrics (the same on every rank). `all_reduce(tensor)` sums a float64
    tensor across ranks in place (None: one process)."""
    model.eval()
    logmel.eval()
    time_encoding = model.cfg.time_encoding
    search = Search(beam_size=cfg.beam_size, max_len=cfg.decode_max_len or model.cfg.max_tokens)
    items_left = math.ceil(cfg.items / world_size)
    decode_left = math.ceil(cfg.decode_items / world_size)
    dump_left = cfg.dump_midi if rank == 0 and dump_dir is not None else 0
    sums = dict.fromkeys(("token_loss_x_tokens", "correct_tokens", "tokens", "chunks", "heads_loss_x_chunks"), 0.0)
    with_rolls = model.frame_head is not None
    with_heads = model.note_heads is not None
    seconds = frame_seconds(logmel.cfg)  # a roll frame is one hop of the features (training: the default audio)
    counts = {m: Counts() for m in SCORED + (FRAME_SCORED if with_rolls else ()) + (HEADS_SCORED if with_heads
                                                                                    else ())}
    decoded = malformed = 0
    for batch in loader:
        if items_left <= 0:
            break
        n = min(len(batch["keys"]), items_left)
        batch = _to_device(_take(batch, n), device)
        items_left -= n
        features = logmel(batch["audio"])
        _, m = model.loss(features, batch)
        tokens = float(m.get("tokens", 0))
        sums["token_loss_x_tokens"] += float(m.get("token_loss", 0)) * tokens
        sums["correct_tokens"] += float(m.get("token_acc", 0)) * tokens
        sums["tokens"] += tokens
        sums["chunks"] += n
        if with_heads:
            sums["heads_loss_x_chunks"] += float(m["heads_loss"]) * n
            _score_heads(model, features, batch, counts, seconds, chunk_seconds, time_encoding)
        k = min(n, decode_left)
        if k <= 0:
            continue
        decode_left -= k
        instruments = batch["instruments"][:k] if model.cfg.conditioning != "none" else None
        out = generate(model, features[:k], instruments, allowed=instruments, search=search, with_rolls=with_rolls)
        rolls = out.rolls.cpu().numpy() if with_rolls else None  # (k, frames, 2, N_KEYS)
        generated = out.tokens.cpu().numpy()
        reference = batch["tokens"][:k].cpu().numpy()
        for i in range(k):
            ref, est, chunk_counts, bad = score_chunk(reference[i], generated[i], chunk_seconds, time_encoding)
            malformed += bad
            decoded += 1
            for name in SCORED:
                counts[name] += chunk_counts[name]
            if with_rolls:
                hybrid = score_notes(ref, hybrid_notes(rolls[i, :, 0], rolls[i, :, 1], seconds, est))
                for name in SCORED:
                    counts[f"frames_{name}"] += hybrid[name]
            if dump_left > 0:
                dump_left -= 1
                dump_dir.mkdir(parents=True, exist_ok=True)
                key = batch["keys"][i]
                write_midi(est, dump_dir / f"{key}.pred.mid")
                write_midi(ref, dump_dir / f"{key}.ref.mid")
    # Every sum by name, flattened into one tensor for a single all-reduce, then read back by the same names.
    named = {**sums, "decoded": decoded, "malformed": malformed}
    for name, c in counts.items():
        named.update({f"{name}.tp": c.tp, f"{name}.n_est": c.n_est, f"{name}.n_ref": c.n_ref})
    total = torch.tensor(list(named.values()), dtype=torch.float64)
    if all_reduce is not None:
        all_reduce(total)
    t = dict(zip(named, total.tolist()))
    tokens = t["tokens"]
    out = {"kind": "validation", "token_loss": t["token_loss_x_tokens"] / tokens if tokens else None,
           "token_acc": t["correct_tokens"] / tokens if tokens else None, "chunks": int(t["chunks"]),
           "tokens": int(tokens)}
    for name in counts:
        c = Counts(int(t[f"{name}.tp"]), int(t[f"{name}.n_est"]), int(t[f"{name}.n_ref"]))
        out[f"{name}_f1"] = c.scores()["f1"]
    out["decoded"], out["malformed"] = int(t["decoded"]), int(t["malformed"])
    if with_heads:
        out["heads_loss"] = t["heads_loss_x_chunks"] / t["chunks"] if t["chunks"] else None
    out["val_loss"] = out["token_loss"] if model.cfg.token_weight > 0 else out.get("heads_loss")
    return out


def _score_heads(model, features, batch, counts, seconds, chunk_seconds, time_encoding) -> None:
    """Read each chunk's notes from the note heads as transcription does and count them against its reference."""
    memory = model.encode(features, batch["instruments"] if model.cfg.conditioning != "none" else None)
    probs = {k: v.cpu().numpy() for k, v in model.head_probs(memory, features.shape[1]).items()}
    reference = batch["tokens"].cpu().numpy()
    for i in range(len(reference)):
        reader = RollReader()
        reader.add({k: v[i:i + 1] for k, v in probs.items()})
        est = read_heads(reader.rolls(), seconds, CHUNK_READING)
        ref, _ = decode_tokens([reference[i]], chunk_seconds=chunk_seconds, time_encoding=time_encoding)
        scores = score_notes(ref, est)
        for name in SCORED + ("multi_class", "drum_onset"):
            counts[f"heads_{name}"] += scores[name]
