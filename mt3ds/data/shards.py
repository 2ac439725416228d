"""Aligned (audio chunk, tokens) samples -> WebDataset tar shards and a manifest per split (docs/design.md §4.1-§4.3).

    <out>/<split>/shard-000000.tar ...   samples `{key}.audio.npy` (float16 [32768]), `{key}.json`, `{key}.tokens.npy`
    <out>/<split>/manifest.json          counts, hours, skipped tracks, versions, shard names and sha256
                                         (both in the format that data/samples.py owns and checks)

How a run goes, per split:
  1. The dataset is indexed; the split's tracks are taken in track-id order (`--part i/N` keeps every N-th, from
     the i-th).
  2. Workers process tracks in parallel, one track each at a time (memory: about one track per worker): the offline
     audio chain, the target notes, encode_notes, and the track's samples written to `.work/track-NNNNNN.tar`.
  3. The main process copies those samples, in track order, into shards of at most --shard-size
     (samples.write_shard_folder), so the bytes do not depend on the number of workers. A shard is written under a
     temporary name, synced, renamed, then journaled in `.work/journal.json`.
  4. manifest.json is written last (atomically) and `.work/` removed.

Resume: re-running the same command keeps the finished shards and the finished tracks of `.work/`, and goes on
from the end of the last finished shard. A shard deleted later is rebuilt from its place in the manifest (and
must come out byte-identical). Input or settings that changed since (the manifest's fingerprint) are refused, naming
what changed (the manifest records the fingerprint's inputs: settings, and a digest per track).

Parts (`--part i/N`, N machines, one dataset): part i writes `shard-part{i}of{N}-NNNNNN.tar` and
`manifest.part{i}of{N}.json` into the same split folder, for every split the dataset has (an empty one when the
part gets none of the split's tracks). Whenever a part finishes and all N part manifests are present,
`manifest.json` is written combining them: shard lists in part order, counts summed. With the parts on
different machines, copy the split folders together and run any part again: it finds its shards complete and
writes the combined manifest.

Tracks that cannot be used (unreadable audio, a missing stem, MIDI without notes, MIDI ending more than 1 s after
its audio) are skipped, listed with their path and reason in the manifest, and counted; the run goes on.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import __version__
from ..config import AudioConfig
from ..errors import UserError, first_line
from ..files import atomic_path, json_bytes, write_bytes_atomic
from ..tokens import vocab
from .records import SPLITS, Skipped, TrackRecord
from .samples import (FORMAT, TIME_ENCODING, EncodedSample, Manifest, Sample, SampleMeta, ShardEntry, ShardWriter,
                      end_of_archive, manifest_file_name, read_tar_samples, write_shard_folder)

MAX_LENGTH_MISMATCH_S = 1.0
# Changes whenever the same input and settings give other bytes, so that a re-run refuses what an older writer left
# (v2: the dither is seeded from the audio's samples, no longer from the track id).
WRITER = "mt3ds-shard-writer-v2"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text) -> int:
    """'1GB' -> 10**9, '500MB', '64MiB', '123456' (bytes) -> bytes; UserError otherwise."""
    if isinstance(text, int):
        size = text
    else:
        m = _SIZE.match(str(text))
        if not m or m.group(2).lower() not in _UNITS:
            raise UserError(f"--shard-size: {text!r} is not a size like 1GB, 500MB or 64MiB", exit_code=2)
        size = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if size < 2**16:
        raise UserError(f"--shard-size: {text!r} is smaller than 64 KiB (one sample is ~67 KB)", exit_code=2)
    return size


def parse_part(text) -> tuple[int, int]:
    """'2/4' -> (2, 4): the second of four parts (parts count from 1); None -> (1, 1)."""
    if text is None:
        return 1, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise UserError(f"--part: {text!r} is not i/N with 1 <= i <= N (e.g. 1/4 ... 4/4)", exit_code=2)
    return int(m.group(1)), int(m.group(2))


class BadTrack(Exception):
    """A track that cannot be sharded: reported as (path, reason), counted, and skipped."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


# ------------------------------------------------------------------------------------------------------------
# one track -> its samples (runs in the workers)

