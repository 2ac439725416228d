"""`mt3ds synth`: plan renders until the hours are reached, render them in parallel, write the layout, resume.

The plan is a pure function of (seed, layout, SoundFonts, works, limits): round r visits every usable work once,
in an order shuffled per round and interleaved across composers (so a small corpus is not all Palestrina), and
each render's seed comes from (seed, round, work). Renders are appended until their audio adds up to --hours,
so a larger --hours extends the same plan, and a re-run finds finished tracks on disk and skips them.
Works are split by piece (corpus.split_of), never by render. DATA/mt3ds_synth.json records what made the folder
and refuses a re-run that would mix two different plans in it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import UserError
from . import corpus
from .arrange import LAYOUTS, arrange
from .corpus import Work

FORMAT = "mt3ds-synth-v1"
CONFIG_NAME = "mt3ds_synth.json"
DEFAULT_SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf2/TimGM6mb.sf2")
MAESTRO_YEARS = (2004, 2006, 2008, 2009, 2011, 2013, 2014, 2015, 2017, 2018)
INSTALL_HINT = ("apt-get install -y --no-install-recommends fluidsynth fluid-soundfont-gm timgm6mb-soundfont "
                "&& pip install 'mt3ds[synth]'")
# Corpus folders by the composer MAESTRO's canonical_composer column would name.
COMPOSERS = {"bach": "Johann Sebastian Bach", "beethoven": "Ludwig van Beethoven", "mozart": "Wolfgang Amadeus Mozart",
             "haydn": "Joseph Haydn", "palestrina": "Giovanni Pierluigi da Palestrina",
             "monteverdi": "Claudio Monteverdi", "josquin": "Josquin des Prez", "chopin": "Frédéric Chopin",
             "joplin": "Scott Joplin", "schumann_robert": "Robert Schumann", "schumann_clara": "Clara Schumann",
             "schubert": "Franz Schubert", "handel": "George Frideric Handel", "corelli": "Arcangelo Corelli",
             "cpebach": "Carl Philipp Emanuel Bach", "verdi": "Giuseppe Verdi", "weber": "Carl Maria von Weber",
             "webern": "Anton Webern", "schoenberg": "Arnold Schoenberg", "beach": "Amy Beach",
             "trecento": "Trecento (anonymous and various)"}


@dataclass
class SynthOptions:
    """Everything `mt3ds synth` takes."""

    out: Path  # the dataset folder to write (created)
    layout: str  # 'slakh' or 'maestro'
    soundfonts: list = field(default_factory=list)  # SoundFont paths; empty: DEFAULT_SOUNDFONTS that exist
    hours: float = 1.0  # total audio to render
    seed: int = 0
    workers: int = 1  # processes for parsing and rendering
    max_seconds: float = 300.0  # a longer work is rendered as an excerpt of whole bars at most this long
    parse_timeout: float = 180.0  # seconds music21 may spend on one file (whole quartets take a minute or more)
    cache: Path | None = None  # parsed-work cache; default $XDG_CACHE_HOME/mt3ds/music21
    works: list | None = None  # explicit corpus paths instead of the whole corpus
    holdout: Path | None = None  # the held-out list; default the one bundled in mt3ds/assets
    progress: bool = True

    def __post_init__(self):
        self.out = Path(self.out)
        if self.layout not in LAYOUTS:
            raise UserError(f"--layout {self.layout}: expected one of {', '.join(LAYOUTS)}")
        if not self.hours > 0:
            raise UserError(f"--hours {self.hours}: must be positive")
        if self.workers < 1:
            raise UserError(f"--workers {self.workers}: must be at least 1")
        if not self.max_seconds >= 5:
            raise UserError(f"--max-seconds {self.max_seconds}: must be at least 5")
        if not self.parse_timeout > 0:
            raise UserError(f"--parse-timeout {self.parse_timeout}: must be positive")


@dataclass(frozen=True)
class Render:
    """One planned track."""

    number: int  # 1-based, across splits: TrackNNNNN / the MAESTRO row
    work: Work
    round: int  # 0 for a work's first render, 1 for its second...
    seed: int
    split: str
    seconds: float  # audio length

    def uuid(self, seed: int) -> str:
        return hashlib.md5(f"mt3ds-synth:{seed}:{self.round}:{self.work.id}".encode()).hexdigest()


def _check_environment() -> None:
    try:
        import music21  # noqa: F401
    except ImportError:
        raise UserError(f"music21 is not installed: {INSTALL_HINT}") from None
    try:
        import fluidsynth  # noqa: F401
    except (ImportError, OSError) as e:
        raise UserError(f"FluidSynth is not available ({str(e).splitlines()[0]}): {INSTALL_HINT}") from None


def _soundfonts(given: list) -> list[str]:
    paths = [Path(p) for p in given] if given else [Path(p) for p in DEFAULT_SOUNDFONTS if Path(p).is_file()]
    if not paths:
        raise UserError(f"no SoundFont: none of {', '.join(DEFAULT_SOUNDFONTS)} exists; install them "
                        f"({INSTALL_HINT}) or pass --soundfont FILE.sf2")
    for p in paths:
        if not p.is_file():
            raise UserError(f"{p}: no such SoundFont file")
        with open(p, "rb") as f:
            head = f.read(12)
        if head[:4] != b"RIFF" or head[8:12] != b"sfbk":
            raise UserError(f"{p}: not a SoundFont 2 file (no RIFF sfbk header)")
    return [str(p.resolve()) for p in paths]


def render_seed(seed: int, round_: int, work: Work) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{round_}:{work.id}".encode()).digest()[:8], "big") >> 1


def visit_order(works: list[Work], seed: int, round_: int) -> list[Work]:
    """Round ROUND's order: each composer's works shuffled, composers taken in turn (shuffled), one work each."""
    rng = np.random.default_rng([seed, round_])
    groups: dict[str, list[Work]] = {}
    for w in works:
        groups.setdefault(w.group, []).append(w)
    names = sorted(groups)
    queues = [[groups[g][i] for i in rng.permutation(len(groups[g]))] for g in (names[i] for i in
                                                                                rng.permutation(len(names)))]
    order = []
    while any(queues):
        for q in queues:
            if q:
                order.append(q.pop(0))
    return order


def _identity(opts: SynthOptions, soundfonts: list[str], holdout: frozenset) -> dict:
    """What decides the plan; a folder holds one plan only."""
    import music21

    return {"format": FORMAT, "layout": opts.layout, "seed": opts.seed, "max_seconds": opts.max_seconds,
            "parse_timeout": opts.parse_timeout,
            "soundfonts": [{"name": Path(s).name, "bytes": Path(s).stat().st_size} for s in soundfonts],
            "works": sorted(opts.works) if opts.works is not None else None,
            "holdout": sorted(holdout), "music21": music21.__version__}


def _check_out(opts: SynthOptions, identity: dict) -> None:
    out = opts.out
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    config = out / CONFIG_NAME
    if config.exists():
        try:
            old = json.loads(config.read_text(encoding="utf-8"))["identity"]
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"{config}: unreadable; remove it or write to another --out") from None
        diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
        if diff:
            raise UserError(f"{out}: made by mt3ds synth with other settings ({', '.join(diff)} differ); "
                            "use another --out or the same settings")
    elif out.exists() and any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise UserError(f"{out}: not empty and not made by mt3ds synth (no {CONFIG_NAME}); use an empty --out")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def composer_name(work: Work, from_score: str) -> str:
    """One spelling per composer (MAESTRO's canonical_composer): the corpus folder's, else the score's."""
    return COMPOSERS.get(work.group) or from_score or work.group


def title_of(work: Work, from_score: str) -> str:
    """The score's title, or the file's path in the corpus when the score has none (music21 gives the file name)."""
    if from_score and from_score != Path(work.id).name:
        return from_score
    return corpus._stem(work.id).split("/", 1)[-1]


# ---------------------------------------------------------------------------------------------------------------
# Paths of a render in each layout


def slakh_dir(out: Path, r: Render) -> Path:
    return out / r.split / f"Track{r.number:05d}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:60] or "work"


def maestro_names(r: Render) -> tuple[str, str]:
    """(audio_filename, midi_filename) relative to the root, in a year folder as MAESTRO has them."""
    year = MAESTRO_YEARS[int(hashlib.sha256(r.work.work_key.encode()).hexdigest(), 16) % len(MAESTRO_YEARS)]
    stem = f"{year}/MT3DS-SYNTH_{r.number:05d}_{_slug(corpus._stem(r.work.id))}_R{r.round}"
    return f"{stem}.wav", f"{stem}.midi"


def is_done(out: Path, layout: str, r: Render) -> bool:
    """Whether R's files are complete on disk. A Slakh track folder holding another render means the folder
    was made by another plan (another corpus, or works that parsed differently): refused, not overwritten."""
    if layout == "slakh":
        meta_path = slakh_dir(out, r) / "metadata.yaml"
        if not meta_path.is_file():
            return False
        import yaml

        try:
            synth = yaml.safe_load(meta_path.read_text(encoding="utf-8"))["synth"]
            same = synth["work"] == r.work.id and synth["render"] == r.round
        except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
            same = False
        if not same:
            raise UserError(f"{meta_path}: holds another render than this plan's {r.work.id} (render {r.round}); "
                            "the folder was made from another corpus or cache: use another --out")
        return True
    audio, midi = maestro_names(r)
    return (out / audio).is_file() and (out / midi).is_file()


# ---------------------------------------------------------------------------------------------------------------
# Work done in worker processes


@dataclass(frozen=True)
class _Context:
    out: str
    layout: str
    seed: int
    soundfonts: tuple
    max_seconds: float
    cache: str


def _first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _render_one(args: tuple[Render, _Context]) -> tuple[int, str, float, float]:
    """Render and write one planned track: (number, error or '', audio seconds, wall seconds)."""
    r, ctx = args
    start = time.perf_counter()
    try:
        _render_track(r, ctx)
        return r.number, "", r.seconds, time.perf_counter() - start
    except Exception as e:  # a bad render is reported and skipped; the run goes on
        return r.number, _first_line(e), 0.0, 0.0


def _render_track(r: Render, ctx: _Context) -> None:
    from .layouts import slakh_metadata, write_maestro_pair, write_slakh_track
    from .render import REFERENCE_LUFS, SAMPLE_RATE, mix_stems, render_stem, total_samples

    out = Path(ctx.out)
    piece = corpus.load_piece(r.work, ctx.cache)
    arr = arrange(piece, r.seed, ctx.layout, list(ctx.soundfonts), ctx.max_seconds)
    n = total_samples(arr)
    audio = [render_stem(arr, stem, n) for stem in arr.stems]
    mix, stems, overall, lufs = mix_stems(audio, [s.gain_db for s in arr.stems])
    if ctx.layout == "slakh":
        source = {"generator": f"mt3ds {__version__} synth", "work": r.work.id, "piece": r.work.work_key,
                  "title": title_of(r.work, piece.title), "composer": composer_name(r.work, piece.composer),
                  "render": r.round, "seed": r.seed,
                  "sample_rate": SAMPLE_RATE}
        meta = slakh_metadata(r.uuid(ctx.seed), arr, lufs, overall, REFERENCE_LUFS, source)
        final = slakh_dir(out, r)
        final.parent.mkdir(parents=True, exist_ok=True)
        write_slakh_track(final, arr, stems, mix, meta, SAMPLE_RATE)
    else:
        audio_name, midi_name = maestro_names(r)
        write_maestro_pair(out / audio_name, out / midi_name, arr, mix, SAMPLE_RATE)


# ---------------------------------------------------------------------------------------------------------------
# The command


def _pool(workers: int):
    """Forked workers that inherit the heavy imports instead of paying for them once each."""
    import multiprocessing

    import fluidsynth  # noqa: F401
    import music21  # noqa: F401
    import pyloudnorm  # noqa: F401
    import soundfile  # noqa: F401
    import symusic  # noqa: F401
    import yaml  # noqa: F401

    return multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None


def plan_renders(opts: SynthOptions, works: list[Work], soundfonts: list[str], cache: Path, pool,
                 skipped: dict) -> list[Render]:
    """Renders in plan order until their audio reaches opts.hours. Works that cannot be used go into SKIPPED."""
    from functools import partial

    from tqdm import tqdm

    from .render import SAMPLE_RATE, total_samples

    target = opts.hours * 3600.0
    parse = partial(corpus.parse_work, cache_dir=str(cache), timeout_s=opts.parse_timeout)
    plan, total = [], 0.0
    bar = tqdm(total=round(target), unit="s", desc="planning", disable=not opts.progress)
    round_ = 0
    while total < target:
        usable = 0
        order = [w for w in visit_order(works, opts.seed, round_) if w.id not in skipped]
        batch = 4 * opts.workers
        for start in range(0, len(order), batch):
            chunk = order[start:start + batch]
            results = pool.map(parse, [w.id for w in chunk]) if pool else [parse(w.id) for w in chunk]
            for w, res in zip(chunk, results):
                if not res.ok:
                    skipped[w.id] = res.reason
                    continue
                seed = render_seed(opts.seed, round_, w)
                try:
                    arr = arrange(corpus.load_piece(w, cache), seed, opts.layout, soundfonts, opts.max_seconds)
                except ValueError as e:  # a work this layout cannot use (one part for Slakh, no notes)
                    skipped[w.id] = str(e)
                    continue
                except Exception as e:  # anything else is a bad work too: reported, and the run goes on
                    skipped[w.id] = f"cannot arrange it ({_first_line(e)})"
                    continue
                seconds = total_samples(arr) / SAMPLE_RATE
                plan.append(Render(len(plan) + 1, w, round_, seed, corpus.split_of(w), seconds))
                total += seconds
                usable += 1
                bar.update(round(total) - bar.n)
                if total >= target:
                    break
            if total >= target:
                break
        if usable == 0:
            bar.close()
            raise UserError(f"no usable works among {len(works)} ({len(skipped)} skipped, e.g. "
                            f"{next(iter(skipped.items()), ('-', '-'))}): nothing to render")
        round_ += 1
    bar.close()
    return plan


def run_synth(opts: SynthOptions) -> dict:
    """Make (or complete) a synthetic dataset in OUT; returns the summary also written to OUT/mt3ds_synth.json."""
    from tqdm import tqdm

    _check_environment()
    soundfonts = _soundfonts(opts.soundfonts)
    holdout = corpus.read_holdout(opts.holdout)
    identity = _identity(opts, soundfonts, holdout)
    _check_out(opts, identity)
    cache = Path(opts.cache) if opts.cache else Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mt3ds" / "music21"
    works, held = corpus.list_works(holdout, opts.works)
    if not works:
        raise UserError("no works to render: every work asked for is held out")
    opts.out.mkdir(parents=True, exist_ok=True)
    if not (opts.out / CONFIG_NAME).exists():  # claimed before anything is rendered: an interrupted run resumes
        _write_json(opts.out / CONFIG_NAME, {"identity": identity, "code_version": __version__})
    for stale in [*opts.out.glob("*/.partial-Track*"), *opts.out.glob("*/*.tmp"), *opts.out.glob(".*.tmp")]:
        # left by an interrupted run: rebuilt below
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)

    start = time.perf_counter()
    skipped: dict[str, str] = {}
    pool = _pool(opts.workers)
    try:
        plan = plan_renders(opts, works, soundfonts, cache, pool, skipped)
        todo = [r for r in plan if not is_done(opts.out, opts.layout, r)]
        ctx = _Context(str(opts.out), opts.layout, opts.seed, tuple(soundfonts), opts.max_seconds, str(cache))
        failed, rendered_s, render_wall = {}, 0.0, 0.0
        jobs = [(r, ctx) for r in todo]
        results = pool.imap_unordered(_render_one, jobs) if pool else map(_render_one, jobs)
        by_number = {r.number: r for r in plan}
        for number, error, seconds, wall in tqdm(results, total=len(jobs), unit="track", desc="rendering",
                                                 disable=not opts.progress):
            if error:
                failed[number] = f"{by_number[number].work.id}: {error}"
            rendered_s += seconds
            render_wall += wall
    except BaseException:  # Ctrl-C or a crash: stop the workers now; finished tracks stay, the rest resume
        if pool:
            pool.terminate()
        raise
    if pool:
        pool.close()
        pool.join()

    done = [r for r in plan if is_done(opts.out, opts.layout, r)]
    if opts.layout == "maestro":
        from .layouts import write_maestro_metadata

        write_maestro_metadata(opts.out, [_maestro_row(opts.out, r, cache) for r in done])
    splits = {s: sum(1 for r in done if r.split == s) for s in ("train", "validation", "test")}
    summary = {
        "tracks": len(done), "hours": round(sum(r.seconds for r in done) / 3600.0, 4), "splits": splits,
        "rendered_now": len(todo) - len(failed), "already_there": len(plan) - len(todo),
        "audio_seconds_per_second": round(rendered_s / max(time.perf_counter() - start, 1e-9), 2),
        "render_seconds_per_track_core": round(render_wall / max(len(todo) - len(failed), 1), 3),
        "failed": [{"track": n, "reason": why} for n, why in sorted(failed.items())],
        "skipped_works": [{"work": w, "reason": why} for w, why in sorted(skipped.items())],
        "held_out": held, "works_available": len(works),
    }
    _write_json(opts.out / CONFIG_NAME, {"identity": identity, "code_version": __version__,
                                         "options": {"hours": opts.hours, "workers": opts.workers},
                                         "summary": {k: v for k, v in summary.items()
                                                     if k not in ("audio_seconds_per_second",
                                                                  "render_seconds_per_track_core",
                                                                  "rendered_now", "already_there")},
                                         "tracks": [{**asdict(r), "work": r.work.id} for r in done]})
    return summary


