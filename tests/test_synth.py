"""mt3ds synth: tiny real renders (two Bach chorales, seconds long) in both layouts, checked for layout, metadata,
determinism, resume, holdout exclusion, split by work, stems summing to the mix and audio aligned with the MIDI.

Needs the `synth` extra and Debian's fluidsynth + timgm6mb-soundfont; skipped with the reason when absent."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

music21 = pytest.importorskip("music21", reason="music21 not installed (pip install 'mt3ds[synth]')")
try:
    import fluidsynth  # noqa: F401
except (ImportError, OSError) as e:  # pyfluidsynth raises ImportError when libfluidsynth is missing
    pytest.skip(f"pyfluidsynth/libfluidsynth not available ({e}): apt-get install fluidsynth; "
                "pip install 'mt3ds[synth]'", allow_module_level=True)

import soundfile as sf  # noqa: E402
import yaml  # noqa: E402

from mt3ds.errors import UserError  # noqa: E402
from mt3ds.synth import corpus  # noqa: E402
from mt3ds.synth.arrange import INSTRUMENTS, TPQ, Arrangement, Stem, arrange  # noqa: E402
from mt3ds.synth.drums import CRASHES, drum_part  # noqa: E402
from mt3ds.synth.layouts import write_midi  # noqa: E402
from mt3ds.synth.render import SAMPLE_RATE, render_stem  # noqa: E402
from mt3ds.synth.run import CONFIG_NAME, SynthOptions, run_synth  # noqa: E402
from mt3ds.tokens import gm  # noqa: E402
from mt3ds.tokens.midi import read_midi  # noqa: E402

TIM = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
if not TIM.is_file():
    pytest.skip(f"{TIM} missing: apt-get install timgm6mb-soundfont", allow_module_level=True)

TRAIN_WORK, TEST_WORK = "bach/bwv1.6.mxl", "bach/bwv114.7.mxl"  # split_of: train and test
HELD_OUT = "bach/bwv255.mxl"  # on the bundled holdout list
WORKS = [TRAIN_WORK, TEST_WORK, HELD_OUT]
FAST_ATTACK = set(range(0, 16)) | set(range(24, 40)) | {45, 46, 128}  # struck or plucked: sharp onsets


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _tree_hashes(root: Path) -> dict:
    """sha256 of every MIDI and audio file under ROOT, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.suffix in (".mid", ".midi", ".flac", ".wav")}


def _global_lag_ms(audio: np.ndarray, onsets: np.ndarray, hop: int = 16, max_ms: float = 60.0) -> float:
    """The shift (ms) of the MIDI onsets that best lines them up with rises of the audio's log energy. Notes
    struck within 30 ms of each other (a humanized chord) count once, at the first: the sound rises there."""
    e = np.convolve(audio.astype(np.float64) ** 2, np.ones(4 * hop) / (4 * hop), "same")[::hop]
    rise = np.maximum(np.diff(np.log(e + 1e-8), prepend=0.0), 0)
    fr = SAMPLE_RATE / hop
    onsets = np.unique(np.asarray(onsets))
    onsets = onsets[np.concatenate([[True], np.diff(onsets) > 0.03])]
    idx = np.round(onsets * fr).astype(int)
    shifts = np.arange(-int(max_ms / 1000 * fr), int(max_ms / 1000 * fr) + 1)
    score = [rise[np.clip(idx + s, 0, len(rise) - 1)].sum() for s in shifts]
    return float(shifts[int(np.argmax(score))] / fr * 1000)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("music21-cache")


def _options(out, cache, **kw):
    base = dict(out=out, layout="slakh", soundfonts=[str(TIM)], hours=40 / 3600, seed=7, workers=1, songs=0.0,
                max_seconds=8.0, cache=cache, works=WORKS, progress=False)
    base.update(kw)
    return SynthOptions(**base)


@pytest.fixture(scope="module")
def slakh(tmp_path_factory, cache):
    """A ~40 s Slakh-layout corpus: each chorale rendered about three times (8 s excerpts)."""
    out = tmp_path_factory.mktemp("synth") / "slakh"
    summary = run_synth(_options(out, cache))
    return out, summary


