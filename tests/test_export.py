"""Export a training run to one safetensors file and load it without DeepSpeed: same logits as the run's EMA
weights, metadata as agreed, refusal of another format/vocabulary/audio config, init_from adding up history."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mt3ds.cli import main as cli_main
from mt3ds.config import AudioConfig, FeatureConfig
from mt3ds.errors import UserError
from mt3ds.model.io import MODEL_FORMAT, load_model, read_meta
from mt3ds.model.transcriber import Transcriber
from mt3ds.tokens import vocab
from mt3ds.train import checkpoints as ckpt
from mt3ds.train.config import train_config_from_dict
from mt3ds.train.export import export_run
from train_fixtures import *  # noqa: F401,F403 (fixtures)
from train_fixtures import CPU_DS_CONFIG, train_yaml


@pytest.fixture(scope="module")
def exported(finished_run, tmp_path_factory):
    run_dir, _ = finished_run
    out = tmp_path_factory.mktemp("export") / "model.safetensors"
    return out, export_run(run_dir, out)


def test_export_then_load_gives_the_ema_logits(finished_run, exported):
    run_dir, state = finished_run
    out, meta = exported
    best = ckpt.best_checkpoint(run_dir / "checkpoints")
    assert best.name == ckpt.tag_for(state["best"]["step"])
    reference = Transcriber(load_train_config_model(run_dir))
    reference.load_state_dict(load_file(str(best / "ema.safetensors")))
    reference.eval()
    model, loaded_meta = load_model(out)
    assert not model.training and loaded_meta == meta
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 256, 512, generator=g)
    decoder_input = torch.randint(3, vocab.VOCAB_SIZE, (2, 12), generator=g)
    with torch.no_grad():
        assert torch.equal(model(features, decoder_input), reference(features, decoder_input))
    assert all(t.dtype == torch.float32 for t in load_file(str(out)).values())


def load_train_config_model(run_dir):
    from mt3ds.train.config import load_train_config

    return load_train_config(run_dir / "config.yaml").model


def test_exported_metadata(finished_run, exported):
    run_dir, state = finished_run
    out, meta = exported
    with safe_open(str(out), framework="pt") as f:
        header = json.loads(f.metadata()["mt3ds"])
    assert header == meta == json.loads(out.with_suffix(".json").read_text())
    assert meta["format"] == MODEL_FORMAT and meta["vocab_version"] == vocab.VOCAB_VERSION
    assert meta["audio_version"] == AudioConfig().version and meta["audio_config"] == AudioConfig().to_dict()
    assert meta["feature_config"]["n_mels"] == FeatureConfig().n_mels
    mc = meta["model_config"]
    assert (mc["d_model"], mc["time_encoding"], mc["conditioning"], mc["aux_frame_loss"]) == \
        (64, "absolute", "none", False)
    t = meta["training"]
    assert t["steps"] == 6 and t["samples"] == 24 and t["hours_of_data"] == pytest.approx(24 * 2.048 / 3600)
    assert t["wall_minutes"] > 0 and "cpu" in t["hardware"] and len(t["runs"]) == 1
    assert t["best_validation"]["step"] == state["best"]["step"]
    assert t["best_validation"]["token_loss"] == pytest.approx(state["best"]["val_loss"])
    assert {"onset_f1", "onset_offset_f1", "token_acc"} <= set(t["best_validation"])
    curve = t["learning_curve"]  # validation every 3 steps, up to the exported checkpoint
    assert [r["step"] for r in curve] == [s for s in (3, 6) if s <= t["runs"][-1]["steps"]]
    assert 0 < curve[-1]["train_min"] <= t["train_minutes"] + 1e-9 and "onset_f1" in curve[-1]


@pytest.mark.parametrize("key, value, expected", [
    ("vocab_version", "mt3ds-option1-v0:1000:100sps", "made with vocabulary 'mt3ds-option1-v0:1000:100sps' but "
                                                      "this code uses 'mt3ds-option1-v1:1437:100sps'"),
    ("audio_version", "mt3ds-audio-v0", "made with audio config 'mt3ds-audio-v0' but this code uses 'mt3ds-audio-v1"),
    ("format", "mt3ds-model-v9", "made with model format 'mt3ds-model-v9' but this code uses 'mt3ds-model-v1'"),
])
def test_load_refuses_a_mismatch_naming_both_versions(exported, tmp_path, key, value, expected):
    out, meta = exported
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(out)), str(bad), metadata={"mt3ds": json.dumps({**meta, key: value})})
    with pytest.raises(UserError) as e:
        load_model(bad)
    assert str(e.value).startswith(f"{bad}: ") and expected in str(e.value)


def test_load_refuses_files_that_are_not_models(exported, tmp_path):
    out, meta = exported
    with pytest.raises(UserError, match="model file not found"):
        load_model(tmp_path / "missing.safetensors")
    (tmp_path / "text.safetensors").write_text("not a model")
    with pytest.raises(UserError, match="not a safetensors model file"):
        load_model(tmp_path / "text.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(UserError, match="without mt3ds metadata"):
        read_meta(tmp_path / "plain.safetensors")
    tensors = load_file(str(out))
    tensors.pop("in_proj.weight")
    save_file(tensors, str(tmp_path / "short.safetensors"), metadata={"mt3ds": json.dumps(meta)})
    with pytest.raises(UserError, match="weights do not match the model_config"):
        load_model(tmp_path / "short.safetensors")


def test_cli_export_and_its_errors(finished_run, tmp_path, capsys):
    run_dir, _ = finished_run
    out = tmp_path / "m.safetensors"
    cli_main(["export", str(run_dir), "-o", str(out), "--which", "latest"])
    assert f"wrote {out}" in capsys.readouterr().out and read_meta(out)["training"]["steps"] == 6
    for args, expected in [([str(tmp_path / "nothing"), "-o", str(out)], "run folder not found"),
                           ([str(tmp_path), "-o", str(out)], "no complete checkpoint"),
                           ([str(run_dir), "-o", str(out), "--step", "5"], "no checkpoint at step 5; there are: 3, 6"),
                           ([str(run_dir), "-o", str(tmp_path / "m.pt")], "the exported model is a .safetensors")]:
        with pytest.raises(SystemExit) as e:
            cli_main(["export", *args])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and err.startswith("mt3ds: error: ") and expected in err and "\n" not in err


def test_export_averages_in_other_models(finished_run, exported, tmp_path, capsys):
    """--average: each float tensor the mean of the run's EMA weights and the other models'; recorded; a model of
    another shape is refused in one line."""
    run_dir, _ = finished_run
    out, meta = exported
    ours = load_file(str(out))
    shifted = {k: (v + 1.0 if v.is_floating_point() else v) for k, v in ours.items()}
    other = tmp_path / "shifted.safetensors"
    save_file(shifted, str(other), metadata={"mt3ds": json.dumps(meta)})
    averaged = tmp_path / "avg.safetensors"
    cli_main(["export", str(run_dir), "-o", str(averaged), "--average", str(other), "--average", str(out)])
    assert f"averaged with: {other}, {out}" in capsys.readouterr().out
    got = load_file(str(averaged))
    assert got.keys() == ours.keys()
    for k, v in ours.items():
        torch.testing.assert_close(got[k], v + 1.0 / 3 if v.is_floating_point() else v)
    assert read_meta(averaged)["averaged_with"] == [{"model": str(other), "steps": meta["training"]["steps"]},
                                                   {"model": str(out), "steps": meta["training"]["steps"]}]
    assert "averaged_with" not in meta
    wider = dict(meta, model_config=dict(meta["model_config"], d_model=meta["model_config"]["d_model"] * 2))
    wrong = tmp_path / "wider.safetensors"
    save_file(ours, str(wrong), metadata={"mt3ds": json.dumps(wider)})
    with pytest.raises(SystemExit) as e:
        cli_main(["export", str(run_dir), "-o", str(tmp_path / "x.safetensors"), "--average", str(wrong)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "another model config" in err and "\n" not in err
    assert not (tmp_path / "x.safetensors").exists()


def test_init_from_an_exported_model_adds_up_history(finished_run, exported, shard_dirs, tmp_path):
    """A new run starts from the exported weights; its export counts both runs' steps, samples and minutes."""
    from mt3ds.train.engine import train

    out, meta = exported
    cfg = train_config_from_dict(train_yaml(tmp_path / "second", shard_dirs[0], None, steps=2, init_from=str(out),
                                            checkpoint={"every": 2, "keep_best": 0}))
    train(cfg, CPU_DS_CONFIG)
    first_step = json.loads((tmp_path / "second" / "metrics.jsonl").read_text().splitlines()[0])
    fresh_step = json.loads((finished_run[0] / "metrics.jsonl").read_text().splitlines()[0])
    assert first_step["token_loss"] < fresh_step["token_loss"] - 0.1  # started from the trained weights
    second = export_run(tmp_path / "second", tmp_path / "second.safetensors")
    t = second["training"]
    assert [r["steps"] for r in t["runs"]] == [6, 2] and t["steps"] == 8 and t["samples"] == 24 + 8
    assert t["wall_minutes"] == pytest.approx(sum(r["wall_minutes"] for r in t["runs"]))
    assert t["train_minutes"] == pytest.approx(sum(r["train_minutes"] for r in t["runs"]))
    assert t["runs"][0]["train_minutes"] == pytest.approx(meta["training"]["train_minutes"]) and \
        0 < t["runs"][1]["train_minutes"] < t["train_minutes"]
    other = train_config_from_dict(train_yaml(tmp_path / "third", shard_dirs[0], None, steps=2, init_from=str(out),
                                              model={"preset": "tiny", "d_model": 32}))
    with pytest.raises(UserError, match=r"init_from model of another model config \(d_model: saved 64, config 32\)"):
        train(other, CPU_DS_CONFIG)
