"""The config dataclasses: importable without torch, webdataset or scipy; each section checks its own values; each
field documented one way; the training YAML's messages name the file and the dotted key; SpecAugment's old key."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
import yaml

from mt3ds.config import AudioConfig, FeatureConfig
from mt3ds.data.loader_config import AugmentConfig, LoaderConfig
from mt3ds.errors import UserError
from mt3ds.train.config import (CheckpointConfig, DataConfig, EmaConfig, OptimConfig, SpecAugmentConfig,
                                TrainConfig, ValidationConfig, dump_yaml, load_train_config)

REPO = Path(__file__).resolve().parent.parent
CONFIG_MODULES = ("mt3ds.config", "mt3ds.model.config", "mt3ds.train.config", "mt3ds.data.loader_config")


def test_config_modules_import_without_torch_webdataset_or_scipy():
    """A fresh interpreter (this one has torch loaded already) imports every config module and builds the defaults."""
    code = (f"import sys\nfor m in {CONFIG_MODULES!r}:\n    __import__(m)\n"
            "from mt3ds.train.config import TrainConfig\nTrainConfig().loader_config(4)\n"
            "print(sorted(m for m in ('torch', 'webdataset', 'scipy') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _config_classes():
    """(module path, class name, class node) of every dataclass in the config modules."""
    for module in CONFIG_MODULES:
        path = REPO / (module.replace(".", "/") + ".py")
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and any("dataclass" in ast.unparse(d) for d in node.decorator_list):
                yield path, node


def test_every_field_has_a_docstring_and_no_comment():
    """One way to document a field: a one-line (or longer) docstring right under it, not a trailing comment."""
    seen = set()
    for path, cls in _config_classes():
        lines = path.read_text(encoding="utf-8").splitlines()
        body = cls.body
        for i, stmt in enumerate(body):
            if not isinstance(stmt, ast.AnnAssign):
                continue
            name = f"{cls.name}.{ast.unparse(stmt.target)}"
            seen.add(name)
            following = body[i + 1] if i + 1 < len(body) else None
            assert isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant) and \
                isinstance(following.value.value, str) and following.value.value.strip(), f"{name}: no docstring"
            assert "#" not in lines[stmt.lineno - 1], f"{name}: a trailing comment"
    assert {"AudioConfig.sample_rate", "FeatureConfig.frames", "ModelConfig.d_model", "TrainConfig.spec_augment",
            "SpecAugmentConfig.enabled", "LoaderConfig.augmentation", "AugmentConfig.rir_prob"} <= seen


@pytest.mark.parametrize("make, message", [
    (lambda: OptimConfig(lr=0.0), "lr must be > 0"),
    (lambda: OptimConfig(betas=(0.9, 1.0)), "betas must be two numbers in"),
    (lambda: OptimConfig(warmup_steps=0), "warmup_steps must be >= 1"),
    (lambda: EmaConfig(decay=1.0), r"decay must be in \[0, 1\)"),
    (lambda: ValidationConfig(items=4, decode_items=5), r"decode_items must be in 0\.\.items"),
    (lambda: ValidationConfig(decode_items=2, dump_midi=3), r"dump_midi must be in 0\.\.decode_items"),
    (lambda: CheckpointConfig(keep_last=0), "keep_last must be >= 1"),
    (lambda: SpecAugmentConfig(time_mask_prob=1.5), r"time_mask_prob must be in \[0, 1\]"),
    (lambda: SpecAugmentConfig(time_mask_width=-1), "time_mask_width must be >= 0"),
    (lambda: DataConfig(loader={"seed": 3}), "loader.seed: set by seed at the top level"),
    (lambda: DataConfig(loader={"workers": 3}), "loader.workers: unknown key; expected one of: augment, "),
    (lambda: DataConfig(loader={"mix_alpha": -1.0}), "loader: mix_alpha must be >= 0"),
    (lambda: TrainConfig(steps=0), "steps must be >= 1"),
    (lambda: TrainConfig(model_preset="huge"), "model_preset must be one of tiny, small, base, base_v2"),
    (lambda: FeatureConfig(hop_length=0), "must be positive"),
    (lambda: FeatureConfig(fmin_hz=9000.0), "fmin_hz < fmax_hz"),
    (lambda: AudioConfig(pre_emphasis=1.0), r"pre_emphasis must be in \[0, 1\)"),
    (lambda: LoaderConfig(velocity_bins=0), "velocity_bins must be in 1..127"),
    (lambda: AugmentConfig(noise_prob=2.0), r"noise_prob must be in \[0, 1\]"),
])
def test_each_section_checks_itself(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_sections_are_frozen_and_defaults_valid():
    cfg = TrainConfig()
    assert cfg.spec_augment == SpecAugmentConfig(enabled=False, time_mask_width=48, time_mask_prob=0.5)
    with pytest.raises(FrozenInstanceError):
        cfg.optim.lr = 1.0  # type: ignore[misc]
    assert FeatureConfig().frames == 256 and AudioConfig().chunk_seconds == 2.048


def _yaml(tmp_path, data: dict) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"data": {"train": ["shards/train"]}, **data}), encoding="utf-8")
    return path


@pytest.mark.parametrize("data, expected", [
    ({"optim": {"lr": -1.0}}, "optim.lr must be > 0"),
    ({"spec_augment": {"time_mask_prob": 2}}, r"spec_augment.time_mask_prob must be in [0, 1]"),
    ({"spec_augment": {"enabled": "yes"}}, "spec_augment.enabled: expected true or false, got 'yes'"),
    ({"spec_augment": {"on": True}}, "spec_augment.on: unknown key; expected one of: enabled, time_mask_width"),
    ({"checkpoint": {"keep_best": -1}}, "checkpoint.keep_best must be >= 0"),
    ({"data": {"train": ["a"], "loader": {"num_workers": "four"}}},
     "data.loader.num_workers: expected an integer, got 'four'"),
    ({"data": {"train": ["a"], "loader": {"augmentation": {"noise_prob": "often"}}}},
     "data.loader.augmentation.noise_prob: expected a number, got 'often'"),
    ({"data": {"train": ["a"], "loader": {"augmentation": {"colour": 1}}}},
     "data.loader.augmentation.colour: unknown key; expected one of: rir_prob"),
    ({"data": {"train": ["a"], "loader": {"augmentation": {"clip_threshold_dbfs": 3}}}},
     "data.loader: eq_gain_db_max >= 0, eq_bands >= 1 and clip_threshold_dbfs <= 0 are required"),
    ({"features": {"spec_augment": True}, "spec_augment": {"enabled": True}},
     "features: the old name of spec_augment; give only spec_augment"),
    ({"features": {"mask": 3}}, "features.mask: unknown key; expected one of: spec_augment, time_mask_width"),
])
def test_yaml_mistakes_name_the_file_and_the_key(tmp_path, data, expected):
    path = _yaml(tmp_path, data)
    with pytest.raises(UserError) as e:
        load_train_config(path)
    assert str(e.value).startswith(f"{path}: ") and expected in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_loader_values_arrive_in_their_types(tmp_path):
    cfg = load_train_config(_yaml(tmp_path, {"data": {"train": ["a"], "loader": {
        "num_workers": 2.0, "mix_alpha": "5e-1", "augmentation": {"noise_prob": 1}}}}))
    loader = cfg.loader_config(batch_size=3)
    assert loader.num_workers == 2 and isinstance(loader.num_workers, int) and loader.mix_alpha == 0.5
    assert loader.augmentation.noise_prob == 1.0 and loader.augmentation.rir_prob == AugmentConfig().rir_prob


def test_the_old_features_key_is_still_read(tmp_path):
    """`features: {spec_augment: ...}` (the key before SpecAugmentConfig) loads as the spec_augment section, and the
    run folder's config.yaml is written with the new key."""
    old = load_train_config(_yaml(tmp_path, {"features": {"spec_augment": True, "time_mask_width": 32}}))
    new = load_train_config(_yaml(tmp_path, {"spec_augment": {"enabled": True, "time_mask_width": 32}}))
    assert old == new and old.spec_augment == SpecAugmentConfig(enabled=True, time_mask_width=32)
    dumped = yaml.safe_load(dump_yaml(old))
    assert "features" not in dumped and dumped["spec_augment"] == {"enabled": True, "time_mask_width": 32,
                                                                   "time_mask_prob": 0.5}
