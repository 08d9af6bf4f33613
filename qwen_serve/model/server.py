"""The model deployment: one batching Engine per replica, driven from Ray Serve's event loop.

`ModelServer` is a plain class; the app builder turns it into one Serve
deployment per model id. It must not import the engine (ctypes) at module
level: Serve may pickle the deployment class by value, and ctypes types next
to it break that. The engine is created in `__init__`, on the replica.

One replica decodes up to `max_batch` requests together on the engine's
scheduler thread and accepts twice that many (Serve's `max_ongoing_requests`):
the others wait in the engine's queue (its `max_waiting`, max_batch by default).
Each request is submitted to the engine on the event loop (submission does
not block), so a request the engine cannot take (`EngineBusy`: its waiting
line is full, or it needs more KV cache than the whole budget) fails before
anything has started, as `ReplicaBusy`, which the ingress answers with 503 +
Retry-After like Serve's own backpressure. The engine's stream is a blocking
iterator, so every accepted request has a worker thread from the replica's
own pool, sized to what the engine can hold (slots + waiting line): the
event loop's default executor has min(32, cpus + 4) threads and would
silently cap concurrency on a small machine. Text deltas cross to the event
loop through an asyncio queue as they are decoded. When the caller goes
away (client disconnect -> Serve cancels the request), the engine stream is
closed, which frees its slot at once.

A replica that Serve stops (scale-down, idle unload, redeploy) first drains:
Serve sends it nothing new and waits up to `graceful_shutdown_timeout_s`
(the setting `drain_timeout`) for its running requests and streams, then
calls `__del__`, which closes the engine. Metrics (qwen_serve/metrics.py):
load time and loads/unloads, real-time factor and tokens per transcription,
and once a second the engine's queue depth, batch and steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .. import metrics
from ..download import checkpoint_problem, missing_checkpoint_message
from .results import (
    LiveText,
    ReplicaBusy,
    StreamItem,
    StreamStarted,
    TextDelta,
    TranscriptResult,
    result_logprobs,
)

if TYPE_CHECKING:
    from ..engine.types import Transcription

logger = logging.getLogger("ray.serve")

DEFAULT_MAX_BATCH = 8
ENGINE_MAX_NEW_TOKENS = 512
"""The engine's own bound on an answer, when the setting max_new_tokens is not given."""
METRICS_INTERVAL_S = 1.0


# ---- what the deployment needs from an engine ------------------------------------


class EngineStream(Protocol):
    """One submitted request: text deltas as they are decoded, then `result`."""

    @property
    def result(self) -> Transcription | None:
        """The whole Transcription once the iterator is exhausted; None before."""
        ...

    def __iter__(self) -> Iterator[str]: ...

    def __next__(self) -> str:
        """The next text delta; blocks until one is decoded; StopIteration at the end."""
        ...

    def take_logprobs(self) -> Sequence[Any]:
        """Log-probabilities (token, logprob, bytes) of the tokens decoded since the last call, for
        a request made with `logprobs`; called from the iterating thread."""
        ...

    def close(self) -> None:
        """Cancels the request and frees its slot at once; safe from any thread, a no-op when done."""
        ...


class BatchingEngine(Protocol):
    """What the deployment relies on (qwen_serve.engine.Engine; tests/api/fakes.py's FakeEngine).

    `stream` may be called from any thread, any number of times at once, and
    submits at once: it raises the engine's `EngineBusy` there when the
    request cannot be taken, never later.
    """

    def stream(
        self,
        pcm: np.ndarray,
        language: str | None = None,
        context: str = "",
        max_new_tokens: int | None = None,
        prefix_ids: Sequence[int] = (),
        logprobs: bool = False,
    ) -> EngineStream: ...

    def fix_prefix(
        self, answer_ids: Sequence[int], n_fixed: int, hold_back: int, language: str | None = None
    ) -> tuple[list[int], str]:
        """Live transcription: a partial answer's ids that will not change (all but the last
        `hold_back`, never fewer than `n_fixed`, never a stop token) and the text `stream`
        yields for them."""
        ...

    def stats(self) -> Mapping[str, int]:
        """{"max_batch", "active" (sequences holding a slot), "waiting" (requests waiting for a slot)},
        and if known "admitting" (active sequences whose encoder or prefill has yet to run);
        the metrics also read the counts of metrics.ENGINE_COUNTS ("steps", "step_sequences":
        sequences summed over steps, and libqwen's cache counts) if there."""
        ...

    @property
    def weight_cache_state(self) -> str:
        """What its load did with the weight cache: "none", "written", "loaded" or "failed"."""
        ...

    def close(self) -> None: ...


