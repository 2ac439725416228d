"""synth/banks.py and drumkit.py: what a bank holds is read from its files; held-out timbres stay out of train."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from mt3ds.errors import UserError
from mt3ds.synth import banks
from mt3ds.synth.banks import DRUMKIT, FLUIDSYNTH, TIMIDITY, Bank, Palette, split_palettes
from synth_fixtures import TIM, make_kit


def _bank(name, engine=FLUIDSYNTH, programs=range(128), kits=(0,), weight=1.0):
    return Bank(name, engine, f"/x/{name}", "", tuple((p, 0, p) for p in programs), tuple(kits), weight)


def test_soundfont_presets_are_read_from_the_headers():
    if not TIM.is_file():
        pytest.skip(f"{TIM} missing: apt-get install timgm6mb-soundfont")
    bank = banks.soundfont_bank(TIM)
    assert bank.programs == frozenset(range(128)) and 0 in bank.kits and bank.engine == FLUIDSYNTH
    assert bank.preset_for(33) == (0, 33)


def test_reserved_and_broken_soundfonts_are_refused(tmp_path):
    fake = tmp_path / "MuseScore_General.sf2"
    fake.write_bytes(b"RIFF\x04\x00\x00\x00sfbk")
    with pytest.raises(UserError, match="reserved for held-out evaluation"):
        banks.soundfont_bank(fake)
    junk = tmp_path / "junk.sf2"
    junk.write_bytes(b"not a soundfont at all")
    with pytest.raises(UserError, match="not a SoundFont"):
        banks.soundfont_bank(junk)


def test_timidity_config_lists_the_patches_that_exist(tmp_path):
    (tmp_path / "Tone").mkdir()
    for name in ("piano.pat", "bass.pat", "kick.pat"):
        (tmp_path / "Tone" / name).write_bytes(b"GF1PATCH")
    cfg = tmp_path / "t.cfg"
    cfg.write_text(f"dir {tmp_path}\ndrumset 0\n 36 Tone/kick.pat\nbank 0\n 0 Tone/piano.pat amp=120\n"
                   " 33 Tone/bass.pat\n 40 Tone/missing.pat\n", encoding="utf-8")
    bank = banks.timidity_bank(cfg, "mini")
    assert bank.engine == TIMIDITY and bank.programs == frozenset({0, 33}) and bank.kits == (0,)
    with pytest.raises(UserError, match="apt-get install"):
        banks.timidity_bank(tmp_path / "nope.cfg")


def test_hydrogen_kit_maps_general_midi_keys_with_fallbacks(tmp_path):
    from mt3ds.synth.drumkit import kit_keys, load_kit_map

    kit = make_kit(tmp_path / "MiniKit")
    kmap = load_kit_map(str(kit))
    assert kmap[36][1] == 36 and kmap[38][1] == 38 and kmap[42][1] == 42 and kmap[49][1] == 49
    assert kmap[35][0] == kmap[36][0] and kmap[44] == (kmap[42][0], 42)  # no pedal hat: played as the closed one
    assert kit_keys(str(kit), np.array([36, 44, 46, 51, 41])).tolist() == [36, 42, 46, 49, -1]  # no ride, no toms
    assert banks.kit_bank(kit).has(128) and not banks.kit_bank(kit).has(0)
    hands = make_kit(tmp_path / "Hands", names=("Bongo Hi", "Bongo Lo", "Clap"))
    with pytest.raises(UserError, match="not a drum set"):
        banks.kit_bank(hands)


def test_cross_timbre_split_keeps_held_out_banks_out_of_train():
    found = [_bank("a"), _bank("b"), _bank("csound"), _bank("freepats", TIMIDITY, range(0, 60)),
             _bank("kit:K1", DRUMKIT, (), (0,)), _bank("kit:The Black Pearl 1.0", DRUMKIT, (), (0,))]
    train, held, names = split_palettes(found, None)  # the default list, as far as it is there
    assert names == ["csound", "freepats", "kit:The Black Pearl 1.0"]
    assert not {b.name for b in train.banks} & set(names) and {b.name for b in held.banks} == set(names)
    rng = np.random.default_rng(0)
    for program in (*range(128), 128):  # no draw from the training palette ever lands on a held-out bank
        for _ in range(5):
            assert train.choose(program, rng).name not in names
    train, held, names = split_palettes(found, ("b",))
    assert names == ["b"] and [b.name for b in held.banks] == ["b"]
    with pytest.raises(UserError, match="not among the banks"):
        split_palettes(found, ("nosuch",))
    with pytest.raises(UserError, match="without a pitched bank or a drum kit"):
        split_palettes(found, ("a", "b", "csound", "freepats"))
    train, held, names = split_palettes([_bank("a")], None)  # nothing of the default installed: no split
    assert names == [] and train.banks == held.banks


def test_palette_falls_back_to_a_bank_that_has_the_program():
    from mt3ds.synth.arrange import pick_bank

    small = _bank("small", programs=[0, 33], weight=100.0)
    full = _bank("full", weight=0.01)
    rng = np.random.default_rng(1)
    picks = [pick_bank(Palette([small, full]), 40, rng) for _ in range(20)]
    assert all(b.name == "full" for b, _ in picks) and sum(f for _, f in picks) >= 15  # counted as fallbacks
    assert all(not fallback for _, fallback in (pick_bank(Palette([small, full]), 0, rng) for _ in range(20)))
    with pytest.raises(ValueError, match="no bank plays"):
        pick_bank(Palette([small]), 40, rng)


def test_installed_banks_are_listed_or_dropped_with_the_package_to_install():
    found, dropped = banks.available_banks()
    names = {b.name for b in found}
    assert not any("musescore" in b.path.lower() for b in found)
    for name, _, path, package, _ in banks.KNOWN_BANKS:
        assert name in names or name in dropped
        if name in dropped and "not installed" in dropped[name]:
            assert package.split()[0] in dropped[name]
    if shutil.which("timidity") is None:
        assert "freepats" not in names
