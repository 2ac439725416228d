"""The shard format, owned here and nowhere else: what a sample and a manifest hold, how each checks and
(de)serializes itself, and the one function that writes a split folder of shards. The real writer (data/shards.py),
the loader, the benches and the test fixtures all go through this module, so a change to the format is made once.

A split folder:

    shard-000000.tar ...   WebDataset tar shards (PAX); each sample is three members, in this order:
                             KEY.audio.npy    float16 [chunk_samples]: the offline chain's output for one chunk
                             KEY.json         SampleMeta: dataset, track_id, chunk, start_s, programs, split, truncated
                             KEY.tokens.npy   int16: the chunk's canonical (delta) token ids, ending with EOS
    manifest.json          Manifest: format, vocabulary and audio versions, the audio config, every shard's name,
                           samples, bytes and sha256, counts, skipped tracks and what made it

KEY is the track id made WebDataset-safe and the chunk number (`sample_key`). Nothing in a shard depends on the
machine or the time (mtime 0, uid 0, mode 644), so the same samples give the same bytes; a shard is the concatenation
of its samples' tar blocks plus the end of archive, which is what lets the writer copy samples between tars as bytes.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .. import __version__
from ..config import AudioConfig
from ..errors import UserError, first_line
from ..files import json_bytes, npy_bytes, npy_load, temp_name, write_bytes_atomic
from ..tokens import vocab
from .records import Skipped, track_key

FORMAT = "mt3ds-shards-v1"  # a manifest's `format`: changes with the layout of a shard; any other is refused
TIME_ENCODING = "delta"  # shards hold the canonical tokens; the loader rewrites them when a model wants absolute
MEMBERS = ("audio.npy", "json", "tokens.npy")  # a sample's tar members, in the order they are written
TAR_FORMAT = tarfile.PAX_FORMAT  # long keys (MAESTRO's file names) need PAX path records; USTAR stops at 100 characters
MANIFEST = "manifest.json"


# ------------------------------------------------------------------------------------------------------------
# names

def sample_key(track_id: str, chunk: int) -> str:
    """A sample's key: the track id made WebDataset-safe (`records.track_key`) and the chunk number, e.g.
    ('2004/a.b', 3) -> '2004_a_b_00003'. WebDataset splits a member's name at its first dot, so a key has none."""
    return f"{track_key(track_id)}_{chunk:05d}"


def part_tag(part: tuple[int, int]) -> str:
    """'' for a whole split, 'part2of4' for the second of four parts (`mt3ds shard --part 2/4`)."""
    return "" if part == (1, 1) else f"part{part[0]}of{part[1]}"


def shard_file_name(k: int, part: tuple[int, int] = (1, 1)) -> str:
    """The k-th shard of a split (or of one part of it): shard-000000.tar, shard-part2of4-000000.tar."""
    tag = part_tag(part)
    return f"shard-{tag + '-' if tag else ''}{k:06d}.tar"


def manifest_file_name(part: tuple[int, int] = (1, 1)) -> str:
    """manifest.json, or manifest.part2of4.json for one part (combined into manifest.json when all are there)."""
    tag = part_tag(part)
    return f"manifest.{tag}.json" if tag else MANIFEST


# ------------------------------------------------------------------------------------------------------------
# one sample

def _is_int(x) -> bool:
    return type(x) is int or isinstance(x, np.integer)  # not bool: JSON's true is no chunk or program number


