"""Where timbres come from: General MIDI banks, each played by one engine, and which of them each split may hear.

A bank is a SoundFont played by FluidSynth, TiMidity++ with a patch set (freepats), or a Hydrogen drum kit played
by our own sampler (drumkit.py). What a bank holds is read from the files (SoundFont preset headers, the TiMidity
config, the kit's drumkit.xml), never assumed: a stem asks for a program and gets a bank that has it.

Cross-timbre splits: the banks named in HOLDOUT_TIMBRES never render a training track; the validation and test
splits are rendered only with them, so validation figures measure generalization to timbres never trained on.
The `musescore-general-soundfont*` packages are reserved for held-out evaluation and refused everywhere here.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

FLUIDSYNTH, TIMIDITY, DRUMKIT = "fluidsynth", "timidity", "drumkit"
ENGINES = (FLUIDSYNTH, TIMIDITY, DRUMKIT)
KIT_ROOT = Path("/usr/share/hydrogen/data/drumkits")
# (name, engine, path, Debian package, weight: how often a stem picks it among the banks of its side that have its
# program). OPL3 is an FM chip: unlike anything recorded, a small share only. FluidR3_GS holds GS variation tones
# of FluidR3 (banks 1-8) and no bank-0 programs: it stands in for the programs it varies, at a small share.
KNOWN_BANKS = (
    ("fluidr3_gm", FLUIDSYNTH, "/usr/share/sounds/sf2/FluidR3_GM.sf2", "fluid-soundfont-gm", 1.0),
    ("fluidr3_gs", FLUIDSYNTH, "/usr/share/sounds/sf2/FluidR3_GS.sf2", "fluid-soundfont-gs", 0.3),
    ("fluidr3mono", FLUIDSYNTH, "/usr/share/sounds/sf3/FluidR3Mono_GM.sf3", "fluidr3mono-gm-soundfont", 0.5),
    ("timgm6mb", FLUIDSYNTH, "/usr/share/sounds/sf2/TimGM6mb.sf2", "timgm6mb-soundfont", 1.0),
    ("csound", FLUIDSYNTH, "/usr/share/sounds/sf2/sf_GMbank.sf2", "csound-soundfont", 1.0),
    ("opl3", FLUIDSYNTH, "/usr/share/sounds/sf2/OPL-3_FM_128M.sf2", "opl3-soundfont", 0.12),
    ("freepats", TIMIDITY, "/etc/timidity/freepats.cfg", "timidity freepats", 1.0),
)
KIT_PACKAGE = "hydrogen-drumkits"
KIT_WEIGHT = 1.0  # all Hydrogen kits of a side together weigh as much as all the GM banks' kits of that side
# Held out by default: a whole second bank (csound's GM bank), a whole second engine (TiMidity++ with freepats,
# real sampled patches) and three Hydrogen kits of different kinds (a studio kit, an acoustic kit, an electronic
# one). The FluidR3 family stays together in training: holding out one of its variants would leak its samples.
HOLDOUT_TIMBRES = ("csound", "freepats", "kit:The Black Pearl 1.0", "kit:ColomboAcousticDrumkit",
                   "kit:HardElectro1")
RESERVED = re.compile(r"musescore", re.IGNORECASE)  # held-out evaluation SoundFonts: never in any corpus


@dataclass(frozen=True)
class Bank:
    """One source of timbres."""

    name: str  # short name: 'fluidr3_gm', 'freepats', 'kit:<Hydrogen kit folder>', or a SoundFont's file stem
    engine: str  # 'fluidsynth', 'timidity' or 'drumkit'
    path: str  # the SoundFont, the TiMidity config, or the kit folder
    package: str  # the Debian package that ships it ('' for a user's file)
    presets: tuple = ()  # ((program, bank number, preset), ...) it plays General MIDI programs with
    kits: tuple = ()  # drum kit presets (bank 128) it has; a Hydrogen kit has (0,)
    weight: float = 1.0  # share among the banks of its side that have a stem's program

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"bank {self.name}: engine {self.engine!r} not one of {ENGINES}")

    @property
    def programs(self) -> frozenset:
        return frozenset(p for p, _, _ in self.presets)

    def has(self, program: int) -> bool:
        """Whether it plays General MIDI PROGRAM (128: a drum kit)."""
        return bool(self.kits) if program == 128 else program in self.programs

    def preset_for(self, program: int) -> tuple[int, int]:
        """(bank number, preset) that plays PROGRAM."""
        for p, b, n in self.presets:
            if p == program:
                return b, n
        raise KeyError(f"{self.name} has no program {program}")

    def to_dict(self) -> dict:
        return {"name": self.name, "engine": self.engine, "path": self.path, "package": self.package}


@dataclass
class Palette:
    """The banks one split may hear, and how a stem picks one."""

    banks: list = field(default_factory=list)  # [Bank]

    def choose(self, program: int, rng, exclude=()) -> Bank | None:
        """A bank that has PROGRAM, by weight; None when no bank of the palette has it."""
        cands = [b for b in self.banks if b.has(program) and b.name not in exclude]
        if program == 128 and cands:
            kits = [b for b in cands if b.engine == DRUMKIT]
            gm = [b for b in cands if b.engine != DRUMKIT]
            weights = [b.weight / max(len(gm), 1) for b in gm] + [KIT_WEIGHT / len(kits) for _ in kits]
            cands = gm + kits
        else:
            weights = [b.weight for b in cands]
        if not cands:
            return None
        total = sum(weights)
        return cands[int(rng.choice(len(cands), p=[w / total for w in weights]))]


# ---------------------------------------------------------------------------------------------------------------
# What a file holds


def _riff_chunks(f, end: int):
    """(id, size, offset of data) of the RIFF chunks from the current position to END. SoundFont 3 files do not
    always pad odd chunks to even length: a padded position that does not start with a chunk id is tried unpadded."""
    pos = f.tell()
    while pos + 8 <= end:
        f.seek(pos)
        head = f.read(8)
        cid, size = head[:4], struct.unpack("<I", head[4:])[0]
        yield cid, size, pos + 8
        nxt = pos + 8 + size
        if size & 1:
            f.seek(nxt + 1)
            probe = f.read(4)
            nxt += 1 if len(probe) == 4 and probe.isalpha() or probe == b"" else 0
        pos = nxt


def soundfont_presets(path: str | Path) -> set[tuple[int, int]]:
    """{(bank number, preset)} of a SoundFont 2/3 file, read from its preset headers (no samples loaded)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if head[:4] != b"RIFF" or head[8:12] != b"sfbk":
                raise UserError(f"{path}: not a SoundFont 2/3 file (no RIFF sfbk header)")
            total = 8 + struct.unpack("<I", head[4:8])[0]
            for cid, size, data in _riff_chunks(f, total):
                f.seek(data)
                if cid == b"LIST" and f.read(4) == b"pdta":
                    for sub, ssize, sdata in _riff_chunks(f, data + size):
                        if sub == b"phdr":
                            f.seek(sdata)
                            body = f.read(ssize)
                            out = set()
                            for i in range(0, len(body) - 38, 38):  # the last record is the terminal one
                                preset, bank = struct.unpack("<HH", body[i + 20:i + 24])
                                out.add((bank, preset))
                            return out
    except OSError as e:
        raise UserError(f"{path}: cannot read this SoundFont ({e.strerror or e})") from None
    except struct.error:
        raise UserError(f"{path}: truncated SoundFont (its chunks end early)") from None
    raise UserError(f"{path}: a SoundFont without preset headers (no pdta/phdr chunk)")


