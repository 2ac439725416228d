"""transcribe --plot (mt3ds/plot.py): readable for long files and many instruments."""
import numpy as np
import pytest

pytest.importorskip("matplotlib")

from mt3ds.plot import DRUM_COLOUR, MAX_WIDTH, piano_roll, track_colours, track_styles, write_plot  # noqa: E402
from mt3ds.tokens.notes import Notes  # noqa: E402
from mt3ds.tokens.vocab import DRUM_PROGRAM  # noqa: E402


def many_tracks(n_programs: int, seconds: float, seed: int = 0) -> Notes:
    """Ten notes per pitched program spread over the file, plus drum hits."""
    rng = np.random.default_rng(seed)
    programs = np.repeat(np.append(np.arange(n_programs), DRUM_PROGRAM), 10)
    onset = rng.uniform(0, seconds - 1, len(programs))
    return Notes(onset, onset + 0.5, rng.integers(30, 90, len(programs)), np.full(len(programs), 80), programs)


def test_every_track_has_its_own_colour_and_drums_stand_apart():
    for n in (1, 20, 21, 60, 128):
        colours = track_colours(n)
        rounded = {tuple(np.round(c, 3)) for c in colours}
        assert len(colours) == n and len(rounded) == n and DRUM_COLOUR not in rounded
    styles = track_styles(np.append(np.arange(40), DRUM_PROGRAM))
    assert styles[DRUM_PROGRAM].drums and styles[DRUM_PROGRAM].colour == DRUM_COLOUR
    assert not any(s.drums for p, s in styles.items() if p != DRUM_PROGRAM)
    assert len({s.colour for s in styles.values()}) == 41


def test_long_file_legend_beside_the_data_and_a_wider_figure(tmp_path):
    notes = many_tracks(30, 1000.0)  # 1000 s at 10 s an inch passes the cap
    fig = piano_roll(notes, "long")
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert len(legend.get_texts()) == 31
    renderer = fig.canvas.get_renderer()
    assert legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1  # not over the data
    assert fig.get_figwidth() == MAX_WIDTH
    assert piano_roll(many_tracks(2, 20.0), "short").get_figwidth() < fig.get_figwidth()
    write_plot(notes, tmp_path / "long.png", "long")
    assert (tmp_path / "long.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    write_plot(Notes.empty(), tmp_path / "empty.png", "silence")  # no notes: an empty roll, no error
    assert (tmp_path / "empty.png").stat().st_size > 0
