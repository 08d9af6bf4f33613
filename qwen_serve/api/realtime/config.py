"""A transcription session's configuration: what `session.update` may set, and how it is shown.

The client shapes follow the `openai` SDK's `RealtimeTranscriptionSessionCreateRequest`
(GA: `session.update` with `session.type = "transcription"` and everything
under `audio.input`) and the beta `transcription_session.update`
(`input_audio_format`, `input_audio_transcription`, `turn_detection`), which
is translated into the GA shape first. Only the fields present in an update
change; `turn_detection: null` turns server VAD off (manual commits).
`keywords` join the prompt in the model's context; one entry of `languages`
forces that language as `language` does. Fields this server cannot honour
(noise reduction, `delay`, several possible languages, a field of the other
kind of VAD) are refused with an `error` naming them, never ignored,
and an update applies whole or not at all.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..protocol import MAX_CONTEXT_CHARS, model_context
from .audio import BETA_FORMATS, FORMAT_RATES

DEFAULT_THRESHOLD = 0.5
DEFAULT_PREFIX_PADDING_MS = 300
DEFAULT_SILENCE_DURATION_MS = 500
LOGPROBS = "item.input_audio_transcription.logprobs"
EAGERNESS_MS = {"low": (1000, 8000), "medium": (600, 4000), "high": (300, 2000)}
"""semantic_vad's eagerness ("auto" is "medium"): the silence after which a turn whose words end a
sentence ends (or whose words are not known), and the silence after which any turn ends (OpenAI's
documented maximum timeouts)."""


class ClientError(ValueError):
    """A client event this server refuses: message, the offending parameter and a code (client-safe)."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AudioFormatIn(_Strict):
    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"] = "audio/pcm"
    rate: Literal[24000, 8000] | None = None


class TranscriptionIn(_Strict):
    model: str | None = None
    language: str | None = None
    prompt: str | None = Field(default=None, max_length=MAX_CONTEXT_CHARS)
    delay: str | None = None
    keywords: list[str] | None = None
    languages: list[str] | None = None


class TurnDetectionIn(_Strict):
    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    prefix_padding_ms: int | None = Field(default=None, ge=0, le=10_000)
    silence_duration_ms: int | None = Field(default=None, ge=32, le=10_000)
    create_response: bool | None = None
    interrupt_response: bool | None = None
    idle_timeout_ms: int | None = None
    eagerness: Literal["low", "medium", "high", "auto"] | None = None


class AudioInputIn(_Strict):
    format: AudioFormatIn | None = None
    noise_reduction: dict[str, Any] | None = None
    transcription: TranscriptionIn | None = None
    turn_detection: TurnDetectionIn | None = None


class AudioIn(_Strict):
    input: AudioInputIn | None = None


class TranscriptionSessionIn(_Strict):
    """`session` of a GA `session.update` for a transcription session."""

    type: Literal["transcription"]
    audio: AudioIn | None = None
    include: list[str] | None = None
    # echoed back by clients that send the session they were given
    id: str | None = None
    object: str | None = None
    expires_at: int | None = None


@dataclass(frozen=True)
class TurnDetection:
    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float = DEFAULT_THRESHOLD
    prefix_padding_ms: int = DEFAULT_PREFIX_PADDING_MS
    silence_duration_ms: int = DEFAULT_SILENCE_DURATION_MS
    """server_vad's; semantic_vad's are its eagerness's (EAGERNESS_MS)."""
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"

    @property
    def semantic(self) -> bool:
        return self.type == "semantic_vad"

    @property
    def silences_ms(self) -> tuple[int, int]:
        """(after a finished sentence, at most): semantic_vad's by eagerness; server_vad's one value twice."""
        if self.semantic:
            return EAGERNESS_MS["medium" if self.eagerness == "auto" else self.eagerness]
        return self.silence_duration_ms, self.silence_duration_ms