class EngineFactory(Protocol):
    """Builds the engine of a replica; `Engine`'s own signature."""

    def __call__(
        self,
        model_dir: Path,
        *,
        threads: int | None,
        isa: str,
        precision: str,
        max_batch: int,
        kv_budget_tokens: int | None,
        max_waiting: int | None,
        encoder_cache_windows: int,
        prefix_cache_tokens: int,
        weight_cache: str,
    ) -> BatchingEngine: ...


def load_engine(
    model_dir: Path,
    *,
    threads: int | None,
    isa: str,
    precision: str,
    max_batch: int,
    kv_budget_tokens: int | None,
    max_waiting: int | None,
    encoder_cache_windows: int,
    prefix_cache_tokens: int,
    weight_cache: str,
) -> BatchingEngine:
    """The replica's Engine; `encoder_cache_windows` / `prefix_cache_tokens` 0 turn libqwen's
    caches off, `weight_cache` "" its weight cache (a "~" in it is this node's home)."""
    from qwen_serve.engine import Engine  # here, on the replica: keeps ctypes out of this module

    return Engine(
        model_dir,
        threads=threads,
        isa=isa,
        precision=precision,
        max_batch=max_batch,
        kv_budget_tokens=kv_budget_tokens,
        max_waiting=max_waiting,
        encoder_cache_windows=encoder_cache_windows if encoder_cache_windows > 0 else -1,
        prefix_cache_tokens=prefix_cache_tokens if prefix_cache_tokens > 0 else -1,
        weight_cache=weight_cache or None,
    )


def node_cpus() -> int | None:
    """CPUs of the node this replica runs on, as Ray counts them (container limits included);
    None outside Ray. Ray's `num_cpus` of a replica is a scheduling reservation, not a limit:
    a replica computes on all the node's cores, so one request alone is as fast as an engine
    with all cores, and the replicas that share a node share its cores."""
    import ray

    if not ray.is_initialized():  # get_runtime_context() would start a cluster
        return None
    node = ray.get_runtime_context().get_node_id()
    for info in ray.nodes():
        if info.get("NodeID") == node:
            cpus = float(info.get("Resources", {}).get("CPU", 0.0))
            return max(1, math.floor(cpus)) if cpus > 0 else None
    return None


