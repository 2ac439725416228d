"""`mt3ds synth`: a synthetic multi-instrument corpus in the published Slakh2100 and MAESTRO layouts.

Real music rendered with sample-based instruments, as Slakh itself was made, one module per stage:

    corpus.py    music21 corpus -> works (held-out list excluded) -> parsed once, cached as MIDI + bar lines
    arrange.py   one render of a work: instruments per part, tempo curve, humanized notes, pedal, in MIDI ticks
    drums.py     a generated drum part in the piece's meter (grooves, variation, fills, crashes)
    render.py    each stem through a fresh FluidSynth at 16 kHz; the mix is the sum of the stems
    layouts.py   Slakh2100 track folders / MAESTRO year folders with CSV and JSON, written atomically
    run.py       plan to --hours, split by piece, render in parallel, resume, summary

Needs the `synth` extra (music21, pyfluidsynth) and Debian's fluidsynth with its SoundFonts.
"""
from .run import SynthOptions, run_synth

__all__ = ["SynthOptions", "run_synth"]
