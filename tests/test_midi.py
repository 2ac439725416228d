"""MIDI -> notes (seconds, tempo changes, sustain, drums, dropped pitches), notes -> General MIDI, bad files."""
from pathlib import Path

import numpy as np
import pytest
import symusic.core as sc
from symusic import Score

from mt3ds.errors import UserError
from mt3ds.tokens.midi import read_midi, write_midi
from mt3ds.tokens.notes import Notes

RESOURCES = Path(__file__).resolve().parent / "resources"


def make_midi(path, tracks, tempos=((0, 120.0),), tpq=480):
    """tracks: list of (program, is_drum, [(tick, dur_ticks, pitch, vel)], [(tick, cc, value)])."""
    score = sc.ScoreTick(tpq)
    for tick, qpm in tempos:
        score.tempos.append(sc.TempoTick(tick, qpm=qpm))
    for program, is_drum, notes, controls in tracks:
        t = sc.TrackTick("t", program, is_drum)
        for tick, dur, pitch, vel in notes:
            t.notes.append(sc.NoteTick(tick, dur, pitch, vel))
        for tick, number, value in controls:
            t.controls.append(sc.ControlChangeTick(tick, number, value))
        score.tracks.append(t)
    score.dump_midi(str(path))
    return path


def test_seconds_follow_tempo_changes(tmp_path):
    # 480 ticks/quarter; 120 bpm for the first 960 ticks (1 s), then 60 bpm (a quarter lasts 1 s).
    path = make_midi(tmp_path / "t.mid", [(0, False, [(0, 480, 60, 80), (960, 480, 62, 80), (1440, 480, 64, 80)],
                                          [])], tempos=((0, 120.0), (960, 60.0)))
    notes, stats = read_midi(path)
    np.testing.assert_allclose(notes.onset, [0.0, 1.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(notes.offset, [0.5, 2.0, 3.0], atol=1e-6)
    assert stats.notes == 3 and stats.dropped_pitches == 0


def test_sustain_pedal_extends_offsets_per_track(tmp_path):
    # Track 0: pedal down at 0.25 s, up at 1.5 s. Track 1 has no pedal.
    piano = (0, False, [(0, 240, 60, 80), (480, 240, 64, 80), (1680, 120, 67, 80)], [(240, 64, 127), (1440, 64, 0)])
    bass = (33, False, [(0, 240, 40, 80)], [])
    notes, _ = read_midi(make_midi(tmp_path / "s.mid", [piano, bass]))
    got = {(int(p), int(k)): float(off) for p, k, off in zip(notes.program, notes.pitch, notes.offset)}
    assert got[(0, 60)] == pytest.approx(1.5)  # released at 0.25 s while held: extended to 1.5 s
    assert got[(0, 64)] == pytest.approx(1.5)
    assert got[(0, 67)] == pytest.approx(1.875)  # after the release: unchanged
    assert got[(33, 40)] == pytest.approx(0.25)  # the other track's pedal does not apply


def test_drums_are_program_128_onset_only_and_pitches_out_of_range_are_dropped(tmp_path):
    drums = (0, True, [(0, 960, 36, 100), (240, 10, 38, 90)], [])
    lead = (80, False, [(0, 240, 15, 80), (0, 240, 60, 80), (0, 240, 120, 80)], [])
    notes, stats = read_midi(make_midi(tmp_path / "d.mid", [drums, lead]))
    assert stats.dropped_pitches == 2 and stats.notes == 3
    d = notes.select(notes.is_drum)
    assert d.program.tolist() == [128, 128]
    np.testing.assert_allclose(d.offset - d.onset, 0.01)


def test_write_midi_one_named_track_per_program_drums_on_channel_10(tmp_path):
    notes = Notes([0.0, 0.5, 0.25, 1.0], [1.0, 1.0, 0.26, 2.0], [60, 64, 36, 40], [80, 90, 100, 70],
                  [0, 0, 128, 33])
    path = tmp_path / "out.mid"
    write_midi(notes, path)
    score = Score(str(path))
    tracks = {(t.name, t.program, t.is_drum): len(t.notes) for t in score.tracks}
    assert tracks == {("Acoustic Grand Piano", 0, False): 2, ("Drums", 0, True): 1, ("Electric Bass (finger)", 33,
                                                                                      False): 1}
    back, _ = read_midi(path)
    np.testing.assert_allclose(back.onset, notes.sorted().onset, atol=0.002)
    assert not list(tmp_path.glob("*.tmp"))
    # Drum channel: symusic writes is_drum tracks on channel 10 (index 9); check the raw bytes' status nibble.
    raw = path.read_bytes()
    assert b"\x99" in raw  # note-on, channel 10


def test_no_notes_is_a_defined_empty_result(tmp_path):
    notes, stats = read_midi(make_midi(tmp_path / "e.mid", [(0, False, [], [])]))
    assert len(notes) == 0 and stats.notes == 0


@pytest.mark.parametrize("content,message", [(None, "no such file"), (b"RIFF....WAVEfmt ", "not a MIDI file"),
                                             ("truncated", "unreadable MIDI")])
def test_bad_files_raise_one_line_user_errors(tmp_path, content, message):
    path = tmp_path / "x.mid"
    if content == "truncated":
        data = (RESOURCES / "beethoven_op18no1_mvt1.mid").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message) as err:
        read_midi(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="not a file"):
        read_midi(tmp_path)
