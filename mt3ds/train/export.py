"""`mt3ds export RUN_DIR -o model.safetensors`: a run's EMA weights -> one safetensors file + its JSON (model/io.py).

Reads only the checkpoint's ema.safetensors and state.json (no DeepSpeed, no pickle). By default the checkpoint with
the best validation token loss is exported, or the latest when none was validated. The weights are loaded into a
Transcriber of the recorded config before anything is written, so a file that exists is a model that loads.
The "training" record adds up over runs chained by init_from: total steps, samples, hours of audio seen, wall
minutes and training minutes (validation left out), with one entry per run; "learning_curve" (validation records up
to the exported step) is this run's. `--average M.safetensors` averages exported models' weights in (recorded as
"averaged_with").
"""
from __future__ import annotations

import json
from pathlib import Path

from ..config import AudioConfig
from ..errors import UserError, first_line
from ..model.config import ModelConfig
from ..model.io import model_meta, save_model
from ..tokens import vocab
from . import checkpoints as ckpt

WHICH = ("best", "latest")


def find_checkpoint(run_dir, which: str = "best", step: int | None = None) -> Path:
    """The checkpoint folder to export: a given step, the best validated one, or the latest."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run folder not found", exit_code=2)
    ckpt_dir = run_dir / "checkpoints"
    done = ckpt.complete_checkpoints(ckpt_dir)
    if not done:
        raise UserError(f"{run_dir}: no complete checkpoint under {ckpt_dir} (has the run saved one yet?)", exit_code=2)
    if step is not None:
        for s, p in done:
            if s == step:
                return p
        raise UserError(f"{run_dir}: no checkpoint at step {step}; there are: {', '.join(str(s) for s, _ in done)}",
                        exit_code=2)
    if which not in WHICH:
        raise UserError(f"--which {which}: expected one of {', '.join(WHICH)}", exit_code=2)
    if which == "best":
        best = ckpt.best_checkpoint(ckpt_dir)
        if best is not None:
            return best
    return ckpt.latest_checkpoint(ckpt_dir)


def _run_train_minutes(run: dict) -> float:
    """A run's training minutes; runs exported before runs carried them: those at their last validation."""
    if run.get("train_minutes") is not None:
        return run["train_minutes"]
    return (run.get("validation") or {}).get("train_min") or 0.0


def training_record(state: dict, tag_dir: Path) -> dict:
    """steps, samples, hours of data, wall and training minutes (totals over the init_from chain), hardware, best
    validation."""
    chunk_s = AudioConfig().chunk_seconds
    this_run = {"run_dir": state.get("run_dir"), "checkpoint": tag_dir.name, "steps": state["step"],
                "samples": state["samples"], "hours_of_data": state["samples"] * chunk_s / 3600,
                "wall_minutes": state.get("wall_seconds", 0.0) / 60,
                "train_minutes": state.get("train_seconds", 0.0) / 60, "hardware": state.get("hardware"),
                "init_from": state.get("init_from"), "validation": state.get("validation")}
    runs = list(state.get("history", [])) + [this_run]
    best = state.get("best")
    return {"steps": sum(r["steps"] for r in runs), "samples": sum(r["samples"] for r in runs),
            "hours_of_data": sum(r["hours_of_data"] for r in runs),
            "wall_minutes": sum(r["wall_minutes"] for r in runs),
            "train_minutes": sum(_run_train_minutes(r) for r in runs), "hardware": state.get("hardware"),
            "best_validation": ({"step": best["step"], **best["metrics"]} if best else None),
            "exported_validation": state.get("validation"), "runs": runs}


CURVE_KEYS = ("step", "train_min", "token_loss", "token_acc", "onset_f1", "onset_offset_f1", "multi_full_f1",
              "frames_onset_f1", "frames_onset_offset_f1", "frames_multi_full_f1", "heads_loss", "heads_onset_f1",
              "heads_onset_offset_f1", "heads_multi_full_f1", "heads_multi_class_f1", "heads_drum_onset_f1")


def learning_curve(run_dir, up_to_step: int) -> list[dict]:
    """The run's validation records up to a step (metrics.jsonl; a step redone after a resume counts once, its last
    record): training minutes (validation left out) against validation token loss, accuracy and note F1s."""
    path = Path(run_dir) / "metrics.jsonl"
    by_step: dict[int, dict] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if record.get("kind") == "validation" and record.get("step", up_to_step + 1) <= up_to_step:
                by_step[record["step"]] = {k: record.get(k) for k in CURVE_KEYS}
    return [by_step[k] for k in sorted(by_step)]


