"""Audio files -> multi-track General MIDI (docs/design.md §7).

Per file: decode and resample, the offline chain of training (high-pass, loudness, pre-emphasis, dither), 2.048 s
chunks; chunks go through log-mel features and the model in batches (KV-cache greedy or beam decoding, kept to
well-formed chunks and to the --instruments list), and the chunks' tokens are stitched into notes (a note sounding
at a chunk's end and absent from the next chunk's tie section ends at the boundary).

Where the notes come from (--notes):
    frames  (the default for a model with note heads) notes, instruments and drums from the encoder's heads alone,
            no decoding (mt3ds/tokens/rolls.py): one encoder pass per chunk, instruments decided over the whole file
    hybrid  (the default for a model with only the aux frame head) pitched notes from the heads' class-agnostic
            rolls, each given the instrument of the decoded note that matches it best, drums decoded
            (mt3ds/tokens/frames.py)
    tokens  the decoded tokens alone, as MT3 reads them

    pipeline = Pipeline("model.safetensors")            # the model, its features and audio config, on a device
    notes, n_chunks = pipeline.transcribe_audio(waveform, "name", notes_from="frames")
    # or in two steps, to read one decode several ways (bench quality):
    decoded = pipeline.decode_audio(waveform, "name", notes_from="hybrid")   # Decoded: tokens, rolls, heads
    notes = pipeline.read_notes(decoded, len(waveform))

Memory stays bounded on long inputs: a batch (32 chunks on the CPU, 64 on a GPU, --batch-size) is cut from the
prepared waveform when it is decoded, so features, the decoder's KV cache and every other per-chunk tensor exist for
one batch at a time; what grows with the file is its 16 kHz waveform (230 MB per hour; the offline chain works
block by block on one float64 copy of it, mt3ds/data/audio.py), the heads' float16 class-agnostic rolls (3 x 88 per 8 ms
frame, 240 MB per hour; the class rolls kept only where notes sound), and the decoded tokens and notes. Figures:
BENCHMARKS.md, Transcription memory.
"""
from __future__ import annotations

import csv
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError, first_line
from .files import atomic_path, check_writable
from .tokens import gm, vocab
from .tokens.frames import FRAME_THRESHOLD, N_KEYS, ONSET_THRESHOLD, frame_seconds, hybrid_notes
from .plot import require_matplotlib, write_plot
from .tokens.rolls import HeadRolls, ReadSettings, RollReader, read_heads

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".opus")
DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "default_model.safetensors"
CPU_BATCH = 32  # chunks per batch on the CPU: ~65 s of audio, ~16 MB of features
# chunks per batch on a GPU: enough to fill it with the small models, while the KV cache (preallocated for
# max_tokens per row) stays a bounded few hundred MB however long the file is
GPU_BATCH = 64
NOTE_SOURCES = ("frames", "hybrid", "tokens")


@dataclass
class TranscribeResult:
    """What one run produced."""

    written: list = field(default_factory=list)  # (input, output MIDI, notes, seconds of audio)
    failed: list = field(default_factory=list)  # (input, reason)


@dataclass
class Decoded:
    """What the model decoded from one file's chunks."""

    tokens: list[np.ndarray]
    """Each chunk's token ids, int64, ending with EOS (or cut at the model's max_tokens); empty for "frames"."""
    rolls: np.ndarray | None = None
    """float16 [chunks, frames, 2, N_KEYS]: onset and active probabilities (the aux head's, or the note heads'
    class-agnostic onset and frame rolls) for the hybrid reading; None: not hybrid."""
    heads: HeadRolls | None = None
    """The note heads' rolls of the whole file ("frames": read without tokens); None: not "frames"."""


def parse_instruments(spec: str | None) -> list[int] | None:
    """'piano,bass,drums' or '0,33,128' -> sorted programs; None when not given."""
    if spec is None or not spec.strip():
        return None
    try:
        return sorted({gm.parse_instrument(s) for s in spec.split(",") if s.strip()})
    except ValueError as e:
        raise UserError(f"--instruments: {e}", exit_code=2)


