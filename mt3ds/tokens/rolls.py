"""The note heads' rolls: notes -> per-class rolls (training targets) and rolls -> notes, instruments and drums
(`transcribe --notes frames`, no decoding).

The heads (model/heads.py) read the encoder's memory and write, per frame (one log-mel hop, 8 ms):
    onset, frame, offset   [frames, GROUPS, N_KEYS]  group 0: any pitched instrument; group 1 + c: class c
    drums                  [frames, N_DRUM_CLASSES]  drum onsets per drum class
    programs               [frames, 128]             which General MIDI programs sound (multi-label)

Instrument classes. MIDI's 16 families, merged where the families sound alike or are rare in any corpus, the way
Slakh's and YourMT3's classes merge them: strings with ensembles (bowed strings, string sections, choirs), synth pads
with synth effects, and ethnic, percussive and sound-effect programs into "other". Twelve classes keep the head
small (13 groups x 3 rolls x 88 keys) and each class has audio in a General MIDI corpus; the program head then names
the program within the class. Drums: nine classes of kits' keys (kick, snare, closed and open hi-hat, low and high
toms, crash, ride, other percussion), written back as each class's most common General MIDI key.

Reading (read_heads): notes come from group 0, the class-agnostic rolls, so a note whose class evidence is split
between two classes is still found once. Peaks of the onset roll above `onset_threshold`, at least `min_gap_s` after
the previous onset of the same key (a re-struck stub 30 ms after a note is the same note); the onset time is refined
within the frame by a parabola through the peak and its neighbours, then moved by `onset_shift_s`. A note ends where
the frame roll drops to `frame_threshold`, at an offset peak above `offset_threshold`, or at the key's next onset.
Each note then takes the class whose frame roll is strongest over its span, weighted by the class's share of the
file's notes, repeated until stable (one instrument whose evidence flickers between two classes ends in the
dominant one; choose_classes), classes with
fewer than `min_track_notes` notes give their notes to the next best class, and each class takes the one program its
frames vote for over the whole file: one instrument, one track (with `program_split` > 0 a class keeps each of
its programs whose votes come close to its top one's, and its notes split between them by their frames' program
probabilities). `--instruments` masks the classes and programs it
does not list (drums included), and since the list says which classes sound, each note then takes its own best
listed class (no share weighting, no smallest track); two listed programs of one class (violin and cello) split
that class's notes by their program probabilities over each note.

Memory for long files: the class-agnostic rolls are kept as float16 (3 x 88 per frame, 240 MB per hour), each in
one array allocated for the whole file up front (Rows); of the class rolls only the cells where some note sounds
are kept, as uint8 (ClassEvidence; a note's class sums come from one class's cumulative sums at a time); programs
are summed as they come, and kept per frame (uint8) only for a listed --instruments set or a reading with
program_split.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

from ..config import AudioConfig, FeatureConfig
from . import vocab
from .frames import LOWEST_PITCH, N_KEYS, frame_seconds

if TYPE_CHECKING:
    import numpy as np

    from .notes import Notes

# (name, first program, last program) per pitched class
CLASSES: tuple[tuple[str, int, int], ...] = (
    ("piano", 0, 7), ("chromatic_percussion", 8, 15), ("organ", 16, 23), ("guitar", 24, 31), ("bass", 32, 39),
    ("strings", 40, 55), ("brass", 56, 63), ("reed", 64, 71), ("pipe", 72, 79), ("synth_lead", 80, 87),
    ("synth_pad", 88, 103), ("other", 104, 127),
)
N_CLASSES = len(CLASSES)
GROUPS = 1 + N_CLASSES  # group 0 is every pitched class at once
N_PROGRAMS = 128
# (name, GM key written back, GM keys of the class); keys not listed are "percussion"
DRUM_CLASSES: tuple[tuple[str, int, tuple[int, ...]], ...] = (
    ("kick", 36, (35, 36)), ("snare", 38, (37, 38, 39, 40)), ("hihat_closed", 42, (42, 44)),
    ("hihat_open", 46, (46,)), ("tom_low", 45, (41, 43, 45)), ("tom_high", 48, (47, 48, 50)),
    ("crash", 49, (49, 52, 55, 57)), ("ride", 51, (51, 53, 59)), ("percussion", 54, ()),
)
N_DRUM_CLASSES = len(DRUM_CLASSES)
DRUM_VELOCITY = 100
NOTE_VELOCITY = 80


def class_of_program(program: int) -> int:
    """Pitched class index (0..N_CLASSES - 1) of a General MIDI program 0..127."""
    for c, (_, lo, hi) in enumerate(CLASSES):
        if lo <= program <= hi:
            return c
    raise ValueError(f"program {program} is not a pitched General MIDI program (0..127)")


def _drum_table() -> list[int]:
    table = [N_DRUM_CLASSES - 1] * 128
    for d, (_, _, keys) in enumerate(DRUM_CLASSES):
        for k in keys:
            table[k] = d
    return table


DRUM_CLASS_OF_KEY = _drum_table()
PROGRAM_CLASS = [class_of_program(p) for p in range(N_PROGRAMS)]


# ----------------------------------------------------------------------------------------------------------------
# notes -> rolls: the heads' training targets

def head_targets(ids: np.ndarray, features: FeatureConfig = FeatureConfig(),
                 audio: AudioConfig = AudioConfig()) -> dict[str, np.ndarray]:
    """One chunk's canonical (delta) ids -> uint8 targets: onset, frame, offset [frames, GROUPS, N_KEYS], drums
    [frames, N_DRUM_CLASSES], programs [frames, 128].

    Frame t covers [t, t + 1) * frame_seconds. A note tied in from the previous chunk has no onset here; a note still
    sounding at the chunk's end has no offset here; frame rolls cover every frame a note overlaps."""
    import numpy as np

    from .codec import decode_tokens

    frame_s = frame_seconds(features, audio)
    n = features.frames
    started, _ = decode_tokens([ids], chunk_seconds=audio.chunk_seconds)
    sounding, _ = decode_tokens([ids], chunk_seconds=audio.chunk_seconds, tie_starts_notes=True)
    out = {"onset": np.zeros((n, GROUPS, N_KEYS), np.uint8), "frame": np.zeros((n, GROUPS, N_KEYS), np.uint8),
           "offset": np.zeros((n, GROUPS, N_KEYS), np.uint8), "drums": np.zeros((n, N_DRUM_CLASSES), np.uint8),
           "programs": np.zeros((n, N_PROGRAMS), np.uint8)}
    table = np.asarray(PROGRAM_CLASS + [0])  # drums never reach it

    def frame_of(seconds):
        return np.floor(np.asarray(seconds) / frame_s + 1e-6).astype(np.int64)

    drums = started.select(started.is_drum)
    t = frame_of(drums.onset)
    ok = (t >= 0) & (t < n)
    out["drums"][t[ok], np.asarray(DRUM_CLASS_OF_KEY)[drums.pitch[ok]]] = 1

    started = started.select(~started.is_drum)
    t = frame_of(started.onset)
    ok = (t >= 0) & (t < n)
    keys, groups = started.pitch[ok] - LOWEST_PITCH, 1 + table[started.program[ok]]
    out["onset"][t[ok], 0, keys] = 1
    out["onset"][t[ok], groups, keys] = 1

    sounding = sounding.select(~sounding.is_drum)
    ends_here = sounding.offset < audio.chunk_seconds - frame_s / 2
    t = frame_of(sounding.offset[ends_here])
    ok = (t >= 0) & (t < n)
    keys = sounding.pitch[ends_here][ok] - LOWEST_PITCH
    groups = 1 + table[sounding.program[ends_here][ok]]
    out["offset"][t[ok], 0, keys] = 1
    out["offset"][t[ok], groups, keys] = 1

    first = np.clip(frame_of(sounding.onset), 0, n)
    stop = np.clip(np.ceil(sounding.offset / frame_s - 1e-6).astype(np.int64), 0, n)  # exclusive
    stop = np.maximum(stop, first)
    keys, groups, programs = sounding.pitch - LOWEST_PITCH, 1 + table[sounding.program], sounding.program
    # +1 at a note's first frame, -1 after its last, summed down the frames: how many notes sound in each cell
    edges = np.zeros((n + 1, GROUPS * N_KEYS + N_PROGRAMS), np.int32)
    for cols in (keys, groups * N_KEYS + keys, GROUPS * N_KEYS + programs):
        np.add.at(edges, (first, cols), 1)
        np.add.at(edges, (stop, cols), -1)
    on = np.cumsum(edges[:-1], axis=0) > 0
    out["frame"][:] = on[:, :GROUPS * N_KEYS].reshape(n, GROUPS, N_KEYS)
    out["programs"][:] = on[:, GROUPS * N_KEYS:]
    return out


