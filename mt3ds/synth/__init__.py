"""`mt3ds synth`: a synthetic multi-instrument corpus in the published Slakh2100 and MAESTRO layouts.

Real music and generated songs rendered with many sample-based (and one FM) instrument banks, as Slakh itself was
made, one module per stage:

    corpus.py      music21 corpus -> works (held-out list excluded) -> parsed once, cached as MIDI + bar lines
    arrange.py     one render of a work: instruments per part, tempo curve, humanized notes, pedal, in MIDI ticks
    drums.py       a generated drum part in the piece's meter (grooves, variation, fills, crashes)
    songs.py       a generated pop/rock/funk/jazz/latin/electronic/ballad song as an arrangement
    expression.py  players' controllers (vibrato, swells, legato, detune, palm mute), the mix settings and
                   --voicing's SoundFont filter/envelope/LFO offsets
    banks.py       the banks (SoundFonts, TiMidity++ patch sets, Hydrogen kits) and the cross-timbre split
    drumkit.py     the Hydrogen kit sample player
    render.py      each stem through its engine at 16 kHz, EQ and room, the mix as the sum of the stems
    layouts.py     Slakh2100 track folders / MAESTRO year folders with CSV and JSON, written atomically
    coverage.py    what a corpus covers: hours per family and bank, pitch range, drum-hit rate, polyphony
    run.py         plan to --hours, split by piece, render in parallel, resume, summary

Needs the `synth` extra (music21, pyfluidsynth) and Debian's fluidsynth with its SoundFonts (TiMidity++ with
freepats and hydrogen-drumkits add timbres).
"""
from .run import SynthOptions, run_synth

__all__ = ["SynthOptions", "run_synth"]
