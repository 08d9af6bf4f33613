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

Text comes during speech (`LiveTurn`): while a turn grows (a server-VAD turn
from speech_started on; without VAD, the buffer since the last commit), the
model decodes the turn's audio so far every LIVE_INTERVAL_S, after the ids
fixed so far (the backend's `live`: one request on the batching engine, next
to file requests). All but the last HOLD_BACK ids of that answer are fixed
(the end of the audio may still change them, as the official streaming decode
rolls them back) and their text goes out as deltas at once, under the item id
the turn will commit as. A decode starts only when the previous one is done
and the turn has grown by LIVE_INTERVAL_S since, or by LIVE_BACKOFF times the
previous decode's wall time if that is more: a busy engine gets fewer of them
(at most about a third of a session's time is spent decoding its turn; semantic
VAD's pause decodes, below, come on top: one per pause, each pushing the next
regular decode back), and the backend decodes only on spare engine time
(`live`: not while other requests' encoders or prefills wait), so live text
never eats the capacity the items themselves need. At the commit the running
decode is dropped and the item's decode starts after the fixed ids, so only
the last words are left to decode after speech ends, and the deltas of both
concatenate exactly to the completed transcript. A turn keeps the model,
language and prompt it fixed text with; turns longer than LIVE_MAX_SECONDS
stop fixing more there (the rest comes at the commit); a cleared turn's
deltas get no completed event.

Semantic VAD (`semantic_vad`) ends a turn by its words: once the turn has
been silent for PAUSE_MS, its audio so far is decoded at once (a live decode
out of turn; under LIVE_FIRST_S it fixes nothing), and when that decode's
whole transcript ends a sentence (SENTENCE_END: the model's own
punctuation) the turn ends after the eagerness's short silence (300 / 600 /
1000 ms for high / medium / low); otherwise it waits for more speech up to
the eagerness's longest silence (2 / 4 / 8 s, OpenAI's documented maximum
timeouts). A turn whose words cannot be known (live text off, its live
decoding stopped, past LIVE_MAX_SECONDS, or the replica too busy to decode)
ends after the short silence, as server VAD would.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from ...languages import SUPPORTED_LANGUAGES, LanguageError, forced_language
from ...model.results import ResultLogprob, TextDelta, TranscriptResult
from .. import formats
from ..service import TranscriptionService
from .audio import SAMPLE_RATE, AudioDecoder, AudioFormatError, to_float32
from .config import ClientError, SessionConfig, from_beta
from .vad import SpeechStarted, SpeechStopped, TurnDetector

logger = logging.getLogger("ray.serve")

MIN_COMMIT_MS = 100
"""A commit needs at least this much audio (as OpenAI's)."""

LIVE_INTERVAL_S = 1.0
"""A live turn is decoded again once it has this much more audio (and the last decode is done)."""
LIVE_BACKOFF = 2.0
"""... or this many times the last decode's wall time of audio, if that is more."""
LIVE_FIRST_S = 2.0
"""No text is fixed before a turn has this much audio (the official streaming decode fixes
nothing in its first two 2 s chunks)."""
LIVE_MAX_SECONDS = 30.0
"""Text is fixed during the first this many seconds of a turn (well inside one engine chunk)."""
HOLD_BACK = 5
"""Ids of a live decode's answer left unfixed at its end (the official `unfixed_token_num`)."""
LIVE_MAX_NEW_TOKENS = 64
"""Ids one live decode may add."""
PAUSE_MS = 150
"""semantic_vad: a turn silent this long has its words so far decoded (shorter gaps are within words)."""
SENTENCE_END = re.compile(r"[.!?…。！？؟।][\"'”’»)\]」』]*\s*$")
"""semantic_vad: a transcript that ends so ends a sentence."""


@dataclass(frozen=True)
class Limits:
    max_audio_seconds: float
    """Audio held by a session at once: the buffer plus committed items not yet transcribed."""
    max_message_bytes: int
    """Largest client message (an append's base64 text)."""
    live_text: bool = True
    """Decode turns as they grow (text during speech)."""


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
        whole, lo, hi = self._span(start, end)
        self._reset(whole[hi:], self.start + hi)
        return whole[lo:hi].copy()

    def peek(self, start: int, end: int) -> np.ndarray:
        """A copy of samples [start, end) (clipped to what is held); nothing is dropped."""
        whole, lo, hi = self._span(start, end)
        return whole[lo:hi].copy()

    def drop_before(self, position: int) -> None:
        if position <= self.start:
            return
        whole, _, cut = self._span(self.start, position)
        self._reset(whole[cut:], self.start + cut)

    def clear(self) -> None:
        self._reset(np.zeros(0, dtype=np.int16), self.end)

    def _span(self, start: int, end: int) -> tuple[np.ndarray, int, int]:
        """What is held, as one array, and [start, end) clipped to it, as indices into it."""
        whole = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
        lo, hi = max(start, self.start) - self.start, max(min(end, self.end), self.start) - self.start
        return whole, lo, hi

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
    context: str
    """The model's context (the session's prompt and keywords)."""
    prefix_ids: tuple[int, ...] = ()
    """The ids its live turn fixed: the item's decode goes on after them."""
    sent: str = ""
    """The text of those ids, sent as deltas during the turn."""
    logprobs: bool = False
    """Its events carry log-probabilities (the session's `include`)."""
    fixed_logprobs: tuple[ResultLogprob, ...] = ()
    """Those of the text tokens its live turn fixed."""
    logprobs_sent: int = 0
    """How many of them went out with the turn's deltas (the rest go with the item's first)."""