# ----------------------------------------------------------------------------------------------------------------
# rolls -> notes

@dataclass(frozen=True)
class ReadSettings:
    """How rolls become notes (chosen on validation data; an exported model carries its own)."""

    onset_threshold: float = 0.5
    """An onset peak must be above this probability."""
    frame_threshold: float = 0.4
    """A note lasts while its frame probability stays above this."""
    offset_threshold: float = 0.6
    """An offset peak above this ends a note."""
    min_gap_s: float = 0.06
    """Shortest time between two onsets of the same key (a later peak inside it is the same note)."""
    onset_shift_s: float = 0.0
    """Added to every onset (a constant latency of the heads)."""
    min_note_s: float = 0.03
    """Shortest note written."""
    drum_threshold: float = 0.5
    """A drum onset peak must be above this probability."""
    min_track_notes: int = 6
    """A class with fewer notes in a file gives them to their next best class (no one-note tracks)."""
    class_prior: float = 1.0
    """Exponent of the file-level class share that weights each note's class evidence (0: notes decide alone)."""
    program_split: float = 0.0
    """A class also writes a second (third, ...) program when that program's file-wide votes reach this share of
    the class's top program's; each of the class's notes then takes the candidate its frames favour (0: one
    program per class)."""

    def __post_init__(self):
        for name in ("onset_threshold", "frame_threshold", "offset_threshold", "drum_threshold"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be between 0 and 1 (a probability), not {value}")
        if self.min_gap_s < 0 or self.min_note_s < 0 or self.min_track_notes < 0 or self.class_prior < 0:
            raise ValueError("min_gap_s, min_note_s, min_track_notes and class_prior must be >= 0")
        if not 0.0 <= self.program_split <= 1.0:
            raise ValueError(f"program_split must be between 0 and 1 (a share of votes), not {self.program_split}")
        if abs(self.onset_shift_s) > 0.2:
            raise ValueError(f"onset_shift_s must be within +-0.2 s, not {self.onset_shift_s}")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict | None) -> "ReadSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in known})

    def replace(self, **changes) -> "ReadSettings":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


