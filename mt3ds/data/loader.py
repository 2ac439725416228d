"""Shard folders -> training and validation batches (docs/design.md §4): temperature mixing, augmentation, padding.

Training (`train_loader`): one endless stream per DataLoader worker on every rank. Each dataset's shards are
resampled with replacement into a shuffle buffer; the datasets are interleaved sample by sample with weights
n_d^alpha / sum_d n_d^alpha (n_d = samples in the manifest, alpha = 0.7); each sample is augmented; samples are
collated into padded batches inside the worker. Every random choice is seeded from (seed, rank, worker, epoch), so
a run is reproducible and no two workers or ranks read the same stream. No node splitting is needed or done: the
streams are independent draws, which is why WebDataset's default `single_node_only` splitter (it raises when
WORLD_SIZE > 1) is not used. Call `loader.dataset.set_epoch(k)` when re-iterating or resuming so the streams move on.

Validation (`validation_loader`): every shard of every folder once, in order, split by rank and then by worker
(rank r of R takes shards r, r + R, ...; worker w of W takes every W-th of those), no resampling, no shuffle, no
augmentation: each validation sample is read exactly once per pass across all workers and ranks. A worker or rank
left without a shard yields nothing. Rank and world size are resolved once in the main process (torch.distributed
when initialized, else RANK / WORLD_SIZE) and travel with the dataset object into the workers.

Bad input: a folder without manifest.json, a manifest from another vocabulary, audio config or format, a shard listed
but absent, an empty dataset in the mix: UserError before anything is read. A corrupt tar or tar member is skipped
and counted (batch["skipped"], since the worker's previous batch); the first one per process is logged as a warning.

A batch (see `collate`): audio float32 [B, 32768]; tokens, decoder_input, labels int64 [B, T] with T the longest
sequence in the batch; attention_mask bool [B, T]; instruments bool [B, 129]; with aux_frame_loss, frame_onsets and
frame_active float32 [B, 256, 88]; keys, meta (each sample's json) and skipped for bookkeeping.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..config import AudioConfig
from ..errors import UserError, first_line
from ..tokens import vocab
from ..tokens.codec import quantize_velocities, to_absolute
from ..tokens.frames import frame_targets
from ..tokens.rolls import head_targets
from .augment import Augmenter
from .loader_config import LoaderConfig
from .samples import MANIFEST, Manifest, Sample

IGNORE_INDEX = -100  # labels at PAD positions: ignored by cross-entropy
N_INSTRUMENTS = vocab.DRUM_PROGRAM + 1  # programs 0..127 and drums as 128

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Manifests

@dataclass(frozen=True)
class ShardSet:
    """One dataset split's shards, as its manifest.json describes them."""

    folder: str
    dataset: str
    split: str
    urls: tuple[str, ...]  # shard paths, in manifest order, shards that hold no sample left out
    samples: int  # chunks in the split (n_d of the mixing weights)


PIPE = "pipe:"


def _read_remote(spec: str, name: str) -> bytes:
    """Run a `pipe:` folder spec's command for one file name and return its standard output."""
    import subprocess

    cmd = spec[len(PIPE):].replace("{}", name)
    done = subprocess.run(cmd, shell=True, capture_output=True, timeout=300)
    if done.returncode != 0:
        msg = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise UserError(f"{spec}: fetching {name} failed (exit {done.returncode}{': ' + msg[-1] if msg else ''})")
    return done.stdout


def read_manifest(folder, audio: AudioConfig = AudioConfig()) -> ShardSet:
    """Check a shard folder's manifest.json against this code's vocabulary, audio config and format
    (`Manifest.from_bytes`), and that every shard it lists is there.

    `folder` is a local folder, or a WebDataset `pipe:` command with `{}` where a file name goes, for shards on
    object storage: `pipe:aws s3 cp s3://bucket/slakh/train/{} -` reads the manifest through the command and streams
    each shard the same way. A ShardSet already read is returned as it is, so a caller that checked its folders
    first can hand the loader the result instead of making it fetch every manifest again."""
    if isinstance(folder, ShardSet):
        return folder
    remote = str(folder).startswith(PIPE)
    if remote:
        if "{}" not in str(folder):
            raise UserError(f"{folder}: a pipe: shard folder needs {{}} where the file name goes, e.g. "
                            f"'pipe:aws s3 cp s3://bucket/train/{{}} -'")
        path = str(folder).replace("{}", MANIFEST)
        data = _read_remote(str(folder), MANIFEST)
    else:
        folder = Path(folder)
        path = folder / MANIFEST
        if not folder.is_dir():
            raise UserError(f"{folder}: not a folder of shards")
        if not path.is_file():
            raise UserError(f"{folder}: no manifest.json, so not a shard folder (shards are written by `mt3ds shard`)")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise UserError(f"{path}: unreadable manifest ({first_line(e)})") from None
    m = Manifest.from_bytes(data, path, audio)
    urls = []
    for e in m.shards:
        if e.samples <= 0:
            continue
        if remote:  # WebDataset opens pipe: URLs itself, streaming the command's output
            urls.append(str(folder).replace("{}", e.name))
            continue
        shard = folder / e.name
        if not shard.is_file():
            raise UserError(f"{shard}: listed in {path} but missing")
        urls.append(str(shard.resolve()))
    return ShardSet(str(folder), m.dataset, m.split, tuple(urls), m.samples if urls else 0)


