"""The inference engine: libqwen (C) through ctypes, plus tokenizer and prompt."""

from .engine import Engine, TranscriptionStream
from .types import Segment, Timings, Transcription, Usage

__all__ = ["Engine", "Segment", "Timings", "Transcription", "TranscriptionStream", "Usage"]
