"""The `mt3ds` command line: each command maps to one library function.

Heavy imports (torch, deepspeed, webdataset) happen inside the commands so that `mt3ds --help` is instant.
A user's mistake raises UserError and is printed as one line with a non-zero exit, never as a traceback.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import __version__
from .errors import UserError, first_line
from .tokens.frames import FRAME_THRESHOLD, ONSET_THRESHOLD

# Option value checks live in the option types, so Click refuses a bad value as a usage error (exit 2) before any work
POSITIVE = click.FloatRange(min=0, min_open=True)
COUNT = click.IntRange(min=1)
WORKERS = click.IntRange(min=0)  # 0: every CPU core


class Output(click.Path):
    """An output path, refused before the command runs when it cannot be written (files.check_writable)."""

    def __init__(self, folder: bool | None = False):
        super().__init__(file_okay=folder is not True, dir_okay=folder is not False)
        self.folder = folder
        """True: a folder; False: a file; None: a folder unless the name ends in .mid or .midi (transcribe -o)."""

    def convert(self, value, param, ctx):
        from .files import check_writable

        value = super().convert(value, param, ctx)
        folder = self.folder if self.folder is not None else not str(value).lower().endswith((".mid", ".midi"))
        try:
            check_writable(value, folder=folder)
        except UserError as e:
            self.fail(str(e), param, ctx)
        return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mt3ds")
def cli():
    """mt3ds: multi-instrument audio-to-MIDI transcription, MT3-style.

    \b
    1. mt3ds shard --dataset maestro|slakh|slakh_stems --root DATA --out shards/NAME
    2. deepspeed bin/train.py --ds_config ds_configs/bf16.json --config configs/base_gpu.yaml
       then: mt3ds export runs/base -o model.safetensors
    3. mt3ds transcribe AUDIO... -o OUT [--model model.safetensors]
       and:  mt3ds evaluate --ref REF --est EST

    Exit status: 0 done; 2 the command line cannot be run as given (an unknown option, a value out of range, an
    input that does not exist or is not what the option needs, an output that cannot be written), found before
    any work starts; 1 the work failed (unreadable or malformed data, a failed run). Errors are one line.
    """


# ----------------------------------------------------------------------------------------------------------------
# tokens: MIDI -> per-chunk Option 1 tokens (tokens/codec.py)

@cli.command()
@click.argument("midi", type=click.Path(exists=True, dir_okay=False))
@click.option("--chunk-seconds", type=POSITIVE, default=32768 / 16000, show_default=True,
              help="Chunk length in seconds (training uses 32768 samples at 16 kHz).")
@click.option("--time-encoding", type=click.Choice(["delta", "absolute"]), default="delta", show_default=True,
              help="How shift tokens count time (docs/design.md §3.5).")
@click.option("--json", "as_json", is_flag=True, help="Print chunks and stats as one JSON object.")
@click.option("--events", is_flag=True, help="Print event names instead of ids.")
@click.option("--roundtrip", type=Output(), default=None,
              help="Write the MIDI rebuilt from the tokens alone to this path.")
def tokens(midi, chunk_seconds, time_encoding, as_json, events, roundtrip):
    """Tokenize a MIDI file into per-chunk Option 1 tokens."""
    from .tokens.cli_tokens import run_tokens

    run_tokens(midi, chunk_seconds=chunk_seconds, time_encoding=time_encoding, as_json=as_json, events=events,
               roundtrip=roundtrip)


# ----------------------------------------------------------------------------------------------------------------
# transcribe: audio files -> General MIDI (transcribe.py)

@cli.command()
@click.argument("audio", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", required=True, type=Output(folder=None),
              help="Output .mid for one input, or a folder (one NAME.mid per input).")
@click.option("--model", type=click.Path(exists=True, dir_okay=False), default=None,
              help="An exported model (.safetensors); default: the bundled model.")
@click.option("--instruments", default=None,
              help="Instruments present, e.g. piano,bass,drums or 0,33,128 (Step 3 conditioning).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--batch-size", type=COUNT, default=None,
              help="Chunks decoded together (default: 32 on CPU, 64 on GPU; memory grows with it, not with the file).")
@click.option("--beam", type=COUNT, default=1, show_default=True, help="Beam size (1 = greedy).")
@click.option("--notes", "notes_from", type=click.Choice(["frames", "hybrid", "tokens"]), default=None,
              help="Where notes come from: frames = the encoder's note heads alone, no decoding (default for a "
                   "model with them); hybrid = notes from the heads' rolls, instruments and drums from the decoded "
                   "tokens (default for a model with only the aux frame head); tokens = the decoded tokens (MT3).")
@click.option("--onset-threshold", type=float, default=None,
              help=f"frames/hybrid: the onset probability a note needs (lower finds more notes); default: the "
                   f"model's chosen value ({ONSET_THRESHOLD} for an aux-head model).")
@click.option("--frame-threshold", type=float, default=None,
              help=f"frames/hybrid: a note lasts while its frame probability stays above this; default: the "
                   f"model's ({FRAME_THRESHOLD} for an aux-head model).")
@click.option("--drum-threshold", type=float, default=None,
              help="frames: the onset probability a drum hit needs; default: the model's.")
@click.option("--min-gap", "min_gap_s", type=float, default=None,
              help="frames: seconds between two onsets of one key (a closer peak is the same note); default: the "
                   "model's.")
@click.option("--quantize", is_flag=True,
              help="CPU: int8 dynamic quantization of the linear layers (faster; see BENCHMARKS.md for its cost).")
@click.option("--csv", "as_csv", is_flag=True, help="Also write a note list NAME.csv.")
@click.option("--plot", is_flag=True, help="Also write a piano roll NAME.png (needs matplotlib).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def transcribe(audio, out, model, instruments, device, batch_size, beam, notes_from, onset_threshold, frame_threshold,
               drum_threshold, min_gap_s, quantize, as_csv, plot, quiet):
    """Transcribe audio files or folders (WAV, FLAC, OGG, MP3; any rate and channels) into multi-track MIDI."""
    from .transcribe import transcribe as run

    result = run(audio, out, model=model, instruments=instruments, device=device, batch_size=batch_size, beam=beam,
                 as_csv=as_csv, plot=plot, progress=not quiet, notes_from=notes_from,
                 onset_threshold=onset_threshold, frame_threshold=frame_threshold, drum_threshold=drum_threshold,
                 min_gap_s=min_gap_s, quantize=quantize)
    for src, dst, n_notes, seconds in result.written:
        click.echo(f"{src} -> {dst} ({n_notes} notes, {seconds:.1f} s)")
    if result.failed:
        if not result.written and len(result.failed) == 1:
            raise UserError(result.failed[0][1])
        raise UserError(f"{len(result.failed)} of {len(result.failed) + len(result.written)} inputs failed: "
                        + "; ".join(reason for _, reason in result.failed))


# ----------------------------------------------------------------------------------------------------------------
# evaluate: mir_eval metrics as MT3 computes them (evaluate.py)

@cli.command()
@click.option("--ref", required=True, type=click.Path(exists=True), help="Reference MIDI file or folder.")
@click.option("--est", required=True, type=click.Path(exists=True),
              help="Estimated MIDI file or folder (matched by name).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (per file, pooled, mean).")
def evaluate(ref, est, as_json):
    """Score transcriptions against references: onset, onset+offset, frame, multi-instrument and drum F1."""
    from .evaluate import evaluate as run, format_table

    result = run(ref, est)
    click.echo(json.dumps(result) if as_json else format_table(result))


# --- index, shard, inspect (data/index.py, data/shards.py) ---------------------------------------------------------

_DATASETS = ("maestro", "slakh", "slakh_stems")


@cli.command("index")
@click.option("--dataset", required=True, type=click.Choice(_DATASETS), help="Layout to read (docs/design.md §1.3).")
@click.option("--root", required=True, type=click.Path(), help="The dataset's folder, as published.")
@click.option("-o", "--out", required=True, type=Output(), help="JSON-lines file of track records.")
@click.option("--splits", default="train,validation,test", show_default=True,
              help="Comma-separated splits; 'omitted' adds Slakh's omitted tracks.")
def index_command(dataset, root, out, splits):
    """Index a dataset into track records (one JSON object per line)."""
    from .data.index import write_index

    result = write_index(dataset, root, out, splits)
    click.echo(f"{len(result.records)} track records -> {out}")
    if result.skipped:
        click.echo(f"skipped {len(result.skipped)}:", err=True)
        for s in result.skipped:
            click.echo(f"  {s.path}: {s.reason}", err=True)


@cli.command("shard")
@click.option("--dataset", required=True, type=click.Choice(_DATASETS), help="Layout to read (docs/design.md §1.3).")
@click.option("--root", required=True, type=click.Path(), help="The dataset's folder, as published.")
@click.option("-o", "--out", required=True, type=Output(folder=True), help="Output folder (one per split).")
@click.option("--splits", default="train,validation,test", show_default=True,
              help="Comma-separated splits; 'omitted' adds Slakh's omitted tracks.")
@click.option("--workers", type=WORKERS, default=0, help="Parallel track workers (default: every CPU core).")
@click.option("--shard-size", default="1GB", show_default=True, help="Largest shard: 1GB, 500MB, 64MiB, ...")
@click.option("--part", default=None, help="i/N: shard only the i-th of N deterministic parts (N machines).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def shard_command(dataset, root, out, splits, workers, shard_size, part, quiet):
    """Index a dataset, run the offline audio chain, write WebDataset shards and a manifest per split."""
    import os

    from .data.shards import shard, summary_lines

    summaries = shard(dataset, root, out, splits=splits, workers=workers or os.cpu_count() or 1,
                      shard_size=shard_size, part=part, progress=not quiet)
    for line in summary_lines(summaries):
        click.echo(line)


@cli.command("inspect")
@click.argument("path", type=click.Path(exists=True))
@click.option("--sample", default=None, help="A sample key, e.g. Track00001_00003.")
@click.option("--wav", type=Output(), default=None, help="Write the sample's audio here.")
@click.option("--midi", type=Output(), default=None, help="Write the sample's tokens as MIDI here.")
def inspect_command(path, sample, wav, midi):
    """Summarize shards (manifests); dump one sample's audio and decoded tokens to check alignment."""
    from .data.shards import inspect

    for line in inspect(path, sample=sample, wav=wav, midi=midi):
        click.echo(line)

