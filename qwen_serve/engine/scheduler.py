"""The scheduler: one thread per Engine that drives libqwen's batching steps.

Requests come from any thread (`submit`, `cancel`); only this thread calls
into the native context. Each loop it

1. ends what was cancelled (its sequences are aborted, their slots free at once),
2. admits waiting chunks into free slots: the request with the fewest running
   chunks first, oldest first among equals, so a 10-minute file's chunks fill
   free slots without starving a short request that arrives after it,
3. runs one `qwen_step` (at most one encoder window or prefill chunk of
   admission work, then one decode pass for every decoding sequence) and hands
   each event to its request's queue.

A request is a list of chunks (one native sequence each); the consumer side
(engine.TranscriptionStream) turns the token events into text.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ._native import QWEN_DONE, AbortedError, BusyError, NativeError, NativeModel

logger = logging.getLogger("qwen_serve.engine")

TIMING_KEYS = ("mel", "encoder", "prefill", "decode")
CACHE_KEYS = ("encoder_cache_hits", "encoder_cache_misses", "prefix_cache_hits", "prefix_cache_tokens_reused")


class EngineBusy(RuntimeError):
    """The engine cannot take the request now: its waiting queue is full, or the request
    needs more KV cache than the whole budget. Try again later (HTTP 503)."""


@dataclass
class ChunkJob:
    """One chunk of a request's audio: a native sequence once admitted."""

    pcm: np.ndarray
    prompt: list[int]
    max_new_tokens: int


@dataclass(frozen=True)
class TokenEvent:
    """A chunk produced `token` (or -1) and is still running (status 0), ended (QWEN_DONE,
    with its `timings`), or failed (`error`). `logprob`: the token's log-probability, for a
    request that asked for them."""

    chunk: int
    token: int
    status: int
    logprob: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    error: BaseException | None = None


class Request:
    """A transcription in the scheduler: its chunks and the queue its events go to."""

    def __init__(self, chunks: Sequence[ChunkJob], eos_ids: Sequence[int], logprobs: bool = False):
        self.chunks = list(chunks)
        self.eos_ids = list(eos_ids)
        self.logprobs = logprobs  # each token's log-probability in its event
        self.events: queue.Queue[TokenEvent] = queue.Queue()
        self.next_chunk = 0  # the first chunk not yet admitted
        self.running = 0  # chunks holding a slot
        self.cancelled = False
        self.finished = False


