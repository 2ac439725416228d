"""mt3ds: multi-instrument audio-to-MIDI transcription, MT3-style, trained with DeepSpeed.

The data flow, one line per module (in the order data moves):

    data/index.py, maestro.py, slakh.py   dataset layouts as published -> TrackRecord (JSON lines)
    data/audio.py                         offline chain: decode, 16 kHz mono, high-pass, -23 LUFS, pre-emphasis, dither, chunks
    tokens/midi.py                        MIDI -> notes (seconds, sustain, drums = 128) and notes -> General MIDI
    tokens/vocab.py                       the Option 1 vocabulary: typed event ranges, 1437 ids
    tokens/codec.py                       notes <-> per-chunk tokens with ties; stitching chunks back into notes
    data/samples.py                       the shard format: Sample, Manifest, write_shard_folder
    data/shards.py                        aligned (audio chunk, tokens) pairs -> WebDataset tar shards + manifest
    data/loader.py, augment.py            shard streams -> temperature mixing, augmentation, padded batches
    model/features.py                     waveform -> log-mel [B, 256, 512] on the device
    model/                                encoder-decoder transformer, attention backends, KV cache, conditioning
    model/generate.py                     greedy / beam search through the KV cache
    train/ + bin/train.py                 the DeepSpeed engine: bf16, ZeRO, EMA, checkpoints, export
    transcribe.py                         audio files -> batched cached decoding -> stitched General MIDI
    tokens/frames.py                      88-key rolls: frame-head targets and the note reading
    evaluate.py                           mir_eval metrics as MT3 computes them

The design the code follows is docs/design.md in the repository.
`import mt3ds` stays light: torch and deepspeed are imported only by the commands that need them.
"""

import os

# OpenMP threads that spin while they wait starve every other process on a busy machine: the same transcription
# took 4-12x longer beside other work. Passive waits cost nothing measurable alone. Set before torch is imported
# (the CLI imports it lazily), and only as a default: an exported OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
