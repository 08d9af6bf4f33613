"""One realtime transcription session: client events in, server events out, items transcribed in order.

    session = RealtimeSession(service, limits, send, model=query_model)
    await session.start()                    # session.created (and an error if the URL's model is unknown)
    await session.handle(raw_text_message)   # for every text message; refusals go out as `error` events
    await session.close()                    # cancels what is still transcribing

The input audio buffer holds 16 kHz int16 samples (`SampleBuffer`), counted
from the session's first append, the same positions the VAD reports. With
server VAD the buffer keeps only the prefix padding while nobody speaks, and
a turn's audio is committed as an item when the turn stops; without it the
client commits. Committed items wait in a queue for one transcriber task, so
items are transcribed in order while audio keeps arriving; each goes to the
model's `backend.stream` (the batching engine serves it next to file
requests) and its deltas go out as they are decoded. Audio in the buffer and
in waiting items together is bounded by `max_audio_seconds`.

Engine-level incremental decoding (a later part of issue 10) would hook in
at `_on_speech_started` / `append`: open an engine stream when a turn starts,
feed it the turn's samples as they arrive (KV cache reused across feeds),
emit deltas during speech, and finish it at the commit instead of queuing
the item whole.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from ...languages import ISO_TO_MODEL, LanguageError, to_model_language
from ...model.results import TextDelta, TranscriptResult
from ..service import TranscriptionService
from .audio import SAMPLE_RATE, AudioDecoder, AudioFormatError, to_float32
from .config import ClientError, SessionConfig, from_beta
from .vad import SpeechStarted, SpeechStopped, TurnDetector

logger = logging.getLogger("ray.serve")

MIN_COMMIT_MS = 100
"""A commit needs at least this much audio (as OpenAI's)."""

_MODEL_TO_ISO = {name: code for code, name in reversed(list(ISO_TO_MODEL.items()))}


@dataclass(frozen=True)
class Limits:
    max_audio_seconds: float
    """Audio held by a session at once: the buffer plus committed items not yet transcribed."""
    max_message_bytes: int
    """Largest client message (an append's base64 text)."""


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def error_event(
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """OpenAI's `error` server event (`RealtimeErrorEvent`)."""
    error = {"type": type, "code": code, "message": message, "param": param, "event_id": event_id}
    return {"type": "error", "event_id": new_id("event"), "error": error}


class SampleBuffer:
    """16 kHz int16 samples from position `start` on, appended in chunks."""

    def __init__(self) -> None:
        self.start = 0
        self._chunks: list[np.ndarray] = []
        self.size = 0

    @property
    def end(self) -> int:
        return self.start + self.size

    def append(self, pcm: np.ndarray) -> None:
        if pcm.size:
            self._chunks.append(pcm)
            self.size += pcm.size

    def take(self, start: int, end: int) -> np.ndarray:
        """Samples [start, end) (clipped to what is held); everything before `end` is dropped."""
        whole = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
        lo, hi = max(start, self.start) - self.start, max(min(end, self.end), self.start) - self.start
        out = whole[lo:hi].copy()
        self._reset(whole[hi:], self.start + hi)
        return out

    def drop_before(self, position: int) -> None:
        if position <= self.start:
            return
        whole = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
        cut = min(position, self.end) - self.start
        self._reset(whole[cut:], self.start + cut)

    def clear(self) -> None:
        self._reset(np.zeros(0, dtype=np.int16), self.end)

    def _reset(self, rest: np.ndarray, start: int) -> None:
        self.start = start
        self._chunks = [rest] if rest.size else []
        self.size = int(rest.size)


@dataclass(frozen=True)
class Item:
    id: str
    pcm: np.ndarray
    """16 kHz int16."""
    model: str
    language: str | None
    """The model's language name, or None to detect."""
    prompt: str


class RealtimeSession:
    def __init__(
        self,
        service: TranscriptionService,
        limits: Limits,
        send: Callable[[dict[str, Any]], Awaitable[None]],
        model: str | None = None,
    ):
        self.service = service
        self.limits = limits
        self._send = send
        self._query_model = model
        self.config = SessionConfig.new(model if model in service.models else None)
        self.decoder = AudioDecoder(self.config.format)
        self.buffer = SampleBuffer()
        self.turns: TurnDetector | None = None
        self._turn_start: int | None = None
        self._turn_item: str | None = None
        self._last_item: str | None = None
        self._queue: asyncio.Queue[Item] = asyncio.Queue()
        self._waiting_samples = 0
        """Samples in committed items not yet transcribed."""
        self._worker: asyncio.Task[None] | None = None

    # ---- life cycle -----------------------------------------------------------------
    async def start(self) -> None:
        self._apply(self.config)
        await self._send(
            {"type": "session.created", "event_id": new_id("event"), "session": self.config.session()}
        )
        if self._query_model and self._query_model not in self.service.models:
            await self._send(self._model_error(self._query_model, param="model"))
        self._worker = asyncio.create_task(self._transcribe_items())

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    # ---- client events ------------------------------------------------------------------
    async def handle(self, text: str) -> None:
        """One client message (a JSON text frame). Errors go back as `error` events."""
        if len(text) > self.limits.max_message_bytes:
            await self._send(
                error_event(
                    f"The message is {len(text)} bytes; at most {self.limits.max_message_bytes} are accepted "
                    "(send audio in smaller appends).",
                    code="message_too_large",
                )
            )
            return
        try:
            event = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nesting too deep for the parser
            await self._send(error_event("The message is not valid JSON.", code="invalid_json"))
            return
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            await self._send(
                error_event(
                    "A client event is a JSON object with a string 'type'.",
                    code="invalid_event",
                    param="type",
                )
            )
            return
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        kind = event["type"]
        try:
            if kind == "input_audio_buffer.append":
                await self._append(event)
            elif kind == "input_audio_buffer.commit":
                await self._commit_manual()
            elif kind == "input_audio_buffer.clear":
                self._clear()
                await self._send({"type": "input_audio_buffer.cleared", "event_id": new_id("event")})
            elif kind == "session.update":
                self._apply(self._validated(self.config.updated(event.get("session"))))
                await self._send(
                    {"type": "session.updated", "event_id": new_id("event"), "session": self.config.session()}
                )
            elif kind == "transcription_session.update":
                self._apply(self._validated(self.config.updated(from_beta(event.get("session")))))
                await self._send(
                    {
                        "type": "transcription_session.updated",
                        "event_id": new_id("event"),
                        "session": self.config.beta_session(),
                    }
                )
            else:
                await self._send(
                    error_event(
                        f"Unsupported event type '{kind[:100]}'. A transcription session takes session.update, "
                        "input_audio_buffer.append, input_audio_buffer.commit and input_audio_buffer.clear.",
                        code="invalid_event_type",
                        param="type",
                        event_id=event_id,
                    )
                )
        except ClientError as e:
            await self._send(error_event(e.message, code=e.code, param=e.param, event_id=event_id))

    def _validated(self, config: SessionConfig) -> SessionConfig:
        """Model and language checked against what is served (ClientError otherwise)."""
        if config.model is not None and config.model not in self.service.models:
            err = self._model_error(config.model, param="session.audio.input.transcription.model")["error"]
            raise ClientError(err["message"], param=err["param"], code=err["code"])
        if config.language and config.model is not None:
            languages = self.service.models[config.model].info.languages
            try:
                to_model_language(config.language, languages)
            except LanguageError as e:
                raise ClientError(
                    str(e), param="session.audio.input.transcription.language", code="unsupported_language"
                ) from None
        return config

    def _model_error(self, model: str, param: str) -> dict[str, Any]:
        if model in self.service.unavailable:
            message = (
                f"The model '{model}' is configured but not installed. {self.service.unavailable[model]}"
            )
            return error_event(message, code="model_not_installed", param=param)
        available = ", ".join(sorted(self.service.models)) or "none"
        return error_event(
            f"The model '{model}' does not exist. Available models: {available}.",
            code="model_not_found",
            param=param,
        )

    def _apply(self, config: SessionConfig) -> None:
        if config.format != self.decoder.format:
            self.buffer.append(self.decoder.flush())
            self.decoder = AudioDecoder(config.format)
        td = config.turn_detection
        if td != self.config.turn_detection or (td is not None and self.turns is None):
            self.turns = (
                TurnDetector(td.threshold, td.prefix_padding_ms, td.silence_duration_ms)
                if td is not None
                else None
            )
            if self.turns is not None:
                self.turns.position = self.buffer.end
            self._turn_start = self._turn_item = None
        self.config = config

    # ---- the buffer -------------------------------------------------------------------
    async def _append(self, event: dict[str, Any]) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise ClientError("input_audio_buffer.append needs 'audio': base64 text.", param="audio")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise ClientError("'audio' is not valid base64.", param="audio", code="invalid_base64") from None
        held = (self.buffer.size + self._waiting_samples) / SAMPLE_RATE
        if held + self.decoder.input_seconds(len(data)) > self.limits.max_audio_seconds:
            raise ClientError(
                f"The session holds {held:.1f} s of audio (buffer and items waiting for transcription); "
                f"at most {self.limits.max_audio_seconds:g} s are allowed. Commit or clear the buffer.",
                param="audio",
                code="buffer_full",
            )
        try:
            pcm = self.decoder.feed(data)
        except AudioFormatError as e:
            raise ClientError(
                f"{e} (session format {self.config.format}).", param="audio", code="invalid_audio"
            ) from None
        self.buffer.append(pcm)
        if self.turns is not None:
            await self._detect_turns(pcm)

    async def _detect_turns(self, pcm: np.ndarray) -> None:
        turns = self.turns
        assert turns is not None
        changes = await run_in_threadpool(turns.feed, pcm)
        for change in changes:
            if isinstance(change, SpeechStarted):
                self._turn_start = max(change.start, self.buffer.start)
                self._turn_item = new_id("item")
                await self._send(
                    {
                        "type": "input_audio_buffer.speech_started",
                        "event_id": new_id("event"),
                        "audio_start_ms": self._turn_start * 1000 // SAMPLE_RATE,
                        "item_id": self._turn_item,
                    }
                )
            elif isinstance(change, SpeechStopped) and self._turn_item is not None:
                item_id, start = self._turn_item, self._turn_start or 0
                self._turn_start = self._turn_item = None
                await self._send(
                    {
                        "type": "input_audio_buffer.speech_stopped",
                        "event_id": new_id("event"),
                        "audio_end_ms": change.end * 1000 // SAMPLE_RATE,
                        "item_id": item_id,
                    }
                )
                await self._commit(item_id, self.buffer.take(start, change.end))
        if not turns.in_speech:  # nobody speaks: keep only what a turn's prefix padding may need
            self.buffer.drop_before(turns.position - turns.prefix)

    async def _commit_manual(self) -> None:
        if self.turns is None:
            self.buffer.append(self.decoder.flush())
        start = self.buffer.start if self._turn_start is None else self._turn_start
        if (self.buffer.end - start) * 1000 < MIN_COMMIT_MS * SAMPLE_RATE:
            ms = (self.buffer.end - start) * 1000 / SAMPLE_RATE
            raise ClientError(
                f"Error committing input audio buffer: buffer too small. Expected at least {MIN_COMMIT_MS}ms "
                f"of audio, but buffer only has {ms:.2f}ms of audio.",
                param=None,
                code="input_audio_buffer_commit_empty",
            )
        if self.config.model is None:
            raise ClientError(
                "No transcription model is set: send session.update with "
                f"session.audio.input.transcription.model (one of {', '.join(sorted(self.service.models))}).",
                param="session.audio.input.transcription.model",
                code="missing_model",
            )
        item_id = self._turn_item or new_id("item")
        self._turn_start = self._turn_item = None
        if self.turns is not None:
            self.turns.reset_turn()
        await self._commit(item_id, self.buffer.take(start, self.buffer.end))

    async def _commit(self, item_id: str, pcm: np.ndarray) -> None:
        previous, self._last_item = self._last_item, item_id
        await self._send(
            {
                "type": "input_audio_buffer.committed",
                "event_id": new_id("event"),
                "item_id": item_id,
                "previous_item_id": previous,
            }
        )
        config = self.config
        if config.model is None:
            await self._send(
                self._failed(
                    item_id,
                    "No transcription model is set (session.audio.input.transcription.model).",
                    "invalid_request_error",
                    "missing_model",
                )
            )
            return
        language = None
        if config.language:
            language = to_model_language(config.language, self.service.models[config.model].info.languages)
        self._waiting_samples += pcm.size
        self._queue.put_nowait(Item(item_id, pcm, config.model, language, config.prompt))

    def _clear(self) -> None:
        self.decoder.flush()
        self.buffer.clear()
        self._turn_start = self._turn_item = None
        if self.turns is not None:
            self.turns.reset_turn()

    # ---- transcription ---------------------------------------------------------------------
    async def _transcribe_items(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._transcribe(item)
            finally:
                self._waiting_samples -= item.pcm.size

    async def _transcribe(self, item: Item) -> None:
        served = self.service.models[item.model]
        items = served.backend.stream(to_float32(item.pcm), item.language, item.prompt)
        sent: list[str] = []
        result: TranscriptResult | None = None
        try:
            async for out in items:
                if isinstance(out, TextDelta) and out.text:
                    sent.append(out.text)
                    await self._send(self._delta(item.id, out.text))
                elif isinstance(out, TranscriptResult):
                    result = out
            if result is None:
                raise RuntimeError("the model stream ended without a result")
        except asyncio.CancelledError:
            raise
        except Exception as e:
            err = self.service._failure(item.model, e)
            await self._send(self._failed(item.id, err.message, err.type, err.code))
            return
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()
        text = "".join(sent)
        if result.text != text and result.text.startswith(text):  # deltas must add up to the transcript
            await self._send(self._delta(item.id, result.text[len(text) :]))
            text = result.text
        completed: dict[str, Any] = {
            "type": "conversation.item.input_audio_transcription.completed",
            "event_id": new_id("event"),
            "item_id": item.id,
            "content_index": 0,
            "transcript": text,
            "usage": {
                "type": "tokens",
                "input_tokens": result.input_tokens,
                "output_tokens": result.output_tokens,
                "total_tokens": result.total_tokens,
                "input_token_details": {
                    "audio_tokens": result.audio_tokens,
                    "text_tokens": result.input_tokens - result.audio_tokens,
                },
            },
        }
        code = _MODEL_TO_ISO.get(result.language or "")
        if code:
            completed["languages"] = [{"code": code}]
        await self._send(completed)

    @staticmethod
    def _delta(item_id: str, text: str) -> dict[str, Any]:
        return {
            "type": "conversation.item.input_audio_transcription.delta",
            "event_id": new_id("event"),
            "item_id": item_id,
            "content_index": 0,
            "delta": text,
        }

    @staticmethod
    def _failed(item_id: str, message: str, type: str, code: str | None) -> dict[str, Any]:
        return {
            "type": "conversation.item.input_audio_transcription.failed",
            "event_id": new_id("event"),
            "item_id": item_id,
            "content_index": 0,
            "error": {"type": type, "code": code, "message": message, "param": None},
        }
