"""The inference engine: libqwen (C) through ctypes, plus tokenizer and prompt."""

from .aligner import Aligner
from .alignment import AlignedWord, AlignerText, MissingDependencyError
from .engine import Engine, EngineBusy, TranscriptionStream
from .types import Segment, Timings, Transcription, Usage

__all__ = [
    "AlignedWord",
    "Aligner",
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
