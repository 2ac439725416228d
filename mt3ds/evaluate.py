"""Note-level metrics with mir_eval, as MT3 computes them (docs/design.md §7.6).

- onset F1 (50 ms), onset+offset F1 (offset within 20% of the note or 50 ms) and frame F1 (10 ms frames): drums
  removed, instruments ignored;
- multi-instrument F1: notes matched only within their (program, is_drum) group, drums onset-only, others
  onset+offset; true/false positives and negatives pooled over groups, then F1; with programs as they are ("full")
  and grouped by MIDI class 8*floor(p/8) ("class");
- drum onset F1.
Scores are given per file and pooled over files (counts summed, then P/R/F1), plus the mean of per-file F1s (how MT3
reports a test set).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .tokens.gm import class_program
from .tokens.notes import Notes
from .tokens.vocab import DRUM_PROGRAM

ONSET_TOLERANCE = 0.05
OFFSET_RATIO = 0.2
OFFSET_MIN_TOLERANCE = 0.05
FRAMES_PER_SECOND = 100
MIDI_SUFFIXES = (".mid", ".midi")

# metric name -> how it is counted; each yields (tp, n_est, n_ref)
METRICS = ("onset", "onset_offset", "frame", "multi_full", "multi_class", "drum_onset")


@dataclass
class Counts:
    """True positives, estimated and reference totals for one metric."""

    tp: int = 0
    n_est: int = 0
    n_ref: int = 0

    def __iadd__(self, other: "Counts") -> "Counts":
        self.tp += other.tp
        self.n_est += other.n_est
        self.n_ref += other.n_ref
        return self

    def scores(self) -> dict:
        p = self.tp / self.n_est if self.n_est else 0.0
        r = self.tp / self.n_ref if self.n_ref else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        if self.n_est == 0 and self.n_ref == 0:
            p = r = f = None  # nothing to find and nothing found: undefined, left out of means
        return {"precision": p, "recall": r, "f1": f, "tp": self.tp, "n_est": self.n_est, "n_ref": self.n_ref}


def _match(ref: Notes, est: Notes, with_offsets: bool) -> Counts:
    """mir_eval's bipartite note matching (onset 50 ms, pitch within 50 cents, optional offset criterion)."""
    import mir_eval

    if len(ref) == 0 or len(est) == 0:
        return Counts(0, len(est), len(ref))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        matching = mir_eval.transcription.match_notes(
            np.stack([ref.onset, ref.offset], 1), mir_eval.util.midi_to_hz(ref.pitch.astype(float)),
            np.stack([est.onset, est.offset], 1), mir_eval.util.midi_to_hz(est.pitch.astype(float)),
            onset_tolerance=ONSET_TOLERANCE, pitch_tolerance=50.0,
            offset_ratio=OFFSET_RATIO if with_offsets else None, offset_min_tolerance=OFFSET_MIN_TOLERANCE)
    return Counts(len(matching), len(est), len(ref))


def _frames(notes: Notes, n_frames: int) -> np.ndarray:
    """[n_frames, 128] active piano roll at 10 ms frames (a note covers the frames its interval overlaps)."""
    roll = np.zeros((n_frames, 128), dtype=bool)
    start = np.floor(notes.onset * FRAMES_PER_SECOND).astype(int)
    end = np.maximum(np.ceil(notes.offset * FRAMES_PER_SECOND).astype(int), start + 1)
    for s, e, p in zip(start, np.minimum(end, n_frames), notes.pitch):  # one slice per note
        roll[s:e, p] = True
    return roll


def _frame_counts(ref: Notes, est: Notes) -> Counts:
    n_frames = int(np.ceil(max(ref.end, est.end) * FRAMES_PER_SECOND)) + 1
    r, e = _frames(ref, n_frames), _frames(est, n_frames)
    return Counts(int((r & e).sum()), int(e.sum()), int(r.sum()))