class Rows:
    """Rows appended batch by batch into one array: preallocated for `capacity` rows when the total is known, else
    grown by doubling. A long file's rolls then never sit in hundreds of pieces between the batches' temporaries,
    which kept the allocator from reusing their memory (a 30-minute file held ~0.45 GB more than it used; ~0.14 GB
    with one array per roll)."""

    def __init__(self, shape: tuple[int, ...], dtype, capacity: int = 0):
        import numpy as np

        self._buf = np.empty((max(capacity, 0), *shape), dtype)
        self.n = 0

    def append(self, rows: np.ndarray) -> None:
        import numpy as np

        need = self.n + len(rows)
        if need > len(self._buf):
            grown = np.empty((max(need, 2 * len(self._buf), 1024), *self._buf.shape[1:]), self._buf.dtype)
            grown[:self.n] = self._buf[:self.n]
            self._buf = grown
        self._buf[self.n:need] = rows
        self.n = need

    def array(self) -> np.ndarray:
        """The rows so far (a view of the buffer)."""
        return self._buf[:self.n]


class ClassEvidence:
    """The class rolls, kept only where a note may sound: (frame, key) cells whose group-0 frame probability is
    above `floor`, with the 12 class probabilities as uint8. Chunks are added in order."""

    KEY_STRIDE = 1 << 40
    """A cell's id is key * KEY_STRIDE + frame: ids sort by key, then frame (no file has 2**40 frames)."""

    def __init__(self, floor: float = 0.2):
        import numpy as np

        self.floor = floor
        self.frames_seen = 0
        self._ids = Rows((), np.int64)  # cell ids
        self._probs = Rows((N_CLASSES,), np.uint8)  # [cells, N_CLASSES]
        self._is_sorted = True  # cells by id (sorted on first use; ids are unique, so sorting again after more adds
        # gives what sorting everything once would)

    def add(self, any_frame: np.ndarray, class_frame: np.ndarray) -> None:
        """any_frame [frames, N_KEYS], class_frame [frames, N_CLASSES, N_KEYS] probabilities of the next frames."""
        import numpy as np

        t, k = np.nonzero(any_frame > self.floor)
        self._ids.append(k.astype(np.int64) * self.KEY_STRIDE + (t + self.frames_seen))
        self._probs.append(np.round(np.asarray(class_frame[t, :, k], np.float32) * 255).astype(np.uint8))
        self.frames_seen += len(any_frame)
        self._is_sorted = False

    def _sorted(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, their class probabilities [cells, N_CLASSES]), sorted by id in place on first use."""
        import numpy as np

        ids, probs = self._ids.array(), self._probs.array()
        if not self._is_sorted:
            order = np.argsort(ids, kind="stable")
            ids[:] = ids[order]
            probs[:] = probs[order]
            self._is_sorted = True
        return ids, probs

    def per_note(self, start: np.ndarray, end: np.ndarray, key: np.ndarray) -> np.ndarray:
        """Mean class probability over frames [start, end) of each note's key -> float32 [notes, N_CLASSES]."""
        import numpy as np

        if not self._ids.n:
            return np.zeros((len(start), N_CLASSES), np.float32)
        ids, probs = self._sorted()
        base = np.asarray(key, np.int64) * self.KEY_STRIDE
        lo, hi = np.searchsorted(ids, base + start), np.searchsorted(ids, base + end)
        sums = np.empty((len(lo), N_CLASSES), np.int64)
        csum = np.zeros(len(ids) + 1, np.int64)  # one class's sums of the uint8 levels at a time: exact
        for c in range(N_CLASSES):
            np.cumsum(probs[:, c], out=csum[1:])
            sums[:, c] = csum[hi] - csum[lo]
        return (sums / (255.0 * np.maximum(end - start, 1)[:, None])).astype(np.float32)


