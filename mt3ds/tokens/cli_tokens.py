"""`mt3ds tokens`: one MIDI file -> per-chunk tokens, printed as ids, event names or JSON; optional round trip."""
from __future__ import annotations

import json

import click
import numpy as np

from ..errors import UserError
from .codec import decode_tokens, encode_notes, event_names
from .midi import read_midi, write_midi


def run_tokens(midi: str, chunk_seconds: float, time_encoding: str, as_json: bool, events: bool,
               roundtrip: str | None) -> dict:
    """Tokenize `midi`, print it, and optionally write the MIDI rebuilt from the tokens alone."""
    if chunk_seconds <= 0:
        raise UserError(f"--chunk-seconds must be positive, not {chunk_seconds}", exit_code=2)
    notes, midi_stats = read_midi(midi)
    try:
        ct = encode_notes(notes, chunk_seconds=chunk_seconds, time_encoding=time_encoding)
    except ValueError as e:
        raise UserError(f"{midi}: {e}", exit_code=2)
    stats = {"notes": midi_stats.notes, "dropped_pitches": midi_stats.dropped_pitches + ct.dropped_pitches,
             "truncated_chunks": int(ct.truncated.sum())}
    if as_json:
        chunks = [{"start_s": round(float(ct.start_s[i]), 6),
                   **({"events": event_names(ct.chunk(i))} if events else {}),
                   "tokens": ct.chunk(i).tolist()} for i in range(len(ct))]
        click.echo(json.dumps({"chunks": chunks, "stats": stats}))
    else:
        for i in range(len(ct)):
            body = " ".join(event_names(ct.chunk(i))) if events else " ".join(map(str, ct.chunk(i).tolist()))
            click.echo(f"[{ct.start_s[i]:.3f}s] {body}")
        click.echo(f"# {stats['notes']} notes, {stats['dropped_pitches']} dropped (pitch outside 21..108), "
                   f"{stats['truncated_chunks']} truncated chunks, {len(ct)} chunks", err=True)
    if roundtrip:
        rebuilt, dstats = decode_tokens(ct, chunk_seconds=chunk_seconds, time_encoding=time_encoding,
                                        end_s=float(np.max(notes.offset)) if len(notes) else None)
        write_midi(rebuilt, roundtrip)
        click.echo(f"# wrote {roundtrip}: {len(rebuilt)} notes rebuilt from tokens", err=True)
    return stats
