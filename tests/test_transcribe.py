"""`mt3ds transcribe`: the whole command with a tiny model on synthetic files, exact stitching with an oracle
decoder, output naming, and each bad input."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from mt3ds.cli import cli, main
from mt3ds.config import AudioConfig
from mt3ds.errors import UserError
from mt3ds.model.config import ModelConfig
from mt3ds.model.io import model_meta, save_model
from mt3ds.model.transcriber import Transcriber
from mt3ds.tokens.codec import encode_notes
from mt3ds.tokens.frames import N_KEYS
from mt3ds.tokens.midi import read_midi
from mt3ds.tokens.notes import Notes
from mt3ds.transcribe import Decoded, Pipeline, parse_instruments

SR = 16000


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A tiny random model with short decodes (max_tokens 48) so the whole command runs in a second or two; with
    the aux frame head, so the command takes its default, hybrid path (--notes frames)."""
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", max_tokens=48, conditioning="decoder_pool", aux_frame_loss=True)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(Transcriber(cfg).state_dict(), path, model_meta(cfg))
    return path


def tones(seconds, rate=SR, channels=1, freqs=(440.0, 660.0)):
    t = np.arange(int(seconds * rate)) / rate
    x = sum(0.2 * np.sin(2 * np.pi * f * t) * (np.sin(2 * np.pi * 0.5 * t) > 0) for f in freqs)
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("suffix,rate,channels", [(".wav", 44100, 2), (".flac", 22050, 1), (".ogg", 48000, 2),
                                                  (".mp3", 44100, 2)])
def test_whole_command_on_formats_rates_and_channels(tmp_path, model_path, suffix, rate, channels):
    src = tmp_path / f"clip{suffix}"
    sf.write(src, tones(3.0, rate, channels), rate)
    out = tmp_path / "clip.mid"
    result = run("transcribe", src, "-o", out, "--model", model_path, "--quiet", "--instruments", "piano,drums")
    assert result.exit_code == 0, result.output
    notes, _ = read_midi(out)  # a real MIDI file: it parses
    assert (notes.onset >= 0).all() and (notes.onset <= 3.0 + 0.25).all()


