"""Log-mel features against librosa: the Slaney mel scale and filterbank, and a full log-mel of a sine; shapes,
buffers, autocast, and SpecAugment time masks."""
from __future__ import annotations

import warnings

import librosa
import numpy as np
import pytest
import torch

from mt3ds.config import FeatureConfig
from mt3ds.model.features import LogMel, hz_to_mel, mel_filterbank, mel_to_hz, time_mask

SR = 16000


def assert_close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5, rtol: float = 1.3e-6) -> None:
    # np.testing, not torch.testing: the latter imports torch.distributed.tensor, whose module scan trips over
    # librosa's lazily loaded resampy (no pkg_resources on this machine)
    np.testing.assert_allclose(a.detach().cpu().numpy(), b.detach().cpu().numpy(), atol=atol, rtol=rtol)


@pytest.fixture(scope="module")
def librosa_fb() -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # librosa warns about narrow low bands; ours are the same
        return librosa.filters.mel(sr=SR, n_fft=2048, n_mels=512, fmin=20, fmax=8000, htk=False, norm="slaney")


@pytest.fixture(scope="module")
def sine() -> np.ndarray:
    t = np.arange(32768) / SR
    return (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


def test_slaney_mel_scale_matches_librosa():
    hz = np.array([0.0, 20.0, 500.0, 999.0, 1000.0, 1001.0, 4000.0, 8000.0])
    np.testing.assert_allclose(hz_to_mel(hz), librosa.hz_to_mel(hz, htk=False), rtol=1e-12, atol=1e-12)
    mel = np.linspace(0, 45, 19)
    np.testing.assert_allclose(mel_to_hz(mel), librosa.mel_to_hz(mel, htk=False), rtol=1e-12)
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz)), hz, atol=1e-9)


def test_filterbank_matches_librosa(librosa_fb):
    fb = mel_filterbank(SR, 2048, 512, 20.0, 8000.0)
    assert fb.shape == (512, 1025) and fb.dtype == np.float32
    np.testing.assert_allclose(fb, librosa_fb, rtol=1e-5, atol=1e-7)


def test_log_mel_of_a_sine_matches_librosa(librosa_fb, sine):
    out = LogMel()(torch.from_numpy(sine)[None])
    assert out.shape == (1, 256, 512) and out.dtype == torch.float32
    spec = np.abs(librosa.stft(sine.astype(np.float64), n_fft=2048, hop_length=128, window="hann", center=True,
                               pad_mode="reflect"))
    assert spec.shape[1] == 257  # center=True: 257 frames, the first 256 are kept
    ref = np.log(librosa_fb.astype(np.float64) @ spec + 1e-5).T[:256]
    got = out[0].double().numpy()
    loud = ref > np.log(1e-3)  # float32 STFT leakage differs near the floor; compare in linear terms there
    assert loud.mean() > 0.05
    np.testing.assert_allclose(got[loud], ref[loud], atol=2e-3)
    np.testing.assert_allclose(np.exp(got), np.exp(ref), atol=1e-4 * np.exp(ref).max())
    peak_band = int(np.argmax(got[128]))
    centre = mel_to_hz(np.linspace(hz_to_mel(20.0), hz_to_mel(8000.0), 514)[peak_band + 1])
    assert abs(centre - 440.0) < SR / 2048  # within one FFT bin (7.8 Hz) of the tone


def test_batches_buffers_devices_and_autocast(sine):
    m = LogMel()
    assert dict(m.state_dict()) == {}  # filterbank and window are non-persistent buffers
    assert {n for n, _ in m.named_buffers()} == {"mel_basis", "window"}
    x = torch.from_numpy(np.stack([sine, 0.1 * sine, np.zeros_like(sine)]))
    out = m.to(torch.device("cpu"))(x)
    assert out.shape == (3, FeatureConfig().frames, FeatureConfig().n_mels)
    assert_close(out[2], torch.full_like(out[2], float(np.log(1e-5))))  # silence -> log(eps)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = m(x.bfloat16())
    assert under_autocast.dtype == torch.float32  # computed in float32 whatever the autocast
    assert_close(under_autocast, m(x.bfloat16().float()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(sine):
    x = torch.from_numpy(np.stack([sine, 0.3 * sine]))
    cpu = LogMel()(x)
    gpu = LogMel().cuda()(x.cuda()).cpu()
    assert_close(gpu, cpu, atol=1e-3, rtol=1e-4)


def test_spec_augment_time_masks_only_in_training(sine):
    x = torch.from_numpy(np.stack([sine] * 8))
    m = LogMel(spec_augment=True, time_mask_width=48, time_mask_prob=1.0)
    plain = LogMel()(x)
    assert_close(m.eval()(x), plain)  # eval: no masks
    m.train()
    a = m(x, generator=torch.Generator().manual_seed(0))
    b = m(x, generator=torch.Generator().manual_seed(0))
    assert_close(a, b)  # seeded masks
    for i in range(8):
        changed = (a[i] != plain[i]).any(dim=1).nonzero().flatten()
        if len(changed):
            assert changed.max() - changed.min() + 1 == len(changed) <= 48  # one run of at most 48 frames
            assert torch.allclose(a[i, changed], plain[i].mean().expand(len(changed), 512))
    assert sum(bool((a[i] != plain[i]).any()) for i in range(8)) >= 6  # p = 1: (almost) every example masked
    never = time_mask(plain, 48, 0.0, torch.Generator().manual_seed(1))
    assert_close(never, plain)


def test_magnitude_is_the_complex_abs():
    """LogMel takes |STFT| as hypot(re, im) for speed: the same values as torch's complex abs()."""
    spec = torch.stft(torch.randn(3, 32768, generator=torch.Generator().manual_seed(0)), n_fft=2048, hop_length=128,
                      window=torch.hann_window(2048), center=True, return_complex=True)[:, :, :256]
    re_im = torch.view_as_real(spec)
    assert torch.equal(torch.hypot(re_im[..., 0], re_im[..., 1]), spec.abs())