def read_target(record: TrackRecord):
    """The track's target notes: the union of its MIDI sources, each with the program/drum flag the record gives."""
    from ..tokens.midi import read_midi
    from ..tokens.notes import Notes

    parts = []
    for src in record.midi_sources:
        notes, _ = read_midi(src.path, program=src.program, is_drum=src.is_drum)
        parts.append(notes)
    return Notes.concat(parts).sorted()


def track_samples(record: TrackRecord, cfg: AudioConfig) -> tuple[list[Sample], dict]:
    """(samples, info) of one track, samples in chunk order. BadTrack for a track that cannot be used (UserError
    from decoding or MIDI reading is turned into one)."""
    from ..tokens.codec import encode_notes
    from .audio import chunk, load_audio, prepare

    def bad(e: UserError, path: str) -> BadTrack:  # "PATH: reason" (the message names the file) -> BadTrack
        head, sep, reason = str(e).partition(": ")
        return BadTrack(head if sep and head != record.track_id else path, reason if sep else str(e))

    try:
        audio = load_audio(record.audio_path, cfg.sample_rate)
    except UserError as e:
        raise bad(e, record.audio_path) from None
    try:
        notes = read_target(record)
    except UserError as e:
        raise bad(e, record.midi_path) from None
    if not len(notes):
        raise BadTrack(record.midi_path, "MIDI has no notes")
    seconds = len(audio) / cfg.sample_rate
    if notes.end > seconds + MAX_LENGTH_MISMATCH_S:
        # Audio longer than its notes is normal (release tails; Slakh stems padded to the mix's length); notes
        # after the audio's end are not: the pair is misaligned or the audio is cut short.
        raise BadTrack(record.midi_path, f"MIDI ends at {notes.end:.2f} s, more than {MAX_LENGTH_MISMATCH_S:g} s "
                                         f"after its audio ({seconds:.2f} s, {record.audio_path})")
    try:
        chunks = chunk(prepare(audio, cfg, record.track_id), cfg)
    except UserError as e:  # NaN or infinite samples: the message names the track id
        raise bad(e, record.audio_path) from None
    del audio
    tokens = encode_notes(notes, n_chunks=len(chunks), chunk_seconds=cfg.chunk_seconds, time_encoding=TIME_ENCODING)
    programs = tuple(sorted({int(p) for p in notes.program}))
    samples = [Sample(f"{record.key}_{i:05d}", chunks[i].astype(np.float16), tokens.chunk(i).astype(np.int16),
                      SampleMeta(record.dataset, record.track_id, i, i * cfg.chunk_samples / cfg.sample_rate, programs,
                                 record.split, bool(tokens.truncated[i])))
               for i in range(len(chunks))]
    info = {"samples": len(samples), "seconds": seconds, "truncated": int(tokens.truncated.sum()),
            "dropped_pitches": int(tokens.dropped_pitches)}
    return samples, info


def _process_track(job) -> dict:
    """Worker: one track -> .work/track-NNNNNN.tar and its result .json (written last: its presence means done)."""
    index, record_dict, work, cfg_dict = job
    record, cfg, work = TrackRecord.from_dict(record_dict), AudioConfig.from_dict(cfg_dict), Path(work)
    result = {"index": index, "track_id": record.track_id, "samples": 0, "seconds": 0.0, "truncated": 0,
              "dropped_pitches": 0, "skip": None}
    try:
        samples, info = track_samples(record, cfg)
    except BadTrack as e:
        result["skip"] = {"path": e.path, "reason": e.reason}
    else:
        result.update(info)
        ranges = []  # each sample's bytes in the tar: copied as they are into a shard, headers and all
        with atomic_path(work / f"track-{index:06d}.tar") as tmp, open(tmp, "wb") as f:
            for s in samples:
                blocks = s.tar_blocks()
                ranges.append([f.tell(), f.tell() + len(blocks)])
                f.write(blocks)
            f.write(end_of_archive(f.tell()))
        result["ranges"] = ranges
    write_bytes_atomic(work / f"track-{index:06d}.json", json_bytes(result))
    return result


# ------------------------------------------------------------------------------------------------------------
# the plan of one split (of one part)