def peaks(prob: np.ndarray, threshold: float, min_gap: int) -> np.ndarray:
    """bool [frames, columns]: local maxima above threshold (ties go to the first frame), then per column a peak
    closer than min_gap frames after a kept peak is dropped."""
    import numpy as np

    before = np.pad(prob, ((1, 0), (0, 0)), constant_values=-1.0)[:-1]
    after = np.pad(prob, ((0, 1), (0, 0)), constant_values=-1.0)[1:]
    is_peak = (prob > threshold) & (prob > before) & (prob >= after)
    if min_gap <= 1:
        return is_peak
    for col in np.flatnonzero(is_peak.any(axis=0)):
        idx = np.flatnonzero(is_peak[:, col])
        last = -min_gap
        for i in idx:
            if i - last < min_gap:
                is_peak[i, col] = False
            else:
                last = i
    return is_peak


def refine(prob: np.ndarray, t: np.ndarray, col: np.ndarray) -> np.ndarray:
    """Sub-frame position (-0.5..0.5) of each peak: the vertex of the parabola through the peak and its
    neighbours."""
    import numpy as np

    n = len(prob)
    p0 = prob[np.maximum(t - 1, 0), col].astype(np.float64)
    p1 = prob[t, col].astype(np.float64)
    p2 = prob[np.minimum(t + 1, n - 1), col].astype(np.float64)
    curve = p0 - 2 * p1 + p2
    delta = np.where(curve < -1e-9, 0.5 * (p0 - p2) / np.where(curve < -1e-9, curve, -1.0), 0.0)
    return np.clip(delta, -0.5, 0.5)