def collect_inputs(paths) -> list[Path]:
    """Files as given; folders -> their audio files (sorted, not recursive)."""
    files = []
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p}: no such file or folder", exit_code=2)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                raise UserError(f"{p}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in this folder", exit_code=2)
            files += found
        else:
            files.append(p)
    return files


def output_paths(inputs: list[Path], out: Path) -> list[Path]:
    """-o FILE.mid for a single input; otherwise -o is a folder that gets one NAME.mid per input."""
    if out.suffix.lower() in (".mid", ".midi"):
        if len(inputs) != 1:
            raise UserError(f"{out}: several inputs need an output folder, not a .mid file", exit_code=2)
        return [out]
    names = [p.stem for p in inputs]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise UserError(f"inputs share the names {sorted(dupes)}: their MIDI files would overwrite each other",
                        exit_code=2)
    return [out / f"{n}.mid" for n in names]


def resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available", exit_code=2)
    return torch.device(device)


class Pipeline:
    """A loaded model with its features and audio config, ready to transcribe waveforms (the nn.Module it drives
    is model.transcriber.Transcriber)."""

    def __init__(self, model_path: str | os.PathLike | None = None, device: str = "auto",
                 onset_threshold: float | None = None, frame_threshold: float | None = None,
                 drum_threshold: float | None = None, min_gap_s: float | None = None, quantize: bool = False):
        import torch

        from .config import AudioConfig, FeatureConfig
        from .model.features import LogMel
        from .model.io import load_model

        _threshold("--drum-threshold", drum_threshold, 0.5)
        if min_gap_s is not None and not 0.0 <= min_gap_s <= 1.0:
            raise UserError(f"--min-gap must be between 0 and 1 second, not {min_gap_s}", exit_code=2)

        path = Path(model_path) if model_path else DEFAULT_MODEL
        if model_path is None and not path.exists():
            raise UserError("no default model is bundled with this install yet: pass --model model.safetensors "
                            "(train one with bin/train.py and `mt3ds export`)")
        self.device = resolve_device(device)
        self.model, self.meta = load_model(path, device=self.device)
        self.audio_cfg = AudioConfig.from_dict(self.meta["audio_config"])
        self.feature_cfg = FeatureConfig(**self.meta.get("feature_config", {}))
        self.features = LogMel(self.feature_cfg, self.audio_cfg).to(self.device)
        self.time_encoding = self.model.cfg.time_encoding
        self.has_frame_head = self.model.frame_head is not None
        self.has_heads = self.model.note_heads is not None
        self.frame_seconds = frame_seconds(self.feature_cfg, self.audio_cfg)
        # hybrid reading thresholds: the aux head's defaults, or the note heads' (the model's chosen reading)
        self.reading = ReadSettings.from_dict(self.meta.get("reading")).replace(
            onset_threshold=_threshold("--onset-threshold", onset_threshold, None),
            frame_threshold=_threshold("--frame-threshold", frame_threshold, None),
            drum_threshold=drum_threshold, min_gap_s=min_gap_s)
        # every program's per-frame probabilities are kept only for a reading that splits classes by program
        self.keep_programs = self.reading.program_split > 0
        default_onset, default_frame = ((self.reading.onset_threshold, self.reading.frame_threshold) if self.has_heads
                                        else (ONSET_THRESHOLD, FRAME_THRESHOLD))
        self.onset_threshold = onset_threshold if onset_threshold is not None else default_onset
        self.frame_threshold = frame_threshold if frame_threshold is not None else default_frame
        # bf16 inference where the GPU supports it (docs/design.md §7.2); the CPU keeps fp32 for exactness.
        self.dtype = torch.bfloat16 if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        if self.dtype != torch.float32:
            self.model.to(self.dtype)
        self.model.eval()
        if quantize:
            if self.device.type != "cpu":
                raise UserError("--quantize is for CPU inference (int8 dynamic quantization of linear layers)",
                                exit_code=2)
            import warnings

            with warnings.catch_warnings():  # torch announces the move of this API to torchao on every call
                warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
                self.model = torch.ao.quantization.quantize_dynamic(self.model, {torch.nn.Linear},
                                                                    dtype=torch.qint8)

    def instrument_tensor(self, programs: list[int] | None, batch: int):
        import torch

        if programs is None:
            return None
        multi_hot = torch.zeros(batch, 129, dtype=torch.bool, device=self.device)
        multi_hot[:, programs] = True
        return multi_hot

    def notes_source(self, notes_from: str | None) -> str:
        """The --notes choice, checked against the model: None -> "frames" with note heads, "hybrid" with only the
        aux frame head, else "tokens"."""
        if notes_from is None:
            return "frames" if self.has_heads else "hybrid" if self.has_frame_head else "tokens"
        if notes_from not in NOTE_SOURCES:
            raise UserError(f"--notes must be one of {', '.join(NOTE_SOURCES)}, not {notes_from!r}", exit_code=2)
        if notes_from == "frames" and not self.has_heads:
            other = "hybrid or tokens" if self.has_frame_head else "tokens"
            raise UserError(f"--notes frames: this model has no note heads (trained without note_heads); use "
                            f"--notes {other}", exit_code=2)
        if notes_from == "hybrid" and not (self.has_heads or self.has_frame_head):
            raise UserError("--notes hybrid: this model has neither note heads nor the aux frame head; use --notes "
                            "tokens", exit_code=2)
        return notes_from

    def default_batch(self) -> int:
        """Chunks decoded together when --batch-size is not given (bounded: memory must not grow with the file)."""
        return GPU_BATCH if self.device.type == "cuda" else CPU_BATCH

    def decode_chunks(self, chunks, programs=None, batch_size: int | None = None, beam: int = 1,
                      use_cache: bool = True, progress=None, with_rolls: bool = False,
                      notes_from: str | None = None) -> Decoded:
        """Prepared audio chunks -> Decoded: "frames" runs the encoder and its heads only; "hybrid" (or with_rolls)
        decodes tokens and keeps the class-agnostic rolls; "tokens" decodes tokens. chunks: a [n, chunk_samples]
        array, or a Chunks view of a prepared waveform (batches are cut from it as they go)."""
        import torch

        from .model.generate import Search, generate

        source = notes_from or ("hybrid" if with_rolls else "tokens")
        batch_size = batch_size or self.default_batch()
        search = Search(beam_size=beam, use_cache=use_cache)  # the grammar keeps every chunk well formed
        frames = self.feature_cfg.frames
        tokens, rolls = [], []
        reader = RollReader(programs, self.keep_programs, len(chunks) * frames) if source == "frames" else None
        for start in range(0, len(chunks), batch_size):
            audio = torch.from_numpy(np.ascontiguousarray(chunks[start:start + batch_size])).to(self.device)
            with torch.no_grad():
                feats = self.features(audio.float()).to(self.dtype)
                instruments = self.instrument_tensor(programs, len(audio))
                if source == "frames":  # no decoder call at all
                    probs = self.model.head_probs(self.model.encode(feats, instruments), frames)
                    reader.add({k: v.cpu().numpy() for k, v in probs.items()})
                else:
                    # --instruments also limits what the grammar lets each chunk write
                    out = generate(self.model, feats, instruments, allowed=instruments, search=search,
                                   with_rolls=source == "hybrid" and not self.has_heads)
                    tokens += [_trim(row) for row in out.tokens.cpu().numpy()]
                    if source == "hybrid":
                        rolls.append(self._hybrid_rolls(out, feats, instruments))
            if progress is not None:
                progress.update(len(audio))
        if source == "frames":
            return Decoded([], heads=reader.rolls())
        if source == "tokens":
            return Decoded(tokens)
        if not rolls:
            return Decoded(tokens, np.zeros((0, frames, 2, N_KEYS), np.float16))
        return Decoded(tokens, np.concatenate(rolls))

    def _hybrid_rolls(self, out, feats, instruments) -> np.ndarray:
        """float16 [B, frames, 2, N_KEYS]: the aux head's rolls, or the note heads' group-0 onset and frame rolls."""
        import torch

        if not self.has_heads:
            return out.rolls.to(torch.float16).cpu().numpy()
        probs = self.model.head_probs(self.model.encode(feats, instruments), feats.shape[1])
        return torch.stack([probs["onset"][:, :, 0], probs["frame"][:, :, 0]], 2).to(torch.float16).cpu().numpy()

    def transcribe_audio(self, audio: np.ndarray, name: str, programs=None, batch_size=None, beam: int = 1,
                         use_cache: bool = True, progress=None, notes_from: str | None = None):
        """16 kHz mono waveform -> (Notes, number of chunks). notes_from: "frames", "tokens" or None (the model's
        default, see notes_source)."""
        from .data.audio import prepare

        return self.transcribe_prepared(prepare(audio, self.audio_cfg, name), len(audio), programs, batch_size, beam,
                                        use_cache, progress, notes_from)

    def transcribe_prepared(self, prepared: np.ndarray, n_samples: int, programs=None, batch_size=None,
                            beam: int = 1, use_cache: bool = True, progress=None, notes_from: str | None = None):
        """transcribe_audio after the offline chain (data.audio.prepare): the caller can let the raw waveform go
        first, so a long file is not held twice."""
        source = self.notes_source(notes_from)
        decoded = self.decode_chunks(Chunks(prepared, self.audio_cfg.chunk_samples), programs, batch_size, beam,
                                     use_cache, progress, notes_from=source)
        return self.read_notes(decoded, n_samples, programs), len(decoded.tokens)

    def decode_audio(self, audio: np.ndarray, name: str, programs=None, batch_size=None, beam: int = 1,
                     use_cache: bool = True, progress=None, with_rolls: bool = False,
                     notes_from: str | None = None) -> Decoded:
        """16 kHz mono waveform -> the offline chain -> chunks -> decode_chunks."""
        from .data.audio import prepare

        chunks = Chunks(prepare(audio, self.audio_cfg, name), self.audio_cfg.chunk_samples)
        return self.decode_chunks(chunks, programs, batch_size, beam, use_cache, progress, with_rolls=with_rolls,
                                  notes_from=notes_from)

    def read_notes(self, decoded: Decoded, n_samples: int, programs=None):
        """Decoded chunks -> Notes of a file of n_samples: from the heads ("frames"), hybrid when decoded has rolls,
        else the tokens alone."""
        from .tokens.codec import decode_tokens

        duration = n_samples / self.audio_cfg.sample_rate
        if decoded.heads is not None:
            return _clip(read_heads(decoded.heads, self.frame_seconds, self.reading, programs), duration)
        notes, _ = decode_tokens(decoded.tokens, chunk_seconds=self.audio_cfg.chunk_seconds,
                                 time_encoding=self.time_encoding, end_s=duration)
        if decoded.rolls is not None:
            rolls = decoded.rolls.reshape(-1, 2, N_KEYS)  # chunks are back to back: one timeline
            notes = hybrid_notes(rolls[:, 0], rolls[:, 1], self.frame_seconds, notes, programs,
                                 self.onset_threshold, self.frame_threshold)
        return _clip(notes, duration)