@dataclass
class SplitPlan:
    """What one split's output is made from; its fingerprint guards resuming against changed input or settings."""

    dataset: str
    split: str
    records: list[TrackRecord]
    index_skipped: list[Skipped]
    shard_bytes: int
    part: tuple[int, int]
    cfg: AudioConfig
    created_by: dict = field(default_factory=dict)

    @property
    def manifest_name(self) -> str:
        return manifest_file_name(self.part)

    def inputs(self) -> dict:
        """What the output is made from, as the manifest records it: each setting as it is, each track (its record
        and its files' sizes) as a digest, in order, and the tracks the index skipped."""
        tracks = []
        for r in self.records:
            paths = [r.audio_path, *(s.path for s in r.midi_sources)]
            data = [r.to_dict(), [os.path.getsize(p) if os.path.isfile(p) else None for p in paths]]
            tracks.append([r.track_id, _digest(data)[:16]])
        settings = {"writer": WRITER, "format": FORMAT, "dataset": self.dataset, "split": self.split,
                    "part": f"{self.part[0]}/{self.part[1]}", "shard_size": self.shard_bytes, "audio": self.cfg.version,
                    "vocab": vocab.VOCAB_VERSION, "time_encoding": TIME_ENCODING, "code": __version__}
        return {"settings": settings, "tracks": tracks, "index_skipped": [s.to_dict() for s in self.index_skipped]}


def _digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()


def input_changes(old: dict | None, new: dict) -> list[str]:
    """How the inputs NEW (SplitPlan.inputs) differ from the recorded OLD, one phrase each, for the message that
    refuses a re-run: changed settings with both values, added / gone / changed tracks with a few of their ids."""
    if not isinstance(old, dict):
        return ["it was written by an earlier mt3ds that did not record its inputs"]
    changes = []
    before, now = old.get("settings") or {}, new["settings"]
    for k in [*now, *(k for k in before if k not in now)]:
        if before.get(k) != now.get(k):
            changes.append(f"{k} {before.get(k)} -> {now.get(k)}")
    before, now = dict(map(tuple, old.get("tracks") or [])), dict(map(tuple, new["tracks"]))
    for what, ids in (("added", [t for t in now if t not in before]), ("gone", [t for t in before if t not in now]),
                      ("changed (record or file size)", [t for t in now if t in before and before[t] != now[t]])):
        if ids:
            changes.append(f"{len(ids)} track(s) {what}: {', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''}")
    if not changes and [t for t, _ in old.get("tracks") or []] != [t for t, _ in new["tracks"]]:
        changes.append("the tracks' order")
    if old.get("index_skipped") != new["index_skipped"]:
        changes.append("the tracks the index skipped")
    return changes or ["the fingerprint differs"]


# ------------------------------------------------------------------------------------------------------------
# one split: workers -> per-track tars -> shards in track order

