"""What the model deployment sends to the ingress: plain data, no engine or Ray types.

The ingress unpickles these, so this module imports nothing heavy (in
particular not the engine and its ctypes binding).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ResultSegment:
    """One audio chunk of the transcript, placed by the chunk boundaries."""

    start: float
    end: float
    text: str
    token_ids: list[int] = field(default_factory=list)
    avg_logprob: float | None = None
    """The mean log-probability of the chunk's generated tokens (requests with logprobs)."""


@dataclass(frozen=True)
class ResultLogprob:
    """A transcript token and its log-probability (requests with include[]=logprobs)."""

    token: str
    logprob: float
    bytes: list[int]
    index: int = 0
    """Its place in the answer's token ids."""


def result_logprobs(items: Any) -> list[ResultLogprob] | None:
    """The engine's TokenLogprob list (duck-typed), or None."""
    if items is None:
        return None
    return [
        ResultLogprob(str(i.token), float(i.logprob), [int(b) for b in i.bytes], int(i.index)) for i in items
    ]


@dataclass(frozen=True)
class ResultWord:
    """A word with its time (from the forced aligner) and its place in the transcript."""

    word: str
    """The word as written in the transcript, without surrounding punctuation."""
    start: float
    """Seconds."""
    end: float
    """Seconds."""
    span: tuple[int, int] = (0, 0)
    """[start, end) of the word in TranscriptResult.text (character offsets)."""


@dataclass(frozen=True)
class TranscriptResult:
    """A finished transcription."""

    text: str
    language: str | None
    """As the model names it ("English"), None when unknown."""
    duration: float
    """Audio seconds."""
    input_tokens: int
    output_tokens: int
    audio_tokens: int
    segments: list[ResultSegment] = field(default_factory=list)
    engine_ms: float = 0.0
    """Wall time the engine spent on the request."""
    words: list[ResultWord] = field(default_factory=list)
    """Word timestamps, in order; empty when the request did not ask for them (no aligner run)."""
    logprobs: list[ResultLogprob] | None = None
    """Each transcript token's log-probability, when the request asked for them."""

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @classmethod
    def from_transcription(cls, t: Any) -> TranscriptResult:
        """From the engine's Transcription (duck-typed: no engine import here)."""
        return cls(
            text=t.text,
            language=t.language,
            duration=float(t.duration),
            input_tokens=int(t.usage.input_tokens),
            output_tokens=int(t.usage.output_tokens),
            audio_tokens=int(t.usage.audio_tokens),
            segments=[
                ResultSegment(s.start, s.end, s.text, list(s.token_ids), getattr(s, "avg_logprob", None))
                for s in t.segments
            ],
            engine_ms=float(t.timings.total_ms),
            words=[
                ResultWord(w.word, float(w.start), float(w.end), (int(w.span[0]), int(w.span[1])))
                for w in (getattr(t, "words", None) or ())
            ],
            logprobs=result_logprobs(getattr(t, "logprobs", None)),
        )


class AlignmentUnsupported(Exception):
    """The aligner cannot split this transcript into words (a language whose word splitter is not
    installed on the replica); the message says what to install. The ingress answers 400."""


class ReplicaBusy(Exception):
    """The replica's engine cannot take the request now (its waiting line is full, or the request
    needs more KV cache than the whole budget). Raised before anything has started; the ingress
    answers 503 + Retry-After, as for Serve's own backpressure."""


@dataclass(frozen=True)
class StreamStarted:
    """First item of every stream: a replica has taken the request."""


@dataclass(frozen=True)
class TextDelta:
    """New text (one or more tokens' worth), with its tokens' log-probabilities when asked for."""

    text: str
    logprobs: list[ResultLogprob] | None = None


@dataclass(frozen=True)
class LiveText:
    """A live turn's answer so far that will not change: what the next decode of the grown
    turn is given as its prefix, and the transcript text it stands for (the deltas sent)."""

    fixed_ids: list[int]
    text: str
    logprobs: list[ResultLogprob] | None = None
    """When asked for: the log-probabilities of the text tokens fixed by this decode."""
    whole: str | None = None
    """The decode's whole transcript of the audio (its last words too, which may still change);
    None when the replica skipped the decode (busy) and nothing was heard."""


StreamItem = StreamStarted | TextDelta | TranscriptResult
"""A stream yields StreamStarted, then TextDelta items, then one TranscriptResult."""