class Scheduler:
    """Owns the native context on its own thread; see the module docstring."""

    def __init__(self, native: NativeModel, max_waiting: int, kv_budget_tokens: int):
        self.native = native
        self.max_waiting = max_waiting
        self.kv_budget_tokens = kv_budget_tokens
        self._cond = threading.Condition(threading.RLock())
        self._requests: list[Request] = []  # arrival order, until finished
        self._cancel: list[Request] = []
        self._slots: dict[int, tuple[Request, int]] = {}  # slot -> (request, chunk)
        self._decoding: set[int] = set()  # slots past their encoder and prefill (a token came)
        self._peak = 0  # most slots held at once
        self._steps = 0  # qwen_step calls
        self._step_sequences = 0  # sequences holding a slot, summed over steps (/ steps: mean batch)
        self._cache = dict.fromkeys(CACHE_KEYS, 0)  # libqwen's cache counters, read after each step
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="qwen-scheduler", daemon=True)
        self._thread.start()

    # ---- any thread ---------------------------------------------------------
    def submit(self, request: Request) -> None:
        """Queues a request; EngineBusy if it cannot be taken."""
        if self.kv_budget_tokens:
            need = max(len(c.prompt) + c.max_new_tokens for c in request.chunks)
            if need > self.kv_budget_tokens:
                raise EngineBusy(
                    f"the request needs {need} KV tokens for one chunk, more than this replica's "
                    f"budget of {self.kv_budget_tokens}"
                )
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is closed")
            waiting = sum(1 for r in self._requests if r.next_chunk == 0)
            if waiting >= self.max_waiting and self._slots_full():
                raise EngineBusy(
                    f"all {self.native.max_sequences} slots are busy and {waiting} requests wait"
                )
            self._requests.append(request)
            self._cond.notify()

    def cancel(self, request: Request) -> None:
        """Stops a request: its sequences end at once, nothing more is decoded for it."""
        with self._cond:
            if not request.finished and not request.cancelled:
                request.cancelled = True
                self._cancel.append(request)
                self._cond.notify()

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {
                "max_batch": self.native.max_sequences,
                "active": len(self._slots),
                "peak_active": self._peak,
                "steps": self._steps,
                "step_sequences": self._step_sequences,
                "waiting": sum(1 for r in self._requests if r.next_chunk == 0 and not r.cancelled),
                "admitting": len(self._slots.keys() - self._decoding),
                **self._cache,
            }

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for r in self._requests:
                if not r.cancelled:
                    self._cancel.append(r)
                    r.cancelled = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    # ---- the scheduler thread -----------------------------------------------
    def _slots_full(self) -> bool:
        return len(self._slots) >= self.native.max_sequences

    def _finish(self, request: Request, event: TokenEvent | None = None) -> None:
        """Ends a request: aborts what it still runs, then its last event (if any)."""
        for slot, (r, _) in list(self._slots.items()):
            if r is request:
                self.native.seq_abort(slot)
                del self._slots[slot]
                self._decoding.discard(slot)
        request.running = 0
        request.finished = True
        if request in self._requests:
            self._requests.remove(request)
        if event is not None:
            request.events.put(event)

    def _admit(self) -> None:
        while not self._slots_full():
            candidates = [r for r in self._requests if r.next_chunk < len(r.chunks) and not r.cancelled]
            if not candidates:
                return
            request = min(candidates, key=lambda r: r.running)  # min() keeps the oldest among equals
            index = request.next_chunk
            job = request.chunks[index]
            try:
                slot = self.native.seq_add(
                    job.pcm, job.prompt, job.max_new_tokens, request.eos_ids, logprobs=request.logprobs
                )
            except BusyError:
                if self._slots:
                    return  # the KV budget is reserved: admit once a sequence ends
                self._finish(request, TokenEvent(index, -1, -7, error=EngineBusy("KV budget exhausted")))
                continue
            except NativeError as e:
                self._finish(request, TokenEvent(index, -1, e.status, error=e))
                continue
            self._slots[slot] = (request, index)
            self._peak = max(self._peak, len(self._slots))
            request.next_chunk += 1
            request.running += 1

    def _loop(self) -> None:
        while True:
            with self._cond:
                for request in self._cancel:
                    self._finish(request, TokenEvent(-1, -1, -5, error=AbortedError(-5, "cancelled")))
                self._cancel.clear()
                if self._closed:
                    return
                self._admit()
                if not self._slots:
                    self._cond.wait()
                    continue
                self._steps += 1
                self._step_sequences += len(self._slots)
            try:
                events = self.native.step() or []
            except NativeError:  # bad arguments only: a bug
                logger.exception("qwen_step failed")
                events = []
            cache = {key: self.native.context_info(key) for key in self._cache}
            with self._cond:
                self._cache = cache
                for slot, token, status, logprob in events:
                    request, index = self._slots[slot]
                    lp = logprob if request.logprobs and token >= 0 else None
                    if status == 0:
                        self._decoding.add(slot)
                        request.events.put(TokenEvent(index, token, 0, lp))
                        continue
                    del self._slots[slot]
                    self._decoding.discard(slot)
                    request.running -= 1
                    if status != QWEN_DONE:
                        self._finish(
                            request, TokenEvent(index, token, status, error=self.native.error(status))
                        )
                        continue
                    timings = {k: self.native.seq_timing(slot, k) for k in TIMING_KEYS}
                    request.events.put(TokenEvent(index, token, status, lp, timings))
                    if request.next_chunk == len(request.chunks) and request.running == 0:
                        self._finish(request)