class _SplitRun:
    def __init__(self, plan: SplitPlan, split_dir: Path, pool, progress: bool):
        self.plan, self.dir, self.pool, self.progress = plan, split_dir, pool, progress
        self.work = split_dir / ".work"
        self.inputs = plan.inputs()
        self.fingerprint = _digest(self.inputs)
        self.bar = None
        self.seconds_done = 0.0
        self.started = time.perf_counter()

    # -- per-track results -------------------------------------------------------------------------------------
    def _result_path(self, i: int) -> Path:
        return self.work / f"track-{i:06d}.json"

    def _tar_path(self, i: int) -> Path:
        return self.work / f"track-{i:06d}.tar"

    def _done(self, i: int) -> dict | None:
        p = self._result_path(i)
        if not p.is_file():
            return None
        result = json.loads(p.read_text(encoding="utf-8"))
        if result["samples"] and not self._tar_path(i).is_file():
            return None  # merged and deleted earlier; needed again for a rebuild
        return result

    def _tracks(self, first: int, last: int):
        """(index, result) for tracks first..last-1 in order, processing the missing ones in the workers."""
        done = {i: self._done(i) for i in range(first, last)}
        todo = [i for i in range(first, last) if done[i] is None]
        cfg = self.plan.cfg.to_dict()
        jobs = [(i, self.plan.records[i].to_dict(), str(self.work), cfg) for i in todo]
        results = self.pool.imap(_process_track, jobs) if self.pool is not None else map(_process_track, jobs)
        for i in range(first, last):
            result = done[i] if done[i] is not None else next(results)
            self._advance(result)
            yield i, result

    def _samples(self, first: tuple[int, int], last: int):
        """EncodedSamples from sample FIRST = (track, chunk) to the end of track LAST-1."""
        for i, result in self._tracks(first[0], last):
            if not result["samples"]:
                continue
            with open(self._tar_path(i), "rb") as f:
                for c, (a, b) in enumerate(result["ranges"]):
                    if i > first[0] or c >= first[1]:
                        f.seek(a)
                        yield EncodedSample(i, c, f.read(b - a))

    def _advance(self, result: dict) -> None:
        if self.bar is None:
            return
        self.seconds_done += result["seconds"]
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        hours = self.seconds_done / 3600
        self.bar.set_postfix_str(f"{hours:.2f} h audio, {hours / elapsed:.3f} h/s", refresh=False)
        self.bar.update(1)

    # -- shards --------------------------------------------------------------------------------------------------
    def _journal_shard(self, entry: ShardEntry, nxt: tuple[int, int], journal: dict) -> None:
        journal["shards"].append(entry.to_dict())
        journal["next"] = list(nxt)
        write_bytes_atomic(self.work / "journal.json", json_bytes(journal))
        for i in range(entry.first_track, nxt[0]):  # tracks whose every sample now sits in finished shards
            self._tar_path(i).unlink(missing_ok=True)

    def _intact(self, entry: ShardEntry) -> bool:
        p = self.dir / entry.name
        return p.is_file() and p.stat().st_size == entry.bytes

    def _rebuild(self, entries: list[ShardEntry], k: int) -> None:
        """Rewrite shard k from its recorded first sample; it must come out as recorded."""
        e = entries[k]
        if k + 1 < len(entries):  # up to the next shard's first sample
            last = entries[k + 1].first_track + (1 if entries[k + 1].first_chunk else 0)
        else:
            last = len(self.plan.records)
        writer = ShardWriter(self.dir / e.name, (e.first_track, e.first_chunk))
        for s in self._samples((e.first_track, e.first_chunk), last):
            if writer.samples < e.samples:  # read on to the end: no worker is left writing into .work
                writer.add(s.blocks)
        got = writer.finish()
        for i in range(e.first_track, last):
            self._tar_path(i).unlink(missing_ok=True)
        if got.sha256 != e.sha256:
            raise UserError(f"{self.dir / e.name}: rebuilt shard differs from the one recorded (the input changed "
                            f"since); delete {self.dir} and shard again", exit_code=2)

    # -- the run -------------------------------------------------------------------------------------------------
    def _open_work(self) -> dict:
        """The journal of an unfinished run with this fingerprint, or a fresh one."""
        plan_file = self.work / "plan.json"
        if self.work.is_dir() and plan_file.is_file():
            old = json.loads(plan_file.read_text(encoding="utf-8"))
            if old.get("fingerprint") != self.fingerprint:
                raise UserError(f"{self.dir}: holds an unfinished run made from other input or settings "
                                f"({'; '.join(input_changes(old.get('inputs'), self.inputs))}); delete {self.dir} or "
                                f"choose another --out", exit_code=2)
            journal_file = self.work / "journal.json"
            if journal_file.is_file():
                return json.loads(journal_file.read_text(encoding="utf-8"))
        else:
            self.work.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(plan_file, json_bytes({"fingerprint": self.fingerprint, "inputs": self.inputs}))
        return {"shards": [], "next": [0, 0]}

    def run(self) -> tuple[Manifest, str]:
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob("*.tmp"):  # a shard or manifest cut off by an interruption
            stale.unlink()
        manifest_path = self.dir / self.plan.manifest_name
        if manifest_path.is_file():
            manifest = Manifest.read(manifest_path)  # versions are in the fingerprint, compared next
            if manifest.fingerprint != self.fingerprint:
                raise UserError(f"{manifest_path}: made from other input or settings "
                                f"({'; '.join(input_changes(manifest.inputs, self.inputs))}); delete {self.dir} or "
                                f"choose another --out", exit_code=2)
            missing = [k for k, e in enumerate(manifest.shards) if not self._intact(e)]
            if not missing:
                shutil.rmtree(self.work, ignore_errors=True)  # left by a run cut off right after its manifest
                return manifest, "complete"
            self._open_work()
            with self._progress(None):
                for k in missing:
                    self._rebuild(list(manifest.shards), k)
            shutil.rmtree(self.work)
            return manifest, f"rebuilt {len(missing)} shard(s)"
        journal = self._open_work()
        done = [ShardEntry.from_dict(e) for e in journal["shards"]]
        for k, e in enumerate(done):
            if not self._intact(e):
                self._rebuild(done, k)
        status = "resumed" if done or any(self.work.glob("track-*.json")) else "written"
        n = len(self.plan.records)
        with self._progress(n - journal["next"][0]):
            # the shards after the journaled ones, from the journal's next sample on, each journaled when finished
            manifest = write_shard_folder(
                self.dir, self._samples(tuple(journal["next"]), n), self._manifest, max_bytes=self.plan.shard_bytes,
                part=self.plan.part, done=done,
                on_shard=lambda entry, nxt: self._journal_shard(entry, nxt or (n, 0), journal))
        shutil.rmtree(self.work)
        return manifest, status

    def _progress(self, total: int | None):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="track", desc=f"{self.plan.dataset}/{self.plan.split}",
                        disable=None if self.progress else True, dynamic_ncols=True)
        return self.bar

    def _manifest(self, shards: tuple[ShardEntry, ...]) -> Manifest:
        results = [json.loads(self._result_path(i).read_text(encoding="utf-8"))
                   for i in range(len(self.plan.records))]
        # as the manifest records them (path and reason), so the manifest read back equals this one
        skipped = [*(Skipped(s.path, s.reason) for s in self.plan.index_skipped),
                   *(Skipped(r["skip"]["path"], r["skip"]["reason"]) for r in results if r["skip"])]
        ok = [r for r in results if not r["skip"]]
        p = self.plan
        return Manifest(p.dataset, p.split, p.cfg, shards, tracks=len(ok),
                        hours=round(sum(r["seconds"] for r in ok) / 3600, 6),
                        truncated_chunks=sum(r["truncated"] for r in ok),
                        dropped_pitches=sum(r["dropped_pitches"] for r in ok), skipped=tuple(skipped),
                        part=None if p.part == (1, 1) else f"{p.part[0]}/{p.part[1]}", fingerprint=self.fingerprint,
                        inputs=self.inputs, created_by=p.created_by)