def _maestro_row(out: Path, r: Render, cache: Path) -> dict:
    import soundfile as sf

    audio_name, midi_name = maestro_names(r)
    meta = json.loads(corpus.cache_paths(cache, r.work.id)[1].read_text(encoding="utf-8"))
    title = title_of(r.work, meta.get("title") or "")
    return {"canonical_composer": composer_name(r.work, meta.get("composer") or ""),
            "canonical_title": title, "split": r.split, "year": int(audio_name.split("/", 1)[0]),
            "midi_filename": midi_name, "audio_filename": audio_name,
            "duration": round(sf.info(str(out / audio_name)).duration, 6)}


def summary_lines(summary: dict) -> list[str]:
    """The command's report: what is in the folder, what this run did, what it skipped and why."""
    s = summary["splits"]
    lines = [f"{summary['tracks']} tracks, {summary['hours']:.3f} h (train {s['train']}, validation "
             f"{s['validation']}, test {s['test']}); rendered now {summary['rendered_now']}, already there "
             f"{summary['already_there']}; {summary['audio_seconds_per_second']:.1f} audio s/s",
             f"held out: {len(summary['held_out'])} works; works available: {summary['works_available']}"]
    if summary["skipped_works"]:
        lines.append(f"skipped {len(summary['skipped_works'])} works:")
        lines += [f"  {s['work']}: {s['reason']}" for s in summary["skipped_works"][:20]]
        if len(summary["skipped_works"]) > 20:
            lines.append(f"  ... and {len(summary['skipped_works']) - 20} more (all in {CONFIG_NAME})")
    if summary["failed"]:
        lines.append(f"failed {len(summary['failed'])} renders:")
        lines += [f"  Track{f['track']:05d} {f['reason']}" for f in summary["failed"]]
    return lines