def mix_weights(samples, alpha: float = 0.7) -> np.ndarray:
    """Temperature-scaled dataset weights: n_d^alpha / sum_d n_d^alpha (docs/design.md §4.5)."""
    n = np.asarray(samples, dtype=np.float64)
    w = n ** alpha
    return w / w.sum()


# ----------------------------------------------------------------------------------------------------------------
# Samples

def decode_sample(raw: dict, audio: AudioConfig = AudioConfig()) -> dict:
    """A tar sample (bytes per member) -> key, audio float16 [32768], tokens int16 EOS-terminated, meta dict, checked
    as `Sample.from_members` checks it (np.load with allow_pickle=False: WebDataset's own npy decoder is not used).
    Raises ValueError if malformed."""
    s = Sample.from_members(raw, audio)
    return {"key": s.key, "audio": s.audio, "tokens": s.tokens, "meta": s.meta.to_dict()}


_warned = False  # one warning per process for bad data; the rest are counted in batches


class _Skips:
    """Counts unreadable shards and samples in one worker; gives up on a dataset that yields only bad data."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row, self.since_batch, self.total = limit, 0, 0, 0

    def bad(self, where: str, why) -> None:
        global _warned
        self.in_a_row += 1
        self.since_batch += 1
        self.total += 1
        if not _warned:
            _warned = True
            log.warning("%s: skipped (%s); later bad samples are only counted (batch['skipped'])", where, why)
        if self.in_a_row >= self.limit:
            raise UserError(f"{where}: {self.in_a_row} unreadable samples or shards in a row; last: {why}")

    def good(self) -> None:
        self.in_a_row = 0

    def handler(self, exn: Exception) -> bool:
        """WebDataset error handler (tar open/read/grouping): count and go on."""
        where = next((a for a in reversed(exn.args) if isinstance(a, str) and a.endswith(".tar")), "shard")
        self.bad(where, f"{type(exn).__name__}: {exn.args[0] if exn.args else ''}")
        return True

    def take(self) -> int:
        n, self.since_batch = self.since_batch, 0
        return n


def _decode_stage(skips: _Skips):
    def stage(raw_samples):
        for raw in raw_samples:
            try:
                sample = decode_sample(raw)
            except (ValueError, KeyError, TypeError, OSError, EOFError) as e:
                skips.bad(f"{raw.get('__url__', 'shard')}:{raw.get('__key__', '?')}", f"{type(e).__name__}: {e}")
                continue
            skips.good()
            yield sample
    return stage


# ----------------------------------------------------------------------------------------------------------------
# Batches

def collate(samples: list[dict], time_encoding: str = "absolute", aux_frame_loss: bool = False,
            velocity_bins: int | None = None, note_heads: bool = False) -> dict:
    """Decoded samples -> one batch of tensors, tokens padded to the longest sequence in the batch.

    decoder_input is the tokens shifted right behind PAD (PAD is the decoder's start token, T5/MT3); labels are the
    tokens with IGNORE_INDEX at padding; attention_mask is True on the first len(tokens) positions of both.
    """
    b = len(samples)
    ids = [to_absolute(s["tokens"]) if time_encoding == "absolute" else s["tokens"] for s in samples]
    if velocity_bins is not None:
        ids = [quantize_velocities(x, velocity_bins) for x in ids]
    lengths = np.array([len(x) for x in ids])
    tokens = np.full((b, int(lengths.max())), vocab.PAD, dtype=np.int64)
    for i, x in enumerate(ids):
        tokens[i, :len(x)] = x
    mask = np.arange(tokens.shape[1])[None, :] < lengths[:, None]  # [B, T]
    decoder_input = np.full_like(tokens, vocab.PAD)
    decoder_input[:, 1:] = tokens[:, :-1]
    instruments = np.zeros((b, N_INSTRUMENTS), dtype=bool)
    for i, s in enumerate(samples):
        instruments[i, s["meta"]["programs"]] = True
    batch = {
        "audio": torch.from_numpy(np.stack([s["audio"] for s in samples]).astype(np.float32)),  # [B, samples]
        "tokens": torch.from_numpy(tokens),
        "decoder_input": torch.from_numpy(decoder_input),
        "labels": torch.from_numpy(np.where(mask, tokens, IGNORE_INDEX)),
        "attention_mask": torch.from_numpy(mask),
        "instruments": torch.from_numpy(instruments),
        "keys": [s["key"] for s in samples],
        "meta": [s["meta"] for s in samples],
    }
    if aux_frame_loss:
        rolls = [frame_targets(s["tokens"]) for s in samples]  # from the canonical delta tokens
        batch["frame_onsets"] = torch.from_numpy(np.stack([r[0] for r in rolls]))  # [B, 256, 88]
        batch["frame_active"] = torch.from_numpy(np.stack([r[1] for r in rolls]))
    if note_heads:
        targets = [head_targets(s["tokens"]) for s in samples]  # uint8, from the canonical delta tokens
        for name in targets[0]:
            batch[f"heads_{name}"] = torch.from_numpy(np.stack([t[name] for t in targets]))
    return batch


def _batches(samples: Iterator[dict], cfg: LoaderConfig, skips: _Skips, partial: bool) -> Iterator[dict]:
    batch = []
    for s in samples:
        batch.append(s)
        if len(batch) == cfg.batch_size:
            yield _collated(batch, cfg, skips)
            batch = []
    if batch and partial:
        yield _collated(batch, cfg, skips)


def _collated(batch, cfg, skips):
    out = collate(batch, cfg.time_encoding, cfg.aux_frame_loss, cfg.velocity_bins, cfg.note_heads)
    out["skipped"] = skips.take()
    return out


# ----------------------------------------------------------------------------------------------------------------
# Streams

def node_rank() -> tuple[int, int]:
    """(rank, world size): from torch.distributed when initialized, else RANK / WORLD_SIZE, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise UserError(f"RANK={os.environ.get('RANK')!r} WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}: "
                        f"not integers") from None
    if not 0 <= rank < world:
        raise UserError(f"RANK={rank} WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE")
    return rank, world


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _seeds(*entropy: int, n: int) -> list[int]:
    """n independent 31-bit seeds from the given integers (numpy SeedSequence)."""
    return [int(s.generate_state(1)[0] >> 1) for s in np.random.SeedSequence(list(entropy)).spawn(n)]


def interleave(streams: list[Iterator], weights: np.ndarray, rng: np.random.Generator) -> Iterator:
    """Sample-level mixing that keeps every prefix of the output within about one sample per dataset of the target
    shares (smooth weighted round-robin: each step every dataset earns its weight in credit, the richest is drawn and
    pays 1). The starting credit is random so workers do not draw in step; which sample comes next from a dataset is
    random already (resampled shards and the shuffle buffer)."""
    credit = rng.random(len(weights))
    while True:
        credit += weights
        d = int(np.argmax(credit))
        credit[d] -= 1.0
        yield next(streams[d])


class TrainStream(IterableDataset):
    """Endless training batches mixed from one or more shard folders (one per dataset)."""

    def __init__(self, folders, cfg: LoaderConfig = LoaderConfig(), rank: int | None = None,
                 world_size: int | None = None):
        folders = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders)
        if not folders:
            raise UserError("no shard folders given to train on")
        self.sets = [f if isinstance(f, ShardSet) else read_manifest(f) for f in folders]  # or read by the caller
        for s in self.sets:
            if s.samples == 0:
                raise UserError(f"{s.folder}: dataset {s.dataset!r} split {s.split!r} holds no samples; "
                                f"it cannot be mixed (leave it out)")
        self.cfg = cfg
        self.weights = mix_weights([s.samples for s in self.sets], cfg.mix_alpha)
        self.rank, self.world_size = node_rank() if rank is None else (rank, world_size or 1)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Move every stream on (call before re-iterating, and with the step count when resuming)."""
        self.epoch = int(epoch)

    def _dataset_stream(self, s: ShardSet, shard_seed: int, shuffle_seed: int, skips: _Skips):
        cfg = self.cfg
        return iter(wds.DataPipeline(
            # shard paths drawn with replacement, seeded per (seed, rank, worker, epoch, dataset)
            wds.ResampledShards(list(s.urls), seed=shard_seed, worker_seed=lambda: 0, deterministic=True),
            # tar members grouped into samples by key; an unreadable shard is counted and skipped
            wds.tarfile_to_samples(handler=skips.handler),
            # a buffer shuffling samples across the shards being read (still raw bytes: cheap to hold)
            wds.shuffle(cfg.shuffle_buffer, initial=cfg.shuffle_initial, seed=shuffle_seed),
            # bytes -> arrays with allow_pickle=False; a malformed sample is counted and skipped
            _decode_stage(skips),
        ))

    def __iter__(self):
        cfg = self.cfg
        worker, _ = _worker()
        n = len(self.sets)
        mix_seed, aug_seed, *seeds = _seeds(cfg.seed, self.rank, worker, self.epoch, n=2 + 2 * n)
        skips = _Skips(cfg.max_bad_in_a_row)
        # one stream of decoded samples per dataset
        streams = [self._dataset_stream(s, seeds[2 * i], seeds[2 * i + 1], skips) for i, s in enumerate(self.sets)]
        # datasets mixed sample by sample with the temperature weights
        samples = interleave(streams, self.weights, np.random.default_rng(mix_seed))
        # waveform augmentation, deterministic per (seed, rank, worker, epoch)
        if cfg.augment:
            samples = _augmented(samples, Augmenter(cfg.augmentation, aug_seed))
        # padded batches, collated here in the worker
        yield from _batches(samples, cfg, skips, partial=False)


def _augmented(samples, augmenter: Augmenter):
    for s in samples:
        s["audio"] = augmenter(s["audio"])
        yield s


class ValidationStream(IterableDataset):
    """Each sample of the given shard folders exactly once per pass, across workers and ranks; no augmentation."""

    def __init__(self, folders, cfg: LoaderConfig = LoaderConfig(), rank: int | None = None,
                 world_size: int | None = None):
        folders = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders)
        if not folders:
            raise UserError("no validation shard folders given")
        self.sets = [f if isinstance(f, ShardSet) else read_manifest(f) for f in folders]  # or read by the caller
        if sum(s.samples for s in self.sets) == 0:
            raise UserError(f"{', '.join(s.folder for s in self.sets)}: no validation samples")
        self.cfg = cfg
        self.urls = [u for s in self.sets for u in s.urls]
        self.rank, self.world_size = node_rank() if rank is None else (rank, world_size or 1)

    def __iter__(self):
        worker, n_workers = _worker()
        skips = _Skips(self.cfg.max_bad_in_a_row)
        samples = wds.DataPipeline(
            # every shard of every folder, in manifest order
            wds.SimpleShardList(self.urls),
            # this rank's share (shards rank, rank + world, ...), then this worker's share of those
            lambda src: islice(src, self.rank, None, self.world_size),
            lambda src: islice(src, worker, None, n_workers),
            # tar members grouped into samples; an unreadable shard is counted and skipped
            wds.tarfile_to_samples(handler=skips.handler),
            # bytes -> arrays with allow_pickle=False; a malformed sample is counted and skipped
            _decode_stage(skips),
        )
        # padded batches; the last one of each worker may be short
        yield from _batches(iter(samples), self.cfg, skips, partial=True)


def _data_loader(dataset: IterableDataset, cfg: LoaderConfig) -> DataLoader:
    kw = {"batch_size": None, "num_workers": cfg.num_workers,
          "pin_memory": cfg.pin_memory and torch.cuda.is_available()}
    if cfg.num_workers > 0:
        kw["prefetch_factor"] = cfg.prefetch_factor
    return DataLoader(dataset, **kw)


def train_loader(folders, cfg: LoaderConfig = LoaderConfig(), rank: int | None = None,
                 world_size: int | None = None) -> DataLoader:
    """Endless mixed, augmented training batches from shard folders (one per dataset)."""
    return _data_loader(TrainStream(folders, cfg, rank, world_size), cfg)


def validation_loader(folders, cfg: LoaderConfig = LoaderConfig(), rank: int | None = None,
                      world_size: int | None = None) -> DataLoader:
    """One pass over validation shard folders per iteration: every sample exactly once, not augmented."""
    return _data_loader(ValidationStream(folders, cfg, rank, world_size), cfg)
