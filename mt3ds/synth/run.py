"""`mt3ds synth`: plan renders until the hours are reached, render them in parallel, write the layout, resume.

The plan is a pure function of (seed, layout, banks, works, limits): round r visits every usable work once,
in an order shuffled per round and interleaved across composers (so a small corpus is not all Palestrina), and
each render's seed comes from (seed, round, work). Renders are appended until their audio adds up to --hours;
a split that has no track by then (a small --hours) gets the plan's next render of that split, so validation and
test are never empty. A render keeps its number in the plan, so a larger --hours holds every render of a smaller
one, and a re-run finds finished tracks on disk and skips them.
Generated songs (songs.py) are interleaved with the works so that songs make up --songs of the audio; song i's
seed comes from (seed, i). Works are split by piece (corpus.split_of), never by render, and songs by song.
Cross-timbre splits: validation and test tracks are rendered only with the held-out banks (banks.HOLDOUT_TIMBRES
or --holdout-timbres), training tracks never with them. DATA/mt3ds_synth.json records what made the folder
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
from typing import Iterator

import numpy as np

from .. import __version__
from ..data.records import SPLITS
from ..errors import UserError, first_line
from ..files import write_text_atomic
from . import corpus
from .arrange import LAYOUTS, arrange
from .banks import FLUIDSYNTH, Bank, Palette, available_banks, parse_holdout_timbres, soundfont_bank, split_palettes
from .corpus import Work
from .expression import voicing

FORMAT = "mt3ds-synth-v2"
CONFIG_NAME = "mt3ds_synth.json"
VOICING_STREAM = 0x766F  # the voicing draws' stream, apart from the arrangement's (numpy SeedSequence entropy)
SONGS_GROUP = "songs"  # generated songs are planned as works of this group: 'songs/000123'
MAESTRO_YEARS = (2004, 2006, 2008, 2009, 2011, 2013, 2014, 2015, 2017, 2018)
INSTALL_HINT = ("apt-get install -y --no-install-recommends fluidsynth fluid-soundfont-gm timgm6mb-soundfont "
                "(more timbres: fluid-soundfont-gs fluidr3mono-gm-soundfont csound-soundfont opl3-soundfont "
                "timidity freepats hydrogen-drumkits) && pip install 'mt3ds[synth]'")
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
    soundfonts: list = field(default_factory=list)  # SoundFont paths: render with these only (FluidSynth)
    banks: list | None = None  # names of installed banks to use (banks.KNOWN_BANKS, 'kit:NAME'); None: all
    holdout_timbres: str | None = None  # banks only validation/test hear: comma list, 'none'; None: the default
    songs: float | None = None  # share of the audio that is generated songs; None: 0.5 (Slakh), 0 (MAESTRO)
    hours: float = 1.0  # total audio to render
    seed: int = 0
    workers: int = 1  # processes for parsing and rendering
    max_seconds: float = 300.0  # a longer work is rendered as an excerpt of whole bars at most this long
    parse_timeout: float = 180.0  # seconds music21 may spend on one file (whole quartets take a minute or more)
    voicing: float = 0.0  # scale of the random SoundFont generator offsets per stem (expression.voicing); 0: none
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
        if not 0.0 <= self.voicing <= 1.0:
            raise UserError(f"--voicing {self.voicing}: a scale between 0 and 1")
        if not self.parse_timeout > 0:
            raise UserError(f"--parse-timeout {self.parse_timeout}: must be positive")
        if self.songs is None:
            self.songs = 0.5 if self.layout == "slakh" else 0.0
        if not 0.0 <= self.songs <= 1.0:
            raise UserError(f"--songs {self.songs}: a share between 0 and 1")
        if self.songs > 0 and self.layout == "maestro":
            raise UserError("--songs: generated songs are band music, for the slakh layout only")


@dataclass(frozen=True)
class Render:
    """One planned track."""

    number: int  # 1-based, across splits: TrackNNNNN / the MAESTRO row
    work: Work
    round: int  # 0 for a work's first render, 1 for its second...
    seed: int
    split: str
    seconds: float  # audio length
    stats: dict = field(default=None, compare=False, repr=False)  # coverage.track_stats of its arrangement

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


def _banks(opts: SynthOptions) -> tuple[list[Bank], dict[str, str]]:
    """(banks to render with, {bank: why it is not used}). --soundfont: those files only; else every installed
    bank (banks.available_banks), narrowed to --bank names when given."""
    if opts.soundfonts:
        for p in opts.soundfonts:
            if not Path(p).is_file():
                raise UserError(f"{p}: no such SoundFont file")
        return [soundfont_bank(p) for p in opts.soundfonts], {}
    found, dropped = available_banks()
    if opts.banks:
        names = {b.name for b in found}
        unknown = [n for n in opts.banks if n not in names]
        for n in unknown:
            if n in dropped:  # a known bank that is not installed or did not load: say which package
                raise UserError(f"--bank {n}: {dropped[n]}")
        if unknown:
            raise UserError(f"--bank {', '.join(unknown)}: not installed or unknown (available: "
                            f"{', '.join(sorted(names))}; dropped: {', '.join(sorted(dropped)) or 'none'})")
        found = [b for b in found if b.name in opts.banks]
    if not any(b.presets for b in found):
        raise UserError(f"no General MIDI bank installed: {INSTALL_HINT}")
    return found, dropped


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


def _identity(opts: SynthOptions, banks: list[Bank], held_timbres: list[str], holdout: frozenset) -> dict:
    """What decides the plan; a folder holds one plan only."""
    import music21

    return {"format": FORMAT, "layout": opts.layout, "seed": opts.seed, "max_seconds": opts.max_seconds,
            "parse_timeout": opts.parse_timeout,
            "banks": [{"name": b.name, "engine": b.engine, "file": Path(b.path).name} for b in banks],
            "holdout_timbres": list(held_timbres), "songs": opts.songs,
            "works": sorted(opts.works) if opts.works is not None else None,
            "holdout": sorted(holdout), "music21": music21.__version__,
            **({"voicing": opts.voicing} if opts.voicing else {})}  # absent when off: older folders still resume


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
    write_text_atomic(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


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
    train: Palette  # banks training tracks hear
    held: Palette  # banks validation and test tracks hear
    max_seconds: float
    cache: str
    voicing: float = 0.0


def palette_for(split: str, train: Palette, held: Palette) -> Palette:
    return train if split == "train" else held


def is_song(work: Work) -> bool:
    return work.group == SONGS_GROUP


def song_work(i: int) -> Work:
    wid = f"{SONGS_GROUP}/{i:06d}"
    return Work(wid, SONGS_GROUP, wid)


def arrange_render(r: Render, palette: Palette, layout: str, max_seconds: float, cache):
    """The arrangement of planned render R (a generated song or a corpus work)."""
    if is_song(r.work):
        from .songs import arrange_song

        return arrange_song(r.seed, palette, max_seconds)
    return arrange(corpus.load_piece(r.work, cache), r.seed, layout, palette, max_seconds)


def _render_one(args: tuple[Render, _Context]) -> tuple[int, str, float, float]:
    """Render and write one planned track: (number, error or '', audio seconds, wall seconds). A render that
    comes out silent or clipped is reported and skipped; anything else is a bug and stops the run."""
    from .render import BadRender

    r, ctx = args
    start = time.perf_counter()
    try:
        _render_track(r, ctx)
        return r.number, "", r.seconds, time.perf_counter() - start
    except BadRender as e:
        return r.number, first_line(e), 0.0, 0.0


def _render_track(r: Render, ctx: _Context) -> None:
    from .layouts import slakh_metadata, write_maestro_pair, write_slakh_track
    from .render import REFERENCE_LUFS, SAMPLE_RATE, mix_stems, process_stems, render_stem, total_samples

    out = Path(ctx.out)
    arr = arrange_render(r, palette_for(r.split, ctx.train, ctx.held), ctx.layout, ctx.max_seconds, ctx.cache)
    n = total_samples(arr)
    if ctx.voicing > 0:  # its own stream: the arrangement is the same with or without voicing
        rng = np.random.default_rng([r.seed, VOICING_STREAM])
        for stem in arr.stems:
            drawn = voicing(stem, rng, ctx.voicing)
            stem.voicing = drawn if stem.bank.engine == FLUIDSYNTH else {}
    audio = [render_stem(arr, stem, n, seed=r.seed + i) for i, stem in enumerate(arr.stems)]
    mix, stems, overall, lufs = mix_stems(process_stems(arr, audio, r.seed), [s.gain_db for s in arr.stems])
    if ctx.layout == "slakh":
        if is_song(r.work):
            title, composer = f"{arr.info['genre']} song {r.work.id.split('/')[-1]}", "mt3ds song arranger"
        else:
            piece = corpus.load_piece(r.work, ctx.cache)
            title, composer = title_of(r.work, piece.title), composer_name(r.work, piece.composer)
        source = {"generator": f"mt3ds {__version__} synth", "work": r.work.id, "piece": r.work.work_key,
                  "title": title, "composer": composer,
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


EXTRA_SEARCH = 60  # renders looked through past --hours for a split that has none yet (each ~10 % likely)


def _natural_renders(opts: SynthOptions, works: list[Work], palettes: tuple[Palette, Palette], cache: Path, pool,
                     skipped: dict) -> Iterator[Render]:
    """The plan without an end, in plan order: corpus works round by round, with generated songs interleaved so
    that they make up opts.songs of the audio so far. A render's number is its place here, so it does not depend
    on --hours. Works that cannot be used go into SKIPPED."""
    from functools import partial

    from .coverage import track_stats
    from .render import SAMPLE_RATE, total_samples

    parse = partial(corpus.parse_work, cache_dir=str(cache), timeout_s=opts.parse_timeout)
    seconds_of = {"works": 0.0, "songs": 0.0}
    count, next_song = 0, 0

    def make(w: Work, round_: int, seed: int) -> Render | None:
        nonlocal count
        split = corpus.split_of(w)
        r = Render(count + 1, w, round_, seed, split, 0.0)
        try:
            arr = arrange_render(r, palette_for(split, *palettes), opts.layout, opts.max_seconds, cache)
        except ValueError as e:  # a work this layout cannot use (one part for Slakh, no notes, no bank for it)
            skipped[w.id] = str(e)
            return None
        seconds = total_samples(arr) / SAMPLE_RATE
        seconds_of["songs" if is_song(w) else "works"] += seconds
        count += 1
        return Render(r.number, w, round_, seed, split, seconds, track_stats(arr))

    def songs() -> Iterator[Render]:
        """Songs until they are opts.songs of the audio planned so far."""
        nonlocal next_song
        if opts.songs <= 0:
            return
        while opts.songs >= 1.0 or seconds_of["songs"] < opts.songs / (1 - opts.songs) * max(seconds_of["works"], 1.0):
            w = song_work(next_song)
            next_song += 1
            r = make(w, 0, render_seed(opts.seed, 0, w))
            if r is not None:
                yield r
            if next_song > 100 + 10 * count:
                raise UserError("generated songs keep failing: no bank plays their instruments")

    yield from songs()
    round_ = 0
    while True:
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
                r = make(w, round_, render_seed(opts.seed, round_, w))
                if r is not None:
                    usable += 1
                    yield r
                    yield from songs()
        if usable == 0:
            raise UserError(f"no usable works among {len(works)} ({len(skipped)} skipped, e.g. "
                            f"{next(iter(skipped.items()), ('-', '-'))}): nothing to render")
        round_ += 1


def plan_renders(opts: SynthOptions, works: list[Work], palettes: tuple[Palette, Palette], cache: Path, pool,
                 skipped: dict) -> list[Render]:
    """The renders to make: the plan's renders until their audio reaches opts.hours, then, for a split that has
    none yet (a small --hours: validation and test get ~10 % of the pieces each), the plan's next render of that
    split, so that training always has a validation split to read. Renders keep their numbers in the plan, so a
    larger --hours holds every render of a smaller one and completes the same folder."""
    from tqdm import tqdm

    target = opts.hours * 3600.0
    renders = _natural_renders(opts, works, palettes, cache, pool, skipped)
    plan: list[Render] = []
    total = 0.0
    bar = tqdm(total=round(target), unit="s", desc="planning", disable=not opts.progress)
    try:
        for r in renders:
            plan.append(r)
            total += r.seconds
            bar.update(min(round(total), bar.total) - bar.n)  # the last render passes the target: the bar stops
            if total >= target:
                break
        missing = [s for s in SPLITS if all(r.split != s for r in plan)]
        if missing:
            try:
                for looked, r in enumerate(renders, 1):
                    if r.split in missing:
                        plan.append(r)
                        missing.remove(r.split)
                    if not missing or looked >= EXTRA_SEARCH:
                        break
            except UserError:  # the corpus ran out of usable works: the plan is what it is
                pass
    finally:
        bar.close()
    return plan


def run_synth(opts: SynthOptions) -> dict:
    """Make (or complete) a synthetic dataset in OUT; returns the summary also written to OUT/mt3ds_synth.json."""
    from tqdm import tqdm

    from .coverage import coverage

    _check_environment()
    banks, dropped = _banks(opts)
    asked = parse_holdout_timbres(opts.holdout_timbres)
    for n in asked or ():
        if n in dropped:
            raise UserError(f"--holdout-timbres {n}: {dropped[n]}")
    train_pal, held_pal, held_names = split_palettes(banks, asked)
    holdout = corpus.read_holdout(opts.holdout)
    identity = _identity(opts, banks, held_names, holdout)
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
        plan = plan_renders(opts, works, (train_pal, held_pal), cache, pool, skipped)
        todo = [r for r in plan if not is_done(opts.out, opts.layout, r)]
        ctx = _Context(str(opts.out), opts.layout, opts.seed, train_pal, held_pal, opts.max_seconds, str(cache),
                       opts.voicing)
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
    splits = {s: sum(1 for r in done if r.split == s) for s in SPLITS}
    summary = {
        "tracks": len(done), "hours": round(sum(r.seconds for r in done) / 3600.0, 4), "splits": splits,
        "rendered_now": len(todo) - len(failed), "already_there": len(plan) - len(todo),
        "audio_seconds_per_second": round(rendered_s / max(time.perf_counter() - start, 1e-9), 2),
        "render_seconds_per_track_core": round(render_wall / max(len(todo) - len(failed), 1), 3),
        "failed": [{"track": n, "reason": why} for n, why in sorted(failed.items())],
        "skipped_works": [{"work": w, "reason": why} for w, why in sorted(skipped.items())],
        "held_out": held, "works_available": len(works),
        "banks": {"train": [b.name for b in train_pal.banks], "validation_test": [b.name for b in held_pal.banks],
                  "held_out_timbres": held_names, "dropped": dropped},
        "coverage": coverage([(r.split, r.seconds, r.stats) for r in done]),
    }
    _write_json(opts.out / CONFIG_NAME, {"identity": identity, "code_version": __version__,
                                         "options": {"hours": opts.hours, "workers": opts.workers},
                                         "summary": {k: v for k, v in summary.items()
                                                     if k not in ("audio_seconds_per_second",
                                                                  "render_seconds_per_track_core",
                                                                  "rendered_now", "already_there")},
                                         "tracks": [{**{k: v for k, v in asdict(r).items() if k != "stats"},
                                                     "work": r.work.id} for r in done]})
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
    """The command's report: what is in the folder, what this run did, what it skipped and why, its coverage."""
    from .coverage import report_lines as coverage_lines

    s = summary["splits"]
    lines = [f"{summary['tracks']} tracks, {summary['hours']:.3f} h (train {s['train']}, validation "
             f"{s['validation']}, test {s['test']}); rendered now {summary['rendered_now']}, already there "
             f"{summary['already_there']}; {summary['audio_seconds_per_second']:.1f} audio s/s",
             f"held out: {len(summary['held_out'])} works; works available: {summary['works_available']}",
             f"banks: train {', '.join(summary['banks']['train'])}; validation/test "
             f"{', '.join(summary['banks']['validation_test'])}"
             + ("" if summary["banks"]["held_out_timbres"] else " (no cross-timbre split)")]
    lines += [f"  not used: {name}: {why}" for name, why in summary["banks"]["dropped"].items()]
    lines += coverage_lines(summary["coverage"])
    if summary["skipped_works"]:
        lines.append(f"skipped {len(summary['skipped_works'])} works:")
        lines += [f"  {s['work']}: {s['reason']}" for s in summary["skipped_works"][:20]]
        if len(summary["skipped_works"]) > 20:
            lines.append(f"  ... and {len(summary['skipped_works']) - 20} more (all in {CONFIG_NAME})")
    if summary["failed"]:
        lines.append(f"failed {len(summary['failed'])} renders:")
        lines += [f"  Track{f['track']:05d} {f['reason']}" for f in summary["failed"]]
    return lines