# ---------------------------------------------------------------------------------------------------------------
# corpus: holdout, work list, split, parsing


def test_holdout_list_is_read_and_matches_other_encodings(tmp_path):
    held = corpus.read_holdout()
    assert "bach/bwv255" in held and len(held) == 12  # the bundled list mt3ds/assets/holdout.txt (docs/design.md §1.5)
    assert corpus.is_held_out("bach/bwv255.krn", held)  # the same piece in another encoding
    assert not corpus.is_held_out("bach/bwv25.mxl", held)
    custom = tmp_path / "holdout.txt"
    custom.write_text("# comment\nbeethoven/opus18no1   # the whole quartet\n\n", encoding="utf-8")
    mine = corpus.read_holdout(custom)
    assert mine == frozenset({"beethoven/opus18no1"})
    assert corpus.is_held_out("beethoven/opus18no1/movement3.mxl", mine)  # movements of a held-out work
    with pytest.raises(UserError, match="holdout"):
        corpus.read_holdout(tmp_path / "missing.txt")


def test_default_work_list_excludes_holdout_and_non_music():
    held = corpus.read_holdout()
    works, excluded = corpus.list_works(held)
    ids = {w.id for w in works}
    assert len(works) > 1500
    assert not any(corpus.is_held_out(w, held) for w in ids)
    assert {corpus._stem(x) for x in excluded} == set(held)  # every held-out work exists in the corpus
    assert not any(w.group in corpus.EXCLUDED_GROUPS or w.id.endswith(".rntxt") for w in works)
    # one encoding per piece: Beethoven's opus 18 no 1 exists as .krn and .mxl
    assert "beethoven/opus18no1/movement1.mxl" in ids and "beethoven/opus18no1/movement1.krn" not in ids
    splits = [corpus.split_of(w) for w in works]
    shares = {s: splits.count(s) / len(splits) for s in ("train", "validation", "test")}
    assert 0.75 < shares["train"] < 0.85 and 0.06 < shares["validation"] < 0.14 and 0.06 < shares["test"] < 0.14


def test_split_is_by_piece_not_by_file():
    movements = [corpus.Work(f"haydn/opus74no1/movement{i}.mxl", "haydn", corpus.work_key(
        f"haydn/opus74no1/movement{i}.mxl")) for i in range(1, 5)]
    assert {m.work_key for m in movements} == {"haydn/opus74no1"}
    assert len({corpus.split_of(m) for m in movements}) == 1
    assert corpus.split_of(corpus.Work(TEST_WORK, "bach", corpus.work_key(TEST_WORK))) == "test"


def test_unexpandable_repeats_are_stripped_and_retried():
    from music21 import bar, note, repeat, spanner, stream

    part = stream.Part()
    for i in range(4):
        m = stream.Measure(number=i + 1)
        m.append(note.Note(60 + i, type="whole"))
        part.append(m)
    ms = list(part.getElementsByClass(stream.Measure))
    ms[0].rightBarline = bar.Repeat(direction="end")
    ms[1].leftBarline = bar.Repeat(direction="start")
    ms[2].rightBarline = bar.Repeat(direction="end")
    ms[3].append(repeat.Segno())
    bracket = spanner.RepeatBracket(number=1)
    bracket.addSpannedElements(ms[3])
    part.insert(0, bracket)
    score = stream.Score()
    score.insert(0, part)
    with pytest.raises(repeat.ExpanderException):
        score.expandRepeats()
    expanded, stripped = corpus._expand(score)
    assert stripped
    assert [n.pitch.midi for n in expanded.recurse().notes] == [60, 61, 62, 63]