def _multi_instrument(ref: Notes, est: Notes, by_class: bool) -> Counts:
    """Match within each (program, is_drum) group; drums onset-only, others onset+offset; pool the counts."""
    def groups(n: Notes) -> np.ndarray:
        return np.array([class_program(int(p)) for p in n.program]) if by_class else n.program

    rg, eg = groups(ref), groups(est)
    total = Counts()
    for g in np.union1d(rg, eg):
        total += _match(ref.select(rg == g), est.select(eg == g), with_offsets=g != DRUM_PROGRAM)
    return total


def score_notes(ref: Notes, est: Notes) -> dict[str, Counts]:
    """Counts of every metric for one reference/estimate pair."""
    rp, ep = ref.select(~ref.is_drum), est.select(~est.is_drum)
    return {
        "onset": _match(rp, ep, with_offsets=False),
        "onset_offset": _match(rp, ep, with_offsets=True),
        "frame": _frame_counts(rp, ep),
        "multi_full": _multi_instrument(ref, est, by_class=False),
        "multi_class": _multi_instrument(ref, est, by_class=True),
        "drum_onset": _match(ref.select(ref.is_drum), est.select(est.is_drum), with_offsets=False),
    }


def _midi_files(path: Path) -> dict[str, Path]:
    if not path.exists():
        raise UserError(f"{path}: no such file or folder", exit_code=2)
    if path.is_file():
        return {path.stem: path}
    files = {p.stem: p for p in sorted(path.iterdir()) if p.suffix.lower() in MIDI_SUFFIXES}
    if not files:
        raise UserError(f"{path}: no .mid or .midi files in this folder", exit_code=2)
    return files


def pair_files(ref: Path, est: Path) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Match reference and estimate files by name (stem). Returns pairs and the names that have no partner."""
    refs, ests = _midi_files(Path(ref)), _midi_files(Path(est))
    if Path(ref).is_file() and Path(est).is_file():
        return [(Path(ref).stem, Path(ref), Path(est))], []
    pairs = [(name, refs[name], ests[name]) for name in sorted(refs) if name in ests]
    unmatched = sorted(set(refs) ^ set(ests))
    if not pairs:
        raise UserError(f"{ref} and {est}: no file names in common", exit_code=2)
    return pairs, unmatched


def evaluate(ref, est) -> dict:
    """Score estimate MIDI files against references (files, or folders matched by name): per file, pooled, mean."""
    from .tokens.midi import read_midi

    pairs, unmatched = pair_files(Path(ref), Path(est))
    per_file, pooled = {}, {m: Counts() for m in METRICS}
    for name, ref_path, est_path in pairs:
        counts = score_notes(read_midi(ref_path)[0], read_midi(est_path)[0])
        per_file[name] = {m: c.scores() for m, c in counts.items()}
        for m in METRICS:
            pooled[m] += counts[m]
    mean = {}
    for m in METRICS:
        defined = [per_file[f][m]["f1"] for f in per_file if per_file[f][m]["f1"] is not None]
        mean[m] = {"f1": float(np.mean(defined)) if defined else None, "files": len(defined)}
    return {"files": per_file, "pooled": {m: c.scores() for m, c in pooled.items()}, "mean_per_file": mean,
            "unmatched": unmatched}


def format_table(result: dict) -> str:
    """Per-file and pooled F1 as an aligned text table."""
    header = ["file"] + [f"{m} F1" for m in METRICS]
    def cell(f1):
        return "-" if f1 is None else f"{f1:.3f}"

    rows = [[name] + [cell(s[m]["f1"]) for m in METRICS] for name, s in result["files"].items()]
    rows.append(["POOLED"] + [cell(result["pooled"][m]["f1"]) for m in METRICS])
    rows.append(["MEAN"] + [cell(result["mean_per_file"][m]["f1"]) for m in METRICS])
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header] + rows]
    if result["unmatched"]:
        lines.append(f"# no partner for: {', '.join(result['unmatched'])}")
    return "\n".join(lines)