class Chunks:
    """A prepared waveform seen as data.audio.chunk would cut it ([n, size] float32, the last chunk zero-padded),
    without the padded copy of the whole file: slicing rows builds only those rows."""

    def __init__(self, audio: np.ndarray, size: int):
        self.audio = np.asarray(audio, dtype=np.float32)
        self.size = size

    def __len__(self) -> int:
        return -(-len(self.audio) // self.size)

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(len(self))
        if step != 1:
            raise IndexError("Chunks takes contiguous row slices only")
        out = np.zeros((max(0, stop - start), self.size), dtype=np.float32)
        part = self.audio[start * self.size: stop * self.size]
        out.reshape(-1)[: len(part)] = part
        return out


def _clip(notes, duration: float):
    """The last chunk is zero-padded past the file's end: nothing can start there, nothing lasts past it."""
    notes = notes.select(notes.onset < duration)
    notes.offset[:] = np.minimum(notes.offset, duration)
    return notes


def _threshold(option: str, value: float | None, default: float | None) -> float | None:
    if value is None:
        return default
    if not 0.0 < value < 1.0:
        raise UserError(f"{option} must be between 0 and 1 (a probability), not {value}", exit_code=2)
    return float(value)


def _trim(row: np.ndarray) -> np.ndarray:
    """One generated row -> its ids up to and including the first EOS (PAD after it dropped)."""
    eos = np.flatnonzero(row == vocab.EOS)
    return row[: eos[0] + 1] if len(eos) else row[row != vocab.PAD]


def write_csv(notes, path: Path) -> None:
    """A note list, one row per note, with the instrument's General MIDI name."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["onset_s", "offset_s", "pitch", "velocity", "program", "instrument"])
        for i in range(len(notes)):
            w.writerow([f"{notes.onset[i]:.4f}", f"{notes.offset[i]:.4f}", int(notes.pitch[i]),
                        int(notes.velocity[i]), int(notes.program[i]), gm.program_name(int(notes.program[i]))])


def transcribe(inputs, out, model=None, instruments: str | None = None, device: str = "auto",
               batch_size: int | None = None, beam: int = 1, as_csv: bool = False, plot: bool = False,
               progress: bool = True, notes_from: str | None = None, onset_threshold: float | None = None,
               frame_threshold: float | None = None, drum_threshold: float | None = None,
               min_gap_s: float | None = None, quantize: bool = False) -> TranscribeResult:
    """Transcribe audio files or folders into General MIDI files; a bad file is reported and the rest go on."""
    from tqdm import tqdm

    from .data.audio import load_audio, prepare
    from .tokens.midi import write_midi

    if beam < 1:
        raise UserError(f"--beam must be at least 1, not {beam}", exit_code=2)
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, not {batch_size}", exit_code=2)
    if plot:
        require_matplotlib()  # before the model loads and any file is transcribed
    programs = parse_instruments(instruments)
    files = collect_inputs(inputs)
    outputs = output_paths(files, Path(out))
    check_writable(out, folder=outputs[0] != Path(out))
    pipeline = Pipeline(model, device, onset_threshold, frame_threshold, drum_threshold, min_gap_s, quantize)
    pipeline.notes_source(notes_from)  # a bad --notes fails before any file is read
    result = TranscribeResult()
    bar = None  # made once the first file is read, with its chunk count: never "0chunk [00:00, ?chunk/s]"
    for src, dst in zip(files, outputs):
        try:
            audio = load_audio(src, pipeline.audio_cfg.sample_rate)
            n_samples = len(audio)
            audio = prepare(audio, pipeline.audio_cfg, str(src), reuse=True)  # the raw waveform is let go here
            n_chunks = -(-n_samples // pipeline.audio_cfg.chunk_samples)
            if bar is None:
                bar = tqdm(total=n_chunks, unit="chunk", disable=not progress, file=sys.stderr, dynamic_ncols=True)
            else:
                bar.total += n_chunks  # the total grows as each further file is read
            bar.set_description(src.name)
            notes, _ = pipeline.transcribe_prepared(audio, n_samples, programs, batch_size, beam, progress=bar,
                                                    notes_from=notes_from)
        except UserError as e:
            message = first_line(e)
            reason = message if str(src) in message else f"{src}: {message}"
            result.failed.append((str(src), reason))
            if len(files) > 1:
                tqdm.write(f"mt3ds: skipped {reason}", file=sys.stderr)
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_midi(notes, dst)
        if as_csv:
            write_csv(notes, dst.with_suffix(".csv"))
        if plot:
            write_plot(notes, dst.with_suffix(".png"), src.name)
        result.written.append((str(src), str(dst), len(notes), n_samples / pipeline.audio_cfg.sample_rate))
    if bar is not None:
        bar.close()
    return result