def test_parse_timeout_and_bad_files_are_reported_not_raised(tmp_path):
    slow = corpus.parse_work(TEST_WORK, str(tmp_path), timeout_s=0.001)
    assert not slow.ok and "longer than" in slow.reason
    meta_path = corpus.cache_paths(tmp_path, TEST_WORK)[1]
    stamp = meta_path.stat().st_mtime_ns
    again = corpus.parse_work(TEST_WORK, str(tmp_path), timeout_s=0.001)
    assert not again.ok and meta_path.stat().st_mtime_ns == stamp  # cached: not tried again with the same time
    assert corpus.parse_work(TEST_WORK, str(tmp_path), timeout_s=60).ok  # more time: tried again
    with pytest.raises(UserError, match="not a file of the music21 corpus"):
        corpus.list_works(frozenset(), ["bach/no_such_chorale.mxl"])


# ---------------------------------------------------------------------------------------------------------------
# arrangement and drums


@pytest.fixture(scope="module")
def chorale(cache):
    assert corpus.parse_work(TRAIN_WORK, str(cache), 60).ok
    return corpus.load_piece(corpus.Work(TRAIN_WORK, "bach", corpus.work_key(TRAIN_WORK)), cache)


def test_arrangement_is_a_pure_function_of_the_seed(chorale):
    a, b, c = (arrange(chorale, s, "slakh", [str(TIM)], 300.0) for s in (3, 3, 4))
    for x, y in zip(a.stems, b.stems):
        assert x.program == y.program and np.array_equal(x.onset, y.onset) and np.array_equal(x.velocity, y.velocity)
    assert [s.program for s in a.stems] != [s.program for s in c.stems] or not np.array_equal(
        a.stems[0].onset, c.stems[0].onset)


def test_arrangement_plays_every_part_in_range_humanized(chorale):
    programs, drums = set(), 0
    for seed in range(40):
        arr = arrange(chorale, seed, "slakh", [str(TIM)], 300.0)
        pitched = [s for s in arr.stems if not s.is_drum]
        played = sorted(p for s in pitched for p in s.parts)
        assert played == sorted(p.name for p in chorale.parts)  # every part, once
        drums += any(s.is_drum for s in arr.stems)
        for s in pitched:
            inst = INSTRUMENTS[s.program]
            programs.add(s.program)
            assert inst.low <= s.pitch.min() and s.pitch.max() <= inst.high
            assert (s.offset > s.onset).all()
            for p in np.unique(s.pitch):  # a pitch never sounds twice at once within a stem
                sel = s.pitch == p
                assert (s.onset[sel][1:] >= s.offset[sel][:-1]).all()
            assert 1 <= s.velocity.min() and s.velocity.max() <= 127 and s.velocity.std() > 3
        # onsets are off the score's grid by about 10 ms (the tempo map puts quarters on multiples of TPQ)
        on = np.concatenate([s.onset for s in pitched])
        grid = np.round(on / (TPQ / 4)) * (TPQ / 4)
        dev_s = np.abs(arr.seconds(on) - arr.seconds(grid))
        assert 0.003 < np.median(dev_s) < 0.03
        bass = min(pitched, key=lambda s: np.median(s.pitch))
        assert "bass" in INSTRUMENTS[bass.program].roles or bass.program in (0, 48)
    assert len(programs) > 25  # instruments vary from render to render
    assert 0.2 < drums / 40 < 0.65  # a drum part for a share of renders (about 40%)


def test_maestro_arrangement_is_one_piano_with_pedal_sometimes(chorale):
    pedals = 0
    for seed in range(12):
        arr = arrange(chorale, seed, "maestro", [str(TIM)], 300.0)
        assert len(arr.stems) == 1 and arr.stems[0].program == 0
        assert len(arr.stems[0].onset) == sum(len(p.onset) for p in chorale.parts) - _unisons(chorale)
        pedals += len(arr.stems[0].pedal) > 0
        if len(arr.stems[0].pedal):
            assert set(arr.stems[0].pedal[:, 1].tolist()) == {0, 127}
    assert 3 <= pedals <= 12


