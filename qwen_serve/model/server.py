"""The model deployment: one Engine per replica, driven from Ray Serve's event loop.

`ModelServer` is a plain class; the app builder turns it into one Serve
deployment per model id. It must not import the engine (ctypes) at module
level: Serve may pickle the deployment class by value, and ctypes types next
to it break that. The engine is created in `__init__`, on the replica.

Every request runs the engine's token loop in a worker thread; text deltas
cross to the event loop through an asyncio queue as they are decoded. When
the caller goes away (client disconnect -> Serve cancels the request), the
engine stream is closed and libqwen stops at the next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..download import checkpoint_problem, missing_checkpoint_message
from .results import StreamItem, StreamStarted, TextDelta, TranscriptResult

logger = logging.getLogger("ray.serve")

EngineFactory = Callable[[Path, "int | None", str], Any]


def load_engine(model_dir: Path, threads: int | None, isa: str) -> Any:
    from qwen_serve.engine import Engine  # here, on the replica: keeps ctypes out of this module

    return Engine(model_dir, threads=threads, isa=isa)


class _Done:
    def __init__(self, result: Any):
        self.result = result


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class ModelServer:
    """One loaded checkpoint; methods are called through a DeploymentHandle."""

    def __init__(
        self,
        model_id: str,
        model_dir: str | Path,
        threads: int | None = None,
        max_new_tokens: int | None = None,
        repo: str | None = None,
        isa: str = "auto",
        engine_factory: EngineFactory | None = None,
    ):
        self.model_id = model_id
        self.model_dir = Path(model_dir)
        self.max_new_tokens = max_new_tokens
        if engine_factory is None:
            problem = checkpoint_problem(self.model_dir)
            if problem:
                raise FileNotFoundError(missing_checkpoint_message(model_id, self.model_dir, problem, repo))
        self.engine = (engine_factory or load_engine)(self.model_dir, threads, isa)
        self._closed = False
        logger.info("model %s loaded from %s", model_id, self.model_dir)

    # ---- requests --------------------------------------------------------------
    async def transcribe(
        self, pcm: np.ndarray, language: str | None = None, context: str = ""
    ) -> TranscriptResult:
        """The whole transcription at once."""
        result: TranscriptResult | None = None
        async with contextlib.aclosing(self._run(pcm, language, context)) as items:
            async for item in items:
                if isinstance(item, TranscriptResult):
                    result = item
        assert result is not None
        return result

    async def stream(
        self, pcm: np.ndarray, language: str | None = None, context: str = ""
    ) -> AsyncIterator[StreamItem]:
        """StreamStarted, then TextDelta items as tokens are decoded, then the TranscriptResult."""
        yield StreamStarted()
        async with contextlib.aclosing(self._run(pcm, language, context)) as items:
            async for item in items:
                yield item

    async def _run(
        self, pcm: np.ndarray, language: str | None, context: str
    ) -> AsyncGenerator[StreamItem, None]:
        if not pcm.flags.writeable:  # arrays from Ray's object store are read-only
            pcm = np.array(pcm, dtype=np.float32)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stream = self.engine.stream(
            pcm, language=language, context=context, max_new_tokens=self.max_new_tokens
        )

        def put(item: Any) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                for delta in stream:
                    put(TextDelta(delta))
                put(_Done(stream.result))
            except BaseException as e:  # reported on the loop; aborted runs end here too
                put(_Failed(e))

        worker = loop.run_in_executor(None, work)
        try:
            while True:
                batch = [await queue.get()]
                while not queue.empty():  # coalesce what arrived meanwhile into one message
                    batch.append(queue.get_nowait())
                text = "".join(i.text for i in batch if isinstance(i, TextDelta))
                if text:
                    yield TextDelta(text)
                last = batch[-1]  # _Done / _Failed always come last
                if isinstance(last, _Done):
                    yield TranscriptResult.from_transcription(last.result)
                    return
                if isinstance(last, _Failed):
                    raise last.error
        finally:
            stream.close()  # no-op when finished; otherwise libqwen stops at the next token
            if not worker.done():
                logger.info("model %s: request cancelled, decoding stopped", self.model_id)

    # ---- Serve hooks -------------------------------------------------------------
    def check_health(self) -> None:
        if self._closed:
            raise RuntimeError(f"model {self.model_id} is closed")

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None and not getattr(self, "_closed", True):
            self._closed = True
            engine.close()