@dataclass(frozen=True)
class SampleMeta:
    """A sample's `json` member: where its chunk comes from."""

    dataset: str
    """The dataset's name (maestro, slakh, slakh_stems, or a synthetic one's)."""
    track_id: str
    """The track's id in its dataset; the key holds its WebDataset-safe form."""
    chunk: int
    """The chunk's number in its track, from 0."""
    start_s: float
    """Where the chunk starts in the track, in seconds."""
    programs: tuple[int, ...]
    """Every program of the track (0..127, drums 128): the instruments the model is conditioned on."""
    split: str
    """The track's split (train, validation, test, omitted)."""
    truncated: bool
    """The chunk's tokens were cut at the codec's length limit."""

    def __post_init__(self):
        for name in ("dataset", "track_id", "split"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"json: {name} is not a string")
        if not _is_int(self.chunk) or self.chunk < 0:
            raise ValueError(f"json: chunk {self.chunk!r} is not a number >= 0")
        if not isinstance(self.start_s, (int, float)) or isinstance(self.start_s, bool) \
                or not math.isfinite(self.start_s):
            raise ValueError(f"json: start_s {self.start_s!r} is not a number of seconds")
        programs = self.programs
        if not isinstance(programs, (list, tuple)) or \
                not all(_is_int(p) and 0 <= p <= vocab.DRUM_PROGRAM for p in programs):
            raise ValueError("json has no list of programs 0..128")
        if not isinstance(self.truncated, (bool, np.bool_)):
            raise ValueError("json: truncated is not true or false")
        # stored as JSON numbers and a list: a float start and int programs give the same bytes however they came in
        object.__setattr__(self, "chunk", int(self.chunk))
        object.__setattr__(self, "start_s", float(self.start_s))
        object.__setattr__(self, "programs", tuple(int(p) for p in programs))
        object.__setattr__(self, "truncated", bool(self.truncated))

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "track_id": self.track_id, "chunk": self.chunk, "start_s": self.start_s,
                "programs": list(self.programs), "split": self.split, "truncated": self.truncated}

    @classmethod
    def from_dict(cls, d) -> "SampleMeta":
        if not isinstance(d, dict):
            raise ValueError("json is not an object")
        missing = [k for k in ("dataset", "track_id", "chunk", "start_s", "programs", "split", "truncated")
                   if k not in d]
        if missing:
            raise ValueError(f"json lacks {', '.join(missing)}")
        return cls(d["dataset"], d["track_id"], d["chunk"], d["start_s"], d["programs"], d["split"], d["truncated"])

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> "SampleMeta":
        return cls.from_dict(json.loads(data.decode("utf-8")))


@dataclass(frozen=True, eq=False)
class Sample:
    """One sample of a shard: a chunk of audio, its tokens and where it comes from."""

    key: str
    """`sample_key(track_id, chunk)`: the name its members share before the first dot."""
    audio: np.ndarray
    """float16 [chunk_samples]: the offline chain's output for this chunk."""
    tokens: np.ndarray
    """int16: the chunk's canonical (delta) token ids, ending with EOS."""
    meta: SampleMeta
    """The `json` member."""

    def __post_init__(self):
        if not isinstance(self.key, str) or not self.key or "." in self.key:
            raise ValueError(f"key {self.key!r} is empty or holds a dot (WebDataset splits names at the first dot)")
        a = self.audio
        if a.dtype != np.float16 or a.ndim != 1:
            raise ValueError(f"audio.npy is {a.dtype} {a.shape}, expected float16 [samples]")
        ids = self.tokens
        if ids.dtype != np.int16 or ids.ndim != 1 or len(ids) == 0 or ids[-1] != vocab.EOS:
            raise ValueError(f"tokens.npy is {ids.dtype} {ids.shape}, expected int16 ending with EOS")
        if ids.min() < 0 or ids.max() >= vocab.VOCAB_SIZE:
            raise ValueError("tokens.npy holds ids outside the vocabulary")

    def to_members(self) -> dict[str, bytes]:
        """The tar members' bytes by extension, in `MEMBERS` order."""
        return {"audio.npy": npy_bytes(self.audio), "json": self.meta.to_bytes(), "tokens.npy": npy_bytes(self.tokens)}

    def tar_blocks(self) -> bytes:
        return tar_blocks(self.key, self.to_members())

    @classmethod
    def from_members(cls, raw: dict, audio: AudioConfig = AudioConfig()) -> "Sample":
        """A sample from a tar's members grouped by key (`{"__key__": key, ext: bytes}`, as WebDataset and
        `read_tar_samples` give them), checked against AUDIO's chunk length. np.load runs with allow_pickle=False.
        ValueError (or OSError / EOFError from a damaged .npy) when malformed."""
        for member in MEMBERS:
            if member not in raw:
                raise ValueError(f"missing member {member}")
        wav = npy_load(raw["audio.npy"])
        if wav.dtype != np.float16 or wav.shape != (audio.chunk_samples,):
            raise ValueError(f"audio.npy is {wav.dtype} {wav.shape}, expected float16 ({audio.chunk_samples},)")
        return cls(raw["__key__"], wav, npy_load(raw["tokens.npy"]), SampleMeta.from_bytes(raw["json"]))


def tar_blocks(key: str, members: dict[str, bytes]) -> bytes:
    """The tar blocks of one sample's members (header, data, zero padding each), exactly as tarfile writes them in
    `TAR_FORMAT` with nothing that depends on the machine or the time. Takes raw bytes, so tests can store damage."""
    out = []
    for ext, data in members.items():
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
        out += [info.tobuf(TAR_FORMAT, tarfile.ENCODING, "surrogateescape"), data,
                bytes(-len(data) % tarfile.BLOCKSIZE)]
    return b"".join(out)