def soundfont_bank(path: str | Path, name: str | None = None, package: str = "", weight: float = 1.0) -> Bank:
    """A SoundFont as a FluidSynth bank: bank 0 for each program it has, else its lowest variation bank."""
    path = Path(path)
    if RESERVED.search(str(path.resolve())):
        raise UserError(f"{path}: the MuseScore General SoundFonts are reserved for held-out evaluation and are "
                        "never rendered into a corpus")
    found = soundfont_presets(path)
    presets = []
    for program in range(128):
        banks = sorted(b for b, p in found if p == program and b < 128)
        if banks:
            presets.append((program, banks[0], program))
    kits = tuple(sorted(p for b, p in found if b == 128))
    if 0 not in kits:  # without the standard kit the bank's kits are special ones (FluidR3_GS: sound effects only)
        kits = ()
    return Bank(name or path.stem, FLUIDSYNTH, str(path.resolve()), package, tuple(presets), kits, weight)


def timidity_bank(cfg: str | Path, name: str = "freepats", package: str = "timidity freepats",
                  weight: float = 1.0) -> Bank:
    """A TiMidity++ config's bank-0 programs and drum sets whose patch files exist."""
    cfg = Path(cfg)
    try:
        lines = cfg.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise UserError(f"{cfg}: cannot read the TiMidity config ({e.strerror or e}); "
                        f"apt-get install -y {package}") from None
    dirs, section, programs, drums = [], None, [], set()
    for line in lines:
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] == "dir" and len(words) > 1:
            dirs.append(Path(words[1]))
        elif words[0] in ("bank", "drumset") and len(words) > 1:
            section = (words[0], int(words[1]))
        elif words[0].isdigit() and len(words) > 1 and section is not None:
            patch = words[1] if words[1].endswith(".pat") else words[1] + ".pat"
            if not any((d / patch).is_file() for d in dirs):
                continue
            if section == ("bank", 0):
                programs.append(int(words[0]))
            elif section[0] == "drumset":
                drums.add(section[1])
    if not programs:
        raise UserError(f"{cfg}: no bank-0 patches found (is {package} installed?)")
    return Bank(name, TIMIDITY, str(cfg.resolve()), package, tuple((p, 0, p) for p in sorted(set(programs))),
                tuple(sorted(drums)), weight)


