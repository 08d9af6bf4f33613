"""OpenAI's Realtime API for transcription sessions: the WebSocket route `/v1/realtime`.

    app.include_router(realtime_router(service, authenticate))

A client connects to `/v1/realtime?intent=transcription[&model=<id>]` (what
`client.realtime.connect(model=..., extra_query={"intent": "transcription"})`
opens), gets `session.created`, configures with `session.update`, streams
audio with `input_audio_buffer.append` and receives the transcript of each
committed item (`session.py`). docs/realtime.md describes the protocol.

Authentication takes the same tokens as the HTTP API, from the
`Authorization: Bearer` header or, for browsers (which cannot set headers on
a WebSocket), from a subprotocol `openai-insecure-api-key.<token>` as
OpenAI's browser clients send it next to `realtime`; the server then selects
`realtime`. A refused connection is accepted only to send one `error` event
and close (1008), before any client message is read, so that both the SDK
and a browser can show why. The route also enforces the session cap per
ingress replica (close 1013), the idle timeout and the maximum duration
(an `error` event, then close 1000), and closes (1008) a session whose
client has not read its events for the idle timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.security import HTTPAuthorizationCredentials

from ..errors import APIError
from ..service import TranscriptionService
from .session import Limits, RealtimeSession, error_event

logger = logging.getLogger("ray.serve")

KEY_PROTOCOL = "openai-insecure-api-key."
CLOSE_POLICY = 1008
CLOSE_TRY_LATER = 1013


class _NotReading(Exception):
    """A server event could not be sent for the idle timeout: the client does not read."""


class _Sessions:
    """Open sessions on this ingress replica."""

    def __init__(self, limit: int):
        self.limit = limit
        self.open = 0


def _credentials(websocket: WebSocket) -> tuple[str | None, str | None]:
    """(token, subprotocol to select) from the Authorization header or the offered subprotocols."""
    token = None
    header = websocket.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        token = value.strip()
    offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    keys = [p for p in offered if p.startswith(KEY_PROTOCOL)]
    if token is None and keys:
        token = keys[0][len(KEY_PROTOCOL) :]
    others = [p for p in offered if not p.startswith(KEY_PROTOCOL)]
    # A browser fails the handshake unless one offered protocol is selected; never echo the key if avoidable.
    subprotocol = (
        "realtime" if "realtime" in others else (others[0] if others else (keys[0] if keys else None))
    )
    return token, subprotocol


def realtime_router(service: TranscriptionService, authenticate: Callable[..., Awaitable[None]]) -> APIRouter:
    settings = service.settings
    sessions = _Sessions(settings.realtime_max_sessions)
    limits = Limits(
        max_audio_seconds=settings.realtime_max_buffer_seconds,
        max_message_bytes=int(settings.realtime_max_append_mb * 1024 * 1024 * 4 / 3) + 4096,
        live_text=settings.realtime_live_text,
    )
    router = APIRouter()

    @router.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket) -> None:
        token, subprotocol = _credentials(websocket)
        await websocket.accept(subprotocol=subprotocol)
        lock = asyncio.Lock()

        async def send(event: dict[str, Any]) -> None:
            async with lock:
                try:  # a client that stops reading must not hold the session (and its audio) forever
                    await asyncio.wait_for(
                        websocket.send_text(json.dumps(event)), settings.realtime_idle_timeout
                    )
                except asyncio.TimeoutError:
                    raise _NotReading() from None

        async def refuse(event: dict[str, Any], code: int) -> None:
            with contextlib.suppress(Exception):  # the client may be gone already
                await send(event)
                await websocket.close(code=code, reason=event["error"]["code"])

        try:
            await authenticate(
                HTTPAuthorizationCredentials(scheme="Bearer", credentials=token) if token else None
            )
        except APIError as e:
            await refuse(error_event(e.message, code=e.code or "missing_api_key"), CLOSE_POLICY)
            return
        intent = websocket.query_params.get("intent", "transcription")
        if intent != "transcription":
            message = f"Only transcription sessions are served: connect with ?intent=transcription, not '{intent[:100]}'."
            await refuse(error_event(message, code="unsupported_intent", param="intent"), CLOSE_POLICY)
            return
        if sessions.open >= sessions.limit:
            message = f"This server holds {sessions.limit} realtime sessions already; retry later."
            await refuse(
                error_event(message, code="too_many_sessions", type="rate_limit_error"), CLOSE_TRY_LATER
            )
            return
        sessions.open += 1
        query_model = websocket.query_params.get("model")
        session = RealtimeSession(service, limits, send, model=query_model)
        try:
            await session.start()
            await _serve(
                websocket,
                session,
                send,
                settings.realtime_idle_timeout,
                settings.realtime_max_session_seconds,
            )
        except WebSocketDisconnect:
            pass
        except _NotReading:
            logger.info(
                "realtime session %s closed: the client stopped reading its events", session.config.id
            )
            with contextlib.suppress(Exception):
                await asyncio.wait_for(websocket.close(code=CLOSE_POLICY, reason="not reading"), 1.0)
        except Exception as e:  # a bug, never the client's input: log it, close cleanly
            logger.error("realtime session failed", exc_info=e)
            await refuse(
                error_event("The server had an error.", type="server_error", code="internal_error"), 1011
            )
        finally:
            sessions.open -= 1
            await session.close()

    return router


async def _serve(
    websocket: WebSocket,
    session: RealtimeSession,
    send: Callable[[dict[str, Any]], Awaitable[None]],
    idle_timeout: float,
    max_seconds: float,
) -> None:
    """Reads client messages until the client leaves, the session idles, or it reaches its maximum length."""
    deadline = time.monotonic() + max_seconds
    while True:
        left = deadline - time.monotonic()
        try:
            message = await asyncio.wait_for(websocket.receive(), timeout=max(0.0, min(idle_timeout, left)))
        except asyncio.TimeoutError:
            if left <= idle_timeout:
                text, code = (
                    f"The session reached its maximum duration of {max_seconds:g} s.",
                    "session_expired",
                )
            else:
                text, code = f"No client event for {idle_timeout:g} s: the session is closed.", "idle_timeout"
            await send(error_event(text, code=code))
            await websocket.close(code=1000, reason=code)
            return
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await session.handle(message["text"])
        else:
            await send(
                error_event(
                    "Binary messages are not supported: send JSON text events (audio as base64 in "
                    "input_audio_buffer.append).",
                    code="invalid_event",
                )
            )