def _unisons(piece) -> int:
    """Notes that merge with another part's note of the same pitch and onset when all parts go on one piano."""
    on = np.concatenate([p.onset for p in piece.parts])
    pitch = np.concatenate([p.pitch for p in piece.parts])
    return len(on) - len({(round(o, 6), int(p)) for o, p in zip(on, pitch)})


@pytest.mark.parametrize("num,den", [(4, 4), (3, 4), (6, 8), (2, 2), (5, 4)])
def test_drum_part_follows_the_meter(num, den):
    bar_q = num * 4 / den
    bars = np.concatenate([[0.0], 1.0 + np.arange(16) * bar_q])  # a one-quarter pickup, then 16 bars
    end = bars[-1] + bar_q
    for seed in range(6):
        part = drum_part(bars, [(0.0, num, den)], end, np.random.default_rng(seed), "band")
        assert len(part.onset) > 16 and part.kit in (0, 8, 16, 24, 25, 32, 40)
        assert (part.onset >= 1.0 - 1e-9).all() and (part.onset < end).all()  # nothing in the pickup bar
        assert set(part.pitch.tolist()) <= set(range(35, 82)) and 1 <= part.velocity.min() <= part.velocity.max() <= 127
        pos = (part.onset - 1.0) % bar_q
        unit = 4 / den / 4  # every hit on a grid of quarter-of-a-beat steps or swung triplets
        on_grid = np.isclose(pos / unit, np.round(pos / unit), atol=1e-6) | np.isclose(
            pos * 3 / (4 / den), np.round(pos * 3 / (4 / den)), atol=1e-6)
        assert on_grid.all()
        downbeats = part.onset[np.isin(part.pitch, CRASHES)]
        assert len(downbeats) >= 1 and np.allclose((downbeats - 1.0) % bar_q, 0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# rendering


def test_rendered_onsets_follow_the_midi_through_tempo_changes(tmp_path):
    """Notes at awkward ticks under two tempos: the MIDI written says the times the audio sounds them."""
    ticks = np.array([TPQ, 2 * TPQ + 37, 3 * TPQ + 500, 5 * TPQ + 123, 7 * TPQ + 901], dtype=np.int64)
    arr = Arrangement(np.array([0, 4 * TPQ]), np.array([500000, 371000]), [(0, 4, 4)], [], {})
    for program in (0, 24, 128):
        pitch = np.array([38, 36, 42, 38, 36]) if program == 128 else np.full(5, 60)
        stem = Stem(gm.program_name(program), program, 0 if program == 128 else program, str(TIM), ticks,
                    ticks + TPQ // 2, pitch, np.full(5, 100))
        arr.stems = [stem]
        write_midi(arr, [stem], tmp_path / "x.mid")
        notes, _ = read_midi(tmp_path / "x.mid")
        assert np.allclose(notes.onset, arr.seconds(ticks), atol=1e-4)
        audio = render_stem(arr, stem, int((arr.seconds(ticks[-1]) + 1.0) * SAMPLE_RATE))
        for t in notes.onset:
            k = int(round(t * SAMPLE_RATE))
            quiet_before = np.abs(audio[k - 160:k - 80]).max()
            seg = np.abs(audio[k - 80:k + 800])
            first = np.flatnonzero(seg > max(4 * quiet_before, 0.02 * seg.max()))[0] - 80
            assert 0 <= first / SAMPLE_RATE < 0.01, (program, t, first)  # FluidSynth blocks: 0-4 ms late


# ---------------------------------------------------------------------------------------------------------------
# the Slakh layout, end to end


def test_slakh_layout_and_metadata(slakh):
    out, summary = slakh
    assert summary["tracks"] >= 4 and not summary["failed"] and summary["held_out"] == [HELD_OUT]
    tracks = sorted(out.glob("*/Track*"))
    assert len(tracks) == summary["tracks"] and {t.parent.name for t in tracks} == {"train", "test"}
    assert not list(out.rglob(".partial-*")) and not list(out.rglob("*.tmp"))
    config = json.loads((out / CONFIG_NAME).read_text(encoding="utf-8"))
    by_work = {}
    for t in tracks:
        meta = yaml.safe_load((t / "metadata.yaml").read_text(encoding="utf-8"))
        assert meta["audio_dir"] == "stems" and meta["midi_dir"] == "MIDI" and len(meta["UUID"]) == 32
        assert meta["synth"]["work"] != HELD_OUT
        by_work.setdefault(meta["synth"]["work"], set()).add(t.parent.name)
        names = sorted(meta["stems"])
        assert names == [f"S{i:02d}" for i in range(len(names))]
        assert sorted(p.stem for p in (t / "stems").glob("*.flac")) == names
        assert sorted(p.stem for p in (t / "MIDI").glob("*.mid")) == names
        mix, sr = sf.read(t / "mix.flac", dtype="float64")
        assert sr == SAMPLE_RATE and mix.ndim == 1 and 0.5 < np.abs(mix).max() <= 0.9
        total = np.zeros_like(mix)
        union = []
        for name, info in meta["stems"].items():
            prog = info["program_num"]
            assert info["audio_rendered"] and info["midi_saved"] and info["plugin_name"] == TIM.name
            assert info["is_drum"] == (prog == 128)
            assert info["midi_program_name"] == gm.program_name(prog)
            assert info["inst_class"] == gm.program_class(prog)
            audio, sr = sf.read(t / "stems" / f"{name}.flac", dtype="float64")
            assert sr == SAMPLE_RATE and audio.shape == mix.shape
            total += audio
            notes, stats = read_midi(t / "MIDI" / f"{name}.mid", program=None if prog == 128 else prog,
                                     is_drum=prog == 128)
            assert len(notes) > 0 and stats.dropped_pitches == 0
            assert notes.end < len(mix) / SAMPLE_RATE
            if prog in FAST_ATTACK:
                assert -10.0 <= _global_lag_ms(audio, notes.onset) <= 30.0, (t, name, prog)
            union.append(notes)
        assert np.abs(total - mix).max() < 1e-3  # the stems add up to the mix (16-bit rounding apart)
        all_notes, _ = read_midi(t / "all_src.mid")
        from mt3ds.tokens.notes import Notes

        expect = Notes.concat(union).sorted()
        assert np.allclose(all_notes.onset, expect.onset) and np.array_equal(all_notes.program, expect.program)
    assert {w: s for w, s in by_work.items()} == {TRAIN_WORK: {"train"}, TEST_WORK: {"test"}}
    assert len(config["tracks"]) == len(tracks)
    assert all(r["round"] >= 0 for r in config["tracks"]) and max(r["round"] for r in config["tracks"]) >= 1


def test_slakh_index_reads_the_corpus(slakh):
    from mt3ds.data.slakh import index_slakh

    out, summary = slakh
    result = index_slakh(out)
    assert len(result.records) == summary["tracks"] and not result.skipped


def test_same_seed_same_files_in_parallel_and_resume_skips(slakh, tmp_path, cache):
    out, summary = slakh
    twin = tmp_path / "twin"
    run_synth(_options(twin, cache, workers=2))
    assert _tree_hashes(twin) == _tree_hashes(out)
    # an interrupted run: one track never renamed into place, a half-written folder left behind
    import shutil

    victim = sorted(twin.glob("train/Track*"))[-1]
    shutil.move(victim, victim.parent / f".partial-{victim.name}-4242")
    resumed = run_synth(_options(twin, cache, workers=2))
    assert resumed["rendered_now"] == 1 and not list(twin.rglob(".partial-*"))
    assert _tree_hashes(twin) == _tree_hashes(out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.flac")}
    again = run_synth(_options(out, cache))
    assert again["rendered_now"] == 0 and again["already_there"] == summary["tracks"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.flac")} == before
    other = run_synth(_options(tmp_path / "other", cache, seed=8, hours=10 / 3600))
    assert other["tracks"] >= 1
    assert _tree_hashes(tmp_path / "other") != _tree_hashes(out)


def test_mistakes_are_one_line_user_errors(slakh, tmp_path, cache):
    out, _ = slakh
    with pytest.raises(UserError, match="other settings"):
        run_synth(_options(out, cache, seed=99))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(UserError, match="not made by mt3ds synth"):
        run_synth(_options(junk, cache))
    bad_sf = tmp_path / "bad.sf2"
    bad_sf.write_bytes(b"not a soundfont")
    with pytest.raises(UserError, match="not a SoundFont"):
        run_synth(_options(tmp_path / "x", cache, soundfonts=[str(bad_sf)]))
    with pytest.raises(UserError, match="held out"):
        run_synth(_options(tmp_path / "y", cache, works=[HELD_OUT]))
    with pytest.raises(UserError, match="hours"):
        _options(tmp_path / "z", cache, hours=0)


def test_cli_reports_a_bad_soundfont_on_one_line(tmp_path, capsys):
    from mt3ds.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--out", str(tmp_path / "o"), "--layout", "slakh", "--soundfont", str(tmp_path / "no.sf2"),
              "--quiet"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no.sf2" in err[0] and "Traceback" not in err[0]


# ---------------------------------------------------------------------------------------------------------------
# the MAESTRO layout


def test_maestro_layout_reads_back_with_the_indexer(tmp_path, cache):
    from mt3ds.data.maestro import index_maestro

    out = tmp_path / "maestro"
    summary = run_synth(_options(out, cache, layout="maestro", hours=20 / 3600))
    assert summary["tracks"] >= 2 and not summary["failed"]
    columns = json.loads((out / "maestro-v3.0.0.json").read_text(encoding="utf-8"))
    assert list(columns) == ["canonical_composer", "canonical_title", "split", "year", "midi_filename",
                             "audio_filename", "duration"]
    assert set(columns["canonical_composer"].values()) == {"Johann Sebastian Bach"}
    result = index_maestro(out)
    assert len(result.records) == summary["tracks"] and not result.skipped
    for rec in result.records:
        audio, sr = sf.read(rec.audio_path, dtype="float64")
        notes, _ = read_midi(rec.midi_path)
        assert sr == SAMPLE_RATE and set(notes.program.tolist()) == {0}
        assert abs(len(audio) / sr - rec.duration_s) < 1e-3 and notes.end < rec.duration_s
        assert -10.0 <= _global_lag_ms(audio, notes.onset) <= 30.0
        assert rec.split == corpus.split_of(corpus.Work(TRAIN_WORK, "bach", corpus.work_key(TRAIN_WORK))) or \
            rec.split == "test"


MUSICXML_WITH_A_BAD_PROGRAM = """<?xml version="1.0" encoding="UTF-8"?>
<score-partwise version="3.1"><part-list><score-part id="P1"><part-name>Odd</part-name>
<midi-instrument id="P1-I1"><midi-channel>1</midi-channel><midi-program>300</midi-program></midi-instrument>
</score-part></part-list><part id="P1"><measure number="1"><attributes><divisions>1</divisions>
<time><beats>4</beats><beat-type>4</beat-type></time></attributes><note><pitch><step>C</step><octave>4</octave>
</pitch><duration>4</duration><type>whole</type></note></measure></part></score-partwise>"""


def test_musicxml_warnings_stay_out_of_the_output(tmp_path):
    """music21 warns (MusicXMLWarning) about score details it repairs, here a MIDI program out of range: the work
    parses, nothing is printed."""
    import warnings

    src = tmp_path / "odd.musicxml"
    src.write_text(MUSICXML_WITH_A_BAD_PROGRAM, encoding="utf-8")
    from music21.musicxml.xmlObjects import MusicXMLWarning

    with pytest.warns(MusicXMLWarning):  # what music21 does on its own with this file
        music21.converter.parse(str(src), forceSource=True, storePickle=False)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        meta = corpus._parse_to_cache(src, tmp_path / "odd.mid", tmp_path / "odd.json")
    assert not [w for w in shown if issubclass(w.category, MusicXMLWarning)]
    assert (tmp_path / "odd.mid").is_file() and meta["bar_starts"] == [0.0]
