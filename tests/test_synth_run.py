"""mt3ds synth with generated songs: the cross-timbre split holds on disk, same seed gives the same files whatever
the worker count, and the summary carries the corpus coverage."""
from __future__ import annotations

import hashlib
import re
import shutil

import pytest
import yaml

from synth_fixtures import TIM, need_fluidsynth

need_fluidsynth()

from mt3ds.errors import UserError  # noqa: E402
from mt3ds.synth.run import SynthOptions, run_synth  # noqa: E402


def _hashes(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.suffix in (".mid", ".flac")}


@pytest.fixture(scope="module")
def two_banks(tmp_path_factory):
    """TimGM6mb twice under two names: 'TimGM6mb' for training, 'HeldOut' only for validation and test."""
    folder = tmp_path_factory.mktemp("banks")
    held = folder / "HeldOut.sf2"
    shutil.copyfile(TIM, held)
    return [str(TIM), str(held)]


def _options(out, banks, **kw):
    base = dict(out=out, layout="slakh", soundfonts=banks, holdout_timbres="HeldOut", songs=1.0, hours=150 / 3600,
                seed=3, workers=1, max_seconds=12.0, progress=False)
    base.update(kw)
    return SynthOptions(**base)


def test_held_out_timbres_never_render_a_training_track(tmp_path, two_banks):
    out = tmp_path / "songs"
    summary = run_synth(_options(out, two_banks))
    assert summary["tracks"] >= 8 and not summary["failed"]
    assert summary["splits"]["train"] and summary["splits"]["validation"] + summary["splits"]["test"]
    for meta_path in out.glob("*/Track*/metadata.yaml"):
        meta = yaml.safe_load(meta_path.read_text(encoding="utf-8"))
        used = {s["bank"] for s in meta["stems"].values()}
        split = meta_path.parent.parent.name
        assert used == ({"TimGM6mb"} if split == "train" else {"HeldOut"}), (split, used)
    cov = summary["coverage"]
    assert cov["bank_splits"]["TimGM6mb"] == ["train"] and "train" not in cov["bank_splits"]["HeldOut"]
    assert cov["tracks"] == summary["tracks"] and cov["lowest_pitch"] >= 28 and cov["bass_below_40"] > 0
    assert summary["banks"]["held_out_timbres"] == ["HeldOut"]

    twin = tmp_path / "twin"
    run_synth(_options(twin, two_banks, workers=2))
    assert _hashes(twin) == _hashes(out)  # same seed, same files, one worker or two


def test_bad_split_options_are_one_line_errors(tmp_path, two_banks):
    with pytest.raises(UserError, match="not among the banks"):
        run_synth(_options(tmp_path / "a", two_banks, holdout_timbres="nosuch"))
    with pytest.raises(UserError, match="songs"):
        _options(tmp_path / "b", two_banks, songs=1.5)
    with pytest.raises(UserError, match="slakh layout only"):
        _options(tmp_path / "c", two_banks, layout="maestro")


def test_small_hours_still_give_every_split_a_track_and_grow_in_place(tmp_path, two_banks, capsys):
    out = tmp_path / "small"
    small = run_synth(_options(out, two_banks, hours=5 / 3600, progress=True))  # one 12 s song would do: train
    assert min(small["splits"].values()) >= 1, small["splits"]
    bars = capsys.readouterr().err
    assert re.search(r"planning: 100%\|[^|]*\| 5/5 ", bars), bars  # the bar ends at its total, not past it
    assert sum(small["splits"].values()) == small["tracks"] == small["rendered_now"]
    first = _hashes(out)
    larger = run_synth(_options(out, two_banks, hours=120 / 3600))  # the same folder, more hours: no delete
    assert larger["already_there"] == small["tracks"] and larger["tracks"] > small["tracks"]
    after = _hashes(out)
    assert {k: after[k] for k in first} == first  # the small run's tracks are the larger plan's, untouched


def test_voicing_changes_the_audio_not_the_music_and_is_recorded(tmp_path, two_banks):
    plain, voiced = tmp_path / "plain", tmp_path / "voiced"
    run_synth(_options(plain, two_banks, hours=30 / 3600))
    run_synth(_options(voiced, two_banks, hours=30 / 3600, voicing=1.0))
    a, b = _hashes(plain), _hashes(voiced)
    assert a.keys() == b.keys()
    assert {k: v for k, v in a.items() if k.endswith(".mid")} == {k: v for k, v in b.items() if k.endswith(".mid")}
    assert any(a[k] != b[k] for k in a if k.endswith(".flac"))
    offsets = [s.get("voicing") for p in voiced.glob("*/Track*/metadata.yaml")
               for s in yaml.safe_load(p.read_text(encoding="utf-8"))["synth"]["stem_mix"].values()]
    assert any(offsets)
    assert not any(s.get("voicing") for p in plain.glob("*/Track*/metadata.yaml")
                   for s in yaml.safe_load(p.read_text(encoding="utf-8"))["synth"]["stem_mix"].values())
    with pytest.raises(UserError, match="other settings"):  # a folder holds one plan only
        run_synth(_options(voiced, two_banks, hours=30 / 3600))
    with pytest.raises(UserError, match="--voicing"):
        _options(tmp_path / "x", two_banks, voicing=1.5)