def onset_notes(onset: np.ndarray, frame: np.ndarray, offset: np.ndarray, seconds: float,
                settings: ReadSettings = ReadSettings()) -> tuple[Notes, np.ndarray, np.ndarray]:
    """Class-agnostic rolls [frames, N_KEYS] -> (pitched Notes with program 0, start frames, end frames)."""
    import numpy as np

    from .notes import Notes

    onset, frame, offset = (np.asarray(r) for r in (onset, frame, offset))
    n = len(onset)
    gap = max(1, int(round(settings.min_gap_s / seconds)))
    is_onset = peaks(onset, settings.onset_threshold, gap)
    is_offset = peaks(offset, settings.offset_threshold, 1)
    min_len = max(1, int(round(settings.min_note_s / seconds)))
    starts, ends, keys = [], [], []
    for key in np.flatnonzero(is_onset.any(axis=0)):
        s = np.flatnonzero(is_onset[:, key])
        # the first frame after the start that is quiet or holds an offset peak (n: none)
        stop = (frame[:, key] <= settings.frame_threshold) | is_offset[:, key]
        next_stop = np.where(stop, np.arange(n), n)
        next_stop = np.append(np.minimum.accumulate(next_stop[::-1])[::-1], n)
        following = np.append(s[1:], n)
        e = np.minimum(next_stop[np.minimum(s + 1, n)], following)
        e = np.maximum(e, np.minimum(s + min_len, following))
        starts.append(s)
        ends.append(np.maximum(e, s + 1))
        keys.append(np.full(len(s), key))
    if not starts:
        return Notes.empty(), np.zeros(0, np.int64), np.zeros(0, np.int64)
    s, e, k = np.concatenate(starts), np.concatenate(ends), np.concatenate(keys)
    onset_s = (s + 0.5 + refine(onset, s, k)) * seconds + settings.onset_shift_s
    onset_s = np.maximum(onset_s, 0.0)
    offset_s = np.maximum(e * seconds, onset_s + seconds)
    order = np.lexsort((k, onset_s))
    notes = Notes(onset_s[order], offset_s[order], k[order] + LOWEST_PITCH, np.full(len(s), NOTE_VELOCITY),
                  np.zeros(len(s)))
    return notes, s[order], e[order]


def choose_classes(evidence: np.ndarray, settings: ReadSettings, allowed: np.ndarray | None = None) -> np.ndarray:
    """Per-note class evidence [notes, N_CLASSES] -> each note's class, decided over the whole file.

    Each note first takes its strongest class; then, until nothing changes, its evidence is weighted by each
    class's share of the file's notes ** class_prior, so a class that holds most of an instrument's notes draws the
    rest of them (evidence flickering between two classes ends in one), while notes whose evidence clearly says
    another class keep it (two instruments stay two). A class left with fewer than min_track_notes notes (but not
    the only class) is dropped and its notes go to their next best class. allowed: bool [N_CLASSES] (--instruments).
    """
    import numpy as np

    if not len(evidence):
        return np.zeros(0, np.int64)
    evidence = np.asarray(evidence, np.float64) + 1e-6  # every class keeps a little, so argmax is defined
    live = np.ones(N_CLASSES, bool) if allowed is None else np.asarray(allowed, bool).copy()
    while True:
        masked = np.where(live, evidence, 0.0)
        choice = np.argmax(masked, axis=1)
        for _ in range(20):  # converges in a few rounds: shares only sharpen
            share = np.bincount(choice, minlength=N_CLASSES) / len(choice)
            new = np.argmax(masked * share ** settings.class_prior, axis=1)
            if np.array_equal(new, choice):
                break
            choice = new
        counts = np.bincount(choice, minlength=N_CLASSES)
        small = live & (counts < settings.min_track_notes)
        if not small.any() or live.sum() - small.sum() < 1:
            return choice
        # drop the smallest class first: its notes may make another small class big enough
        live[np.flatnonzero(small)[np.argmin(counts[small])]] = False


def choose_programs(program_votes: np.ndarray, allowed: list[int] | None = None) -> np.ndarray:
    """Summed program probabilities [N_CLASSES, 128] (each class's frames' votes) -> the program of each class:
    the most voted program of the class, among the --instruments programs of that class when some are listed."""
    import numpy as np

    program_class = np.asarray(PROGRAM_CLASS)
    chosen = np.zeros(N_CLASSES, np.int64)
    listed = set(allowed or [])
    for c in range(N_CLASSES):
        candidates = np.flatnonzero(program_class == c)
        hinted = [p for p in candidates if p in listed]
        if hinted:
            candidates = np.asarray(hinted)
        chosen[c] = candidates[np.argmax(program_votes[c, candidates])]
    return chosen


def drum_notes(drums: np.ndarray, seconds: float, settings: ReadSettings = ReadSettings()) -> Notes:
    """Drum onset probabilities [frames, N_DRUM_CLASSES] -> drum Notes on each class's General MIDI key."""
    import numpy as np

    from .notes import DRUM_SECONDS, Notes

    drums = np.asarray(drums)
    is_hit = peaks(drums, settings.drum_threshold, max(1, int(round(settings.min_gap_s / seconds))))
    t, d = np.nonzero(is_hit)
    onset_s = np.maximum((t + 0.5 + refine(drums, t, d)) * seconds + settings.onset_shift_s, 0.0)
    keys = np.asarray([k for _, k, _ in DRUM_CLASSES])[d]
    n = len(t)
    return Notes(onset_s, onset_s + DRUM_SECONDS, keys, np.full(n, DRUM_VELOCITY),
                 np.full(n, vocab.DRUM_PROGRAM)).sorted()