@dataclass
class LiveTurn:
    """A turn being decoded while it grows (see the module docstring)."""

    item_id: str
    start: int
    """Buffer position of its first sample."""
    model: str
    language: str | None
    """The model's language name, or None to detect."""
    context: str
    """The model's context (the session's prompt and keywords)."""
    settings: tuple[str | None, str | None, tuple[str, ...], str]
    """The session's (model, language, languages, context) it started with."""
    logprobs: bool = False
    """Its deltas carry log-probabilities (the session's `include` when it started)."""
    fixed_ids: tuple[int, ...] = ()
    text: str = ""
    """What went out as deltas: the text of fixed_ids."""
    fixed_logprobs: list[ResultLogprob] = field(default_factory=list)
    """With logprobs: those of the text tokens of fixed_ids."""
    logprobs_sent: int = 0
    """How many of them went out: those whose text has (text lags the fixed ids a little)."""
    due: int = 0
    """Buffer end from which the next decode may start (set at each decode's end)."""
    heard: int = -1
    """Buffer end of the audio the last decode got."""
    words: str | None = None
    """That decode's whole transcript (None: not decoded, or the replica was busy)."""
    task: asyncio.Task[None] | None = None
    stopped: bool = False
    """A decode failed: no more for this turn (its commit decodes it whole)."""


