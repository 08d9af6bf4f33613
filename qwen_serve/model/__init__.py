"""The model deployment (one batching Engine per replica) and the plain results it returns."""

from .results import ReplicaBusy, ResultSegment, StreamItem, StreamStarted, TextDelta, TranscriptResult
from .server import ModelServer

__all__ = [
    "ModelServer",
    "ReplicaBusy",
    "ResultSegment",
    "StreamItem",
    "StreamStarted",
    "TextDelta",
    "TranscriptResult",
]