# ------------------------------------------------------------------------------------------------------------
# parts -> one manifest

_COMBINE_KEYS = ("format", "dataset", "split", "vocab_version", "audio_version", "audio_config", "time_encoding",
                 "code_version")


def combine_parts(split_dir: str | Path, n_parts: int) -> Manifest | None:
    """manifest.json from the N part manifests in SPLIT_DIR once all are there (None until then)."""
    split_dir = Path(split_dir)
    paths = [split_dir / manifest_file_name((i, n_parts)) for i in range(1, n_parts + 1)]
    if not all(p.is_file() for p in paths):
        return None
    parts = [Manifest.read(p) for p in paths]
    for p, m in zip(paths[1:], parts[1:]):
        differ = [k for k in _COMBINE_KEYS if getattr(m, k) != getattr(parts[0], k)]
        if differ:
            raise UserError(f"{p}: differs from {paths[0].name} in {', '.join(differ)}; parts must share them",
                            exit_code=2)
    first = parts[0]
    combined = Manifest(
        first.dataset, first.split, first.audio_config,
        shards=tuple(replace(e, part=i) for i, m in enumerate(parts, 1) for e in m.shards),
        tracks=sum(m.tracks for m in parts), hours=round(sum(m.hours for m in parts), 6),
        truncated_chunks=sum(m.truncated_chunks for m in parts), dropped_pitches=sum(m.dropped_pitches for m in parts),
        skipped=tuple(s for m in parts for s in m.skipped), part=None, parts=tuple(p.name for p in paths),
        fingerprint=hashlib.sha256("".join(m.fingerprint or "" for m in parts).encode()).hexdigest(),
        created_by=dict(first.created_by, part=f"1..{n_parts}/{n_parts}"), format=first.format,
        vocab_version=first.vocab_version, audio_version=first.audio_version, time_encoding=first.time_encoding,
        code_version=first.code_version)
    write_bytes_atomic(split_dir / manifest_file_name(), combined.to_bytes())
    return combined


