"""The command line's error rule (mt3ds --help): a command line that cannot run exits 2, a failed run exits 1, and
either way the error is one line naming what is wrong, never a traceback; outputs are checked before any work."""
from pathlib import Path

import pytest
from click.testing import CliRunner

from mt3ds.cli import cli, main
from mt3ds.errors import UserError
from mt3ds.files import check_writable

EXAMPLE_MIDI = Path(__file__).resolve().parent.parent / "mt3ds" / "assets" / "example.mid"
EXAMPLE_AUDIO = EXAMPLE_MIDI.with_name("example_recording.flac")


def run_main(capsys, *argv):
    """(exit code, stderr) of `mt3ds ARGV` through the console entry point."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    return e.value.code, capsys.readouterr().err.strip()


def one_line(err: str) -> bool:
    return err.startswith("mt3ds: error: ") and "\n" not in err and "Traceback" not in err


def test_help_states_the_exit_rule():
    out = CliRunner().invoke(cli, ["--help"]).output
    assert "Exit status: 0 done; 2 the command line" in out and "1 the work failed" in out


@pytest.fixture
def a_file(tmp_path):
    f = tmp_path / "existing_file"
    f.write_text("x")
    return f


@pytest.mark.parametrize("argv", [
    ["transcribe", str(EXAMPLE_AUDIO), "-o", "{file}/x.mid"],
    ["transcribe", str(EXAMPLE_AUDIO), "-o", "{file}/out"],
    ["tokens", str(EXAMPLE_MIDI), "--roundtrip", "{file}/x.mid"],
    ["index", "--dataset", "maestro", "--root", "{tmp}", "-o", "{file}/x.jsonl"],
    ["shard", "--dataset", "maestro", "--root", "{tmp}", "-o", "{file}"],
    ["inspect", "{tmp}", "--sample", "k", "--wav", "{file}/x.wav"],
    ["inspect", "{tmp}", "--sample", "k", "--midi", "{file}/x.mid"],
    ["synth", "--layout", "slakh", "--out", "{file}/synth"],
    ["synth", "--layout", "slakh", "--out", "{tmp}/synth", "--cache", "{file}"],
    ["export", "{tmp}", "-o", "{file}/m.safetensors"],
])
def test_unwritable_outputs_are_refused_before_the_work(argv, tmp_path, a_file, capsys):
    argv = [a.replace("{file}", str(a_file)).replace("{tmp}", str(tmp_path)) for a in argv]
    code, err = run_main(capsys, *argv)
    assert code == 2 and one_line(err) and str(a_file) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing_file"]  # nothing was written


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("argv", [
    ["transcribe", str(EXAMPLE_AUDIO), "-o", "/proc/x.mid"],
    ["inspect", ".", "--sample", "k", "--wav", "/proc/x.wav"],
])
def test_outputs_in_proc_are_refused(argv, capsys):
    code, err = run_main(capsys, *argv)
    assert code == 2 and one_line(err) and "/proc/x." in err


def test_check_writable_cases(tmp_path, a_file):
    check_writable(tmp_path / "new" / "deeper" / "x.mid")  # folders made on the way are fine
    check_writable(tmp_path, folder=True)
    check_writable(a_file)  # replacing a file
    for path, folder, message in [(tmp_path, False, "is a folder"), (a_file, True, "not a folder"),
                                  (a_file / "x.mid", False, "is a file, not a folder")]:
        with pytest.raises(UserError, match=message) as e:
            check_writable(path, folder=folder)
        assert e.value.exit_code == 2
    assert list(tmp_path.iterdir()) == [a_file]  # the probe file is gone


@pytest.mark.parametrize("argv", [
    ["transcribe", str(EXAMPLE_AUDIO), "-o", "{tmp}/x.mid", "--beam", "0"],
    ["transcribe", str(EXAMPLE_AUDIO), "-o", "{tmp}/x.mid", "--batch-size", "0"],
    ["transcribe", "{tmp}/missing.wav", "-o", "{tmp}/x.mid"],
    ["transcribe", str(EXAMPLE_AUDIO), "-o", "{tmp}/x.mid", "--model", "{tmp}/missing.safetensors"],
    ["synth", "--layout", "slakh", "--out", "{tmp}/synth", "--hours", "0"],
    ["synth", "--layout", "slakh", "--out", "{tmp}/synth", "--songs", "1.5"],
    ["shard", "--dataset", "maestro", "--root", "{tmp}", "-o", "{tmp}/out", "--workers", "-1"],
    ["tokens", "{tmp}/missing.mid"],
    ["evaluate", "--ref", "{tmp}/missing", "--est", "{tmp}"],
    ["bench", "tokens", "--repeats", "0"],
    ["bench", "train", "--checkpointing", "maybe"],
    ["bench", "transcribe", "--seconds", "-1"],
])
def test_usage_errors_exit_2_in_one_line(argv, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, err = run_main(capsys, *argv)
    assert code == 2 and one_line(err), err
    assert not (tmp_path / "x.mid").exists() and not (tmp_path / "synth").exists()


def test_a_failed_run_exits_1(tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")  # the command line is fine; the file's content is not
    code, err = run_main(capsys, "transcribe", bad, "-o", tmp_path / "x.mid", "--quiet")
    assert code == 1 and one_line(err) and str(bad) in err


def test_a_write_that_fails_late_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    import errno

    import mt3ds.tokens.cli_tokens as cli_tokens

    target = tmp_path / "x.mid"

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(cli_tokens, "run_tokens", disk_full)
    code, err = run_main(capsys, "tokens", EXAMPLE_MIDI, "--roundtrip", target)
    assert code == 1 and one_line(err) and err.endswith(f"{target}: No space left on device")


def test_plot_without_matplotlib_fails_before_transcribing(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    code, err = run_main(capsys, "transcribe", EXAMPLE_AUDIO, "-o", tmp_path / "x.mid", "--plot", "--quiet")
    assert code == 2 and one_line(err) and "--plot needs matplotlib" in err and "pip install -e '.[plot]'" in err
    assert not (tmp_path / "x.mid").exists()
