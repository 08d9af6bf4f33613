"""The model deployment (one Engine per replica) and the plain results it returns."""

from .results import ResultSegment, StreamItem, StreamStarted, TextDelta, TranscriptResult
from .server import ModelServer

__all__ = ["ModelServer", "ResultSegment", "StreamItem", "StreamStarted", "TextDelta", "TranscriptResult"]
