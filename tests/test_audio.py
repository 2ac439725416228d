"""The offline audio chain (docs/design.md §2.1): decode/mono/16 kHz, zero-phase high-pass, -23 LUFS with the +-12 dB clamp,
-1 dBFS true-peak ceiling, pre-emphasis, seeded TPDF dither, chunking; silence, NaN, short clips, bad files."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import scipy.signal as ss
import soundfile as sf

from mt3ds.config import AudioConfig
from mt3ds.data import audio as A
from mt3ds.errors import UserError

SR = 16000
CFG = AudioConfig()
PLAIN = dataclasses.replace(CFG, pre_emphasis=0.0, dither=0.0)  # to measure loudness and peaks of the gain alone


def tone(freq: float, seconds: float, amp: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t + np.random.default_rng(seed).uniform(0, 6))).astype(np.float32)


def lufs(x: np.ndarray) -> float:
    return pyloudnorm.Meter(SR).integrated_loudness(np.asarray(x, dtype=np.float64))


def test_load_audio_mixes_down_and_resamples(tmp_path):
    sr = 44100
    left = tone(441.0, 1.5, 0.5, sr)
    stereo = np.stack([left, 0.5 * left], axis=1)
    sf.write(str(tmp_path / "a.flac"), stereo, sr, subtype="PCM_24")
    x = A.load_audio(tmp_path / "a.flac", SR)
    assert x.dtype == np.float32 and x.ndim == 1 and abs(len(x) - 1.5 * SR) <= 1
    # mean of the channels: amplitude 0.75 x 0.5
    assert abs(np.abs(x[2000:-2000]).max() - 0.375) < 0.005
    sf.write(str(tmp_path / "b.wav"), left, SR, subtype="FLOAT")
    np.testing.assert_array_equal(A.load_audio(tmp_path / "b.wav", SR), left)  # already 16 kHz mono: untouched


@pytest.mark.parametrize("name, content, message", [
    ("missing.flac", None, "no such file"),
    ("garbage.flac", b"fLaC" + bytes(range(256)) * 4, "unreadable audio"),
    ("text.wav", b"this is not audio at all", "unreadable audio"),
])
def test_load_audio_errors_name_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message) as e:
        A.load_audio(path, SR)
    assert str(e.value).startswith(str(path))


def test_load_audio_empty_file(tmp_path):
    sf.write(str(tmp_path / "empty.wav"), np.zeros((0, 2), np.float32), 44100)
    with pytest.raises(UserError, match="no audio samples"):
        A.load_audio(tmp_path / "empty.wav", SR)


def test_integrated_loudness_equals_pyloudnorm():
    rng = np.random.default_rng(0)
    for n in (6401, 7000, 3 * SR + 17, 20 * SR):
        x = rng.standard_normal(n) * 0.1 * np.linspace(0.0, 1.0, n) ** 3  # quiet start: the gates matter
        assert A.integrated_loudness(x, SR) == pytest.approx(lufs(x), abs=1e-9)
    assert A.integrated_loudness(np.zeros(SR), SR) == float("-inf")


def test_true_peak_equals_full_oversampling():
    rng = np.random.default_rng(1)
    for x in (rng.standard_normal(30000) * np.exp(-np.arange(30000) / 3000), tone(7000.0, 1.0, 0.3).astype(float),
              np.sign(rng.standard_normal(5000)) * 0.2):
        full = np.abs(ss.resample_poly(x, 4, 1)).max()
        assert A.true_peak(x) == pytest.approx(full, rel=1e-12)
    # an intersample peak above every sample: a sine at fs/4 sampled 45 degrees off its crests
    x = np.sin(np.pi / 2 * np.arange(4000) + np.pi / 4)
    assert np.abs(x).max() < 0.71 and A.true_peak(x) > 0.99


def test_high_pass_removes_dc_and_rumble_with_zero_phase():
    x = tone(1000.0, 2.0, 0.5).astype(float) + 0.3 + tone(5.0, 2.0, 0.3).astype(float)
    y = A.highpass_zero_phase(x, SR, 30.0)
    mid = slice(SR // 2, -SR // 2)
    np.testing.assert_allclose(y[mid], tone(1000.0, 2.0, 0.5)[mid], atol=2e-3)  # same phase, same level
    b, a = ss.butter(2, 30.0, "highpass", fs=SR)
    np.testing.assert_allclose(y, ss.filtfilt(b, a, x), atol=1e-12)


def test_block_by_block_passes_equal_whole_track_ones(monkeypatch):
    """The chain's whole-track passes run in blocks (memory flat in track length): with blocks far shorter than
    the track they still give filtfilt's, pyloudnorm's and full oversampling's numbers, and prepare's samples."""
    rng = np.random.default_rng(5)
    n = 6 * SR + 123
    x = rng.standard_normal(n) * 0.1 * np.linspace(0.2, 1.0, n) ** 2 + 0.01
    whole = A.prepare(x, CFG, "k")
    monkeypatch.setattr(A, "_FILTER_BLOCK", 5000)  # not a multiple of the loudness grid or the true-peak block
    kept = x.copy()
    b, a = ss.butter(2, 30.0, "highpass", fs=SR)
    np.testing.assert_allclose(A.highpass_zero_phase(x, SR, 30.0), ss.filtfilt(b, a, x), atol=1e-12)
    assert np.array_equal(x, kept)  # the caller's array is left alone unless inplace=True
    assert A.integrated_loudness(x, SR) == pytest.approx(lufs(x), abs=1e-9)
    assert A.true_peak(x) == pytest.approx(np.abs(ss.resample_poly(x, 4, 1)).max(), rel=1e-12)
    assert np.array_equal(A.prepare(x, CFG, "k"), whole)


def test_prepare_can_write_its_result_into_the_callers_array():
    """reuse=True (transcribe, whose raw waveform is dead after the chain): the float32 input array holds the
    result, the same samples as a fresh array; any other input is left alone."""
    x = (np.random.default_rng(2).standard_normal(3 * SR) * 0.1).astype(np.float32)
    fresh = A.prepare(x, CFG, "k")
    reused_input = x.copy()
    out = A.prepare(reused_input, CFG, "k", reuse=True)
    assert out is reused_input and np.array_equal(out, fresh)
    as_float64 = x.astype(np.float64)
    out = A.prepare(as_float64, CFG, "k", reuse=True)  # not float32: a new array, the input as it was
    assert out.dtype == np.float32 and np.array_equal(as_float64, x.astype(np.float64))


def test_prepare_brings_loudness_to_target():
    x = tone(440.0, 5.0, 0.05) + tone(1500.0, 5.0, 0.025, seed=1)  # ~ -29 LUFS: +6 dB, inside the clamp
    y = A.prepare(x, PLAIN, "k")
    assert lufs(y) == pytest.approx(-23.0, abs=0.05)
    y = A.prepare(x, CFG, "k")  # pre-emphasis shapes the spectrum after the gain: only the gain is -23 LUFS
    assert y.dtype == np.float32 and len(y) == len(x)


def test_prepare_gain_is_clamped():
    x = tone(440.0, 3.0, 0.0045)  # ~ -50 LUFS: needs +27 dB, gets +12
    y = A.prepare(x, PLAIN, "k")
    mid = slice(SR, 2 * SR)
    assert np.abs(y[mid]).max() / np.abs(x[mid]).max() == pytest.approx(10 ** (12 / 20), rel=2e-3)
    under_gate = tone(440.0, 3.0, 1e-4)  # ~ -83 LUFS: under BS.1770's -70 LUFS gate, treated as silence
    np.testing.assert_allclose(A.prepare(under_gate, PLAIN, "k")[mid], under_gate[mid], atol=1e-6)
    loud = tone(440.0, 3.0, 0.99)  # ~ -3 LUFS: needs -20 dB, gets -12
    y = A.prepare(loud, PLAIN, "k")
    assert np.abs(y[mid]).max() / np.abs(loud[mid]).max() == pytest.approx(10 ** (-12 / 20), rel=2e-3)


def test_prepare_true_peak_ceiling():
    # sparse clicks: low loudness, high peaks, so the -23 LUFS gain would push the true peak over -1 dBFS
    x = np.zeros(4 * SR, np.float32)
    x[::SR // 2] = 0.5
    x[1::SR // 2] = -0.5
    y = A.prepare(x, PLAIN, "k")
    assert lufs(y) < -23.5  # the ceiling, not the loudness target, set the gain
    assert 20 * np.log10(A.true_peak(y.astype(np.float64))) == pytest.approx(-1.0, abs=0.01)


def test_silence_gets_no_gain_and_no_error():
    y = A.prepare(np.zeros(3 * SR, np.float32), CFG, "quiet")
    assert np.abs(y).max() <= 1e-5 and np.abs(y).max() > 0  # the dither alone
    np.testing.assert_array_equal(A.prepare(np.zeros(SR, np.float32), PLAIN, "quiet"), 0.0)
    assert A.prepare(np.full(SR, 0.25, np.float32), PLAIN, "dc").max() < 1e-6  # pure DC is silence too


def test_nan_and_inf_are_errors():
    x = tone(440.0, 1.0, 0.1)
    x[100] = np.nan
    with pytest.raises(UserError, match="track7: audio contains NaN or infinite samples"):
        A.prepare(x, CFG, "track7")
    x[100] = np.inf
    with pytest.raises(UserError, match="NaN or infinite"):
        A.prepare(x, CFG, "track7")


def test_short_clip_is_measured_looped():
    x = tone(440.0, 0.1, 0.05)  # shorter than one 400 ms block, ~ -29 LUFS
    y = A.prepare(x, PLAIN, "short")
    assert lufs(np.tile(y, 8)) == pytest.approx(-23.0, abs=0.3)
    assert len(A.prepare(np.array([0.1], np.float32), CFG, "one")) == 1


def test_pre_emphasis_and_its_inverse():
    x = tone(300.0, 1.0, 0.05) + tone(3000.0, 1.0, 0.05, seed=2)
    plain = A.prepare(x, PLAIN, "k").astype(np.float64)
    emphasized = A.prepare(x, dataclasses.replace(PLAIN, pre_emphasis=0.97), "k").astype(np.float64)
    expected = plain.copy()
    expected[1:] -= 0.97 * plain[:-1]
    np.testing.assert_allclose(emphasized, expected, atol=1e-6)
    np.testing.assert_allclose(A.de_emphasis(emphasized, 0.97), plain, atol=1e-5)


def test_dither_is_seeded_tpdf_from_the_audio_not_its_name():
    x = np.zeros(200000, np.float32)
    a, b = (A.prepare(x, CFG, k) for k in ("track-a", "track-b"))
    np.testing.assert_array_equal(a, b)  # same audio, two names: the same output
    assert np.abs(a).max() <= 1e-5
    # triangular on (-A, A): variance A^2 / 6, and more mass near 0 than at the edges
    assert np.var(a) == pytest.approx(1e-10 / 6, rel=0.02)
    assert (np.abs(a) < 0.5e-5).mean() == pytest.approx(0.75, abs=0.01)
    other = np.zeros(200000, np.float32)
    other[1000] = 0.5  # other audio: another seed, so the dither differs far from the click as well
    assert not np.array_equal(A.prepare(other, CFG, "track-a")[100000:], a[100000:])
    assert A.seed_from_samples(x) == A.seed_from_samples(x.copy()) != A.seed_from_samples(other)


def test_chunk_pads_the_last_chunk():
    x = np.arange(70000, dtype=np.float32)
    c = A.chunk(x, CFG)
    assert c.shape == (3, 32768) and c.dtype == np.float32
    np.testing.assert_array_equal(c.reshape(-1)[:70000], x)
    assert not c.reshape(-1)[70000:].any()
    assert A.chunk(np.ones(32768, np.float32), CFG).shape == (1, 32768)
    assert A.chunk(np.zeros(0, np.float32), CFG).shape == (0, 32768)


def test_long_files_are_streamed_block_by_block_with_identical_samples(tmp_path, monkeypatch):
    import mt3ds.data.audio as audio_mod

    rate = 44100
    x = np.random.default_rng(3).normal(0, 0.1, (rate * 5, 2)).astype(np.float32)
    path = tmp_path / "long.flac"
    sf.write(path, x, rate)
    whole = audio_mod.load_audio(path, 16000)
    monkeypatch.setattr(audio_mod, "STREAM_BLOCK_SECONDS", 0.7)  # 5 s -> 8 blocks
    streamed = audio_mod.load_audio(path, 16000)
    np.testing.assert_array_equal(streamed, whole)


@pytest.mark.slow
def test_same_recording_under_two_names_gives_the_same_notes(tmp_path):
    """The bundled model on the bundled example copied under two names: the chain's dither follows the audio, so
    the notes are the same (they differed, 274 against 277, while the seed came from the name)."""
    import shutil

    from mt3ds.cli import main
    from mt3ds.tokens.midi import read_midi

    example = Path(__file__).resolve().parent.parent / "mt3ds" / "assets" / "example_recording.flac"
    for name in ("example_recording.flac", "another_name.flac"):
        shutil.copyfile(example, tmp_path / name)
    main(["transcribe", str(tmp_path / "example_recording.flac"), str(tmp_path / "another_name.flac"),
          "-o", str(tmp_path / "midi"), "--quiet"])  # returns: exit 0
    a, _ = read_midi(tmp_path / "midi" / "example_recording.mid")
    b, _ = read_midi(tmp_path / "midi" / "another_name.mid")
    assert len(a) > 100
    for field in ("onset", "offset", "pitch", "velocity", "program"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
