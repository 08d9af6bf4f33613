"""Result types the engine hands to its callers (the CLI and the model deployment)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Usage:
    """Token counts of one transcription (OpenAI's "tokens" usage)."""

    input_tokens: int
    """Prompt tokens fed to the decoder, audio placeholders included."""
    output_tokens: int
    """Generated tokens, the stop token included."""
    audio_tokens: int
    """How many of the input tokens carry audio."""

    @property
    def text_tokens(self) -> int:
        return self.input_tokens - self.audio_tokens

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class Timings:
    """Wall time of each stage in milliseconds (summed over chunks of long audio)."""

    mel_ms: float = 0.0
    encoder_ms: float = 0.0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    total_ms: float = 0.0


@dataclass(frozen=True)
class Segment:
    """A stretch of the transcript with its place in the audio (chunk boundaries)."""

    start: float
    end: float
    text: str
    token_ids: list[int] = field(default_factory=list)
    avg_logprob: float | None = None
    """Requests with logprobs: the mean log-probability of the tokens this chunk generated (its
    language prefix and stop token included, as Whisper's)."""


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token of the transcript and its log-probability (OpenAI's `logprobs`)."""

    token: str
    """The token's text (U+FFFD where it holds only part of a UTF-8 character)."""
    logprob: float
    """Natural log of its probability under the model's softmax over the whole vocabulary."""
    bytes: list[int]
    """Its UTF-8 bytes."""
    index: int = 0
    """Its place in the answer (Transcription.token_ids)."""


@dataclass(frozen=True)
class Transcription:
    """What Engine.transcribe returns."""

    text: str
    """The transcript, without the `language X<asr_text>` prefix."""
    language: str | None
    """Detected (or forced) language as the model names it ("English"), None when unknown or silent."""
    token_ids: list[int]
    """Every token id of the answer, in order (all chunks; a forced prefix included)."""
    usage: Usage
    timings: Timings
    duration: float
    """Audio duration in seconds."""
    segments: list[Segment] = field(default_factory=list)
    """One segment per audio chunk (a single one for short audio)."""
    logprobs: list[TokenLogprob] | None = None
    """When asked for: each token of the transcript text in order (the `language X<asr_text>`
    prefix and the stop tokens are not text)."""
