"""A small sample player for Hydrogen drum kits (Debian's hydrogen-drumkits): real recorded drums.

A kit's drumkit.xml lists instruments (by name) with velocity layers (sample file, velocity range, gain). General
MIDI drum keys are mapped to kit instruments by name (kick, snare, hats, toms, cymbals, hand percussion); a key the
kit has no instrument for falls back along FALLBACK to one it has, or is dropped, and the arrangement's targets
follow the same map (kit_keys), so every target note is a sound the kit made. Playing a hit: the layer whose range
holds velocity/127 (round-robin among equals by a seeded choice), scaled by layer gain x instrument volume x a
velocity curve, added at its sample; an open hi-hat is choked by the next closed or pedal hat, as a drummer's foot
does. Samples are decoded once per process, resampled to the render rate and mixed to mono.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import UserError

# GM drum key -> name patterns of kit instruments that play it, best first (lower-case regular expressions).
KEY_NAMES = {
    35: [r"kick|bass ?drum|bd\b"], 36: [r"kick|bass ?drum|bd\b"],
    37: [r"stick|rim ?click|side"], 38: [r"snare(?!.*(rim|roll|jazz|brush))", r"snare"],
    39: [r"clap"], 40: [r"snare ?2|snare rock|snare(?!.*(roll|brush))", r"snare"],
    42: [r"(hi.?hat|hh|hat).*(clos|cl\b)|closed.*(hh|hat)", r"(hi.?hat|hh|hat)(?!.*(op|pedal|pd))"],
    44: [r"(hi.?hat|hh|hat).*(pedal|pd|foot)|pedal.*(hh|hat)"],
    46: [r"(hi.?hat|hh|hat).*(open|op\b|opened)|open.*(hh|hat)"],
    41: [r"floor|tom.*(low|lo\b|16)|low.*tom"], 43: [r"floor|tom.*(low|lo\b)|low.*tom"],
    45: [r"tom.*(mid|2\b|13)|mid.*tom"], 47: [r"tom.*(mid|2\b)|mid.*tom"],
    48: [r"tom.*(hi|high|1\b|12)|high.*tom"], 50: [r"tom.*(hi|high|1\b)|high.*tom"],
    49: [r"crash"], 57: [r"crash.*(2|right)|crash"], 51: [r"ride(?!.*bell|.*cup)"], 59: [r"ride(?!.*bell|.*cup)"],
    53: [r"ride.*(bell|cup)|bell"], 52: [r"china"], 55: [r"splash"], 54: [r"tambourine"], 56: [r"cowbell"],
    70: [r"maraca|shaker"], 82: [r"shaker|maraca"], 75: [r"clave"], 76: [r"wood ?block.*hi|wood ?block"],
    77: [r"wood ?block.*lo|wood ?block"], 60: [r"bongo.*hi|bongo"], 61: [r"bongo.*lo|bongo"],
    62: [r"conga.*(hi|1)|conga"], 63: [r"conga.*(hi|1)|conga"], 64: [r"conga.*(lo|2)|conga"],
}
# A key the kit cannot play directly is played as the first of these it can.
FALLBACK = {35: [36], 36: [35], 40: [38], 38: [40], 37: [38], 39: [38], 44: [42], 46: [42], 41: [43, 45, 47],
            43: [41, 45, 47], 45: [47, 43, 48], 47: [45, 48, 43], 48: [50, 47, 45], 50: [48, 47, 45],
            57: [49, 51], 49: [57, 51], 51: [59, 53, 49], 59: [51, 49], 53: [51, 59], 52: [49, 57], 55: [49, 57],
            54: [70, 82, 42], 70: [82, 54], 82: [70, 54], 56: [37, 75], 75: [37], 76: [75, 37], 77: [76, 75, 37],
            60: [62, 63], 61: [64, 60], 62: [63, 60], 63: [62, 60], 64: [61, 62]}
REQUIRED = (36, 38, 42)  # a kit without kick, snare and closed hat cannot play a drum-set part
OPEN_HAT, CHOKERS = 46, (42, 44)


@dataclass(frozen=True)
class Layer:
    """One recorded sample of an instrument."""

    path: str  # sample file
    low: float  # velocity range it plays, 0..1
    high: float
    gain: float


@dataclass(frozen=True)
class KitInstrument:
    """One instrument of a kit."""

    name: str
    volume: float
    layers: tuple  # (Layer, ...)


def _float(node, tag: str, default: float) -> float:
    text = node.findtext(tag)
    try:
        return float(text) if text is not None else default
    except ValueError:
        return default


@lru_cache(maxsize=64)
def _read_kit(folder: str) -> tuple:
    path = Path(folder) / "drumkit.xml"
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise UserError(f"{path}: unreadable Hydrogen kit ({e})") from None
    ns = re.match(r"\{.*\}", root.tag)
    ns = ns.group(0) if ns else ""
    instruments = []
    for inst in root.iter(f"{ns}instrument"):
        name = (inst.findtext(f"{ns}name") or "").strip()
        layers = []
        for layer in inst.iter(f"{ns}layer"):
            fn = layer.findtext(f"{ns}filename")
            if fn and (Path(folder) / fn).is_file():
                layers.append(Layer(str(Path(folder) / fn), _float(layer, f"{ns}min", 0.0),
                                    _float(layer, f"{ns}max", 1.0), _float(layer, f"{ns}gain", 1.0)))
        fn = inst.findtext(f"{ns}filename")  # the older format: one sample per instrument
        if not layers and fn and (Path(folder) / fn).is_file():
            layers.append(Layer(str(Path(folder) / fn), 0.0, 1.0, 1.0))
        if name and layers:
            instruments.append(KitInstrument(name, _float(inst, f"{ns}volume", 1.0), tuple(layers)))
    return tuple(instruments)


@lru_cache(maxsize=64)
def load_kit_map(folder: str | Path) -> dict[int, tuple[int, int]]:
    """{GM drum key: (index of the kit instrument that plays it, the key it is played as)}: a key played through a
    fallback is played as the fallback's key. UserError for a kit that cannot play a drum-set part."""
    instruments = _read_kit(str(folder))
    out: dict[int, tuple[int, int]] = {}
    for key, patterns in KEY_NAMES.items():
        for pat in patterns:
            hits = [i for i, inst in enumerate(instruments) if re.search(pat, inst.name.lower())]
            if hits:
                out[key] = (hits[0], key)
                break
    for key, alts in FALLBACK.items():
        if key not in out:
            alt = next((a for a in alts if a in out and out[a][1] == a), None)
            if alt is not None:
                out[key] = (out[alt][0], alt)
    missing = [k for k in REQUIRED if k not in out]
    if missing:
        raise UserError(f"{folder}: Hydrogen kit without {', '.join(map(str, missing))} "
                        "(kick 36, snare 38, closed hat 42): not a drum set")
    return out


