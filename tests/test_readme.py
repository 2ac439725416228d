"""The README's commands for a CPU box, run in order in a copy of the repository's files (what a fresh clone holds),
so that a README that drifts from the code fails: every fenced block that follows a `<!-- README check` comment,
line by line, then all of it a second time (running a line again must work without deleting anything).

Lines are run as the README writes them, with three exceptions: `pip ...` (this suite already runs inside that
install), `python -m pytest` (the suite itself), and the CPU smoke run's 300 steps cut to 100 (`--set steps=100`,
an option the training line takes; the chain is the same, a minute sooner). `mt3ds` runs as `python -m mt3ds` and
`python` as this interpreter, both importing the copy's code."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MARK = "<!-- README check"
NOT_RUN = {("pip",): "installing: this suite runs inside that install",
           ("python", "-m", "pytest"): "the test suite itself"}
SMOKE = ("bin/train.py", "configs/smoke_cpu.yaml")
SMOKE_STEPS = ["--set", "steps=100"]
DEEPSPEED_LOG_LINE = re.compile(r"^\[[0-9-]+ [0-9:,]+\] \[(INFO|WARNING)\] ", re.MULTILINE)
PYTHON_WARNING = re.compile(r"\b[A-Z]\w*Warning: ")


def checked_commands(text: str) -> list[list[str]]:
    """The argv of every command in the README's checked blocks, in order (`a && b` gives two), comments dropped."""
    lines, commands = text.splitlines(), []
    for i, line in enumerate(lines):
        if not line.startswith(MARK):
            continue
        assert lines[i + 1].startswith("```"), f"README.md line {i + 1}: {MARK} must be followed by a fenced block"
        j, logical = i + 2, ""
        while not lines[j].startswith("```"):
            logical += lines[j]
            j += 1
            if logical.endswith("\\"):  # a continued line
                logical = logical[:-1]
                continue
            argv, logical = shlex.split(logical, comments=True), ""
            while argv:
                cut = argv.index("&&") if "&&" in argv else len(argv)
                commands.append(argv[:cut])
                argv = argv[cut + 1:]
    return commands


def not_run(argv: list[str]) -> str | None:
    """Why ARGV is left out, or None when it runs."""
    return next((why for head, why in NOT_RUN.items() if tuple(argv[:len(head)]) == head), None)


def runnable(argv: list[str]) -> list[str]:
    """ARGV as this check runs it: mt3ds and python through this interpreter, the smoke run shortened."""
    if argv[0] == "mt3ds":
        out = [sys.executable, "-m", "mt3ds", *argv[1:]]
    elif argv[0] == "python":
        out = [sys.executable, *argv[1:]]
    else:
        raise AssertionError(f"README command {shlex.join(argv)}: this check does not know how to run {argv[0]!r}")
    if all(part in argv for part in SMOKE):
        out += SMOKE_STEPS
    return out


def readme_commands() -> list[list[str]]:
    return checked_commands((REPO / "README.md").read_text(encoding="utf-8"))


def test_the_checked_blocks_hold_the_cpu_chain_and_every_line_is_runnable():
    commands = readme_commands()
    run = [c for c in commands if not_run(c) is None]
    for argv in run:
        runnable(argv)  # a command this check cannot run fails here, in the quick suite
    steps = [" ".join(c[:2]) for c in run]
    want = ["mt3ds transcribe", "mt3ds synth", "mt3ds shard", "python bin/train.py", "mt3ds export",
            "mt3ds transcribe", "mt3ds evaluate"]
    assert steps == want, steps
    assert sum(all(part in c for part in SMOKE) for c in run) == 1
    assert [c[0] for c in commands if not_run(c)] == ["pip", "pip", "python"]  # set-up and the suite only


def test_smoke_config_recipe_is_the_readmes():
    """configs/smoke_cpu.yaml's comment shows how to make its shards: the same lines as the README's."""
    recipe = [shlex.split(line.lstrip("# "), comments=True)
              for line in (REPO / "configs" / "smoke_cpu.yaml").read_text(encoding="utf-8").splitlines()
              if line.startswith("#   ")]
    assert len(recipe) >= 3 and all(c in readme_commands() for c in recipe), recipe


def _fresh_copy(dest: Path) -> Path:
    """The repository's files as a clone has them: tracked, and new files git does not ignore (uncommitted work)."""
    try:
        listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the files of a fresh clone are unknown")
    for name in filter(None, listed.decode("utf-8").split("\0")):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.mark.slow
def test_readme_commands_run_in_order_and_again(tmp_path):
    from synth_fixtures import need_fluidsynth

    need_fluidsynth()  # the synth line needs FluidSynth and its banks
    clone = _fresh_copy(tmp_path / "clone")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                             "MASTER_PORT", "MT3DS_DEEPSPEED_LOG")}
    env["PYTHONPATH"] = str(clone)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads on a shared 2-core box cost 10x
    commands = [c for c in readme_commands() if not_run(c) is None]
    outputs = {}
    for attempt in ("first", "again"):
        for argv in commands:
            p = subprocess.run(runnable(argv), cwd=clone, env=env, capture_output=True, text=True,
                               stdin=subprocess.DEVNULL, timeout=900)
            output = p.stdout + p.stderr
            where = f"{attempt} run of `{shlex.join(argv)}` (exit {p.returncode}):\n{output[-3000:]}"
            assert p.returncode == 0 and "Traceback" not in output, where
            assert not DEEPSPEED_LOG_LINE.search(output) and not PYTHON_WARNING.search(output), where
            outputs[attempt, argv[1]] = output
    assert re.search(r"\(train [1-9]\d*, validation [1-9]\d*, test [1-9]\d*\)", outputs["first", "synth"])
    assert "rendered now 0" in outputs["again", "synth"]
    assert outputs["again", "shard"].count("(complete)") == 3  # train, validation, test
    assert "nothing to train" in outputs["again", "bin/train.py"]
    assert (clone / "out" / "example.mid").is_file() and (clone / "out" / "smoke_cpu.mid").is_file()
    assert not (clone / "example.mid").exists()  # the main job's output stays out of the repository root