def _sample_engine(server_ref: weakref.ref[ModelServer], stop: threading.Event) -> None:
    """Once a second: the engine's queue depth and batch (gauges), its steps and cache counts since
    (counters). Holds the server weakly, so that a server nobody holds is still collected."""
    last = dict.fromkeys(metrics.ENGINE_COUNTS, 0)
    while not stop.wait(METRICS_INTERVAL_S):
        server = server_ref()
        if server is None:
            return
        try:
            stats = server.engine.stats()
            now = {key: int(stats.get(key, 0)) for key in metrics.ENGINE_COUNTS}
            metrics.engine_sampled(server.model_id, stats, {key: now[key] - last[key] for key in now})
            last = now
        except Exception:  # never let metrics take the replica down
            logger.exception("model %s: sampling engine metrics failed", server.model_id)
            return
        finally:
            del server


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
        precision: str = "exact",
        max_batch: int = DEFAULT_MAX_BATCH,
        kv_budget_tokens: int | None = None,
        max_waiting: int | None = None,
        encoder_cache_windows: int = 32,
        prefix_cache_tokens: int = 1024,
        weight_cache: str = "",
        engine_factory: EngineFactory | None = None,
        record_metrics: bool = True,
    ):
        self.model_id = model_id
        self.model_dir = Path(model_dir)
        self.max_new_tokens = max_new_tokens
        if engine_factory is None:
            problem = checkpoint_problem(self.model_dir)
            if problem:
                raise FileNotFoundError(missing_checkpoint_message(model_id, self.model_dir, problem, repo))
        self.threads = threads if threads is not None else node_cpus()
        metrics.configure(record_metrics)
        started = time.perf_counter()
        self.engine: BatchingEngine = (engine_factory or load_engine)(
            self.model_dir,
            threads=self.threads,
            isa=isa,
            precision=precision,
            max_batch=max_batch,
            kv_budget_tokens=kv_budget_tokens,
            max_waiting=max_waiting,
            encoder_cache_windows=encoder_cache_windows,
            prefix_cache_tokens=prefix_cache_tokens,
            weight_cache=weight_cache,
        )
        # One thread per request the engine can hold; busy requests never take one.
        capacity = max_batch + (max_batch if max_waiting is None else max_waiting)
        self._executor = ThreadPoolExecutor(max_workers=capacity, thread_name_prefix=f"{model_id}-stream")
        self._stop_sampling = threading.Event()
        self._closed = False
        self._cancelled = 0
        metrics.model_loaded(model_id, time.perf_counter() - started, self.engine.weight_cache_state)
        if record_metrics:
            threading.Thread(
                target=_sample_engine,
                args=(weakref.ref(self), self._stop_sampling),
                name=f"{model_id}-metrics",
                daemon=True,
            ).start()
        logger.info(
            "model %s loaded from %s in %.2f s (max_batch %d, precision %s, %s threads, weight cache: %s)",
            model_id,
            self.model_dir,
            time.perf_counter() - started,
            max_batch,
            precision,
            self.threads or "all",
            self.engine.weight_cache_state,
        )

    # ---- requests --------------------------------------------------------------
    async def transcribe(
        self, pcm: np.ndarray, language: str | None = None, context: str = "", logprobs: bool = False
    ) -> TranscriptResult:
        """The whole transcription at once (`logprobs`: with each token's log-probability)."""
        result: TranscriptResult | None = None
        async with contextlib.aclosing(self._run(pcm, language, context, logprobs=logprobs)) as items:
            async for item in items:
                if isinstance(item, TranscriptResult):
                    result = item
        assert result is not None
        return result

    async def stream(
        self,
        pcm: np.ndarray,
        language: str | None = None,
        context: str = "",
        prefix_ids: Sequence[int] = (),
        logprobs: bool = False,
    ) -> AsyncIterator[StreamItem]:
        """StreamStarted once the engine has taken the request, then TextDelta items, then the result.

        ReplicaBusy instead of StreamStarted when the engine cannot take it. `prefix_ids`: the
        fixed start of the answer from `live` (its text is not sent again; the result has it).
        `logprobs`: each delta and the result carry their tokens' log-probabilities.
        """
        async with contextlib.aclosing(
            self._run(pcm, language, context, prefix_ids, logprobs=logprobs)
        ) as items:
            async for item in items:
                yield item

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
        """One decode of a live turn's audio so far, after its fixed ids (at most
        `max_new_tokens` more): the ids fixed now (all but the last `hold_back` of the answer)
        and their text (see LiveText), and the whole transcript it heard; `logprobs`: with those
        of the text tokens it fixed. The answer stays within this server's max_new_tokens,
        with room after the fixed ids for the item's own decode. Best effort: when the engine
        has other requests' encoders or prefills to run (or requests waiting for a slot), it
        does not decode and the fixed ids stay as they are, so live text only uses spare time."""
        cap = self.max_new_tokens or ENGINE_MAX_NEW_TOKENS
        fixed = list(fixed_ids)
        stats = self.engine.stats()
        busy = stats.get("admitting", 0) or stats.get("waiting", 0)  # encoders and prefills to run
        if busy or len(fixed) + hold_back >= cap:  # they go first; or as much as may be fixed already
            return LiveText(*self.engine.fix_prefix(fixed, len(fixed), 0, language), [] if logprobs else None)
        result: TranscriptResult | None = None
        limit = min(cap, len(fixed) + max_new_tokens)
        async with contextlib.aclosing(self._run(pcm, language, context, fixed, limit, logprobs)) as items:
            async for item in items:
                if isinstance(item, TranscriptResult):
                    result = item
        assert result is not None
        answer = [i for segment in result.segments for i in segment.token_ids]
        ids, text = self.engine.fix_prefix(answer[:cap], len(fixed), hold_back, language)
        fixed_now = None if result.logprobs is None else [lp for lp in result.logprobs if lp.index < len(ids)]
        return LiveText(ids, text, fixed_now, result.text)

    async def stats(self) -> dict[str, int]:
        """The engine's stats ({"max_batch", "active", "waiting"}, and whatever else it reports),
        "cancelled" (requests stopped mid-decode because their caller went away) and "threads"
        when known. A call through the handle counts as one ongoing request of the replica."""
        stats = {**self.engine.stats(), "cancelled": self._cancelled}
        if self.threads is not None:
            stats["threads"] = self.threads
        return stats

    def _submit(
        self,
        pcm: np.ndarray,
        language: str | None,
        context: str,
        prefix_ids: Sequence[int],
        max_new_tokens: int | None,
        logprobs: bool,
    ) -> EngineStream:
        from qwen_serve.engine import EngineBusy  # loaded on the replica already (see the module doc)

        if not pcm.flags.writeable:  # arrays from Ray's object store are read-only
            pcm = np.array(pcm, dtype=np.float32)
        try:
            return self.engine.stream(
                pcm,
                language=language,
                context=context,
                max_new_tokens=self.max_new_tokens if max_new_tokens is None else max_new_tokens,
                prefix_ids=prefix_ids,
                logprobs=logprobs,
            )
        except EngineBusy as e:
            logger.info("model %s: engine busy (%s)", self.model_id, e)
            raise ReplicaBusy(str(e)) from None

    async def _run(
        self,
        pcm: np.ndarray,
        language: str | None,
        context: str,
        prefix_ids: Sequence[int] = (),
        max_new_tokens: int | None = None,
        logprobs: bool = False,
    ) -> AsyncGenerator[StreamItem, None]:
        # Submitted before the first item: busy fails the call.
        stream = self._submit(pcm, language, context, prefix_ids, max_new_tokens, logprobs)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def put(item: Any) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                for delta in stream:
                    put(TextDelta(delta, result_logprobs(stream.take_logprobs()) if logprobs else None))
                put(_Done(stream.result))
            except BaseException as e:  # reported on the loop; aborted runs end here too
                put(_Failed(e))

        ended = False  # the engine's stream ran to its end (result or error)
        try:
            yield StreamStarted()
            loop.run_in_executor(self._executor, work)
            while True:
                batch = [await queue.get()]
                while not queue.empty():  # coalesce what arrived meanwhile into one message
                    batch.append(queue.get_nowait())
                deltas = [i for i in batch if isinstance(i, TextDelta)]
                if deltas:
                    text = "".join(i.text for i in deltas)
                    yield TextDelta(
                        text, [lp for i in deltas for lp in i.logprobs or ()] if logprobs else None
                    )
                last = batch[-1]  # _Done / _Failed always come last
                ended = isinstance(last, (_Done, _Failed))
                if isinstance(last, _Done):
                    result = TranscriptResult.from_transcription(last.result)
                    metrics.transcription_finished(
                        self.model_id, result.duration, result.engine_ms / 1e3, result.output_tokens
                    )
                    yield result
                    return
                if isinstance(last, _Failed):
                    raise last.error
        finally:
            stream.close()  # no-op when finished; otherwise frees the slot now
            if not ended:
                self._cancelled += 1
                logger.info("model %s: request cancelled, decoding stopped", self.model_id)

    # ---- Serve hooks -------------------------------------------------------------
    def check_health(self) -> None:
        if self._closed:
            raise RuntimeError(f"model {self.model_id} is closed")

    def __del__(self) -> None:
        """Serve calls this once the replica has drained (or the drain timed out)."""
        engine = getattr(self, "engine", None)
        if engine is not None and not getattr(self, "_closed", True):
            self._closed = True
            self._stop_sampling.set()
            metrics.model_unloaded(self.model_id)
            engine.close()
            self._executor.shutdown(wait=False, cancel_futures=True)
            logger.info("model %s unloaded", self.model_id)
