"""Request and response models of the OpenAI Audio API, in the order of OpenAI's reference.

The shapes follow the official `openai` SDK types (`openai/types/audio/`,
`openai/types/model.py`), so the SDK parses every response into its models.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt", "diarized_json"]


# ---- requests ----------------------------------------------------------------


MAX_CONTEXT_CHARS = 4000
"""The longest context a request gives the model: `prompt` and `keywords` together."""


def model_context(prompt: str, keywords: Sequence[str]) -> str:
    """The model's context (the system turn of its prompt) from OpenAI's `prompt` and `keywords`:
    the prompt, then each keyword on a line of its own. ValueError (client-safe) for an empty
    keyword or a context longer than MAX_CONTEXT_CHARS."""
    words = [k.strip() for k in keywords]
    if any(not k for k in words):
        raise ValueError("keywords[] must not contain empty strings.")
    context = "\n".join(part for part in (prompt, *words) if part)
    if len(context) > MAX_CONTEXT_CHARS:
        raise ValueError(f"prompt and keywords[] together exceed {MAX_CONTEXT_CHARS} characters.")
    return context


class TranscriptionRequest(BaseModel):
    """Form fields of `POST /v1/audio/transcriptions` (the `file` part is handled apart).

    Every field the SDK can send is listed, so that the ones this server does
    not support are refused with a clear message instead of being ignored.
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    """ID of the model to use: see `GET /v1/models` (`qwen-asr-0.6b`, `qwen-asr-1.7b`)."""
    chunking_strategy: Literal["auto"] | dict[str, Any] | None = None
    """`auto` is accepted (long audio is always cut at quiet points); `server_vad` is not supported."""
    include: list[str] = Field(default_factory=list)
    """`logprobs` (with `json`): each transcript token's log-probability in the response, or in
    the stream's events."""
    known_speaker_names: list[str] = Field(default_factory=list)
    """Diarization only; not supported."""
    known_speaker_references: list[str] = Field(default_factory=list)
    """Diarization only; not supported."""
    keywords: list[str] = Field(default_factory=list)
    """Words or phrases to expect: the model's context after `prompt`, one a line (model_context)."""
    language: str | None = None
    """Language of the audio in ISO-639-1 (`en`, `zh`, ...), mapped to the model's language names."""
    languages: list[str] = Field(default_factory=list)
    """Possible languages: one is the same as `language`; several cannot be enforced and get a 400
    (languages.forced_language)."""
    prompt: str = Field(default="", max_length=MAX_CONTEXT_CHARS)
    """Text handed to the model as context: names, terms, the previous transcript."""
    response_format: ResponseFormat = "json"
    """`json` (default), `text`, `srt`, `verbose_json` or `vtt`."""
    stream: bool = False
    """Server-sent events `transcript.text.delta` / `transcript.text.done` (with `json` or `text`)."""
    temperature: float = Field(default=0.0, ge=0.0, le=1.0)
    """Accepted for compatibility; decoding is always greedy (temperature 0)."""
    timestamp_granularities: list[str] = Field(default_factory=list)
    """With `verbose_json`: `segment` (phrases cut from the aligned words, else the audio chunks) and
    `word` (the forced aligner's word timestamps)."""


# ---- responses ---------------------------------------------------------------


class InputTokenDetails(BaseModel):
    audio_tokens: int
    """Input tokens that carry audio."""
    text_tokens: int
    """Input tokens of the prompt text (template, context, language)."""


class TokenUsage(BaseModel):
    """Token counts of the request (the `tokens` variant of OpenAI's usage)."""

    type: Literal["tokens"] = "tokens"
    input_tokens: int
    """Prompt tokens fed to the decoder, audio tokens included (summed over chunks)."""
    output_tokens: int
    """Generated tokens, stop tokens included."""
    total_tokens: int
    input_token_details: InputTokenDetails | None = None


class DurationUsage(BaseModel):
    """Audio duration billed (the `duration` variant, used by `verbose_json`)."""

    type: Literal["duration"] = "duration"
    seconds: float


class Logprob(BaseModel):
    """A token of the transcript and its log-probability (`include[]=logprobs`)."""

    token: str
    """The token's text (U+FFFD where it holds only part of a UTF-8 character)."""
    logprob: float
    """Natural log of its probability (greedy decoding took the most likely token)."""
    bytes: list[int]
    """Its UTF-8 bytes."""


class Language(BaseModel):
    code: str
    """ISO-639-1 (`yue` for Cantonese, `fil` for Filipino)."""


class TranscriptionResponse(BaseModel):
    """`response_format=json`."""

    text: str
    """The transcript."""
    languages: list[Language] = Field(default_factory=list)
    """The language the model named (or was told), one per language for long audio whose chunks
    differ; empty when it named none (no speech)."""
    logprobs: list[Logprob] | None = None
    """Only with `include[]=logprobs`: each token of the transcript, in order."""
    usage: TokenUsage | None = None


class TranscriptionSegment(BaseModel):
    """A segment of `verbose_json`: a phrase (a sentence, or speech between pauses) when the
    request was aligned word by word, otherwise one audio chunk as the server cut it."""

    id: int
    seek: int
    """Start of the segment in 10 ms frames."""
    start: float
    """Start of the segment in seconds (the first word's start, or the chunk's)."""
    end: float
    """End of the segment in seconds (the last word's end, or the chunk's)."""
    text: str
    tokens: list[int]
    """Generated token ids of the chunk; empty for a phrase (its words are not token-aligned)."""
    temperature: float
    """Always 0.0: decoding is greedy."""
    avg_logprob: float
    """The mean log-probability of the segment's tokens: a chunk's generated tokens (its `tokens`),
    or the transcript tokens that begin in a phrase."""
    compression_ratio: float
    """zlib compression ratio of the segment text."""
    no_speech_prob: float
    """Not computed by this server: always 0.0."""


class TranscriptionWord(BaseModel):
    """A word of `verbose_json` (`timestamp_granularities[]=word`), timed by the forced aligner."""

    word: str
    """The word as written in the transcript, without surrounding punctuation."""
    start: float
    """Start of the word in seconds."""
    end: float
    """End of the word in seconds."""


class TranscriptionVerboseResponse(BaseModel):
    """`response_format=verbose_json`."""

    task: Literal["transcribe"] = "transcribe"
    language: str
    """Detected (or given) language as a lower-case English name, e.g. `english`."""
    duration: float
    """Audio duration in seconds."""
    text: str
    segments: list[TranscriptionSegment]
    words: list[TranscriptionWord] | None = None
    """Only with `timestamp_granularities[]=word`."""
    usage: DurationUsage


class TextDeltaEvent(BaseModel):
    """One SSE event with new text."""

    type: Literal["transcript.text.delta"] = "transcript.text.delta"
    delta: str
    logprobs: list[Logprob] | None = None
    """Only with `include[]=logprobs`: the tokens decoded since the last delta."""


class TextDoneEvent(BaseModel):
    """The last SSE event: the whole text and the usage."""

    type: Literal["transcript.text.done"] = "transcript.text.done"
    text: str
    languages: list[Language] = Field(default_factory=list)
    """As in TranscriptionResponse."""
    logprobs: list[Logprob] | None = None
    """Only with `include[]=logprobs`: every token of the transcript."""
    usage: TokenUsage


class ModelCard(BaseModel):
    """`GET /v1/models/{id}`."""

    id: str
    object: Literal["model"] = "model"
    created: int
    """Unix time the checkpoint was written."""
    owned_by: str = "qwen"


class ModelList(BaseModel):
    """`GET /v1/models`."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error body."""

    error: ErrorDetail
