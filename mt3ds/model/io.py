"""An exported model: ONE safetensors file holding the weights (fp32) and, in its header, what they mean.

The header metadata key "mt3ds" holds a JSON string:
    {"format": "mt3ds-model-v1", "model_config": ModelConfig.to_dict(), "vocab_version": ..., "audio_version": ...,
     "audio_config": {...}, "feature_config": {...}, "training": {...}}
The same JSON is written beside the weights as <name>.json for people to read; loading never needs it.
Loading refuses another format, vocabulary or audio config with a message naming both versions, and never
unpickles anything (safetensors only), so a model file from elsewhere cannot run code.

    save_model(state_dict, "model.safetensors", meta)
    model, meta = load_model("model.safetensors", device="cpu")     # Transcriber in eval mode, meta dict
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from ..config import AudioConfig, FeatureConfig
from ..errors import UserError
from ..files import atomic_path, write_text_atomic
from ..tokens import vocab
from .config import ModelConfig

MODEL_FORMAT = "mt3ds-model-v1"
META_KEY = "mt3ds"


def model_meta(cfg: ModelConfig, training: dict | None = None, audio: AudioConfig = AudioConfig(),
               features: FeatureConfig = FeatureConfig()) -> dict:
    """The metadata of an exported model of this code's vocabulary and audio chain."""
    return {"format": MODEL_FORMAT, "model_config": cfg.to_dict(), "vocab_version": vocab.VOCAB_VERSION,
            "audio_version": audio.version, "audio_config": audio.to_dict(), "feature_config": asdict(features),
            "training": training or {}}


def save_model(state_dict: dict[str, torch.Tensor], path, meta: dict, half: bool = False) -> None:
    """Write weights (as fp32, or fp16 with half: half the file; loading casts them back to fp32), contiguous, on
    the CPU, and meta to `path`, and meta to <path minus suffix>.json. Both are written under temporary names and
    renamed, so a file that exists is complete."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if half else torch.float32
    tensors = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).cpu().contiguous().clone()
               for k, v in state_dict.items()}
    text = json.dumps(meta, sort_keys=True)
    # safetensors creates files 0600: a model is meant to be shared and packaged
    with atomic_path(path, mode=0o644) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: text})
    write_text_atomic(path.with_suffix(".json"), json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_meta(path) -> dict:
    """The checked metadata of an exported model (reads only the header)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for a file that is not safetensors
        raise UserError(f"{path}: not a safetensors model file ({type(e).__name__}: {e})") from None
    if META_KEY not in header:
        raise UserError(f"{path}: safetensors file without mt3ds metadata (not exported by `mt3ds export`)")
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: unreadable mt3ds metadata ({e})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: mt3ds metadata is not a JSON object")
    check_meta(meta, str(path))
    return meta


def check_meta(meta: dict, where: str, audio: AudioConfig = AudioConfig()) -> None:
    """Refuse a model made for another format, vocabulary or audio chain (both versions named)."""
    checks = [("format", MODEL_FORMAT, "model format"), ("vocab_version", vocab.VOCAB_VERSION, "vocabulary"),
              ("audio_version", audio.version, "audio config")]
    for key, ours, what in checks:
        if meta.get(key) != ours:
            raise UserError(f"{where}: the model was made with {what} {meta.get(key)!r} but this code uses "
                            f"{ours!r}; retrain or export it with this version")
    if not isinstance(meta.get("model_config"), dict):
        raise UserError(f"{where}: mt3ds metadata has no model_config")


def model_config_of(meta: dict, where: str) -> ModelConfig:
    try:
        return ModelConfig.from_dict(meta["model_config"])
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: model_config does not fit this code's ModelConfig ({e})") from None


def feature_config_of(meta: dict) -> FeatureConfig:
    """The feature settings the model was trained with (defaults for keys it does not record)."""
    return FeatureConfig(**meta.get("feature_config", {}))


def load_weights(path, device="cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, checked meta) of an exported model, without building the model."""
    from safetensors.torch import load_file

    meta = read_meta(path)
    try:
        tensors = load_file(str(path), device=str(device))
    except Exception as e:
        raise UserError(f"{path}: unreadable weights ({type(e).__name__}: {e})") from None
    return tensors, meta


def load_model(path, device="cpu"):
    """(Transcriber in eval mode on `device` with the exported weights, meta dict). No DeepSpeed needed."""
    from .transcriber import Transcriber

    tensors, meta = load_weights(path, device)
    model = Transcriber(model_config_of(meta, str(path)))
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise UserError(f"{path}: weights do not match the model_config they were saved with "
                        f"({' '.join(first[:2])})") from None
    return model.to(device).eval(), meta
