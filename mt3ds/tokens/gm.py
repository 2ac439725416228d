"""General MIDI program names and the 16 MIDI instrument classes (8 programs each), plus drums as program 128."""
from __future__ import annotations

from .vocab import DRUM_PROGRAM

PROGRAM_NAMES: tuple[str, ...] = (
    "Acoustic Grand Piano", "Bright Acoustic Piano", "Electric Grand Piano", "Honky-tonk Piano",
    "Electric Piano 1", "Electric Piano 2", "Harpsichord", "Clavinet",
    "Celesta", "Glockenspiel", "Music Box", "Vibraphone", "Marimba", "Xylophone", "Tubular Bells", "Dulcimer",
    "Drawbar Organ", "Percussive Organ", "Rock Organ", "Church Organ", "Reed Organ", "Accordion", "Harmonica",
    "Tango Accordion",
    "Acoustic Guitar (nylon)", "Acoustic Guitar (steel)", "Electric Guitar (jazz)", "Electric Guitar (clean)",
    "Electric Guitar (muted)", "Overdriven Guitar", "Distortion Guitar", "Guitar Harmonics",
    "Acoustic Bass", "Electric Bass (finger)", "Electric Bass (pick)", "Fretless Bass", "Slap Bass 1",
    "Slap Bass 2", "Synth Bass 1", "Synth Bass 2",
    "Violin", "Viola", "Cello", "Contrabass", "Tremolo Strings", "Pizzicato Strings", "Orchestral Harp", "Timpani",
    "String Ensemble 1", "String Ensemble 2", "Synth Strings 1", "Synth Strings 2", "Choir Aahs", "Voice Oohs",
    "Synth Choir", "Orchestra Hit",
    "Trumpet", "Trombone", "Tuba", "Muted Trumpet", "French Horn", "Brass Section", "Synth Brass 1",
    "Synth Brass 2",
    "Soprano Sax", "Alto Sax", "Tenor Sax", "Baritone Sax", "Oboe", "English Horn", "Bassoon", "Clarinet",
    "Piccolo", "Flute", "Recorder", "Pan Flute", "Blown Bottle", "Shakuhachi", "Whistle", "Ocarina",
    "Lead 1 (square)", "Lead 2 (sawtooth)", "Lead 3 (calliope)", "Lead 4 (chiff)", "Lead 5 (charang)",
    "Lead 6 (voice)", "Lead 7 (fifths)", "Lead 8 (bass + lead)",
    "Pad 1 (new age)", "Pad 2 (warm)", "Pad 3 (polysynth)", "Pad 4 (choir)", "Pad 5 (bowed)", "Pad 6 (metallic)",
    "Pad 7 (halo)", "Pad 8 (sweep)",
    "FX 1 (rain)", "FX 2 (soundtrack)", "FX 3 (crystal)", "FX 4 (atmosphere)", "FX 5 (brightness)",
    "FX 6 (goblins)", "FX 7 (echoes)", "FX 8 (sci-fi)",
    "Sitar", "Banjo", "Shamisen", "Koto", "Kalimba", "Bagpipe", "Fiddle", "Shanai",
    "Tinkle Bell", "Agogo", "Steel Drums", "Woodblock", "Taiko Drum", "Melodic Tom", "Synth Drum", "Reverse Cymbal",
    "Guitar Fret Noise", "Breath Noise", "Seashore", "Bird Tweet", "Telephone Ring", "Helicopter", "Applause",
    "Gunshot",
)
CLASS_NAMES: tuple[str, ...] = (
    "Piano", "Chromatic Percussion", "Organ", "Guitar", "Bass", "Strings", "Ensemble", "Brass", "Reed", "Pipe",
    "Synth Lead", "Synth Pad", "Synth Effects", "Ethnic", "Percussive", "Sound Effects",
)
DRUMS_NAME = "Drums"
assert len(PROGRAM_NAMES) == 128 and len(CLASS_NAMES) == 16


def program_name(program: int) -> str:
    """GM name of a program 0..127, or 'Drums' for 128."""
    return DRUMS_NAME if program == DRUM_PROGRAM else PROGRAM_NAMES[program]


def program_class(program: int) -> str:
    """MIDI class name of a program (8 programs per class), or 'Drums' for 128."""
    return DRUMS_NAME if program == DRUM_PROGRAM else CLASS_NAMES[program // 8]


def class_program(program: int) -> int:
    """The first program of a program's MIDI class (8 * floor(p / 8)); drums stay 128 (docs/design.md §7.6, multi_class)."""
    return program if program == DRUM_PROGRAM else 8 * (program // 8)


def _normalize(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


# Short names users type for --instruments: each class's name picks its first program; 'drums' is 128.
_ALIASES = {_normalize(n): i for i, n in enumerate(PROGRAM_NAMES)}
_ALIASES.update({_normalize(n): 8 * i for i, n in enumerate(CLASS_NAMES)})
_ALIASES.update({"drums": DRUM_PROGRAM, "drum": DRUM_PROGRAM, "drumkit": DRUM_PROGRAM, "percussionkit": DRUM_PROGRAM,
                 "guitar": 24, "violin": 40, "sax": 65, "saxophone": 65, "voice": 52, "choir": 52, "synth": 80})


def parse_instrument(spec: str) -> int:
    """'piano' / 'Acoustic Bass' / '33' / 'drums' -> program 0..128; ValueError listing accepted names otherwise."""
    spec = spec.strip()
    if spec.isdigit():
        program = int(spec)
        if 0 <= program <= DRUM_PROGRAM:
            return program
        raise ValueError(f"instrument program {program} outside 0..128 (128 = drums)")
    key = _normalize(spec)
    if key in _ALIASES:
        return _ALIASES[key]
    accepted = ", ".join(sorted({"drums", *(n.lower() for n in CLASS_NAMES)}))
    raise ValueError(f"unknown instrument {spec!r}: use a program number 0..128, a General MIDI program name, "
                     f"or one of: {accepted}")
