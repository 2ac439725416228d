"""Shared by the synth tests: the skips (with the Debian package to install) and a tiny Hydrogen kit made here."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

TIM = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
FREEPATS = Path("/etc/timidity/freepats.cfg")
KIT_ROOT = Path("/usr/share/hydrogen/data/drumkits")


def need_fluidsynth() -> None:
    """Skip the module without music21, pyfluidsynth/libfluidsynth or TimGM6mb (the bank tests render with)."""
    pytest.importorskip("music21", reason="music21 not installed (pip install 'mt3ds[synth]')")
    try:
        import fluidsynth  # noqa: F401
    except (ImportError, OSError) as e:
        pytest.skip(f"pyfluidsynth/libfluidsynth not available ({e}): apt-get install fluidsynth; "
                    "pip install 'mt3ds[synth]'", allow_module_level=True)
    if not TIM.is_file():
        pytest.skip(f"{TIM} missing: apt-get install timgm6mb-soundfont", allow_module_level=True)


def need_timidity():
    if shutil.which("timidity") is None or not FREEPATS.is_file():
        pytest.skip("TiMidity++ with freepats missing: apt-get install timidity freepats")


def make_kit(folder: Path, sample_rate: int = 44100, names=("Kick", "Snare", "Closed HH", "Open HH", "Crash")) -> Path:
    """A Hydrogen kit of short decaying tones (one per instrument, two velocity layers for the kick): each sample
    starts with its loudest sample, so an onset is exact."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, name in enumerate(names):
        n = int(0.2 * sample_rate)
        t = np.arange(n) / sample_rate
        tone = (np.sin(2 * np.pi * (100 + 150 * i) * t) * np.exp(-t * 30)).astype(np.float32)
        layers = []
        for k, (lo, hi, amp) in enumerate(((0.0, 0.5, 0.3), (0.5, 1.0, 0.9)) if i == 0 else ((0.0, 1.0, 0.8),)):
            fn = f"s{i}_{k}.wav"
            sf.write(str(folder / fn), amp * tone, sample_rate)
            layers.append(f"<layer><filename>{fn}</filename><min>{lo}</min><max>{hi}</max><gain>1</gain>"
                          "<pitch>0</pitch></layer>")
        parts.append(f"<instrument><id>{i}</id><name>{name}</name><volume>1</volume>{''.join(layers)}</instrument>")
    (folder / "drumkit.xml").write_text(
        f"<drumkit_info><name>{folder.name}</name><instrumentList>{''.join(parts)}</instrumentList></drumkit_info>",
        encoding="utf-8")
    return folder


def first_rise(audio: np.ndarray, at_s: float, sample_rate: int) -> float:
    """Seconds after AT_S where the audio first rises above a few times the level just before it."""
    k = int(round(at_s * sample_rate))
    quiet = np.abs(audio[max(0, k - 160):max(1, k - 80)]).max(initial=0.0)
    seg = np.abs(audio[k - 80:k + 1600])
    return (np.flatnonzero(seg > max(4 * quiet, 0.01 * seg.max()))[0] - 80) / sample_rate