@dataclass(frozen=True)
class SessionConfig:
    """The effective configuration (what `session.created` / `session.updated` show)."""

    id: str
    format: str = "audio/pcm"
    model: str | None = None
    language: str | None = None
    """As the client sent it (ISO-639-1)."""
    languages: tuple[str, ...] = ()
    """The possible languages, as sent: one forces it as `language` does (languages.forced_language)."""
    prompt: str = ""
    keywords: tuple[str, ...] = ()
    """Words to expect: the model's context after the prompt (`context`)."""
    turn_detection: TurnDetection | None = TurnDetection()
    logprobs: bool = False
    """`include: ["item.input_audio_transcription.logprobs"]`: the transcription events carry them."""

    @property
    def context(self) -> str:
        """The model's context: the prompt, then the keywords one a line."""
        return model_context(self.prompt, self.keywords)

    @classmethod
    def new(cls, model: str | None) -> SessionConfig:
        return cls(id=f"sess_{uuid.uuid4().hex[:24]}", model=model)

    # ---- updates ------------------------------------------------------------
    def updated(self, session: Any) -> SessionConfig:
        """This configuration with a GA `session` object applied (ClientError if refused)."""
        if not isinstance(session, dict):
            raise ClientError("'session' must be an object.", param="session")
        if session.get("type") == "realtime":
            raise ClientError(
                "Only transcription sessions are served: set session.type to 'transcription' "
                "(connect with ?intent=transcription).",
                param="session.type",
                code="unsupported_value",
            )
        try:
            parsed = TranscriptionSessionIn.model_validate(session)
        except ValidationError as e:
            first = e.errors()[0]
            param = ".".join(["session", *(str(p) for p in first["loc"])])
            raise ClientError(f"Invalid value for '{param}': {first['msg']}.", param=param) from None
        config = self
        if "include" in parsed.model_fields_set:
            for item in parsed.include or []:
                if item != LOGPROBS:
                    raise ClientError(
                        f"Invalid value for 'session.include': {item!r} (use {LOGPROBS!r}).",
                        param="session.include",
                        code="unsupported_value",
                    )
            config = replace(config, logprobs=bool(parsed.include))
        audio_input = parsed.audio.input if parsed.audio else None
        if audio_input is None:
            return config
        fields = audio_input.model_fields_set
        if "noise_reduction" in fields and audio_input.noise_reduction is not None:
            raise ClientError(
                "Input noise reduction is not supported: set session.audio.input.noise_reduction to null.",
                param="session.audio.input.noise_reduction",
                code="unsupported_value",
            )
        if "format" in fields:
            fmt = audio_input.format or AudioFormatIn()
            if fmt.rate is not None and fmt.rate != FORMAT_RATES[fmt.type]:
                raise ClientError(
                    f"{fmt.type} is taken at {FORMAT_RATES[fmt.type]} Hz only.",
                    param="session.audio.input.format.rate",
                    code="unsupported_value",
                )
            config = replace(config, format=fmt.type)
        if "transcription" in fields:
            config = config._with_transcription(audio_input.transcription)
        if "turn_detection" in fields:
            config = replace(config, turn_detection=_turn_detection(audio_input.turn_detection))
        return config

    def _with_transcription(self, t: TranscriptionIn | None) -> SessionConfig:
        if t is None:
            return replace(self, model=None, language=None, languages=(), prompt="", keywords=())
        if t.delay:
            raise ClientError(
                "session.audio.input.transcription.delay is not supported.",
                param="session.audio.input.transcription.delay",
                code="unsupported_value",
            )
        fields = t.model_fields_set
        config = self
        if "model" in fields:
            config = replace(config, model=t.model)
        if "language" in fields:
            config = replace(config, language=t.language or None)
        if "languages" in fields:
            config = replace(config, languages=tuple(t.languages or ()))
        if "prompt" in fields:
            config = replace(config, prompt=t.prompt or "")
        if "keywords" in fields:
            config = replace(config, keywords=tuple(t.keywords or ()))
        try:  # checked here, where the update can still be refused whole
            model_context(config.prompt, config.keywords)
        except ValueError as e:
            raise ClientError(str(e), param="session.audio.input.transcription.keywords") from None
        return config

    # ---- shown to the client ------------------------------------------------
    def session(self) -> dict[str, Any]:
        """The GA session object (`RealtimeTranscriptionSessionCreateRequest` plus id and object)."""
        fmt: dict[str, Any] = {"type": self.format}
        if self.format == "audio/pcm":
            fmt["rate"] = FORMAT_RATES[self.format]
        return {
            "type": "transcription",
            "id": self.id,
            "object": "realtime.transcription_session",
            "audio": {
                "input": {
                    "format": fmt,
                    "noise_reduction": None,
                    "transcription": self._transcription(),
                    "turn_detection": self._turn_detection(),
                }
            },
            "include": [LOGPROBS] if self.logprobs else None,
        }

    def beta_session(self) -> dict[str, Any]:
        """The same in the beta `transcription_session` shape."""
        beta_format = {v: k for k, v in BETA_FORMATS.items()}[self.format]
        return {
            "id": self.id,
            "object": "realtime.transcription_session",
            "modalities": ["text"],
            "input_audio_format": beta_format,
            "input_audio_transcription": self._transcription(),
            "turn_detection": self._turn_detection(),
            "input_audio_noise_reduction": None,
            "include": [LOGPROBS] if self.logprobs else None,
        }

    def _transcription(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"model": self.model, "language": self.language, "prompt": self.prompt}
        if self.languages:
            shown["languages"] = list(self.languages)
        if self.keywords:
            shown["keywords"] = list(self.keywords)
        return shown

    def _turn_detection(self) -> dict[str, Any] | None:
        td = self.turn_detection
        if td is None:
            return None
        if td.semantic:
            return {"type": "semantic_vad", "eagerness": td.eagerness}
        return {
            "type": "server_vad",
            "threshold": td.threshold,
            "prefix_padding_ms": td.prefix_padding_ms,
            "silence_duration_ms": td.silence_duration_ms,
        }


