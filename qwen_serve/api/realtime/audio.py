"""Realtime input audio: OpenAI's wire formats -> 16 kHz mono int16, chunk by chunk.

    decoder = AudioDecoder("audio/pcm")      # or "audio/pcmu", "audio/pcma"
    pcm16k = decoder.feed(raw_bytes)         # int16 at 16 kHz, as much as is ready
    pcm16k = decoder.flush()                 # the resampler's tail (at a commit)

`audio/pcm` is 16-bit little-endian mono at 24 kHz (the only rate OpenAI
accepts); `audio/pcmu` and `audio/pcma` are G.711 mu-law and A-law at 8 kHz,
expanded with 256-entry tables (ITU-T G.711; the stdlib's `audioop` is gone
in Python 3.13). soxr resamples as a stream, so a chunk boundary never
clicks. The session keeps audio at 16 kHz int16 (32 KB a second, half of
float32); `to_float32` converts an item for the model.
"""

from __future__ import annotations

import numpy as np
import soxr

SAMPLE_RATE = 16000

FORMAT_RATES = {"audio/pcm": 24000, "audio/pcmu": 8000, "audio/pcma": 8000}
"""Input formats and their sample rates."""

BETA_FORMATS = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}
"""The beta API's `input_audio_format` names."""


def _ulaw_table() -> np.ndarray:
    """G.711 mu-law byte -> linear 16-bit sample."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    magnitude = (((u & 0x0F) << 3) + 0x84) << exponent
    sample = magnitude - 0x84
    return np.where(u & 0x80, -sample, sample).astype(np.int16)


def _alaw_table() -> np.ndarray:
    """G.711 A-law byte -> linear 16-bit sample."""
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    sample = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(a & 0x80, sample, -sample).astype(np.int16)


ULAW = _ulaw_table()
ALAW = _alaw_table()


class AudioFormatError(ValueError):
    """Bytes that cannot be audio of the session's format (message is client-safe)."""


class AudioDecoder:
    """One session's input stream in one format, resampled to 16 kHz int16."""

    def __init__(self, fmt: str):
        if fmt not in FORMAT_RATES:
            raise AudioFormatError(f"unsupported audio format '{fmt}'")
        self.format = fmt
        self.rate = FORMAT_RATES[fmt]
        self._resampler = soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")

    def input_seconds(self, n_bytes: int) -> float:
        """Duration of `n_bytes` of this format."""
        bytes_per_sample = 2 if self.format == "audio/pcm" else 1
        return n_bytes / bytes_per_sample / self.rate

    def feed(self, data: bytes) -> np.ndarray:
        """Linear samples of `data` at 16 kHz (int16), as far as the resampler has them."""
        if self.format == "audio/pcm":
            if len(data) % 2:
                raise AudioFormatError(
                    "audio/pcm is 16-bit samples: an append must hold an even number of bytes"
                )
            linear = np.frombuffer(data, dtype="<i2")
        else:
            table = ULAW if self.format == "audio/pcmu" else ALAW
            linear = table[np.frombuffer(data, dtype=np.uint8)]
        return _to_int16(self._resampler.resample_chunk(linear.astype(np.float32) / 32768.0))

    def flush(self) -> np.ndarray:
        """The resampler's tail; the stream starts afresh after it."""
        tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._resampler.clear()
        return _to_int16(tail)


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def to_float32(pcm: np.ndarray) -> np.ndarray:
    """16 kHz int16 -> the float32 in [-1, 1) the model takes."""
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)
