"""The inference engine: libqwen (C) through ctypes, plus tokenizer and prompt."""

from .alignment import AlignedWord, AlignerText, MissingDependencyError
from .engine import Engine, EngineBusy, TranscriptionStream
from .types import Segment, Timings, Transcription, Usage

__all__ = [
    "AlignedWord",
    "AlignerText",
    "Engine",
    "EngineBusy",
    "MissingDependencyError",
    "Segment",
    "Timings",
    "Transcription",
    "TranscriptionStream",
    "Usage",
]
