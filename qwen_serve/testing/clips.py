"""Deterministic test audio (16 kHz mono float32), shared by tests and benchmarks."""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Harmonics of a gliding pitch under a syllable-rate envelope, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voice = np.sin(phase) + 0.5 * np.sin(2 * phase) + 0.3 * np.sin(3 * phase)
    envelope = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None)
    return (0.25 * voice * envelope + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
