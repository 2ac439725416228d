"""The music21 corpus as a source of real music: which works, the held-out list, parsing with a timeout, a cache.

A work is parsed once with music21 (repeats expanded; on music21's ExpanderException the repeat marks are stripped
and it is tried again), written as a MIDI file, and cached beside a small JSON of what MIDI cannot say (bar starts,
whether the score marks a tempo). Everything later reads the cached MIDI with symusic in quarter notes.
Nothing here is pickled: music21 is told not to read or write its own pickle cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import UserError, first_line
from ..files import atomic_path, write_text_atomic

PARSE_FORMAT = "mt3ds-synth-parse-v1"  # bump when the cached content changes
HOLDOUT_FILE = Path(__file__).resolve().parent.parent / "assets" / "holdout.txt"

# Folders of the corpus left out by default: demos and exercises are not music to learn from, the folk
# collections are monophonic tune books (one file holds hundreds of tunes), lead sheets carry chord symbols
# that MIDI export does not realize.
EXCLUDED_GROUPS = frozenset({"demos", "theoryExercises", "leadSheet", "essenFolksong", "oneills1850",
                             "ryansMammoth", "airdsAirs", "miscFolk", "nottingham-dataset"})
# When a piece exists in several encodings, the first of these wins.
FORMAT_PREFERENCE = (".mxl", ".musicxml", ".xml", ".krn", ".abc")


@dataclass(frozen=True)
class Work:
    """One file of the music21 corpus."""

    id: str  # path relative to the corpus root, POSIX separators: 'beethoven/opus18no1/movement3.mxl'
    group: str  # the corpus folder it sits in: 'beethoven'
    work_key: str  # the piece it belongs to; movements share it and so land in one split: 'beethoven/opus18no1'


def _stem(rel: str) -> str:
    """'bach/bwv62.6.mxl' -> 'bach/bwv62.6' (only known music extensions are removed)."""
    for ext in (*FORMAT_PREFERENCE, ".rntxt", ".mid", ".midi", ".xml"):
        if rel.lower().endswith(ext):
            return rel[: -len(ext)]
    return rel


def work_key(rel: str) -> str:
    """Movements ('.../opus18no1/movement3.mxl', '.../k545/movement1_exposition.mxl') belong to their folder."""
    p = PurePosixPath(_stem(rel))
    if re.match(r"movement\d", p.name) and len(p.parts) > 2:
        return str(p.parent)
    return str(p)


def read_holdout(path: str | os.PathLike | None = None) -> frozenset[str]:
    """The held-out entries (extension-less corpus paths) of a holdout list: '#' starts a comment."""
    path = Path(path) if path is not None else HOLDOUT_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read the holdout list ({e.strerror or e})") from None
    entries = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            entries.add(_stem(line.replace("\\", "/")))
    return frozenset(entries)


def is_held_out(rel: str, holdout: frozenset[str]) -> bool:
    """True when the file, or the piece it belongs to, is on the holdout list."""
    return _stem(rel) in holdout or work_key(rel) in holdout


def corpus_root() -> Path:
    from music21 import common

    return Path(common.getCorpusFilePath())


def list_works(holdout: frozenset[str], include: list[str] | None = None) -> tuple[list[Work], list[str]]:
    """(works to use, held-out ids that were asked for or present) from the music21 corpus, sorted by id.

    `include`, when given, is an explicit list of corpus paths (tests, hand-picked sets); otherwise every file of
    the corpus outside EXCLUDED_GROUPS, one encoding per piece, no roman-numeral analyses."""
    root = corpus_root()
    if include is not None:
        rels = []
        for rel in include:
            rel = rel.replace("\\", "/")
            if not (root / rel).is_file():
                raise UserError(f"{rel}: not a file of the music21 corpus ({root})")
            rels.append(rel)
    else:
        from music21 import corpus

        by_piece: dict[str, str] = {}
        for p in corpus.getPaths():
            rel = Path(p).relative_to(root).as_posix()
            ext = PurePosixPath(rel).suffix.lower()
            if rel.split("/", 1)[0] in EXCLUDED_GROUPS or ext not in FORMAT_PREFERENCE:
                continue
            key = _stem(rel)
            old = by_piece.get(key)
            if old is None or FORMAT_PREFERENCE.index(ext) < FORMAT_PREFERENCE.index(PurePosixPath(old).suffix):
                by_piece[key] = rel
        rels = list(by_piece.values())
    works, held = [], []
    for rel in sorted(set(rels)):
        if is_held_out(rel, holdout):
            held.append(rel)
            continue
        works.append(Work(rel, rel.split("/", 1)[0], work_key(rel)))
    return works, held


def split_of(work: Work, shares=(0.8, 0.1, 0.1)) -> str:
    """train/validation/test from a stable hash of the piece (never the seed), so every render of a piece and
    every movement of a work land in one split, whatever seed or hours a corpus was made with."""
    h = int.from_bytes(hashlib.sha256(work.work_key.encode()).digest()[:8], "big") / 2.0 ** 64
    if h < shares[0]:
        return "train"
    return "validation" if h < shares[0] + shares[1] else "test"


# ---------------------------------------------------------------------------------------------------------------
# Parsing (runs in worker processes) and the cache


@dataclass
class ParseResult:
    """What parsing one work gave: ok with cached files, or the reason it is skipped."""

    work_id: str
    ok: bool
    reason: str = ""


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def cache_paths(cache_dir: Path, work_id: str) -> tuple[Path, Path]:
    import music21

    key = re.sub(r"[^A-Za-z0-9_.-]", "_", work_id)
    folder = Path(cache_dir) / f"{PARSE_FORMAT}-music21-{music21.__version__}"
    return folder / f"{key}.mid", folder / f"{key}.json"


def _strip_repeats(score) -> None:
    """Remove the repeat marks music21 cannot expand: repeat barlines, repeat expressions, repeat brackets."""
    from music21 import bar, repeat, spanner, stream

    for m in score.recurse().getElementsByClass(stream.Measure):
        if isinstance(m.leftBarline, bar.Repeat):
            m.leftBarline = None
        if isinstance(m.rightBarline, bar.Repeat):
            m.rightBarline = bar.Barline("regular")
    for el in list(score.recurse().getElementsByClass((repeat.RepeatExpression, spanner.RepeatBracket))):
        site = el.activeSite
        if site is not None:
            site.remove(el)
    for s in [score, *score.recurse().getElementsByClass(stream.Stream)]:
        for sp in list(s.spannerBundle.getByClass(spanner.RepeatBracket)):
            s.spannerBundle.remove(sp)


def _single_score(parsed):
    """A Score from what music21 returned: an Opus of one score, or of one-part scores (voices written as separate
    tunes, as the Josquin abc files are), becomes one score; other collections are refused."""
    from music21 import stream

    if isinstance(parsed, stream.Opus):
        scores = list(parsed.scores)
        if len(scores) == 1:
            return scores[0]
        if scores and all(len(s.parts) <= 1 for s in scores):
            return parsed.mergeScores()
        raise ValueError(f"a collection of {len(scores)} scores, not one work")
    if isinstance(parsed, stream.Score):
        return parsed
    score = stream.Score()
    score.insert(0, parsed)
    return score


def _expand(score):
    """(score with repeats expanded, whether repeat marks had to be stripped)."""
    from music21 import repeat

    try:
        return score.expandRepeats(), False
    except (repeat.ExpanderException, repeat.RepeatExpressionException, repeat.InsufficientLengthException,
            repeat.UnequalPartsLengthException):
        _strip_repeats(score)
        return score.expandRepeats(), True


def _parse_to_cache(path: Path, midi_path: Path, json_path: Path) -> dict:
    from music21 import converter, stream
    from music21.musicxml.xmlObjects import MusicXMLWarning

    with warnings.catch_warnings():
        # music21 warns about score details it repairs as it reads (a misplaced direction, an unknown instrument);
        # the parsed work is what gets rendered, so these say nothing a synth user can act on
        warnings.simplefilter("ignore", MusicXMLWarning)
        score = _single_score(converter.parse(str(path), forceSource=True, storePickle=False))
    expanded, stripped = _expand(score)
    parts = list(expanded.parts) or [expanded]
    measures = list(parts[0].getElementsByClass(stream.Measure))
    bar_starts = sorted({round(float(m.offset), 6) for m in measures})
    with atomic_path(midi_path) as tmp:
        expanded.write("midi", fp=str(tmp))
    md = score.metadata
    return {"title": (md.title or md.movementName or "") if md else "",
            "composer": (md.composer or "") if md else "",
            "bar_starts": bar_starts, "repeats_stripped": stripped}


def parse_work(work_id: str, cache_dir: str, timeout_s: float) -> ParseResult:
    """Parse one corpus file into the cache (or read its cached outcome). Never raises for a bad work."""
    midi_path, json_path = cache_paths(Path(cache_dir), work_id)
    if json_path.exists():
        try:
            meta = json.loads(json_path.read_text(encoding="utf-8"))
            retry = meta.get("timed_out") and timeout_s > float(meta.get("timeout_s", 0))  # more time now
            if meta.get("format") == PARSE_FORMAT and (not meta["ok"] or midi_path.exists()) and not retry:
                return ParseResult(work_id, bool(meta["ok"]), meta.get("reason", ""))
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is parsed again
    json_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        meta = {"ok": True, "reason": "", **_parse_to_cache(corpus_root() / work_id, midi_path, json_path)}
    except _Timeout:
        meta = {"ok": False, "reason": f"parsing took longer than {timeout_s:g} s", "timed_out": True,
                "timeout_s": timeout_s}
    except Exception as e:  # music21 raises many types for malformed scores: the work is reported and skipped
        meta = {"ok": False, "reason": f"music21 could not read it ({type(e).__name__}: {first_line(e)[:200]})"}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    meta.update(format=PARSE_FORMAT, work=work_id, parse_seconds=round(time.perf_counter() - start, 3))
    write_text_atomic(json_path, json.dumps(meta, indent=1, sort_keys=True))
    return ParseResult(work_id, meta["ok"], meta["reason"])


# ---------------------------------------------------------------------------------------------------------------
# A parsed work, read back from the cache


@dataclass
class Part:
    """One part of a parsed work, times in quarter notes from the start of the piece."""

    name: str
    program: int  # the program the score names (0 when it names none)
    onset: np.ndarray  # float64 quarters
    duration: np.ndarray  # float64 quarters
    pitch: np.ndarray  # int32
    velocity: np.ndarray  # int32, music21's realization of the score's dynamics

    def select(self, mask) -> "Part":
        return Part(self.name, self.program, self.onset[mask], self.duration[mask], self.pitch[mask],
                    self.velocity[mask])


@dataclass
class Piece:
    """A parsed work: its parts, tempo map, meter and bar lines, all in quarter notes."""

    work: Work
    title: str
    composer: str
    parts: list[Part]
    tempos: np.ndarray  # [n, 2] (quarter, qpm), sorted
    tempo_marked: bool  # False: only music21's default 120 bpm: the score marks none
    time_signatures: list[tuple[float, int, int]]  # (quarter, numerator, denominator)
    bar_starts: np.ndarray  # quarters
    end: float  # quarters: the last note's end


def _bar_grid(sigs: list[tuple[float, int, int]], end: float) -> np.ndarray:
    """Bar starts implied by the time signatures alone."""
    bars = []
    for i, (q, num, den) in enumerate(sigs):
        stop = sigs[i + 1][0] if i + 1 < len(sigs) else max(end, q + 1e-9)
        bars.extend(np.arange(q, stop, num * 4.0 / den).tolist())
    return np.unique(np.round(np.array(bars or [0.0]), 6))


def load_piece(work: Work, cache_dir: str | os.PathLike) -> Piece:
    """The cached parse of a work (parse_work must have succeeded) as a Piece."""
    from symusic import Score

    midi_path, json_path = cache_paths(Path(cache_dir), work.id)
    meta = json.loads(json_path.read_text(encoding="utf-8"))
    score = Score(str(midi_path), ttype="quarter")
    parts = []
    for track in score.tracks:
        arr = track.notes.numpy()
        if track.is_drum or len(arr["time"]) == 0:
            continue
        order = np.lexsort((arr["pitch"], arr["time"]))
        parts.append(Part(track.name or f"Part {len(parts) + 1}", int(track.program),
                          arr["time"][order].astype(np.float64), arr["duration"][order].astype(np.float64),
                          arr["pitch"][order].astype(np.int32), arr["velocity"][order].astype(np.int32)))
    tempos = np.array([[float(t.time), float(t.qpm)] for t in score.tempos], dtype=np.float64).reshape(-1, 2)
    if len(tempos) == 0 or tempos[0, 0] > 0:
        tempos = np.concatenate([[[0.0, 120.0]], tempos])
    tempos = tempos[np.argsort(tempos[:, 0], kind="stable")]
    marked = bool(np.any(np.abs(tempos[:, 1] - 120.0) > 1e-6))
    sigs = [(float(t.time), int(t.numerator), int(t.denominator)) for t in score.time_signatures] or [(0.0, 4, 4)]
    end = max((float((p.onset + p.duration).max()) for p in parts), default=0.0)
    bars = np.array(meta.get("bar_starts") or [], dtype=np.float64)
    if len(bars) < 2:  # a score without measures: bar lines from the meter
        bars = _bar_grid(sorted(sigs), end)
    return Piece(work, meta.get("title", ""), meta.get("composer", ""), parts, tempos,
                 marked, sorted(sigs), bars, end)