# ------------------------------------------------------------------------------------------------------------
# the command

@dataclass
class SplitSummary:
    """What one split's run did."""

    split: str
    status: str  # written | resumed | complete | rebuilt N shard(s)
    manifest: Manifest
    path: Path


def shard(dataset: str, root, out, splits=None, workers: int = 1, shard_size="1GB", part=None,
          cfg: AudioConfig | None = None, progress: bool = True) -> list[SplitSummary]:
    """`mt3ds shard`: index DATASET under ROOT and write OUT/<split>/ shards and manifest for each split."""
    from .index import index, parse_splits

    cfg = cfg or AudioConfig()
    shard_bytes, (pi, pn) = parse_size(shard_size), parse_part(part)
    if workers < 1:
        raise UserError(f"--workers: {workers} is not a positive number", exit_code=2)
    splits = parse_splits(splits)
    root = Path(root).resolve()
    found = index(dataset, root, splits)
    if not found.records and not found.skipped:
        raise UserError(f"{root}: no {dataset} tracks in the splits {', '.join(splits)}", exit_code=2)
    created_by = {"command": "mt3ds shard", "dataset": dataset, "root": str(root), "splits": list(splits),
                  "shard_size": shard_bytes, "part": f"{pi}/{pn}"}
    plans = []
    for split in splits:
        in_split = [r for r in found.records if r.split == split]
        # an index-time skip belongs to its split (every split when its split was unreadable), and to part 1 only
        skipped = [s for s in found.skipped if s.split in (split, None)]
        if in_split or skipped:
            # a part that gets none of the split's tracks still writes its (empty) part manifest, so that the parts
            # combine into manifest.json whichever part finishes last
            plans.append(SplitPlan(dataset, split, in_split[pi - 1::pn], skipped if pi == 1 else [], shard_bytes,
                                   (pi, pn), cfg, created_by))
    out = Path(out)
    summaries = []
    pool = None
    if workers > 1:
        import multiprocessing as mp

        from . import audio  # noqa: F401  imported before forking, so no worker pays for scipy/symusic again
        from ..tokens import codec, midi  # noqa: F401

        pool = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn").Pool(workers)
    try:
        for plan in plans:
            split_dir = out / plan.split
            manifest, status = _SplitRun(plan, split_dir, pool, progress).run()
            if pn > 1 and combine_parts(split_dir, pn) is not None:
                status += f"; all {pn} parts present: manifest.json written"
            summaries.append(SplitSummary(plan.split, status, manifest, split_dir))
    except BaseException:
        if pool is not None:
            pool.terminate()  # an interruption stops the workers now; the next run resumes
        raise
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return summaries


def summary_lines(summaries: list[SplitSummary]) -> list[str]:
    """The lines `mt3ds shard` prints: one per split, then every skipped track with its reason."""
    lines, skipped = [], []
    for s in summaries:
        m = s.manifest
        lines.append(f"{s.split}: {m.tracks} tracks, {m.samples} samples, {m.hours:.3f} h, {len(m.shards)} shard(s), "
                     f"{m.truncated_chunks} truncated chunk(s), {m.skipped_count} skipped -> {s.path} ({s.status})")
        skipped.extend(m.skipped)
    if skipped:
        lines.append(f"skipped {len(skipped)} track(s):")
        lines.extend(f"  {x.path}: {x.reason}" for x in skipped)
    return lines


# ------------------------------------------------------------------------------------------------------------
# inspect

def _split_dirs(path: Path) -> list[Path]:
    if any(path.glob("manifest*.json")):
        return [path]
    found = [d for d in sorted(path.iterdir()) if d.is_dir() and any(d.glob("manifest*.json"))] \
        if path.is_dir() else []
    if not found:
        raise UserError(f"{path}: no manifest.json here or in its split folders (not a shard folder)")
    order = {s: i for i, s in enumerate(SPLITS)}
    return sorted(found, key=lambda d: (order.get(d.name, len(order)), d.name))