def kit_bank(folder: str | Path, weight: float = 1.0) -> Bank:
    """A Hydrogen kit as a drum bank (UserError when its drumkit.xml is unreadable or it lacks kick, snare or
    closed hi-hat: hand-percussion kits cannot play a drum-set part)."""
    from .drumkit import load_kit_map

    folder = Path(folder)
    load_kit_map(folder)  # raises UserError for a kit that cannot play a drum set
    return Bank(f"kit:{folder.name}", DRUMKIT, str(folder.resolve()), KIT_PACKAGE, (), (0,), weight)


def available_banks() -> tuple[list[Bank], dict[str, str]]:
    """(every known bank that is installed and loads, {name: why it was dropped}) for the others."""
    import shutil

    banks, dropped = [], {}
    for name, engine, path, package, weight in KNOWN_BANKS:
        if not Path(path).is_file():
            dropped[name] = f"not installed ({path} missing: apt-get install -y {package})"
            continue
        if engine == TIMIDITY and shutil.which("timidity") is None:
            dropped[name] = "TiMidity++ is not installed (apt-get install -y timidity)"
            continue
        try:
            bank = (soundfont_bank(path, name, package, weight) if engine == FLUIDSYNTH
                    else timidity_bank(path, name, package, weight))
        except UserError as e:
            dropped[name] = str(e)
            continue
        if not bank.presets:
            if bank.kits:
                banks.append(bank)  # a kits-only bank still plays drums
            else:
                dropped[name] = "holds no General MIDI program"
            continue
        banks.append(bank)
    if KIT_ROOT.is_dir():
        for folder in sorted(p for p in KIT_ROOT.iterdir() if (p / "drumkit.xml").is_file()):
            try:
                banks.append(kit_bank(folder))
            except UserError as e:
                dropped[f"kit:{folder.name}"] = str(e).split(": ", 1)[-1]
    else:
        dropped["kit:*"] = f"no Hydrogen kits ({KIT_ROOT} missing: apt-get install -y {KIT_PACKAGE})"
    return banks, dropped


def parse_holdout_timbres(text: str | None) -> tuple[str, ...] | None:
    """--holdout-timbres: None for the default, () for 'none', else the comma-separated bank names."""
    if text is None:
        return None
    if text.strip().lower() in ("none", ""):
        return ()
    return tuple(t.strip() for t in text.split(",") if t.strip())


def split_palettes(banks: list[Bank], holdout: tuple[str, ...] | None) -> tuple[Palette, Palette, list[str]]:
    """(train palette, validation/test palette, held-out names used). HOLDOUT None: the default list, used as far
    as it is installed, and no cross-timbre split (both palettes all banks) when none of it is; an explicit list
    must name banks that are there and leave train at least one pitched bank and one drum kit."""
    names = {b.name for b in banks}
    if holdout is None:
        held = [n for n in HOLDOUT_TIMBRES if n in names]
    else:
        missing = [n for n in holdout if n not in names]
        if missing:
            raise UserError(f"--holdout-timbres: {', '.join(missing)} not among the banks in use "
                            f"({', '.join(sorted(names))})")
        held = list(holdout)
    train = [b for b in banks if b.name not in held]
    test = [b for b in banks if b.name in held]
    if not test:
        return Palette(list(banks)), Palette(list(banks)), []
    for side, label in ((train, "training"), (test, "validation/test")):
        if not any(b.presets for b in side) or not any(b.kits for b in side):
            if holdout is None:  # the default cannot split what is installed: no cross-timbre split
                return Palette(list(banks)), Palette(list(banks)), []
            raise UserError(f"--holdout-timbres {','.join(held)}: leaves the {label} split without a pitched "
                            "bank or a drum kit")
    return Palette(train), Palette(test), held