@dataclass
class HeadRolls:
    """What the heads wrote for one file, accumulated chunk by chunk (RollReader.add)."""

    onset: np.ndarray
    """float16 [frames, N_KEYS], group 0."""
    frame: np.ndarray
    """float16 [frames, N_KEYS], group 0."""
    offset: np.ndarray
    """float16 [frames, N_KEYS], group 0."""
    drums: np.ndarray
    """float16 [frames, N_DRUM_CLASSES]."""
    evidence: ClassEvidence
    """The class frame rolls where notes may sound."""
    program_votes: np.ndarray
    """float64 [N_CLASSES, 128]: per class, program probabilities summed over frames weighted by the class's
    strongest frame probability in that frame."""
    hinted: tuple[int, ...] = ()
    """The programs whose per-frame probabilities were kept (hinted_probs): the --instruments pitched programs, or
    every program when the reading splits classes by program (RollReader keep_programs)."""
    hinted_probs: np.ndarray | None = None
    """uint8 [frames, len(hinted)], probability x 255: so two programs of one class (violin and cello) split its
    notes."""


def _half(a: np.ndarray) -> np.ndarray:
    """a float16 copy: torch converts in vectorised code, numpy element by element (about 20x slower on a strided
    slice, a tenth of a file's transcription time); both round to nearest even, so the values are the same."""
    import numpy as np
    import torch

    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(torch.float16).numpy()


class RollReader:
    """Collects the heads' probabilities chunk batch by chunk batch, then reads the whole file (read())."""

    def __init__(self, hint: list[int] | None = None, keep_programs: bool = False, frames: int = 0):
        """hint: the --instruments list; keep_programs: keep every program's per-frame probabilities (128 bytes a
        frame, 58 MB an hour) for a reading with program_split, when no list is given; frames: the file's frame
        count when known (the rolls are then allocated once)."""
        import numpy as np

        if hint is None and keep_programs:
            hint = list(range(N_PROGRAMS))
        self.hinted = tuple(p for p in (hint or []) if p != vocab.DRUM_PROGRAM)
        self._rows = {name: Rows((N_KEYS,), np.float16, frames) for name in ("onset", "frame", "offset")}
        self._rows["drums"] = Rows((N_DRUM_CLASSES,), np.float16, frames)
        self._rows["hinted"] = Rows((len(self.hinted),), np.uint8, frames if self.hinted else 0)
        self.evidence = ClassEvidence()
        self.program_votes = np.zeros((N_CLASSES, N_PROGRAMS), np.float64)

    def add(self, probs: dict) -> None:
        """probs: the heads' probabilities of consecutive chunks, numpy: onset and offset [chunks, frames, G, N_KEYS]
        (only group 0 is read, so G may be 1), frame [chunks, frames, GROUPS, N_KEYS], drums [chunks, frames,
        N_DRUM_CLASSES], programs [chunks, frames, 128]."""
        import numpy as np

        def flat(a):
            return np.asarray(a).reshape(-1, *np.shape(a)[2:])

        onset, frame, offset = flat(probs["onset"]), flat(probs["frame"]), flat(probs["offset"])
        self._rows["onset"].append(_half(onset[:, 0]))
        self._rows["frame"].append(_half(frame[:, 0]))
        self._rows["offset"].append(_half(offset[:, 0]))
        self._rows["drums"].append(_half(flat(probs["drums"])))
        self.evidence.add(frame[:, 0], frame[:, 1:])
        class_activity = frame[:, 1:].max(axis=2).astype(np.float64)  # [frames, N_CLASSES]
        programs = flat(probs["programs"])
        self.program_votes += class_activity.T @ programs.astype(np.float64)
        if self.hinted:
            kept = np.round(np.asarray(programs[:, list(self.hinted)], np.float32) * 255)
            self._rows["hinted"].append(kept.astype(np.uint8))

    def rolls(self) -> HeadRolls:
        rows = {name: r.array() for name, r in self._rows.items()}
        return HeadRolls(rows["onset"], rows["frame"], rows["offset"], rows["drums"], self.evidence,
                         self.program_votes, self.hinted, rows["hinted"] if self.hinted else None)


