"""`transcribe --plot`: a piano roll PNG of one file's notes, one colour per instrument track.

Readable however long the file and however many instruments it holds: the figure widens with the duration (up to a
cap), the legend sits in a panel right of the data rather than over it, every track gets its own colour (tab20's
twenty, then hues spaced by the golden angle, which never repeat), and drums are always black crosses at their onsets
(their length means nothing) so they cannot be taken for any pitched track.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .files import atomic_path
from .tokens import gm
from .tokens.vocab import DRUM_PROGRAM

PLOT_HINT = "pip install matplotlib (in a clone of mt3ds: pip install -e '.[plot]')"
DRUM_COLOUR = (0.0, 0.0, 0.0)  # black: neither tab20 nor the spaced hues (saturation and value >= 0.55) reach it
SECONDS_PER_INCH = 10.0  # the roll widens with the file: 10 s of audio per inch at 100 dpi
MIN_WIDTH, MAX_WIDTH = 12.0, 60.0  # inches; 60 in = 6,000 px, the most an image viewer pans comfortably
LEGEND_ROWS = 40  # entries per legend column, so 129 instruments still fit the figure's height


@dataclass(frozen=True)
class TrackStyle:
    """How one instrument track is drawn."""

    colour: tuple[float, float, float]
    """RGB in 0..1."""
    drums: bool
    """True: crosses at the onsets; False: bars from onset to offset."""


def require_matplotlib() -> None:
    """Fail before any work when --plot cannot be honoured (a usage error: exit 2)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError(f"--plot needs matplotlib: {PLOT_HINT}", exit_code=2) from None


def track_colours(n: int) -> list[tuple[float, float, float]]:
    """n distinct colours for pitched tracks: tab20's, then golden-angle hues (saturation and value alternating so
    neighbours differ in lightness too)."""
    from matplotlib import colormaps

    tab20 = [tuple(float(c) for c in colormaps["tab20"](i)[:3]) for i in range(20)]
    colours = tab20[:n]
    for i in range(n - len(colours)):
        hue = (0.1 + i * 0.618033988749895) % 1.0
        sat, val = (0.85, 0.75) if i % 2 else (0.55, 0.95)
        colours.append(colorsys.hsv_to_rgb(hue, sat, val))
    return colours


def track_styles(programs) -> dict[int, TrackStyle]:
    """{program: style} for the programs present; drums get DRUM_COLOUR and crosses, pitched tracks distinct
    colours in program order (the same instrument list gives the same colours)."""
    pitched = sorted(int(p) for p in set(np.asarray(programs).tolist()) if p != DRUM_PROGRAM)
    styles = {p: TrackStyle(c, False) for p, c in zip(pitched, track_colours(len(pitched)))}
    if DRUM_PROGRAM in set(np.asarray(programs).tolist()):
        styles[DRUM_PROGRAM] = TrackStyle(DRUM_COLOUR, True)
    return styles


def piano_roll(notes, title: str):
    """The figure (not yet saved): bars per pitched note, crosses per drum hit, the legend in a panel at the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    duration = float(notes.offset.max()) if len(notes) else 0.0
    width = float(np.clip(duration / SECONDS_PER_INCH, MIN_WIDTH, MAX_WIDTH))
    fig, ax = plt.subplots(figsize=(width, 6), dpi=100)
    styles = track_styles(notes.program)
    for prog, style in styles.items():
        sel = notes.program == prog
        label = f"{gm.program_name(prog)} ({int(sel.sum())})"
        if style.drums:
            ax.scatter(notes.onset[sel], notes.pitch[sel], marker="x", s=12, linewidths=0.8, color=style.colour,
                       label=label, zorder=3)  # above the bars: a hit is never hidden by a sustained note
        else:
            ax.barh(notes.pitch[sel], notes.offset[sel] - notes.onset[sel], left=notes.onset[sel], height=0.8,
                    color=style.colour, linewidth=0, label=label)
    ax.set_xlim(0, max(duration, 1.0))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    if styles:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8, frameon=False,
                  ncol=-(-len(styles) // LEGEND_ROWS), title="instrument (notes)")
    return fig


def write_plot(notes, path: Path, title: str) -> None:
    """Save piano_roll(notes) as a PNG at path (through a temporary name)."""
    require_matplotlib()
    import matplotlib.pyplot as plt

    fig = piano_roll(notes, title)
    try:
        with atomic_path(path) as tmp:
            # bbox "tight" grows the image to take in the legend panel outside the axes
            fig.savefig(tmp, format="png", bbox_inches="tight")  # the temporary name's suffix is not .png
    finally:
        plt.close(fig)
