"""libqwen's front end (DFT and mel filter bank run on the matmul kernels) against numpy, per kernel set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qwen_serve.engine._native import NativeModel, exact_isas
from qwen_serve.testing.clips import speech_like

N_FFT, HOP, SR = 400, 160, 16000


def slaney_mel_filters(n_mels: int) -> np.ndarray:
    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        logstep = 27.0 / np.log(6.4)
        return np.where(f < 1000.0, 3.0 * f / 200.0, 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) * logstep)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return np.where(m < 15.0, 200.0 * m / 3.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (m - 15.0)))

    freqs = np.linspace(0, SR / 2, N_FFT // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(np.array(0.0)), hz_to_mel(np.array(SR / 2)), n_mels + 2))
    down = (freqs[None, :] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    up = (edges[2:, None] - freqs[None, :]) / (edges[2:] - edges[1:-1])[:, None]
    filters = np.maximum(0.0, np.minimum(down, up))
    return filters * (2.0 / (edges[2:] - edges[:-2]))[:, None]


def numpy_log_mel(pcm: np.ndarray, n_mels: int = 128) -> np.ndarray:
    x = np.pad(pcm.astype(np.float64), N_FFT // 2, mode="reflect")
    n_frames = pcm.size // HOP
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    frames = np.stack([x[i * HOP : i * HOP + N_FFT] * window for i in range(n_frames)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    mel = np.log10(np.maximum(slaney_mel_filters(n_mels) @ power.T, 1e-10))
    return (np.maximum(mel, mel.max() - 8.0) + 4.0) / 4.0


@pytest.mark.parametrize("isa", exact_isas())
@pytest.mark.parametrize("seconds", [0.05, 1.0, 7.3])
def test_mel_equals_numpy(tiny_dir: Path, isa: str, seconds: float) -> None:
    pcm = speech_like(seconds, seed=7)
    with NativeModel(tiny_dir, threads=2, isa=isa) as m:
        ours = m.mel(pcm)
    ref = numpy_log_mel(pcm)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 2e-4