def split_candidates(program_votes: np.ndarray, share: float) -> list[int]:
    """The programs a class may split into without a list: per class, those whose file-wide votes reach `share`
    of the class's top program's (the top one included)."""
    import numpy as np

    program_class = np.asarray(PROGRAM_CLASS)
    keep = []
    for c in range(N_CLASSES):
        candidates = np.flatnonzero(program_class == c)
        votes = program_votes[c, candidates]
        if votes.max() > 0:
            keep += candidates[votes >= share * votes.max()].tolist()
    return keep


def _split_programs(chosen: np.ndarray, classes: np.ndarray, start: np.ndarray, end: np.ndarray, rolls: HeadRolls,
                    candidates: list[int], min_notes: int = 0) -> np.ndarray:
    """Where a class has several candidate programs (listed by --instruments, or split_candidates), each of that
    class's notes takes the candidate with the highest mean probability over the note's frames; a candidate left
    with fewer than min_notes notes gives them to the class's most voted one (chosen)."""
    import numpy as np

    kept = {p: i for i, p in enumerate(rolls.hinted)}
    candidates = np.asarray([p for p in candidates if p in kept], np.int64)
    if not len(candidates):
        return chosen
    cols_of = np.asarray([kept[p] for p in candidates])
    cand_class = np.asarray(PROGRAM_CLASS)[candidates]
    chosen = chosen.copy()
    for c in np.unique(cand_class):
        mine = np.flatnonzero(cand_class == c)
        sel = np.flatnonzero(classes == c)
        if len(mine) < 2 or not len(sel):
            continue
        cols = cols_of[mine]
        csum = np.zeros((len(rolls.hinted_probs) + 1, len(cols)), np.int64)  # sums of the uint8 levels: exact, and
        np.cumsum(rolls.hinted_probs[:, cols], axis=0, out=csum[1:])  # one array, not a float copy and a joined one
        mass = csum[end[sel]] - csum[start[sel]]  # [notes, the class's candidates]
        pick = candidates[mine][np.argmax(mass, axis=1)]
        programs, counts = np.unique(pick, return_counts=True)
        small = programs[counts < min_notes]
        pick[np.isin(pick, small)] = chosen[sel][0]  # every note of a class shares its most voted program
        chosen[sel] = pick
    return chosen


def read_heads(rolls: HeadRolls, seconds: float, settings: ReadSettings = ReadSettings(),
               programs: list[int] | None = None) -> Notes:
    """A file's head rolls -> its notes, instruments and drums (see the module docstring); `programs` is the
    --instruments list (None: no hint)."""
    import numpy as np

    from .notes import Notes

    notes, start, end = onset_notes(rolls.onset, rolls.frame, rolls.offset, seconds, settings)
    allowed = None
    if programs is not None:
        allowed = np.zeros(N_CLASSES, bool)
        for p in programs:
            if p != vocab.DRUM_PROGRAM:
                allowed[PROGRAM_CLASS[p]] = True
    if allowed is not None and not allowed.any():
        notes = Notes.empty()  # only drums were listed
    else:
        evidence = rolls.evidence.per_note(start, end, notes.pitch - LOWEST_PITCH)
        if allowed is not None:  # the list says which classes sound: no file-level pull towards the biggest one
            settings = replace(settings, class_prior=0.0, min_track_notes=0)
        classes = choose_classes(evidence, settings, allowed)
        chosen = choose_programs(rolls.program_votes, programs)[classes]
        if rolls.hinted_probs is not None and (programs is not None or settings.program_split > 0):
            candidates, min_notes = ((list(programs), 0) if programs is not None else
                                     (split_candidates(rolls.program_votes, settings.program_split),
                                      settings.min_track_notes))
            chosen = _split_programs(chosen, classes, start, end, rolls, candidates, min_notes)
        notes = Notes(notes.onset, notes.offset, notes.pitch, notes.velocity, chosen)
    parts = [notes]
    if programs is None or vocab.DRUM_PROGRAM in programs:
        parts.append(drum_notes(rolls.drums, seconds, settings))
    return Notes.concat(parts).sorted()

