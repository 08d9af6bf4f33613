"""Per HTTP request: one access-log line and the request metrics (a pure ASGI middleware).

    access request_id=5f0c... POST /v1/audio/transcriptions model=qwen-asr-0.6b audio_s=2.00 status=200
        latency_ms=812 stream=true first_delta_ms=420

Never the token, the form fields or the audio. The request id is the
`x-request-id` header (Serve's proxy sets it, and returns it to the client),
else a new one. The line is written when the last byte has gone out, so a
stream's latency is the whole stream. A request whose client went away
before its answer was complete (Serve cancels it; a stream's body stops
early) is logged as status 499 with `client gone`, at info level: it is not
a server error. `GET /health` is logged at debug level only (probes).

The service adds what only it knows (model, audio duration, first delta,
the status of a stream that failed after its 200) through `note()` and
`first_delta()`, which find the current request in a context variable, and
do nothing outside a request.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import metrics

logger = logging.getLogger("ray.serve")

CLIENT_GONE = 499  # nginx's "client closed request"
_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]")
QUIET_PATHS = ("/health",)


@dataclass
class RequestRecord:
    request_id: str
    method: str
    path: str
    start: float
    model: str = ""
    audio_seconds: float | None = None
    stream: bool = False
    first_delta_s: float | None = None
    failed_status: int | None = None
    """A stream that failed after its 200: the status of the error event it sent."""


_current: ContextVar[RequestRecord | None] = ContextVar("qwen_serve_request", default=None)


def note(*, model: str | None = None, audio_seconds: float | None = None, stream: bool | None = None) -> None:
    """Tells the access log what the request is (no-op outside a request)."""
    record = _current.get()
    if record is None:
        return
    if model is not None:
        record.model = model
    if audio_seconds is not None:
        record.audio_seconds = audio_seconds
    if stream is not None:
        record.stream = stream


def first_delta() -> None:
    """A stream sent its first text delta."""
    record = _current.get()
    if record is not None and record.first_delta_s is None:
        record.first_delta_s = time.perf_counter() - record.start


def stream_failed(status: int) -> None:
    """A stream that had started ended with an error event of this status."""
    record = _current.get()
    if record is not None:
        record.failed_status = status


def client_gone(error: BaseException) -> bool:
    """Whether an exception means the client went away: Serve cancelled the request (its handle
    calls raise Ray's TaskCancelledError / RequestCancelledError) or the upload was cut."""
    from ray.exceptions import TaskCancelledError
    from starlette.requests import ClientDisconnect

    return isinstance(error, (asyncio.CancelledError, TaskCancelledError, ClientDisconnect))


class AccessLog:
    """The middleware; see the module docstring."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = _UNSAFE.sub("_", given)[:128] or uuid.uuid4().hex  # no log injection
        record = RequestRecord(
            request_id, scope.get("method", ""), scope.get("path", ""), time.perf_counter()
        )
        status: int | None = None
        complete = False

        async def send_and_watch(message: Message) -> None:
            nonlocal status, complete
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            await send(message)

        async def receive_or_gone() -> Message:
            # When Serve cancels a request whose client went away, a pending receive() may raise
            # Ray's TaskCancelledError instead of returning http.disconnect (a race in Serve's
            # message queue): to the app it is the disconnect, or a stream that was listening for
            # one fails with "Request failed." at error level. asyncio.CancelledError still raises.
            try:
                return await receive()
            except Exception as e:
                if client_gone(e):
                    return {"type": "http.disconnect"}
                raise

        token = _current.set(record)
        outcome: int | None = None
        try:
            await self.app(scope, receive_or_gone, send_and_watch)
        except BaseException as e:
            outcome = CLIENT_GONE if client_gone(e) else (status if complete and status else 500)
            raise
        finally:
            _current.reset(token)
            if outcome is None:  # a body that stopped early: the client went away mid-stream
                outcome = (status or 500) if complete else CLIENT_GONE
            self._finish(record, scope, outcome)

    @staticmethod
    def _finish(record: RequestRecord, scope: Scope, status: int) -> None:
        latency = time.perf_counter() - record.start
        if status < 400 and record.failed_status is not None:
            status = record.failed_status
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "other"
        metrics.request_finished(
            record.model, endpoint, status, latency, record.audio_seconds, record.first_delta_s
        )
        level = logging.DEBUG if record.path in QUIET_PATHS else logging.INFO
        if not logger.isEnabledFor(level):
            return
        parts = [f"access request_id={record.request_id} {record.method} {record.path}"]
        if record.model:
            parts.append(f"model={record.model}")
        if record.audio_seconds is not None:
            parts.append(f"audio_s={record.audio_seconds:.2f}")
        parts.append(f"status={status}")
        parts.append(f"latency_ms={latency * 1e3:.0f}")
        if record.stream:
            parts.append("stream=true")
        if record.first_delta_s is not None:
            parts.append(f"first_delta_ms={record.first_delta_s * 1e3:.0f}")
        if status == CLIENT_GONE:
            parts.append("(client gone)")
        logger.log(level, " ".join(parts))