def test_folder_in_csv_and_plot_out_one_bad_file_reported(tmp_path, model_path, capsys):
    pytest.importorskip("matplotlib")
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "a.wav", tones(2.5), SR)
    sf.write(folder / "b.flac", tones(1.0), SR)  # shorter than one chunk: zero-padded, transcribed
    (folder / "c.wav").write_text("not audio")
    with pytest.raises(SystemExit) as exit_info:
        main(["transcribe", str(folder), "-o", str(tmp_path / "out"), "--model", str(model_path), "--csv",
              "--plot", "--quiet", "--batch-size", "1"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "c.wav" in err and "1 of 3 inputs failed" in err and "Traceback" not in err
    for name in ("a", "b"):
        assert (tmp_path / "out" / f"{name}.mid").exists()
        assert (tmp_path / "out" / f"{name}.csv").read_text().startswith("onset_s,offset_s,pitch")
        assert (tmp_path / "out" / f"{name}.png").stat().st_size > 1000
    assert not (tmp_path / "out" / "c.mid").exists()


def test_silence_gives_a_valid_midi_and_no_error(tmp_path, model_path):
    sf.write(tmp_path / "silence.wav", np.zeros(SR * 3, dtype=np.float32), SR)
    result = run("transcribe", tmp_path / "silence.wav", "-o", tmp_path / "s.mid", "--model", model_path, "--quiet")
    assert result.exit_code == 0 and (tmp_path / "s.mid").exists()


@pytest.mark.parametrize("make,message", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk"), "unreadable audio"),
    (lambda p: sf.write(p, np.array([0.1, np.nan, 0.2] * 8000, dtype=np.float32), SR, subtype="FLOAT"), "NaN"),
])
def test_bad_files_are_one_line_errors(tmp_path, model_path, capsys, make, message):
    src = tmp_path / "bad.wav"
    make(src)
    with pytest.raises(SystemExit) as exit_info:
        main(["transcribe", str(src), "-o", str(tmp_path / "o.mid"), "--model", str(model_path), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code != 0 and message in err and str(src) in err and "\n" not in err


def test_unknown_instrument_lists_accepted_names():
    with pytest.raises(UserError, match="unknown instrument 'kazoo'.*piano") as err:
        parse_instruments("piano,kazoo")
    assert err.value.exit_code == 2
    assert parse_instruments("drums, 33,piano") == [0, 33, 128]


EXAMPLE = Path(__file__).resolve().parent.parent / "mt3ds" / "assets" / "example_recording.flac"
BUNDLED_ONSET_F1_FLOOR = 0.5  # the bundled model scores 0.621 on this file; the floor catches a broken bundle


@pytest.mark.slow
def test_bundled_model_transcribes_the_bundled_example(tmp_path):
    """The README's main command: no --model, the bundled 20 s example -> a General MIDI file that scores against
    the example's reference MIDI (mt3ds evaluate) above a floor."""
    from mt3ds.evaluate import evaluate
    from mt3ds.model.io import read_meta
    from mt3ds.transcribe import DEFAULT_MODEL

    assert DEFAULT_MODEL.is_file() and DEFAULT_MODEL.stat().st_size <= 50 * 2 ** 20
    meta = read_meta(DEFAULT_MODEL)
    assert meta["model_config"]["conditioning"] == "encoder_film" and meta["model_config"]["note_heads"]
    assert meta["training"]["steps"] > 0 and meta["reading"]["onset_threshold"] > 0  # settings chosen on validation
    out = tmp_path / "example.mid"
    result = run("transcribe", EXAMPLE, "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert "example_recording.flac ->" in result.output
    pooled = evaluate(EXAMPLE.with_suffix(".mid"), out)["pooled"]
    assert pooled["onset"]["f1"] >= BUNDLED_ONSET_F1_FLOOR, pooled["onset"]


def test_several_inputs_need_an_output_folder(tmp_path, model_path):
    for n in ("a", "b"):
        sf.write(tmp_path / f"{n}.wav", tones(0.5), SR)
    with pytest.raises(SystemExit) as exit_info:
        main(["transcribe", str(tmp_path / "a.wav"), str(tmp_path / "b.wav"), "-o", str(tmp_path / "x.mid"),
              "--model", str(model_path)])
    assert exit_info.value.code == 2


def test_chunks_are_stitched_in_time_with_an_oracle_decoder(model_path, monkeypatch):
    """Replace the network's output with the true tokens of each chunk: the command's chunking, time encoding and
    stitching must then give back the notes, including one held across three chunks."""
    pipeline = Pipeline(model_path)
    cfg = AudioConfig()
    truth = Notes([0.1, 1.0, 2.5, 4.3], [0.6, 5.0, 3.0, 4.4], [60, 64, 67, 38], [80, 90, 70, 100], [0, 33, 0, 128])
    audio = np.zeros(int(5.5 * SR), dtype=np.float32)
    n_chunks = -(-len(audio) // cfg.chunk_samples)
    expected = encode_notes(truth, n_chunks=n_chunks, time_encoding=pipeline.time_encoding)
    calls = []

    def oracle(chunks, programs=None, batch_size=None, beam=1, use_cache=True, progress=None, with_rolls=False,
               notes_from=None):
        calls.append(len(chunks))
        assert not with_rolls and notes_from == "tokens"
        return Decoded(expected.chunks())

    monkeypatch.setattr(pipeline, "decode_chunks", oracle)
    notes, chunks = pipeline.transcribe_audio(audio, "oracle", notes_from="tokens")
    assert calls == [chunks] == [n_chunks]
    np.testing.assert_allclose(notes.onset, truth.onset, atol=0.005)
    np.testing.assert_allclose(notes.offset[~notes.is_drum], truth.offset[~truth.is_drum], atol=0.005)
    assert notes.program.tolist() == truth.program.tolist()


def test_frames_path_with_an_oracle_head_and_decoder(model_path, monkeypatch):
    """--notes frames: give the head's output the true rolls of each chunk and the decoder the true tokens: the
    pitched notes come back from the rolls to within a frame, across chunk boundaries, with the decoded programs,
    and the decoded drums are kept."""
    from mt3ds.tokens.frames import frame_targets

    pipeline = Pipeline(model_path)
    assert pipeline.has_frame_head and pipeline.notes_source(None) == "hybrid"
    cfg = AudioConfig()
    truth = Notes([0.1, 1.0, 2.5, 4.3, 1.5], [0.6, 5.0, 3.0, 4.4, 1.6], [60, 64, 67, 38, 72], [80, 90, 70, 100, 64],
                  [0, 33, 0, 128, 73])
    audio = np.zeros(int(5.5 * SR), dtype=np.float32)
    n_chunks = -(-len(audio) // cfg.chunk_samples)
    canonical = encode_notes(truth, n_chunks=n_chunks, time_encoding="delta").chunks()
    tokens = encode_notes(truth, n_chunks=n_chunks, time_encoding=pipeline.time_encoding).chunks()
    targets = [frame_targets(ids) for ids in canonical]
    rolls = np.stack([np.stack(r, axis=1) for r in targets]).astype(np.float16)  # [chunks, frames, 2, N_KEYS]

    def oracle(chunks, programs=None, batch_size=None, beam=1, use_cache=True, progress=None, with_rolls=False,
               notes_from=None):
        assert notes_from == "hybrid"
        return Decoded(tokens, rolls)

    monkeypatch.setattr(pipeline, "decode_chunks", oracle)
    notes, _ = pipeline.transcribe_audio(audio, "oracle")
    order = np.argsort(truth.onset)
    frame = pipeline.frame_seconds
    np.testing.assert_allclose(notes.onset, truth.onset[order], atol=frame)
    pitched = ~truth.is_drum[order]
    np.testing.assert_allclose(notes.offset[pitched], truth.offset[order][pitched], atol=frame)
    assert notes.pitch.tolist() == truth.pitch[order].tolist()
    assert notes.program.tolist() == truth.program[order].tolist()


def test_notes_from_frames_needs_the_head(tmp_path, model_path, capsys):
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", max_tokens=48, aux_frame_loss=False)
    no_head = tmp_path / "no_head.safetensors"
    save_model(Transcriber(cfg).state_dict(), no_head, model_meta(cfg))
    src = tmp_path / "a.wav"
    sf.write(src, tones(0.5), SR)
    with pytest.raises(SystemExit) as exit_info:
        main(["transcribe", str(src), "-o", str(tmp_path / "a.mid"), "--model", str(no_head), "--notes", "frames"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "no note heads" in err and "Traceback" not in err
    assert not (tmp_path / "a.mid").exists()
    assert Pipeline(no_head).notes_source(None) == "tokens"
    ok = run("transcribe", src, "-o", tmp_path / "b.mid", "--model", model_path, "--notes", "tokens", "--quiet")
    assert ok.exit_code == 0, ok.output


def test_decode_chunks_batches_agree(model_path):
    pipeline = Pipeline(model_path)
    chunks = np.random.default_rng(0).normal(0, 0.05, (3, AudioConfig().chunk_samples)).astype(np.float32)
    one = pipeline.decode_chunks(chunks, batch_size=1)
    all_ = pipeline.decode_chunks(chunks, batch_size=3, with_rolls=True)
    assert [a.tolist() for a in one.tokens] == [b.tolist() for b in all_.tokens]
    assert all(seq[-1] == 1 or len(seq) == 48 for seq in one.tokens)
    # rolls only when asked: one [frames, 2, N_KEYS] per chunk, float16 (an hour of them is held whole)
    assert one.rolls is None and all_.rolls.shape == (3, 256, 2, N_KEYS) and all_.rolls.dtype == np.float16
    assert pipeline.decode_chunks(chunks[:0], with_rolls=True).rolls.shape == (0, 256, 2, N_KEYS)


def test_bench_quality_scores_a_split_with_and_without_instruments(tmp_path, model_path):
    from dataset_fixtures import make_slakh_track

    from mt3ds.bench.quality import bench_quality

    for i in (1, 2):
        stems = [{"program": 0, "seed": i}, {"program": 33, "seed": 9 + i}]
        make_slakh_track(tmp_path / "slakh" / "test" / f"Track0000{i}", stems, 2.5, seed=i)
    fig = bench_quality(model_path, "slakh", tmp_path / "slakh", "test", basic_pitch=False,
                        readings=("hybrid", "tokens"))
    assert fig["tracks"] == 2 and fig["audio_seconds"] == pytest.approx(5.0, abs=0.1)
    assert fig["mt3ds_notes_from"] == "hybrid"  # the fixture model has the aux head: hybrid, and tokens alone too
    assert fig["reference_tracks_per_file"] == 2 and fig["mt3ds_tokens_tracks_per_file"] >= 0
    for prefix in ("mt3ds_", "mt3ds_with_instruments_", "mt3ds_tokens_"):
        for metric in ("onset", "multi_full", "drum_onset"):
            f1 = fig[f"{prefix}{metric}_f1"]
            assert f1 is None or 0.0 <= f1 <= 1.0
    assert fig["mt3ds_rtf"] > 0 and fig["basic_pitch_rtf"] is None


@pytest.mark.parametrize("option,value", [("--onset-threshold", "1.5"), ("--frame-threshold", "0"),
                                          ("--drum-threshold", "-0.2")])
def test_thresholds_must_be_probabilities(tmp_path, model_path, capsys, option, value):
    src = tmp_path / "a.wav"
    sf.write(src, tones(0.5), SR)
    with pytest.raises(SystemExit) as exit_info:
        main(["transcribe", str(src), "-o", str(tmp_path / "a.mid"), "--model", str(model_path), option, value])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.endswith(f"{option} must be between 0 and 1 (a probability), not "
                                                      f"{float(value)}") and len(err.splitlines()) == 1


def test_bench_transcribe_times_the_default_reading(model_path):
    from mt3ds.bench.transcribe import bench_transcribe

    fig = bench_transcribe(model=model_path, seconds=3.0, uncached_chunks=1, device="cpu")
    assert fig["notes_from"] == "hybrid" and fig["chunks"] == 2 and fig["tokens_decoded"] >= 2
    assert fig["rtf_hybrid"] > 0 and fig["rtf_tokens"] > 0 and fig["rtf_tokens_batch1"] > 0
    assert fig["rtf_tokens_uncached"] > 0 and "rtf_frames" not in fig  # the fixture model has no note heads


def test_long_file_peak_memory_is_the_child_own(model_path, tmp_path):
    """The figure is the transcribing process's own high-water mark, not the parent's pages it was forked with: a
    parent holding a large array does not raise it."""
    from mt3ds.bench.transcribe import _peak_rss_mb

    small = _peak_rss_mb(tmp_path, model_path, 0.05, tmp_path)
    ballast = np.ones(600 * 2**20 // 8)  # 600 MB resident in this (parent) process
    heavy = _peak_rss_mb(tmp_path, model_path, 0.05, tmp_path)
    assert ballast.sum() > 0 and 100 < heavy < small + 300
    assert (tmp_path / "long.mid").is_file()


def test_chunks_view_cuts_rows_as_chunk_does():
    from mt3ds.data.audio import chunk
    from mt3ds.transcribe import Chunks

    cfg = AudioConfig()
    audio = np.random.default_rng(0).standard_normal(3 * cfg.chunk_samples + 123).astype(np.float32)
    whole = chunk(audio, cfg)
    view = Chunks(audio, cfg.chunk_samples)
    assert len(view) == len(whole) == 4
    for rows in (slice(0, 2), slice(2, 4), slice(3, 10), slice(0, 32)):
        np.testing.assert_array_equal(view[rows], whole[rows])


def test_default_batch_is_bounded(model_path):
    from mt3ds.transcribe import CPU_BATCH, GPU_BATCH

    pipeline = Pipeline(model_path, "cpu")
    assert pipeline.default_batch() == CPU_BATCH
    pipeline.device = torch.device("cuda")  # only the choice is read: nothing runs on it
    assert pipeline.default_batch() == GPU_BATCH <= 64


def test_progress_bar_starts_with_its_total(tmp_path, model_path, capsys):
    src = tmp_path / "a.wav"
    sf.write(src, tones(5.0), SR)  # 3 chunks
    main_args = ["transcribe", str(src), "-o", str(tmp_path / "a.mid"), "--model", str(model_path)]
    main(main_args)  # returns on success
    err = capsys.readouterr().err
    # every state of the bar, the first included, shows the total: a bar without one reads "0chunk [00:00, ...]"
    states = [line for line in err.replace("\r", "\n").splitlines() if "chunk" in line]
    assert states and all("/3 [" in line for line in states), err



def test_min_gap_out_of_range_is_a_usage_error(tmp_path, model_path, capsys):
    src = tmp_path / "a.wav"
    sf.write(src, tones(0.5), SR)
    with pytest.raises(SystemExit) as exit_info:
        main(["transcribe", str(src), "-o", str(tmp_path / "a.mid"), "--model", str(model_path), "--min-gap", "5"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "--min-gap must be between 0 and 1 second" in err
    assert len(err.splitlines()) == 1