def end_of_archive(size: int) -> bytes:
    """What tarfile.close() appends after SIZE bytes of members: two zero blocks, then zeros to a whole record."""
    end = size + 2 * tarfile.BLOCKSIZE
    return bytes(end - size + (-end) % tarfile.RECORDSIZE)


def read_tar_samples(path) -> Iterator[dict]:
    """The samples of one tar in order, as `{"__key__": key, ext: bytes}` (members grouped by the name before their
    first dot, as WebDataset groups them). For tools and tests; training reads through WebDataset."""
    with tarfile.open(path, "r") as tar:
        raw = None
        for m in tar:
            if not m.isfile():
                continue
            key, _, ext = m.name.partition(".")
            if raw is None or raw["__key__"] != key:
                if raw is not None:
                    yield raw
                raw = {"__key__": key}
            raw[ext] = tar.extractfile(m).read()
        if raw is not None:
            yield raw


# ------------------------------------------------------------------------------------------------------------
# the manifest

def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


@dataclass(frozen=True)
class ShardEntry:
    """One shard as its split's manifest lists it."""

    name: str
    """The tar's file name in the split folder."""
    samples: int
    """Samples in the tar."""
    sha256: str
    """The tar's sha256 (hex)."""
    bytes: int | None = None
    """The tar's size; None in manifests from before the size was recorded (the old bench and test fixtures)."""
    first_track: int | None = None
    """The index, in the split's track order, of the track of the shard's first sample (where a rebuild starts)."""
    first_chunk: int | None = None
    """The chunk number of the shard's first sample."""
    part: int | None = None
    """In a manifest combined from parts: the part that wrote the shard."""

    def __post_init__(self):
        if not isinstance(self.name, str) or not _plain_name(self.name):
            raise ValueError(f"shard name {self.name!r} is not a file name")
        if self.samples < 0:
            raise ValueError(f"{self.name}: samples {self.samples} < 0")

    def to_dict(self) -> dict:
        d = {"name": self.name, "samples": self.samples, "sha256": self.sha256}
        for k in ("bytes", "first_track", "first_chunk", "part"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ShardEntry":
        opt = {k: None if d.get(k) is None else int(d[k]) for k in ("bytes", "first_track", "first_chunk", "part")}
        return cls(str(d["name"]), int(d["samples"]), str(d["sha256"]), **opt)


def _versions(audio: AudioConfig | None) -> list[tuple[str, str, str]]:
    """(manifest key, this code's value, what it is called) of each version a manifest is checked against."""
    ours = [("format", FORMAT, "shard format")]
    if audio is not None:
        ours += [("vocab_version", vocab.VOCAB_VERSION, "vocabulary"), ("audio_version", audio.version, "audio config"),
                 ("time_encoding", TIME_ENCODING, "time encoding")]
    return ours


@dataclass(frozen=True)
class Manifest:
    """A split folder's manifest.json: what made its shards, and what they hold."""

    dataset: str
    """The dataset's name."""
    split: str
    """The split's name."""
    audio_config: AudioConfig
    """The offline audio chain the samples went through."""
    shards: tuple[ShardEntry, ...]
    """Every shard, in order."""
    tracks: int
    """Tracks that gave samples."""
    hours: float
    """Their audio, in hours."""
    truncated_chunks: int = 0
    """Chunks whose tokens were cut at the codec's length limit."""
    dropped_pitches: int = 0
    """Notes left out for a pitch outside the vocabulary."""
    skipped: tuple[Skipped, ...] = ()
    """Tracks left out, each with the file at fault and why."""
    part: str | None = None
    """'i/N' for the manifest of one part (`--part`); None for a whole split."""
    parts: tuple[str, ...] | None = None
    """In a manifest combined from parts: the part manifests' names; None otherwise (and then not written)."""
    fingerprint: str | None = None
    """The writer's hash of its input and settings (resuming refuses other input); None from the fixtures."""
    inputs: dict | None = None
    """What the fingerprint hashes (settings as they are, each track as a digest), so that a refused re-run can
    name what changed; None from the fixtures, older writers and combined parts (and then not written)."""
    created_by: dict = field(default_factory=dict)
    """What made it: the command and its options (free-form, for people)."""
    format: str = FORMAT
    """The shard format."""
    vocab_version: str = vocab.VOCAB_VERSION
    """The vocabulary of the tokens."""
    audio_version: str = ""
    """`audio_config.version` when written ('' here fills it in)."""
    time_encoding: str = TIME_ENCODING
    """How the tokens count time (always the canonical delta)."""
    code_version: str = __version__
    """The mt3ds version that wrote the shards."""

    def __post_init__(self):
        object.__setattr__(self, "shards", tuple(self.shards))
        object.__setattr__(self, "skipped", tuple(self.skipped))
        if self.parts is not None:
            object.__setattr__(self, "parts", tuple(self.parts))
        if not self.audio_version:
            object.__setattr__(self, "audio_version", self.audio_config.version)
        if not self.dataset or not self.split:
            raise ValueError("dataset and split must be named")
        names = [e.name for e in self.shards]
        if len(set(names)) != len(names):
            raise ValueError("a shard is listed twice")
        if min(self.tracks, self.hours, self.truncated_chunks, self.dropped_pitches) < 0:
            raise ValueError("tracks, hours, truncated_chunks and dropped_pitches must be >= 0")

    @property
    def samples(self) -> int:
        """Samples in the split (n_d of the loader's mixing weights)."""
        return sum(e.samples for e in self.shards)

    @property
    def skipped_count(self) -> int:
        return len(self.skipped)

    def to_dict(self) -> dict:
        d = {"format": self.format, "dataset": self.dataset, "split": self.split,
             "vocab_version": self.vocab_version, "audio_version": self.audio_version,
             "audio_config": self.audio_config.to_dict(), "time_encoding": self.time_encoding,
             "code_version": self.code_version, "shards": [e.to_dict() for e in self.shards], "samples": self.samples,
             "tracks": self.tracks, "hours": self.hours, "truncated_chunks": self.truncated_chunks,
             "dropped_pitches": self.dropped_pitches, "skipped": [s.to_dict() for s in self.skipped],
             "skipped_count": self.skipped_count, "part": self.part, "fingerprint": self.fingerprint,
             "created_by": dict(self.created_by)}
        if self.parts is not None:
            d["parts"] = list(self.parts)
        if self.inputs is not None:
            d["inputs"] = self.inputs
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        """A manifest from its JSON object. Fields that older writers left out (dropped_pitches, part, fingerprint,
        inputs, a shard's bytes and first sample) default; ValueError / KeyError / TypeError when malformed."""
        m = cls(dataset=str(d["dataset"]), split=str(d["split"]), audio_config=AudioConfig.from_dict(d["audio_config"]),
                shards=tuple(ShardEntry.from_dict(e) for e in d["shards"]), tracks=int(d["tracks"]),
                hours=float(d["hours"]), truncated_chunks=int(d["truncated_chunks"]),
                dropped_pitches=int(d.get("dropped_pitches", 0)),
                skipped=tuple(Skipped(str(s["path"]), str(s["reason"])) for s in d["skipped"]),
                part=d.get("part"), parts=None if d.get("parts") is None else tuple(map(str, d["parts"])),
                fingerprint=d.get("fingerprint"), inputs=d.get("inputs"), created_by=dict(d.get("created_by") or {}),
                format=str(d["format"]), vocab_version=str(d["vocab_version"]),
                audio_version=str(d["audio_version"]), time_encoding=str(d["time_encoding"]),
                code_version=str(d["code_version"]))
        for key, derived in (("samples", m.samples), ("skipped_count", m.skipped_count)):
            if int(d[key]) != derived:
                raise ValueError(f"{key} is {d[key]} but the lists add up to {derived}")
        return m

    def to_bytes(self) -> bytes:
        return json_bytes(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes, where, audio: AudioConfig | None = None) -> "Manifest":
        """The one way a manifest is read: DATA, a manifest file's bytes (WHERE names it in messages), parsed and
        checked. Its format must be this code's; with AUDIO, its vocabulary, audio chain (AUDIO's version) and time
        encoding must be too, as training needs. Without AUDIO those are left for the caller to report
        (`mt3ds inspect`, the writer's resume, which compares fingerprints). UserError naming WHERE otherwise."""
        try:
            d = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{where}: unreadable manifest ({first_line(e)})") from None
        if not isinstance(d, dict):
            raise UserError(f"{where}: not a manifest (expected a JSON object)")
        for key, ours, what in _versions(audio):  # versions first: another format may have another structure
            if d.get(key) != ours:
                raise UserError(f"{where}: shards were written with {what} {d.get(key)!r} but this code uses "
                                f"{ours!r}; re-shard the dataset with this version")
        try:
            return cls.from_dict(d)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UserError(f"{where}: malformed manifest ({type(e).__name__}: {first_line(e)})") from None

    @classmethod
    def read(cls, path, audio: AudioConfig | None = None) -> "Manifest":
        """`from_bytes` of a manifest file."""
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise UserError(f"{path}: unreadable manifest ({first_line(e)})") from None
        return cls.from_bytes(data, path, audio)

    def differences(self, audio: AudioConfig) -> list[str]:
        """How this manifest's versions differ from this code's with AUDIO, one phrase each (for `mt3ds inspect`)."""
        theirs = {"format": self.format, "vocab_version": self.vocab_version, "audio_version": self.audio_version,
                  "time_encoding": self.time_encoding}
        return [f"{what} {theirs[key]} differs from this code's {ours}" for key, ours, what in _versions(audio)
                if theirs[key] != ours]


# ------------------------------------------------------------------------------------------------------------
# writing a split folder

@dataclass(frozen=True)
class EncodedSample:
    """A sample as its tar blocks, with its place in the split (what the real writer copies between tars)."""

    track: int
    """The index of its track in the split's track order."""
    chunk: int
    """Its chunk number in the track."""
    blocks: bytes
    """`Sample.tar_blocks()`."""


class ShardWriter:
    """One shard being written under a temporary name (files.temp_name); `finish` syncs it, renames it into place
    and returns its manifest entry. Samples arrive as their tar blocks, so the shard is their concatenation plus the
    end of archive (byte for byte what tarfile writes for the same members), hashed on the way so the sha256 costs
    no second read."""

    def __init__(self, path, first: tuple[int, int] = (0, 0)):
        self.path, self.first = Path(path), first
        self.tmp = temp_name(self.path)
        self.file = open(self.tmp, "wb")
        self.sha, self.size, self.samples = hashlib.sha256(), 0, 0

    def _write(self, data: bytes) -> None:
        self.file.write(data)
        self.sha.update(data)
        self.size += len(data)

    def add(self, blocks: bytes) -> None:
        """Append one sample's tar blocks."""
        self._write(blocks)
        self.samples += 1

    def finish(self) -> ShardEntry:
        self._write(end_of_archive(self.size))
        self.file.flush()
        os.fsync(self.file.fileno())  # on disk before a journal or manifest names it
        self.file.close()
        os.replace(self.tmp, self.path)
        return ShardEntry(self.path.name, self.samples, self.sha.hexdigest(), self.size, *self.first)

    def discard(self) -> None:
        """Drop an unfinished shard (nothing is left under the final name)."""
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def _encoded(samples: Iterable[Sample | EncodedSample]) -> Iterator[EncodedSample]:
    tracks: dict[str, int] = {}  # track id -> index, in order of first appearance
    for s in samples:
        if isinstance(s, Sample):
            s = EncodedSample(tracks.setdefault(s.meta.track_id, len(tracks)), s.meta.chunk, s.tar_blocks())
        yield s


def write_shard_folder(folder, samples: Iterable[Sample | EncodedSample],
                       manifest: Callable[[tuple[ShardEntry, ...]], Manifest], *, max_bytes: int | None = None,
                       max_samples: int | None = None, part: tuple[int, int] = (1, 1),
                       done: Sequence[ShardEntry] = (),
                       on_shard: Callable[[ShardEntry, tuple[int, int] | None], None] | None = None) -> Manifest:
    """Write SAMPLES, in order, as the tar shards of the split folder FOLDER, then its manifest: the Manifest that
    MANIFEST makes from every shard's entry. Each file is written under a temporary name and renamed when complete.

    A new shard starts before a sample that would take the current one past MAX_BYTES (end of archive included) or
    past MAX_SAMPLES samples; a shard always holds at least one. Shards and manifest are named for PART. Shards
    numbering goes on after DONE (those an interrupted run finished, listed first in the manifest). ON_SHARD(entry,
    (track, chunk) of the next shard's first sample, or None after the last) is called as each shard is finished: the
    real writer journals there. Samples given as `Sample` are numbered by track in order of first appearance."""
    if max_bytes is None and max_samples is None:
        raise ValueError("write_shard_folder needs max_bytes or max_samples")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries, writer = list(done), None
    try:
        for s in _encoded(samples):
            if writer is not None and (
                    (max_bytes is not None and writer.size + len(s.blocks) + 2 * tarfile.BLOCKSIZE > max_bytes)
                    or (max_samples is not None and writer.samples >= max_samples)):
                entries.append(writer.finish())
                writer = None
                if on_shard is not None:
                    on_shard(entries[-1], (s.track, s.chunk))
            if writer is None:
                writer = ShardWriter(folder / shard_file_name(len(entries), part), (s.track, s.chunk))
            writer.add(s.blocks)
        if writer is not None:
            entries.append(writer.finish())
            writer = None
            if on_shard is not None:
                on_shard(entries[-1], None)
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    result = manifest(tuple(entries))
    write_bytes_atomic(folder / manifest_file_name(part), result.to_bytes())
    return result
