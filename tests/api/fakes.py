"""A fake Engine with exactly the real Engine's interface, and a fake DeploymentHandle.

The fake engine "hears" one word per half second of audio, so tests know the
text to expect; it records every call so tests can check what reached it.
Like the batching Engine it holds `max_batch` streams decoding plus
`max_waiting` waiting, and raises the real `EngineBusy` at submission when
full or when a request needs more KV cache than `kv_budget_tokens`
(13 audio tokens a second + 9). mypy checks it against the deployment's
`BatchingEngine` / `EngineFactory` protocols (bottom of this file).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qwen_serve.engine import EngineBusy
from qwen_serve.engine.types import Segment, Timings, TokenLogprob, Transcription, Usage

SAMPLE_RATE = 16000
LANGUAGES = ["Chinese", "English", "Cantonese", "German", "French", "Spanish", "Japanese", "Filipino"]


def kv_tokens(samples: int) -> int:
    """KV-cache tokens the fake reserves for a request."""
    return round(samples / SAMPLE_RATE * 13) + 9


def expected_words(seconds: float, start: int = 0) -> list[str]:
    return [f"w{i}" for i in range(start, start + max(1, int(seconds / 0.5)))]


def fake_logprob(token_index: int) -> float:
    """The log-probability the fake gives its answer's token k (one per word): every third
    unsure (p ~ 0.36), the others likely."""
    return -0.01 * (token_index + 1) - (1.0 if token_index % 3 == 2 else 0.0)


class FakeStream:
    def __init__(
        self,
        engine: FakeEngine,
        pcm: np.ndarray,
        language: str | None,
        context: str,
        prefix: int = 0,
        logprobs: bool = False,
    ):
        self.result: Transcription | None = None
        self.closed = False
        self.logprobs: list[TokenLogprob] | None = [] if logprobs else None
        self._taken = 0
        self._engine = engine
        self._gen = self._run(engine, pcm, language, context, prefix)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        try:
            return next(self._gen)
        except BaseException:
            self._engine._release(self)
            raise

    def take_logprobs(self) -> list[TokenLogprob]:
        new = (self.logprobs or [])[self._taken :]
        self._taken += len(new)
        return new

    def close(self) -> None:
        self.closed = True
        self._engine._release(self)

    def _run(
        self, engine: FakeEngine, pcm: np.ndarray, language: str | None, context: str, prefix: int
    ) -> Iterator[str]:
        duration = pcm.size / SAMPLE_RATE
        chunk = int(engine.chunk_seconds * SAMPLE_RATE)
        segments: list[Segment] = []
        ids: list[int] = []
        texts: list[str] = []
        word_index = 0
        for start in range(0, max(pcm.size, 1), chunk):
            seconds = min(pcm.size - start, chunk) / SAMPLE_RATE
            words = expected_words(seconds, word_index)
            word_index += len(words)
            if start + chunk >= pcm.size:  # the answer's last word
                words[-1] += engine.sentence_end
            text = " ".join(words)
            if texts:
                text = " " + text
            chunk_ids: list[int] = []
            first_logprob = len(self.logprobs or [])
            for i, piece in enumerate(text.split(" ")):
                if self.closed:
                    return
                if engine.fail_after is not None and word_index - len(words) + i >= engine.fail_after:
                    raise RuntimeError("/secret/path/libqwen.so: native failure")
                time.sleep(engine.token_delay)
                if engine.hold is not None and (ids or chunk_ids):
                    engine.hold.wait(timeout=30)  # every stream stops after its first token until set
                chunk_ids.append(1000 + len(ids) + len(chunk_ids))
                if len(ids) + len(chunk_ids) > prefix:  # a forced prefix's words were sent before
                    token = piece if i == 0 else " " + piece
                    if self.logprobs is not None:
                        data = token.encode()
                        at = len(ids) + len(chunk_ids) - 1  # its place in the answer
                        self.logprobs.append(
                            TokenLogprob(token, fake_logprob(len(self.logprobs)), list(data), at)
                        )
                    yield token
            texts.append(text)
            ids.extend(chunk_ids)
            chunk_logprobs = [lp.logprob for lp in (self.logprobs or [])[first_logprob:]]
            mean = sum(chunk_logprobs) / len(chunk_logprobs) if chunk_logprobs else None
            segments.append(
                Segment(start / SAMPLE_RATE, start / SAMPLE_RATE + seconds, text.strip(), chunk_ids, mean)
            )
        audio_tokens = max(1, round(duration * 13))
        self.result = Transcription(
            text="".join(texts),
            language=language or "English",
            token_ids=ids,
            usage=Usage(
                input_tokens=9 + len(context) + audio_tokens,
                output_tokens=len(ids) - min(prefix, len(ids)) + 1,
                audio_tokens=audio_tokens,
            ),
            timings=Timings(total_ms=1.5),
            duration=duration,
            segments=segments,
            logprobs=self.logprobs,
        )


class FakeEngine:
    """Engine(model_dir, threads, isa, precision, max_batch, kv_budget_tokens, max_waiting) with transcribe /
    stream / stats / supported_languages / close."""

    def __init__(
        self,
        model_dir: str | Path,
        threads: int | None = None,
        isa: str = "auto",
        precision: str = "exact",
        max_batch: int = 8,
        kv_budget_tokens: int | None = None,
        max_waiting: int | None = None,
        encoder_cache_windows: int = 32,
        prefix_cache_tokens: int = 1024,
        weight_cache: str = "",
    ):
        self.model_dir = Path(model_dir)
        self.weight_cache = weight_cache
        self.weight_cache_state = "loaded" if weight_cache else "none"
        self.encoder_cache_windows = encoder_cache_windows
        self.prefix_cache_tokens = prefix_cache_tokens
        self.threads = threads
        self.isa = isa
        self.precision = precision
        self.max_batch = max_batch
        self.kv_budget_tokens = kv_budget_tokens
        self.max_waiting = max_batch if max_waiting is None else max_waiting
        self.open: list[FakeStream] = []
        """Submitted streams not yet finished or closed: the first max_batch decode, the rest wait."""
        self.supported_languages = list(LANGUAGES)
        self.calls: list[dict[str, Any]] = []
        self.streams: list[FakeStream] = []
        self.chunk_seconds = 30.0
        self.token_delay = 0.0
        self.fail_after: int | None = None
        self.hold: threading.Event | None = None
        self.sentence_end = ""
        """Put after the answer's last word (a sentence's end, for semantic VAD)."""
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
        prefix_ids: Sequence[int] = (),
        logprobs: bool = False,
    ) -> FakeStream:
        """`prefix_ids` (from fix_prefix) stand for the first words: they are not yielded again."""
        if pcm.ndim != 1 or pcm.dtype != np.float32:
            raise ValueError("pcm must be 1-D float32")
        if self.kv_budget_tokens is not None and kv_tokens(pcm.size) > self.kv_budget_tokens:
            raise EngineBusy(f"needs {kv_tokens(pcm.size)} KV tokens, the budget is {self.kv_budget_tokens}")
        with self._lock:
            if len(self.open) >= self.max_batch + self.max_waiting:
                raise EngineBusy(f"{len(self.open) - self.max_batch} requests waiting already")
        self.calls.append(
            {
                "samples": pcm.size,
                "language": language,
                "context": context,
                "max_new_tokens": max_new_tokens,
                "writeable": pcm.flags.writeable,
                "prefix_ids": list(prefix_ids),
                "logprobs": logprobs,
            }
        )
        stream = FakeStream(self, pcm, language, context, len(prefix_ids), logprobs)
        with self._lock:
            self.open.append(stream)
        self.streams.append(stream)
        return stream

    def fix_prefix(
        self, answer_ids: Sequence[int], n_fixed: int, hold_back: int, language: str | None = None
    ) -> tuple[list[int], str]:
        """Id 1000 + k is word k of the answer (one chunk: live turns are short)."""
        fixed = list(answer_ids)[: max(n_fixed, len(answer_ids) - hold_back)]
        return fixed, " ".join(f"w{i - 1000}" for i in fixed)

    def stats(self) -> dict[str, int]:
        with self._lock:
            n = len(self.open)
        return {
            "max_batch": self.max_batch,
            "active": min(n, self.max_batch),
            "waiting": max(0, n - self.max_batch),
        }

    def _release(self, stream: FakeStream) -> None:
        with self._lock:
            if stream in self.open:
                self.open.remove(stream)

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
        self.cancelled = False

    def __await__(self):
        return self._coro.__await__()

    def cancel(self) -> None:
        self.cancelled = True


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


class FakeWord:
    def __init__(self, word: str, start: float, end: float, span: tuple[int, int]):
        self.word, self.start, self.end, self.span = word, start, end, span


class FakeAligner:
    """Stands in for qwen_serve.engine.Aligner: a chunk's words share its time evenly, each
    taking the first 80 % of its share (so there are pauses between words)."""

    def __init__(self, model_dir: Any = None, **options: Any):
        self.options = options
        self.calls: list[tuple[list[tuple[float, float, str]], str | None]] = []
        self.closed = False

    def align_chunks(
        self,
        pcm: np.ndarray,
        text: str,
        chunks: Sequence[tuple[float, float, str]],
        language: str | None,
        cancelled: threading.Event | None = None,
    ) -> list[FakeWord]:
        self.calls.append((list(chunks), language))
        words: list[FakeWord] = []
        position = 0
        for start, end, chunk_text in chunks:
            pieces = chunk_text.split()
            share = (end - start) / max(1, len(pieces))
            for i, piece in enumerate(pieces):
                at = text.index(piece, position)
                position = at + len(piece)
                t0 = start + i * share
                words.append(FakeWord(piece, round(t0, 3), round(t0 + 0.8 * share, 3), (at, position)))
        return words

    def close(self) -> None:
        self.closed = True


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


if TYPE_CHECKING:  # the fake satisfies what the deployment relies on (mypy checks this file)
    from qwen_serve.model.aligner_server import AlignerEngine
    from qwen_serve.model.server import BatchingEngine, EngineFactory

    _aligner: AlignerEngine = FakeAligner()

    _engine: BatchingEngine = FakeEngine("/models/m")
    _factory: EngineFactory = FakeEngine