# --- end index, shard, inspect -------------------------------------------------------------------------------------

# --- synth (synth/) ------------------------------------------------------------------------------------------------

@cli.command("synth")
@click.option("--out", required=True, type=Output(folder=True), help="Dataset folder to write (or complete).")
@click.option("--layout", required=True, type=click.Choice(["slakh", "maestro"]),
              help="Slakh2100 (ensembles, stems, drums) or MAESTRO (solo piano) as published.")
@click.option("--soundfont", "soundfonts", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Render with this SoundFont only (repeat for several; default: every installed bank).")
@click.option("--bank", "banks", multiple=True,
              help="Use only this installed bank (repeatable): fluidr3_gm, fluidr3_gs, fluidr3mono, timgm6mb, "
                   "csound, opl3, freepats (TiMidity++), kit:NAME (a Hydrogen kit).")
@click.option("--holdout-timbres", default=None,
              help="Banks only validation and test are rendered with (comma list, or 'none'; default: csound, "
                   "freepats and three Hydrogen kits, as far as installed).")
@click.option("--songs", type=click.FloatRange(0, 1), default=None,
              help="Share of the audio that is generated pop/rock/funk/jazz/latin/electronic/ballad songs "
                   "(default 0.5 for slakh, 0 for maestro).")
@click.option("--hours", type=POSITIVE, default=1.0, show_default=True,
              help="Audio to render in all (a small value still renders one validation and one test track).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same files.")
@click.option("--workers", type=WORKERS, default=0, help="Parallel processes (default: every CPU core).")
@click.option("--max-seconds", type=click.FloatRange(min=5), default=300.0, show_default=True,
              help="Longer works are rendered as excerpts of whole bars at most this long.")
@click.option("--parse-timeout", type=POSITIVE, default=180.0, show_default=True, help="Seconds per music21 file.")
@click.option("--voicing", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Random offsets to each SoundFont stem's filter, envelope and LFOs (0 none, 1 full ranges): "
                   "more timbres from the same banks.")
@click.option("--cache", type=Output(folder=True), default=None,
              help="Parsed-work cache (default: $XDG_CACHE_HOME/mt3ds/music21).")
@click.option("--work", "works", multiple=True, help="Render only this music21 corpus file (repeatable).")
@click.option("--holdout", type=click.Path(exists=True, dir_okay=False), default=None,
              help="List of held-out works (default: the one bundled with mt3ds).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def synth_command(out, layout, soundfonts, banks, holdout_timbres, songs, hours, seed, workers, max_seconds,
                  parse_timeout, voicing, cache, works, holdout, quiet):
    """Render real music (music21 corpus) and generated songs into a Slakh2100 or MAESTRO layout.

    Every installed General MIDI bank and engine plays (FluidSynth SoundFonts, TiMidity++ with freepats, Hydrogen
    drum kits), with expressive playing and a record-like mix; validation and test hear only held-out banks.
    Prints the corpus coverage: hours per instrument family and bank, pitch range, drum-hit rate, polyphony."""
    import os

    from .synth.run import SynthOptions, run_synth, summary_lines

    summary = run_synth(SynthOptions(out=out, layout=layout, soundfonts=list(soundfonts), banks=list(banks) or None,
                                     holdout_timbres=holdout_timbres, songs=songs, hours=hours, seed=seed,
                                     workers=workers or os.cpu_count() or 1, max_seconds=max_seconds,
                                     parse_timeout=parse_timeout, voicing=voicing, cache=cache,
                                     works=list(works) or None,
                                     holdout=holdout, progress=not quiet))
    for line in summary_lines(summary):
        click.echo(line)

# --- end synth -----------------------------------------------------------------------------------------------------


# --- export (train/export.py, model/io.py) ------------------------------------------------------------------------

@cli.command("export")
@click.argument("run_dir", type=click.Path())
@click.option("-o", "--out", required=True, type=Output(),
              help="The model file to write (.safetensors); its JSON card is written beside it.")
@click.option("--which", type=click.Choice(["best", "latest"]), default="best", show_default=True,
              help="Checkpoint to export: lowest validation token loss (latest if none was validated), or latest.")
@click.option("--step", type=click.IntRange(min=0), default=None, help="Export the checkpoint of this step instead.")
@click.option("--reading", type=click.Path(dir_okay=False), default=None,
              help="A JSON file of note-heads reading settings chosen on validation data (`mt3ds bench reading "
                   "--out`), stored with the model as its defaults.")
@click.option("--half", is_flag=True, help="Store the weights as float16 (half the file; loaded back as float32).")
@click.option("--average", "average", multiple=True, type=click.Path(dir_okay=False),
              help="An exported model of the same config (e.g. an earlier stage of the chain) whose weights are "
                   "averaged in with equal weight; repeatable.")
def export_command(run_dir, out, which, step, reading, half, average):
    """Export a training run's EMA weights to one safetensors file that `transcribe` loads without DeepSpeed."""
    from .train.export import export_run, format_export

    settings = None
    if reading is not None:
        try:
            settings = json.loads(Path(reading).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise UserError(f"{reading}: unreadable reading settings ({first_line(e)})") from None
        if not isinstance(settings, dict):
            raise UserError(f"{reading}: reading settings must be a JSON object")
        settings = settings.get("reading", settings)
    click.echo(format_export(export_run(run_dir, out, which=which, step=step, reading=settings, half=half,
                                          average=average), out))

# --- end export ----------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------
# bench: every benchmark prints a table, or one JSON object with --json

@cli.group()
def bench():
    """Benchmarks that print figures (recorded in BENCHMARKS.md)."""


@bench.command("tokens")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object of the figures.")
@click.option("--seconds", type=POSITIVE, default=300.0, show_default=True, help="Length of the generated MIDI.")
@click.option("--repeats", type=COUNT, default=5, show_default=True, help="Timed repetitions (best is kept).")
def bench_tokens(as_json, seconds, repeats):
    """Encode and decode+stitch a dense generated 10-track MIDI; notes/s."""
    from .bench.tokens import bench_tokens as run

    _print_figures(run(seconds=seconds, repeats=repeats), as_json)


# --- bench loader (data/loader.py, data/augment.py, model/features.py) -------------------------------------------

@bench.command("loader")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object of the figures.")
@click.option("--samples", type=COUNT, default=2000, show_default=True, help="Samples timed per loader setting.")
@click.option("--mix-samples", type=COUNT, default=5000, show_default=True,
              help="Samples over which mixing shares are compared with their targets.")
def bench_loader(as_json, samples, mix_samples):
    """Loader samples/s (0/1/2 workers, augmentation off/on), raw tar floor, CPU features/s, mixing shares."""
    from .bench.loader import bench_loader as run

    _print_figures(run(samples=samples, mix_samples=mix_samples), as_json)

# --- end bench loader ----------------------------------------------------------------------------------------------

# --- bench model (model/*.py) --------------------------------------------------------------------------------------

@bench.command("model")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object of the figures.")
@click.option("--preset", "presets", multiple=True, default=("small", "base"), show_default=True,
              type=click.Choice(["tiny", "small", "base", "base_v2"]), help="Model preset to measure (repeatable).")
@click.option("--batch", type=COUNT, default=8, show_default=True, help="Training batch (segments).")
@click.option("--train-tokens", type=click.IntRange(min=2), default=1024, show_default=True,
              help="Tokens per training segment.")
@click.option("--decode-batch", type=COUNT, default=16, show_default=True, help="Segments decoded together.")
@click.option("--decode-tokens", type=COUNT, default=1024, show_default=True, help="Tokens decoded per segment.")
@click.option("--repeats", type=COUNT, default=2, show_default=True, help="Timed repetitions (best is kept).")
def bench_model(as_json, presets, batch, train_tokens, decode_batch, decode_tokens, repeats):
    """Training step fp32 vs bf16, parameters, greedy decoding tokens/s with and without the KV cache."""
    from .bench.model import bench_model as run

    _print_figures(run(presets=presets, batch=batch, train_tokens=train_tokens, decode_batch=decode_batch,
                       decode_tokens=decode_tokens, repeats=repeats), as_json)

# --- end bench model -----------------------------------------------------------------------------------------------

# --- bench shard (data/shards.py, data/audio.py) ------------------------------------------------------------------

@bench.command("shard")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object of the figures.")
@click.option("--minutes", type=POSITIVE, default=20.0, show_default=True,
              help="Audio generated (44.1 kHz stereo FLAC); a few minutes is too little to amortize worker start-up.")
@click.option("--tracks", type=COUNT, default=16, show_default=True, help="Tracks the audio is split into.")
@click.option("--repeats", type=COUNT, default=2, show_default=True, help="Timed repetitions (best is kept).")
def bench_shard(as_json, minutes, tracks, repeats):
    """Shard a generated MAESTRO-layout dataset with 1 and 2 workers against the decode+resample floor."""
    from .bench.shard import bench_shard as run

    _print_figures(run(minutes=minutes, tracks=tracks, repeats=repeats), as_json)

# --- end bench shard -----------------------------------------------------------------------------------------------

# --- bench synth (synth/) ------------------------------------------------------------------------------------------

@bench.command("synth")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object of the figures.")
@click.option("--seconds", type=POSITIVE, default=60.0, show_default=True, help="Length of each rendered excerpt.")
def bench_synth(as_json, seconds):
    """Render fixed works and one song per genre (Slakh layout, every installed bank): audio seconds per second
    of one core, by stage and per engine (FluidSynth, TiMidity++, Hydrogen kits)."""
    from .bench.synth import bench_synth as run

    _print_figures(run(seconds=seconds), as_json)

# --- end bench synth -----------------------------------------------------------------------------------------------

# --- bench train (train/engine.py through DeepSpeed) ---------------------------------------------------------------

@bench.command("train")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object of the figures.")
@click.option("--preset", default=None, type=click.Choice(["tiny", "small", "base", "base_v2"]),
              help="Model preset (default: base with a GPU, small on a CPU-only machine).")
@click.option("--ds-config", type=click.Path(exists=True, dir_okay=False), default=None,
              help="DeepSpeed config (default: ds_configs/bf16.json with a GPU, ds_configs/cpu.json on a CPU).")
@click.option("--batch", type=COUNT, default=None, help="Micro-batch (default: the ds_config's).")
@click.option("--tokens", type=click.IntRange(min=2), default=1024, show_default=True,
              help="Target tokens per chunk.")
@click.option("--steps", type=COUNT, default=10, show_default=True, help="Timed steps (after 3 warm-up steps).")
@click.option("--precision", type=click.Choice(["config", "fp32", "bf16"]), default="config", show_default=True,
              help="Override the ds_config's bf16 switch.")
@click.option("--checkpointing", default="off,on", show_default=True,
              help="Activation checkpointing settings to measure: off, on or off,on.")
@click.option("--ranks", default="1", show_default=True,
              help="Data-parallel world sizes, e.g. 1,2: one `deepspeed --num_gpus R` launch each (R GPUs, or R gloo "
                   "ranks sharing the CPU's cores) and the samples/s scaling against the first.")
def bench_train(as_json, preset, ds_config, batch, tokens, steps, precision, checkpointing, ranks):
    """DeepSpeed training step: samples/s, tokens/s, MFU (GPU), peak memory; activation checkpointing off vs on;
    data-parallel scaling with --ranks. Progress goes to stderr (stdout holds the figures)."""
    import os

    settings = tuple(s.strip() for s in checkpointing.split(",") if s.strip())
    if not settings or any(s not in ("off", "on") for s in settings):
        raise click.BadParameter(f"{checkpointing!r}: expected off, on or off,on", param_hint="'--checkpointing'")
    try:
        world_sizes = tuple(int(r) for r in ranks.split(","))
    except ValueError:
        world_sizes = ()
    if not world_sizes or min(world_sizes) < 1:
        raise click.BadParameter(f"{ranks!r}: expected positive integers separated by commas, e.g. 1,2",
                                 param_hint="'--ranks'")
    from .bench.train import machine_defaults

    preset, ds_config = machine_defaults(preset, ds_config)
    kw = dict(preset=preset, ds_config=ds_config, batch=batch, tokens=tokens, steps=steps, precision=precision,
              checkpointing=settings)
    if world_sizes == (int(os.environ.get("WORLD_SIZE", "1")),):  # this process is (one of) the ranks
        from .bench.train import bench_train as run

        figures = run(**kw)
        if int(os.environ.get("RANK", "0")) == 0:
            _print_figures(figures, as_json)
        return
    from .bench.train import bench_train_ranks

    _print_figures(bench_train_ranks(world_sizes, **kw), as_json)

# --- end bench train -----------------------------------------------------------------------------------------------

# --- bench gpu (bench/gpu.py: the GPU-only figures in one run) ----------------------------------------------------

@bench.command("gpu")
@click.option("--dry-run", is_flag=True, help="Run every part on the CPU at tiny sizes (no GPU needed).")
@click.option("--steps", type=COUNT, default=None, help="Timed training steps per setting (default 10; dry run 2).")
def bench_gpu(dry_run, steps):
    """GPU check in one run (sized for < 8 min on one H100/H200): bf16 step time and MFU of base and base_v2 with
    flash vs math attention (flash verified), FusedAdam loaded, ZeRO-1/2 and activation checkpointing memory and
    time, KV-cache speed-up, loader samples/s against the GPU's demand, transcription RTF. Prints one JSON object."""
    import os
    import sys

    from .bench.gpu import bench_gpu as run

    # DeepSpeed and the profiler log to stdout (some from C++): send all of it to stderr while the check runs, so
    # stdout holds only the JSON object
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        figures = run(dry_run=dry_run, steps=steps)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    _print_figures(figures, as_json=True)

# --- end bench gpu -------------------------------------------------------------------------------------------------


@bench.command("transcribe")
@click.option("--model", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Exported model (default: bundled).")
@click.option("--seconds", type=POSITIVE, default=60.0, show_default=True, help="Length of the generated recording.")
@click.option("--uncached-chunks", type=COUNT, default=2, show_default=True,
              help="Chunks decoded without the KV cache (it is slow; the RTF is per audio second).")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True)
@click.option("--long-minutes", type=float, default=0.0, show_default=True,
              help="Also measure the peak memory of transcribing a file this long (0: skip).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object of the figures.")
def bench_transcribe(model, seconds, uncached_chunks, device, long_minutes, as_json):
    """Real-time factor of each reading (frames, hybrid, tokens; cache, batch 1), and basic-pitch's."""
    from .bench.transcribe import bench_transcribe as run

    _print_figures(run(model=model, seconds=seconds, uncached_chunks=uncached_chunks, device=device,
                       long_minutes=long_minutes), as_json)


@bench.command("quality")
@click.option("--model", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Exported model (default: bundled).")
@click.option("--dataset", type=click.Choice(["maestro", "slakh", "slakh_stems", "pairs"]), required=True,
              help="A published layout, or pairs: audio files with a same-named .mid beside them (--files).")
@click.option("--root", type=click.Path(), required=True, help="The dataset's folder, as published.")
@click.option("--files", default="**/*", show_default=True, help="pairs: which audio files under --root (a glob).")
@click.option("--readings", default=None,
              help="Comma-separated readings to score (frames, hybrid, tokens); the first is the headline. "
                   "Default: the model's default reading.")
@click.option("--quantize", is_flag=True, help="int8 dynamic quantization of the linear layers (CPU).")
@click.option("--split", default="test", show_default=True)
@click.option("--limit", type=COUNT, default=None, help="Score only the first N tracks.")
@click.option("--no-instruments", is_flag=True, help="Skip the run with each track's instrument list given.")
@click.option("--no-basic-pitch", is_flag=True, help="Skip basic-pitch even when it is installed.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object of the figures.")
def bench_quality(model, dataset, root, files, readings, quantize, split, limit, no_instruments, no_basic_pitch,
                  device, as_json):
    """Note F1s and real-time factor of a model on a dataset split, beside basic-pitch's on the same files."""
    from .bench.quality import bench_quality as run

    readings = tuple(r.strip() for r in readings.split(",") if r.strip()) if readings else None
    _print_figures(run(model, dataset, root, split, limit, instruments=not no_instruments,
                       basic_pitch=not no_basic_pitch, device=device, readings=readings, files=files,
                       quantize=quantize), as_json)


@bench.command("reading")
@click.option("--model", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Exported model (default: bundled).")
@click.option("--dataset", type=click.Choice(["maestro", "slakh", "slakh_stems", "pairs"]), required=True,
              multiple=True, help="A published layout, or pairs: audio files with a same-named .mid beside them "
                                  "(--files). Repeat with --root to pool several sources.")
@click.option("--root", type=click.Path(exists=True, file_okay=False), required=True, multiple=True,
              help="The dataset's folder, one per --dataset, in the same order.")
@click.option("--split", default="validation", show_default=True, help="Never the test split.")
@click.option("--files", default="**/*", show_default=True, help="pairs: which audio files under --root (a glob).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N tracks of each root.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write the chosen settings as JSON (for `mt3ds export --reading`).")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object of the figures.")
def bench_reading_command(model, dataset, root, split, files, limit, out, device, as_json):
    """Choose the note heads' reading thresholds on validation data (pooled F1 per setting group)."""
    from .bench.quality import load_tracks
    from .bench.reading import bench_reading
    from .files import write_text_atomic

    if split == "test":
        raise click.BadParameter("choose reading settings on validation data, not on the test split",
                                 param_hint="--split")
    if len(dataset) != len(root):
        raise click.BadParameter(f"{len(dataset)} --dataset for {len(root)} --root: give one of each per source",
                                 param_hint="--root")
    tracks = [t[:3] for d, r in zip(dataset, root) for t in load_tracks(d, r, split, files, limit)]
    figures = bench_reading(model, tracks, device)
    if out is not None:
        write_text_atomic(Path(out), json.dumps(figures, indent=1) + "\n")
    _print_figures(figures, as_json)


def _print_figures(figures: dict, as_json: bool) -> None:
    """One JSON object with --json, else an aligned table (nested dicts flattened as parent.child)."""
    if as_json:
        click.echo(json.dumps(figures))
        return

    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    rows = list(flat(figures))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        shown = f"{value:,.3f}" if isinstance(value, float) else str(value)
        click.echo(f"{key:<{width}}  {shown}")


def main(argv=None):
    """Console entry point: runs the click group, turning UserError into one line and an exit code."""
    try:
        rc = cli.main(args=argv, prog_name="mt3ds", standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except click.exceptions.Abort:
        click.echo("mt3ds: aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:  # one line like every other error; the command's --help is named for the rest
        where = f" (see {e.ctx.command_path} --help)" if e.ctx is not None else ""
        click.echo(f"mt3ds: error: {' '.join(e.format_message().split()).rstrip('.')}{where}", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except UserError as e:
        click.echo(f"mt3ds: error: {e}", err=True)
        sys.exit(e.exit_code)
    except BrokenPipeError:
        sys.exit(0)
    except OSError as e:
        # a write that failed after the up-front checks (disk full, a folder removed meanwhile): name the file
        if e.filename is None:
            raise
        click.echo(f"mt3ds: error: {e.filename}: {e.strerror or first_line(e)}", err=True)
        sys.exit(1)