def kit_keys(folder: str | Path, pitch: np.ndarray) -> np.ndarray:
    """PITCH as the kit plays it: a key played through a fallback becomes the fallback's key, -1 where the kit
    has nothing. The targets then name the sound that was played."""
    kmap = load_kit_map(str(folder))
    return np.array([kmap[k][1] if k in kmap else -1 for k in np.asarray(pitch).tolist()], dtype=np.int32)


@lru_cache(maxsize=512)
def _sample(path: str, sample_rate: int) -> np.ndarray:
    import soundfile as sf
    import soxr

    audio, sr = sf.read(path, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if sr != sample_rate:
        mono = soxr.resample(mono, sr, sample_rate).astype(np.float32)
    return mono


def render_kit(folder: str | Path, onset_s: np.ndarray, pitch: np.ndarray, velocity: np.ndarray, n_samples: int,
               sample_rate: int, seed: int) -> np.ndarray:
    """Drum hits (seconds, GM keys, velocities) played on the kit in FOLDER: float32 mono of N_SAMPLES."""
    kmap = load_kit_map(str(folder))
    instruments = _read_kit(str(folder))
    rng = np.random.default_rng(seed)
    out = np.zeros(n_samples, dtype=np.float32)
    starts = np.round(np.asarray(onset_s) * sample_rate).astype(np.int64)
    chokes = np.sort(starts[np.isin(pitch, CHOKERS)])
    for start, key, vel in zip(starts.tolist(), np.asarray(pitch).tolist(), np.asarray(velocity).tolist()):
        if key not in kmap or start >= n_samples:
            continue
        inst = instruments[kmap[key][0]]
        v = vel / 127.0
        layers = [la for la in inst.layers if la.low - 1e-6 <= v <= la.high + 1e-6] or [
            min(inst.layers, key=lambda la: min(abs(v - la.low), abs(v - la.high)))]
        layer = layers[int(rng.integers(len(layers)))] if len(layers) > 1 else layers[0]
        sample = _sample(layer.path, sample_rate)
        # velocity layers carry most of the dynamics; a gentle curve on top keeps soft hits soft
        gain = layer.gain * inst.volume * (0.25 + 0.75 * v * v)
        end = min(n_samples, start + len(sample))
        if key == OPEN_HAT:
            nxt = chokes[np.searchsorted(chokes, start, side="right"):]
            if len(nxt) and nxt[0] < end:
                end = int(nxt[0])
                fade = min(80, end - start)
                seg = sample[:end - start].copy()
                if fade > 0:
                    seg[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
                out[start:end] += gain * seg
                continue
        out[start:end] += gain * sample[:end - start]
    return out
