"""synth/songs.py: generated songs are a pure function of the seed, cover every General MIDI family in its register,
have bass lines down to E1 and drum parts as dense as real drummers play, and valid note targets."""
from __future__ import annotations

import numpy as np
import pytest

from mt3ds.synth.banks import DRUMKIT, FLUIDSYNTH, Bank, Palette
from mt3ds.synth.songs import GENRES, arrange_song, register
from mt3ds.tokens import gm
from synth_fixtures import make_kit

FULL = Bank("full", FLUIDSYNTH, "/x/full.sf2", "", tuple((p, 0, p) for p in range(128)), (0, 8, 16, 24, 25, 32, 40))


@pytest.fixture(scope="module")
def palette(tmp_path_factory):
    kit = make_kit(tmp_path_factory.mktemp("kits") / "Mini")
    return Palette([FULL, Bank("kit:Mini", DRUMKIT, str(kit), "", (), (0,))])


def _same(a, b) -> bool:
    return all(x.program == y.program and x.bank == y.bank and np.array_equal(x.onset, y.onset)
               and np.array_equal(x.offset, y.offset) and np.array_equal(x.pitch, y.pitch)
               and np.array_equal(x.velocity, y.velocity) and np.array_equal(x.controls, y.controls)
               and np.array_equal(x.bend, y.bend) for x, y in zip(a.stems, b.stems)) and len(a.stems) == len(b.stems)


def test_a_song_is_a_pure_function_of_its_seed(palette):
    assert _same(arrange_song(11, palette, 60.0), arrange_song(11, palette, 60.0))
    assert not _same(arrange_song(11, palette, 60.0), arrange_song(12, palette, 60.0))


@pytest.mark.parametrize("genre", GENRES)
def test_each_genre_is_a_playable_band(palette, genre):
    hits_per_s, lowest = [], 128
    for seed in range(6):
        arr = arrange_song(seed, palette, 60.0, genre=genre)
        seconds = float(arr.seconds(arr.end_tick))
        assert 20.0 < seconds <= 62.0 and arr.info["genre"] == genre
        roles = {s.parts[0].split()[-1] for s in arr.stems}
        assert {"bass", "comp", "lead"} <= roles
        for s in arr.stems:
            assert len(s.onset) and (s.offset > s.onset).all() and 1 <= s.velocity.min() <= s.velocity.max() <= 127
            if s.is_drum:
                hits_per_s.append(len(s.onset) / seconds)
                assert set(s.pitch.tolist()) <= set(range(35, 82))
                continue
            lo, hi = register(s.program)
            assert lo <= s.pitch.min() and s.pitch.max() <= hi, (s.name, lo, hi, s.pitch.min(), s.pitch.max())
            for p in np.unique(s.pitch):  # a pitch never sounds twice at once: every note-on pairs with its off
                sel = s.pitch == p
                assert (s.onset[sel][1:] >= s.offset[sel][:-1]).all()
            if "bass" in s.parts[0]:
                assert s.pitch.min() >= 28
                lowest = min(lowest, int(s.pitch.min()))
    assert lowest < 40  # bass lines reach the bottom octave
    # real drummers: about 2-12 hits a second (a busy funk groove in sixteenths ~10), not two kits at once
    assert hits_per_s and 1.5 < np.median(hits_per_s) < 12.0, hits_per_s


def test_every_general_midi_family_appears(palette):
    families = set()
    for seed in range(150):
        families |= {gm.program_class(s.program) for s in arrange_song(seed, palette, 30.0).stems}
    assert families == {*gm.CLASS_NAMES, gm.DRUMS_NAME}


def test_hydrogen_kit_drums_name_what_the_kit_played(palette):
    kits = 0
    for seed in range(30):
        for s in arrange_song(seed, palette, 30.0).stems:
            if s.is_drum and s.bank.engine == DRUMKIT:
                kits += 1
                assert set(s.pitch.tolist()) <= {36, 38, 42, 46, 49, 57, 35, 40, 44, 37, 39, 51, 53}
                assert not ({41, 43, 45, 47, 48, 50} & set(s.pitch.tolist()))  # the mini kit has no toms
    assert kits >= 5
