"""What the routes call to transcribe: a backend per model id, behind a small protocol.

In the service a backend wraps a Ray Serve DeploymentHandle to that model's
deployment (`HandleBackend`); tests can put anything with the same two
methods behind it. Ray's errors are translated here into the two the routes
know: ModelBusyError (Serve's backpressure: its queue for the model is full;
or the replica's engine refused the request: `ReplicaBusy`) and
ModelUnavailableError (also when the replica died under the request: its
node went away, or it was stopped before its drain ended; the client may
retry). A call that Serve cancelled because the client went away (Ray's
TaskCancelledError) ends as `asyncio.CancelledError`, which is what it is:
not a failure of the service.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..model.results import LiveText, ReplicaBusy, ResultWord, StreamItem, TranscriptResult


class ModelBusyError(Exception):
    """Too many requests are waiting for this model, or its engine has no room for this one."""


class ModelUnavailableError(Exception):
    """The model cannot serve (its replicas fail to start or are gone)."""


class ModelBackend(Protocol):
    async def transcribe(
        self, pcm: np.ndarray, language: str | None, context: str, logprobs: bool = False
    ) -> TranscriptResult:
        """The whole result at once (`logprobs`: with each token's log-probability)."""
        ...

    def stream(
        self,
        pcm: np.ndarray,
        language: str | None,
        context: str,
        prefix_ids: Sequence[int] = (),
        logprobs: bool = False,
    ) -> AsyncIterator[StreamItem]:
        """StreamStarted first (a replica took the request), then TextDelta items, then the
        TranscriptResult. `prefix_ids`: a live turn's fixed answer (LiveText), not sent again.
        `logprobs`: the deltas and the result carry their tokens' log-probabilities."""
        ...

    async def live(
        self,
        pcm: np.ndarray,
        language: str | None,
        context: str,
        fixed_ids: Sequence[int],
        hold_back: int,
        max_new_tokens: int,
        logprobs: bool = False,
    ) -> LiveText:
        """One decode of a live turn's audio so far after its fixed ids: the ids fixed now and their
        text (`logprobs`: with the log-probabilities of the text tokens it fixed)."""
        ...


class AlignerBackend(Protocol):
    async def align(
        self, pcm: np.ndarray, text: str, chunks: Sequence[tuple[float, float, str]], language: str | None
    ) -> list[ResultWord]:
        """The words of transcript `text` with their times in the whole audio and their spans in
        `text`, from its audio chunks (start, end, chunk text) in order."""
        ...


@dataclass(frozen=True)
class ModelInfo:
    """What the ingress knows about a model without loading it."""

    id: str
    created: int
    languages: Sequence[str] = field(default_factory=tuple)
    owned_by: str = "qwen"


@dataclass
class ServedModel:
    info: ModelInfo
    backend: ModelBackend


@contextlib.contextmanager
def _translated_errors() -> Iterator[None]:
    """Ray's errors (and the replica's ReplicaBusy) as the two the routes know, and Serve's
    cancellation of a call whose client went away as the CancelledError it is."""
    from ray.exceptions import RayActorError, TaskCancelledError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    try:
        yield
    except (BackPressureError, ReplicaBusy) as e:
        raise ModelBusyError() from e
    except (DeploymentUnavailableError, RayActorError) as e:
        raise ModelUnavailableError() from e
    except TaskCancelledError as e:  # Serve cancelled the call: the client went away
        raise asyncio.CancelledError() from e


class HandleBackend:
    """A model deployment reached through its DeploymentHandle."""

    def __init__(self, handle: Any):
        self._handle = handle

    async def transcribe(
        self, pcm: np.ndarray, language: str | None, context: str, logprobs: bool = False
    ) -> TranscriptResult:
        with _translated_errors():
            return await self._handle.transcribe.remote(pcm, language, context, logprobs)

    async def stream(
        self,
        pcm: np.ndarray,
        language: str | None,
        context: str,
        prefix_ids: Sequence[int] = (),
        logprobs: bool = False,
    ) -> AsyncIterator[StreamItem]:
        gen = self._handle.options(stream=True).stream.remote(
            pcm, language, context, list(prefix_ids), logprobs
        )
        finished = False
        try:
            with _translated_errors():
                async for item in gen:
                    yield item
            finished = True
        finally:
            if not finished:  # client gone or error: stop the replica's work too
                gen.cancel()

    async def live(
        self,
        pcm: np.ndarray,
        language: str | None,
        context: str,
        fixed_ids: Sequence[int],
        hold_back: int,
        max_new_tokens: int,
        logprobs: bool = False,
    ) -> LiveText:
        response = self._handle.live.remote(
            pcm, language, context, list(fixed_ids), hold_back, max_new_tokens, logprobs
        )
        try:
            with _translated_errors():
                return await response
        except asyncio.CancelledError:
            response.cancel()  # the turn ended or the session closed: stop the replica's work too
            raise


class HandleAlignerBackend:
    """The forced aligner's deployment reached through its DeploymentHandle."""

    def __init__(self, handle: Any):
        self._handle = handle

    async def align(
        self, pcm: np.ndarray, text: str, chunks: Sequence[tuple[float, float, str]], language: str | None
    ) -> list[ResultWord]:
        with _translated_errors():
            return await self._handle.align.remote(pcm, text, list(chunks), language)