def _turn_detection(td: TurnDetectionIn | None) -> TurnDetection | None:
    if td is None:
        return None
    other = (
        ("threshold", "prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms")
        if td.type == "semantic_vad"
        else ("eagerness",)
    )
    for name in other:
        if getattr(td, name) is not None:
            kind = "server_vad" if td.type == "semantic_vad" else "semantic_vad"
            raise ClientError(
                f"turn_detection.{name} is used only with {kind}; {td.type} does not take it.",
                param=f"session.audio.input.turn_detection.{name}",
                code="unsupported_value",
            )
    if td.type == "semantic_vad":
        return TurnDetection(type="semantic_vad", eagerness=td.eagerness or "auto")
    if td.idle_timeout_ms is not None:
        raise ClientError(
            "turn_detection.idle_timeout_ms is not supported (transcription sessions create no responses).",
            param="session.audio.input.turn_detection.idle_timeout_ms",
            code="unsupported_value",
        )
    return TurnDetection(
        threshold=DEFAULT_THRESHOLD if td.threshold is None else td.threshold,
        prefix_padding_ms=DEFAULT_PREFIX_PADDING_MS if td.prefix_padding_ms is None else td.prefix_padding_ms,
        silence_duration_ms=(
            DEFAULT_SILENCE_DURATION_MS if td.silence_duration_ms is None else td.silence_duration_ms
        ),
    )


_BETA_KEYS = {
    "input_audio_format",
    "input_audio_transcription",
    "turn_detection",
    "input_audio_noise_reduction",
    "include",
    "modalities",
    "client_secret",
    "id",
    "object",
    "expires_at",
}


def from_beta(session: Any) -> dict[str, Any]:
    """A beta `transcription_session.update` session in the GA shape (ClientError if malformed)."""
    if not isinstance(session, dict):
        raise ClientError("'session' must be an object.", param="session")
    unknown = sorted(set(session) - _BETA_KEYS)
    if unknown:
        raise ClientError(f"Unknown parameter: 'session.{unknown[0]}'.", param=f"session.{unknown[0]}")
    audio_input: dict[str, Any] = {}
    if "input_audio_format" in session:
        name = session["input_audio_format"]
        if name not in BETA_FORMATS:
            raise ClientError(
                f"Invalid value for 'session.input_audio_format': {name!r} "
                f"(use one of {', '.join(BETA_FORMATS)}).",
                param="session.input_audio_format",
            )
        audio_input["format"] = {"type": BETA_FORMATS[name]}
    if "input_audio_transcription" in session:
        audio_input["transcription"] = session["input_audio_transcription"]
    if "turn_detection" in session:
        audio_input["turn_detection"] = session["turn_detection"]
    if "input_audio_noise_reduction" in session:
        audio_input["noise_reduction"] = session["input_audio_noise_reduction"]
    ga: dict[str, Any] = {"type": "transcription", "audio": {"input": audio_input}}
    if "include" in session:
        ga["include"] = session["include"]
    return ga