def average_with(tensors: dict, cfg: ModelConfig, models, where) -> tuple[dict, list[dict]]:
    """The equal-weight average of `tensors` and the weights of the exported `models` (model files of the same
    model config, e.g. earlier stages of one init_from chain: averaging weights that share a start is a cheap
    ensemble). Floating tensors are averaged in fp32; others are taken from `tensors`. Also returns a record of
    the models averaged in, for the metadata."""
    from ..model.io import load_weights, model_config_of

    total = {k: (v.float().clone() if v.is_floating_point() else v) for k, v in tensors.items()}
    record = []
    for path in models:
        other, meta = load_weights(path)
        if model_config_of(meta, str(path)).to_dict() != cfg.to_dict():
            raise UserError(f"{path}: another model config than {where}'s; only models of one shape average",
                            exit_code=2)
        if set(other) != set(total) or any(other[k].shape != total[k].shape for k in total):
            raise UserError(f"{path}: its tensors do not match {where}'s", exit_code=2)
        for k, v in total.items():
            if v.is_floating_point():
                v += other[k].float()
        record.append({"model": str(path), "steps": meta.get("training", {}).get("steps")})
    n = len(record) + 1
    return {k: (v / n if v.is_floating_point() else v) for k, v in total.items()}, record


def export_run(run_dir, out, which: str = "best", step: int | None = None, reading: dict | None = None,
               half: bool = False, average=()) -> dict:
    """Export a run's checkpoint (EMA weights) to `out`; return the metadata written. reading: the ReadSettings
    (tokens/rolls.py) chosen on validation data for the note heads, stored with the model; half: fp16 weights;
    average: exported model files whose weights are averaged in with equal weight (average_with)."""
    from ..model.transcriber import Transcriber

    tag_dir = find_checkpoint(run_dir, which, step)
    state = ckpt.read_state(tag_dir)
    for key, ours in (("vocab_version", vocab.VOCAB_VERSION), ("audio_version", AudioConfig().version)):
        if state.get(key) != ours:
            raise UserError(f"{tag_dir}: trained with {key} {state.get(key)!r} but this code uses {ours!r}")
    try:
        cfg = ModelConfig.from_dict(state["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{tag_dir / ckpt.STATE}: no usable model_config ({e})") from None
    tensors = ckpt.load_ema_tensors(tag_dir)
    averaged = []
    if average:
        tensors, averaged = average_with(tensors, cfg, average, tag_dir)
    model = Transcriber(cfg)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise UserError(f"{tag_dir}: EMA weights do not fit the recorded model_config ({first_line(e)})") from None
    curve = learning_curve(run_dir, state["step"])
    meta = model_meta(cfg, {**training_record(state, tag_dir), "learning_curve": curve})
    meta["model_preset"] = state.get("model_preset")
    if averaged:
        meta["averaged_with"] = averaged
    if reading is not None:
        from ..tokens.rolls import ReadSettings

        try:
            meta["reading"] = ReadSettings.from_dict(reading).to_dict()
        except (TypeError, ValueError) as e:
            raise UserError(f"--reading: {e}", exit_code=2) from None
    out = Path(out)
    if out.suffix != ".safetensors":
        raise UserError(f"{out}: the exported model is a .safetensors file", exit_code=2)
    save_model(model.state_dict(), out, meta, half=half)
    return meta


def format_export(meta: dict, out) -> str:
    t = meta["training"]
    best = t.get("best_validation") or {}
    lines = [f"wrote {out} and {Path(out).with_suffix('.json')}",
             f"model: {meta.get('model_preset') or 'custom'} ({meta['model_config']['time_encoding']} time, "
             f"conditioning {meta['model_config']['conditioning']})",
             f"training: {t['steps']} steps, {t['samples']} chunks ({t['hours_of_data']:.2f} h of audio), "
             f"{t['wall_minutes']:.1f} min on {t['hardware']}"]
    if best:
        loss = best.get("token_loss") if best.get("token_loss") is not None else best.get("heads_loss")
        onset = best.get("heads_onset_f1", best.get("onset_f1"))
        lines.append(f"best validation: step {best['step']}, loss {loss:.4f}, onset F1 "
                     f"{onset if onset is not None else '-'}")
    if meta.get("averaged_with"):
        lines.append("averaged with: " + ", ".join(m["model"] for m in meta["averaged_with"]))
    return "\n".join(lines)
