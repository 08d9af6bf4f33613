"""A fake Engine with exactly the real Engine's interface, and a fake DeploymentHandle.

The fake engine "hears" one word per half second of audio, so tests know the
text to expect; it records every call so tests can check what reached it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from qwen_serve.engine.types import Segment, Timings, Transcription, Usage

SAMPLE_RATE = 16000
LANGUAGES = ["Chinese", "English", "Cantonese", "German", "French", "Spanish", "Japanese", "Filipino"]


def expected_words(seconds: float, start: int = 0) -> list[str]:
    return [f"w{i}" for i in range(start, start + max(1, int(seconds / 0.5)))]


class FakeStream:
    def __init__(self, engine: FakeEngine, pcm: np.ndarray, language: str | None, context: str):
        self.result: Transcription | None = None
        self.closed = False
        self._gen = self._run(engine, pcm, language, context)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._gen)

    def close(self) -> None:
        self.closed = True

    def _run(self, engine: FakeEngine, pcm: np.ndarray, language: str | None, context: str) -> Iterator[str]:
        duration = pcm.size / SAMPLE_RATE
        chunk = int(engine.chunk_seconds * SAMPLE_RATE)
        segments, ids, texts = [], [], []
        word_index = 0
        for start in range(0, max(pcm.size, 1), chunk):
            seconds = min(pcm.size - start, chunk) / SAMPLE_RATE
            words = expected_words(seconds, word_index)
            word_index += len(words)
            text = " ".join(words)
            if texts:
                text = " " + text
            chunk_ids = []
            for i, piece in enumerate(text.split(" ")):
                if self.closed:
                    return
                if engine.fail_after is not None and word_index - len(words) + i >= engine.fail_after:
                    raise RuntimeError("/secret/path/libqwen.so: native failure")
                time.sleep(engine.token_delay)
                chunk_ids.append(1000 + len(ids) + len(chunk_ids))
                yield piece if i == 0 else " " + piece
            texts.append(text)
            ids.extend(chunk_ids)
            segments.append(
                Segment(start / SAMPLE_RATE, start / SAMPLE_RATE + seconds, text.strip(), chunk_ids)
            )
        audio_tokens = max(1, round(duration * 13))
        self.result = Transcription(
            text="".join(texts),
            language=language or "English",
            token_ids=ids,
            usage=Usage(
                input_tokens=9 + len(context) + audio_tokens,
                output_tokens=len(ids) + 1,
                audio_tokens=audio_tokens,
            ),
            timings=Timings(total_ms=1.5),
            duration=duration,
            segments=segments,
        )


class FakeEngine:
    """Engine(model_dir, threads=None, isa="auto") with transcribe / stream / supported_languages / close."""

    def __init__(self, model_dir: str | Path, threads: int | None = None, isa: str = "auto"):
        self.model_dir = Path(model_dir)
        self.threads = threads
        self.isa = isa
        self.supported_languages = list(LANGUAGES)
        self.calls: list[dict[str, Any]] = []
        self.streams: list[FakeStream] = []
        self.chunk_seconds = 30.0
        self.token_delay = 0.0
        self.fail_after: int | None = None
        self.closed = False
        self._lock = threading.Lock()

    def transcribe(
        self,
        pcm: np.ndarray,
        language: str | None = None,
        context: str = "",
        max_new_tokens: int | None = None,
    ) -> Transcription:
        stream = self.stream(pcm, language=language, context=context, max_new_tokens=max_new_tokens)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def stream(
        self,
        pcm: np.ndarray,
        language: str | None = None,
        context: str = "",
        max_new_tokens: int | None = None,
    ) -> FakeStream:
        if pcm.ndim != 1 or pcm.dtype != np.float32:
            raise ValueError("pcm must be 1-D float32")
        self.calls.append(
            {
                "samples": pcm.size,
                "language": language,
                "context": context,
                "max_new_tokens": max_new_tokens,
                "writeable": pcm.flags.writeable,
            }
        )
        stream = FakeStream(self, pcm, language, context)
        self.streams.append(stream)
        return stream

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> FakeEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- a DeploymentHandle stand-in ----------------------------------------------------


class _Response:
    def __init__(self, coro: Any):
        self._coro = coro

    def __await__(self):
        return self._coro.__await__()


class _Generator:
    def __init__(self, agen: Any, busy: bool):
        self._agen = agen
        self._busy = busy
        self.cancelled = False

    def __aiter__(self) -> _Generator:
        return self

    async def __anext__(self) -> Any:
        if self._busy:
            from ray.serve.exceptions import BackPressureError

            raise BackPressureError(num_queued_requests=3, max_queued_requests=2)
        return await self._agen.__anext__()

    def cancel(self) -> None:
        self.cancelled = True

        async def _close() -> None:
            await self._agen.aclose()

        import asyncio

        asyncio.get_event_loop().create_task(_close())


class FakeHandle:
    """handle.method.remote(...) and handle.options(stream=True).method.remote(...), like Serve's."""

    def __init__(self, server: Any, stream: bool = False, busy: bool = False):
        self.server = server
        self._stream = stream
        self.busy = busy
        self.generators: list[_Generator] = []

    def options(self, stream: bool = False) -> FakeHandle:
        h = FakeHandle(self.server, stream=stream, busy=self.busy)
        h.generators = self.generators
        return h

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.server, name)
        handle = self

        class _Method:
            def remote(self, pcm: np.ndarray, *args: Any) -> Any:
                pcm = pcm.copy()
                pcm.setflags(write=False)  # as arrays arrive from Ray's object store
                if handle._stream:
                    gen = _Generator(method(pcm, *args), handle.busy)
                    handle.generators.append(gen)
                    return gen
                if handle.busy:
                    from ray.serve.exceptions import BackPressureError

                    async def busy() -> Any:
                        raise BackPressureError(num_queued_requests=3, max_queued_requests=2)

                    return _Response(busy())
                return _Response(method(pcm, *args))

        return _Method()