def _settings(config: SessionConfig) -> tuple[str | None, str | None, tuple[str, ...], str]:
    return (config.model, config.language, config.languages, config.context)


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
        self._live: LiveTurn | None = None

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
        await self._end_live()
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
        # without a model yet, against every language the model family knows (again once one is set)
        model = self.service.models.get(config.model or "")
        try:
            forced_language(
                config.language, config.languages, model.info.languages if model else SUPPORTED_LANGUAGES
            )
        except LanguageError as e:
            raise ClientError(
                str(e), param=f"session.audio.input.transcription.{e.param}", code="unsupported_language"
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
                TurnDetector(td.threshold, td.prefix_padding_ms, td.silences_ms[1])
                if td is not None
                else None
            )
            if self.turns is not None:
                self.turns.position = self.buffer.end
            self._turn_start = self._turn_item = None
            self._drop_live()
        self.config = config
        live = self._live
        if live is not None and not live.fixed_ids and live.settings != _settings(config):
            self._drop_live()  # nothing sent yet: decode the turn with the new settings
            if config.model is not None:
                self._live = self._new_live(live.item_id, live.start)

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
        elif self._live is None and self.config.model is not None and self.buffer.size:
            self._live = self._new_live(new_id("item"), self.buffer.start)  # no VAD: the buffer is the turn
        self._decode_live()

    async def _detect_turns(self, pcm: np.ndarray) -> None:
        turns = self.turns
        assert turns is not None
        changes = await run_in_threadpool(turns.feed, pcm)
        for change in changes:
            if isinstance(change, SpeechStarted):
                self._turn_start = max(change.start, self.buffer.start)
                self._turn_item = new_id("item")
                self._drop_live()
                if self.config.model is not None:
                    self._live = self._new_live(self._turn_item, self._turn_start)
                await self._send(
                    {
                        "type": "input_audio_buffer.speech_started",
                        "event_id": new_id("event"),
                        "audio_start_ms": self._turn_start * 1000 // SAMPLE_RATE,
                        "item_id": self._turn_item,
                    }
                )
            elif isinstance(change, SpeechStopped) and self._turn_item is not None:
                await self._stop_turn(change.end)
        if turns.in_speech and self._turn_item is not None and self._semantic_end():
            await self._stop_turn(turns.stop().end)
        if not turns.in_speech:  # nobody speaks: keep only what a turn's prefix padding may need
            self.buffer.drop_before(turns.position - turns.prefix)

    async def _stop_turn(self, end: int) -> None:
        """The VAD's turn ends at `end`: speech_stopped, and its audio committed as an item."""
        item_id, start = self._turn_item, self._turn_start or 0
        assert item_id is not None
        self._turn_start = self._turn_item = None
        await self._send(
            {
                "type": "input_audio_buffer.speech_stopped",
                "event_id": new_id("event"),
                "audio_end_ms": end * 1000 // SAMPLE_RATE,
                "item_id": item_id,
            }
        )
        live = await self._end_live()
        await self._commit(item_id, self.buffer.take(start, end), live)

    def _pause(self) -> int | None:
        """semantic_vad: where the turn's silence began, once it has lasted PAUSE_MS (else None)."""
        td, turns = self.config.turn_detection, self.turns
        if td is None or not td.semantic or turns is None or turns.silent_since is None:
            return None
        since = turns.silent_since
        return since if turns.position - since >= PAUSE_MS * SAMPLE_RATE // 1000 else None

    def _semantic_end(self) -> bool:
        """semantic_vad: whether the turn ends now, before its longest silence (module docstring)."""
        td, turns = self.config.turn_detection, self.turns
        since = self._pause()
        if td is None or turns is None or since is None:
            return False
        if turns.position - since < td.silences_ms[0] * SAMPLE_RATE // 1000:
            return False
        live = self._live
        if live is None or live.heard < since:  # the words of the pause: coming, or never
            return live is None or not self._can_decode(live)
        return live.words is None or bool(SENTENCE_END.search(live.words))

    def _can_decode(self, live: LiveTurn) -> bool:
        """Whether the live turn may still be decoded (its decoding has not stopped, and it is within
        the seconds in which text is fixed)."""
        return not live.stopped and (self.buffer.end - live.start) / SAMPLE_RATE <= LIVE_MAX_SECONDS

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
        live = await self._end_live()
        item_id = self._turn_item or (live.item_id if live is not None else new_id("item"))
        self._turn_start = self._turn_item = None
        if self.turns is not None:
            self.turns.reset_turn()
        await self._commit(item_id, self.buffer.take(start, self.buffer.end), live)

    async def _commit(self, item_id: str, pcm: np.ndarray, live: LiveTurn | None = None) -> None:
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
        self._waiting_samples += pcm.size
        if live is not None and live.item_id == item_id and live.fixed_ids:
            # Decoded on from where its live turn got, with the settings it got there with.
            item = Item(
                item_id,
                pcm,
                live.model,
                live.language,
                live.context,
                live.fixed_ids,
                live.text,
                live.logprobs,
                tuple(live.fixed_logprobs),
                live.logprobs_sent,
            )
        else:
            language = self._model_language(config.model)
            item = Item(item_id, pcm, config.model, language, config.context, logprobs=config.logprobs)
        self._queue.put_nowait(item)

    def _model_language(self, model: str) -> str | None:
        config = self.config
        return forced_language(config.language, config.languages, self.service.models[model].info.languages)

    def _clear(self) -> None:
        self.decoder.flush()
        self.buffer.clear()
        self._turn_start = self._turn_item = None
        if self.turns is not None:
            self.turns.reset_turn()
        self._drop_live()

    # ---- live turns ---------------------------------------------------------------------------
    def _new_live(self, item_id: str, start: int) -> LiveTurn:
        model = self.config.model
        assert model is not None
        config = self.config
        live = LiveTurn(
            item_id,
            start,
            model,
            self._model_language(model),
            config.context,
            _settings(config),
            config.logprobs,
        )
        live.stopped = not self.limits.live_text
        return live

    def _decode_live(self) -> None:
        """Starts the next decode of the live turn if it is due."""
        live = self._live
        if live is None or not self._can_decode(live) or (live.task is not None and not live.task.done()):
            return
        end = self.buffer.end
        pause = self._pause()
        words_due = pause is not None and live.heard < pause  # semantic_vad: the words of the pause
        if not words_due and ((end - live.start) / SAMPLE_RATE < LIVE_FIRST_S or end < live.due):
            return
        live.task = asyncio.create_task(self._live_step(live, self.buffer.peek(live.start, end), end))

    async def _live_step(self, live: LiveTurn, pcm: np.ndarray, end: int) -> None:
        backend = self.service.models[live.model].backend
        started = time.monotonic()
        try:
            out = await backend.live(
                to_float32(pcm),
                live.language,
                live.context,
                live.fixed_ids,
                HOLD_BACK,
                LIVE_MAX_NEW_TOKENS,
                live.logprobs,
            )
        except asyncio.CancelledError:
            raise
        except Exception as e:  # busy, or the model failed: the commit decodes the turn whole
            live.stopped = True
            logger.info("realtime: live decoding of %s stopped (%s)", live.item_id, type(e).__name__)
            return
        wait = max(LIVE_INTERVAL_S, LIVE_BACKOFF * (time.monotonic() - started))
        live.due = self.buffer.end + int(wait * SAMPLE_RATE)
        live.heard, live.words = end, out.whole
        if pcm.size < LIVE_FIRST_S * SAMPLE_RATE:  # heard for semantic_vad; too early to fix text
            return
        if len(out.fixed_ids) <= len(live.fixed_ids) or not out.text.startswith(live.text):
            return
        delta = out.text[len(live.text) :]
        live.fixed_ids, live.text = tuple(out.fixed_ids), out.text
        live.fixed_logprobs += out.logprobs or []
        if delta:  # shielded: a commit that cancels this task now must not lose text it counts as sent
            logprobs = None
            if live.logprobs:  # those whose text goes out now
                sent, live.logprobs_sent = live.logprobs_sent, _spelled(live.text, live.fixed_logprobs)
                logprobs = live.fixed_logprobs[sent : live.logprobs_sent]
            await asyncio.shield(self._send(self._delta(live.item_id, delta, logprobs)))

    async def _end_live(self) -> LiveTurn | None:
        """The live turn, its running decode stopped and awaited (what it fixed before stays)."""
        live = self._drop_live()
        if live is not None and live.task is not None:
            await asyncio.gather(live.task, return_exceptions=True)
        return live

    def _drop_live(self) -> LiveTurn | None:
        """Forgets the live turn and cancels its running decode (not awaited)."""
        live, self._live = self._live, None
        if live is not None and live.task is not None:
            live.task.cancel()
        return live

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
        items = served.backend.stream(
            to_float32(item.pcm), item.language, item.context, item.prefix_ids, item.logprobs
        )
        sent: list[str] = [item.sent] if item.sent else []
        held = list(item.fixed_logprobs[item.logprobs_sent :])  # fixed, but their text not sent yet
        result: TranscriptResult | None = None
        try:
            async for out in items:
                if isinstance(out, TextDelta) and out.text:
                    sent.append(out.text)
                    logprobs = [*held, *(out.logprobs or [])] if item.logprobs else None
                    held = []
                    await self._send(self._delta(item.id, out.text, logprobs))
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
        # The item's usage is its whole answer's: the fixed ids count as output, not as prompt.
        fixed = len(item.prefix_ids)
        input_tokens, output_tokens = result.input_tokens - fixed, result.output_tokens + fixed
        completed: dict[str, Any] = {
            "type": "conversation.item.input_audio_transcription.completed",
            "event_id": new_id("event"),
            "item_id": item.id,
            "content_index": 0,
            "transcript": text,
            "usage": {
                "type": "tokens",
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "total_tokens": input_tokens + output_tokens,
                "input_token_details": {
                    "audio_tokens": result.audio_tokens,
                    "text_tokens": input_tokens - result.audio_tokens,
                },
            },
        }
        completed["languages"] = [lang.model_dump() for lang in formats.languages(result)]
        if item.logprobs:  # what the live turn fixed, then the item's own decode
            completed["logprobs"] = _logprobs([*item.fixed_logprobs, *(result.logprobs or [])])
        await self._send(completed)

    @staticmethod
    def _delta(item_id: str, text: str, logprobs: list[ResultLogprob] | None = None) -> dict[str, Any]:
        event = {
            "type": "conversation.item.input_audio_transcription.delta",
            "event_id": new_id("event"),
            "item_id": item_id,
            "content_index": 0,
            "delta": text,
        }
        if logprobs is not None:
            event["logprobs"] = _logprobs(logprobs)
        return event

    @staticmethod
    def _failed(item_id: str, message: str, type: str, code: str | None) -> dict[str, Any]:
        return {
            "type": "conversation.item.input_audio_transcription.failed",
            "event_id": new_id("event"),
            "item_id": item_id,
            "content_index": 0,
            "error": {"type": type, "code": code, "message": message, "param": None},
        }


def _spelled(text: str, tokens: list[ResultLogprob]) -> int:
    """How many of the transcript's first `tokens` the transcript's start `text` spells whole."""
    raw, n = b"", 0
    for token in tokens:
        raw += bytes(token.bytes)
        if len(raw.decode("utf-8", errors="replace").lstrip()) > len(text):  # a cut character: one
            break
        n += 1
    return n


def _logprobs(items: list[ResultLogprob]) -> list[dict[str, Any]]:
    """OpenAI's LogProbProperties (token, logprob, bytes): the HTTP API's Logprob."""
    return [lp.model_dump() for lp in formats.logprobs(items) or []]