def _manifests(split_dir: Path) -> list[tuple[Path, Manifest]]:
    main = split_dir / manifest_file_name()
    paths = [main] if main.is_file() else sorted(split_dir.glob("manifest.part*.json"))
    return [(p, Manifest.read(p)) for p in paths]  # versions unchecked: inspect reports them instead


def find_sample(path, key: str) -> tuple[Manifest, Sample]:
    """(manifest, sample) of the sample KEY in the shards under PATH; UserError when absent or malformed."""
    example = None
    for split_dir in _split_dirs(Path(path)):
        for _, manifest in _manifests(split_dir):
            for entry in manifest.shards:
                shard_path = split_dir / entry.name
                if not shard_path.is_file():
                    continue
                for raw in read_tar_samples(shard_path):
                    example = example or raw["__key__"]
                    if raw["__key__"] == key:
                        try:
                            return manifest, Sample.from_members(raw, manifest.audio_config)
                        except (ValueError, OSError, EOFError) as e:
                            raise UserError(f"{shard_path}: sample {key!r}: {first_line(e)}") from None
    hint = f" (keys look like {example!r})" if example else ""
    raise UserError(f"{path}: no sample {key!r} in its shards{hint}")


def inspect(path, sample: str | None = None, wav=None, midi=None) -> list[str]:
    """`mt3ds inspect`: the manifests' summary; with SAMPLE, that sample's metadata and tokens, its audio written
    to WAV (pre-emphasis undone, so it sounds as recorded) and its tokens decoded to MIDI (tied notes start at the
    sample's start), both from time 0 so they line up when played together."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such folder")
    if (wav or midi) and not sample:
        raise UserError("--wav/--midi: name the sample with --sample KEY")
    lines = []
    for split_dir in _split_dirs(path):
        for mpath, m in _manifests(split_dir):
            notes = m.differences(AudioConfig())
            missing = [e.name for e in m.shards if not (split_dir / e.name).is_file()]
            if missing:
                notes.append(f"{len(missing)} shard(s) missing: {', '.join(missing[:3])}")
            lines.append(f"{mpath}: {m.dataset}/{m.split}: {m.tracks} tracks, {m.samples} samples, {m.hours:.3f} h, "
                         f"{len(m.shards)} shard(s), {m.truncated_chunks} truncated chunk(s), {m.skipped_count} "
                         f"skipped")
            lines.extend(f"  note: {n}" for n in notes)
            lines.extend(f"  skipped {s.path}: {s.reason}" for s in m.skipped[:20])
    if sample:
        lines.extend(_inspect_sample(path, sample, wav, midi))
    return lines


def _inspect_sample(path: Path, key: str, wav, midi) -> list[str]:
    from ..tokens.codec import decode_tokens, event_names

    manifest, s = find_sample(path, key)
    audio, tokens, cfg = s.audio, s.tokens, manifest.audio_config
    notes, stats = decode_tokens([tokens.astype(np.int64)], chunk_seconds=cfg.chunk_seconds,
                                 time_encoding=manifest.time_encoding, tie_starts_notes=True)
    lines = [f"sample {key}: {json.dumps(s.meta.to_dict(), sort_keys=True)}",
             f"  audio {audio.dtype} {list(audio.shape)}, peak {float(np.abs(audio.astype(np.float32)).max()):.3f}; "
             f"{len(tokens)} tokens, {len(notes)} notes decoded, {stats.malformed} malformed",
             "  tokens: " + " ".join(event_names(tokens[:48].astype(np.int64))) + (" ..." if len(tokens) > 48 else "")]
    if wav:
        import soundfile as sf

        from .audio import de_emphasis

        with atomic_path(wav) as tmp:
            sf.write(str(tmp), np.clip(de_emphasis(audio.astype(np.float32), cfg.pre_emphasis), -1, 1),
                     cfg.sample_rate, subtype="PCM_16", format="WAV")
        lines.append(f"  wrote {wav}")
    if midi:
        from ..tokens.midi import write_midi

        write_midi(notes, midi)
        lines.append(f"  wrote {midi}")
    return lines
