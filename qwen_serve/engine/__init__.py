"""The inference engine: libqwen (C) through ctypes, plus tokenizer and prompt."""

from .engine import Engine, EngineBusy, TranscriptionStream
from .types import Segment, Timings, Transcription, Usage

__all__ = ["Engine", "EngineBusy", "Segment", "Timings", "Transcription", "TranscriptionStream", "Usage"]
