"""Aligner: word times for a transcript, from Qwen3-ForcedAligner run in libqwen.

    with Aligner("models/qwen3-forcedaligner-0.6b") as aligner:
        words = aligner.align(pcm, "Hello, world.", "English")            # clips up to 180 s
        result = engine.transcribe(pcm)
        words = aligner.align_transcription(pcm, result)                  # any length, chunk by chunk

The text side (word splitting as the official processor does it, the
prompt, repairing non-monotonic times) is alignment.py; libqwen runs one
forward pass and gives the time bin of every `<timestamp>` marker. Long audio
is aligned chunk by chunk, on the chunks the transcription was decoded in
(at most 60 s by default; the official package aligns chunks of up to
180 s): each chunk's words are shifted by its start, and their spans point
into the whole transcript. One Aligner runs one alignment at a time (calls
from several threads wait for each other).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._native import NativeModel
from .alignment import AlignedWord, AlignerText
from .chunking import SAMPLE_RATE

MAX_ALIGN_SECONDS = 180.0
"""Longest audio aligned in one pass, as the official package cuts it."""

__all__ = ["MAX_ALIGN_SECONDS", "Aligner"]


class Aligner:
    """A Qwen3-ForcedAligner checkpoint directory loaded into libqwen."""

    def __init__(
        self,
        model_dir: str | Path,
        threads: int | None = None,
        isa: str = "auto",
        precision: str = "exact",
        weight_cache: str | Path | None = None,
    ):
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").exists():
            raise FileNotFoundError(f"no forced-aligner checkpoint at {self.model_dir} (config.json missing)")
        self.text = AlignerText(self.model_dir)
        # 13 audio tokens a second, and a word at least every 0.1 s, each word 1-3 tokens + 2 markers
        max_context = int(MAX_ALIGN_SECONDS * (13 + 10 * 5)) + 64
        self.native = NativeModel(
            self.model_dir,
            threads=threads,
            isa=isa,
            precision=precision,
            max_context=max_context,
            weight_cache=weight_cache,
        )
        if not self.native.is_aligner:
            self.native.close()
            raise ValueError(
                f"{self.model_dir} is not a forced-aligner checkpoint (no classify_num in config.json)"
            )
        self._lock = threading.Lock()

    def align(
        self,
        pcm: np.ndarray,
        text: str,
        language: str | None,
        time_offset: float = 0.0,
        char_offset: int = 0,
        cancelled: threading.Event | None = None,
    ) -> list[AlignedWord]:
        """The words of `text` (spoken in `pcm`, at most MAX_ALIGN_SECONDS) with their times in
        seconds (+ time_offset) and their spans in `text` (+ char_offset). No words: []."""
        pcm = np.ascontiguousarray(pcm, dtype=np.float32)
        if pcm.ndim != 1:
            raise ValueError("pcm must be 1-D (mono, 16 kHz)")
        if pcm.size > MAX_ALIGN_SECONDS * SAMPLE_RATE:
            raise ValueError(
                f"{pcm.size / SAMPLE_RATE:.1f} s of audio: align at most {MAX_ALIGN_SECONDS:.0f} s at once "
                "(align_transcription aligns a long transcription chunk by chunk)"
            )
        words, ids = self.text.prompt(text, language, self.native.audio_token_count(pcm.size))
        if not words:
            return []
        should_abort = cancelled.is_set if cancelled is not None else None
        with self._lock:
            classes = self.native.align(pcm, ids, should_abort=should_abort)
        return self.text.words(text, words, classes, time_offset, char_offset)

    def align_transcription(
        self, pcm: np.ndarray, transcription: Any, language: str | None = None
    ) -> list[AlignedWord]:
        """Words of a transcription (the engine's Transcription, or anything with .text, .language
        and .segments of .start, .end, .text), aligned chunk by chunk on its own segments."""
        chunks = [(s.start, s.end, s.text) for s in transcription.segments]
        return self.align_chunks(pcm, transcription.text, chunks, language or transcription.language)

    def align_chunks(
        self,
        pcm: np.ndarray,
        text: str,
        chunks: Sequence[tuple[float, float, str]],
        language: str | None,
        cancelled: threading.Event | None = None,
    ) -> list[AlignedWord]:
        """Words of the whole transcript `text`, whose audio chunks (start s, end s, chunk text) were
        transcribed one by one and joined into `text` in order: times in the whole audio, spans in
        `text`."""
        out: list[AlignedWord] = []
        position = 0
        for start, end, chunk_text in chunks:
            found = text.find(chunk_text, position) if chunk_text else -1
            if found < 0:  # not a piece of the transcript: nothing to place its words in
                continue
            position = found + len(chunk_text)
            a, b = round(start * SAMPLE_RATE), round(end * SAMPLE_RATE)
            out += self.align(pcm[a:b], chunk_text, language, start, found, cancelled)
            if cancelled is not None and cancelled.is_set():
                break
        return out

    # ---- life cycle -------------------------------------------------------
    def close(self) -> None:
        self.native.close()

    def __enter__(self) -> Aligner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
