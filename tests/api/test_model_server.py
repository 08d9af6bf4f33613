"""The model deployment's class without Ray: streaming, coalescing, cancellation, errors."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qwen_serve.model import ModelServer, ReplicaBusy, StreamStarted, TextDelta, TranscriptResult

from .fakes import FakeEngine, expected_words

pytestmark = pytest.mark.anyio


def _server(**options: Any) -> tuple[ModelServer, FakeEngine]:
    holder: dict[str, FakeEngine] = {}

    def factory(model_dir: Path, **engine_options: Any) -> FakeEngine:
        holder["e"] = FakeEngine(model_dir, **engine_options)
        return holder["e"]

    options = {"threads": 2, "max_new_tokens": 7, "isa": "avx2", "precision": "fast", **options}
    server = ModelServer("m", "/models/m", engine_factory=factory, **options)
    return server, holder["e"]


def _pcm(seconds: float) -> np.ndarray:
    pcm = np.zeros(int(seconds * 16000), dtype=np.float32)
    pcm.setflags(write=False)
    return pcm


async def test_stream_order_and_text() -> None:
    server, engine = _server()
    items = [item async for item in server.stream(_pcm(2.0), "English", "ctx")]
    assert isinstance(items[0], StreamStarted)
    assert isinstance(items[-1], TranscriptResult)
    deltas = [i.text for i in items if isinstance(i, TextDelta)]
    assert "".join(deltas) == items[-1].text == " ".join(expected_words(2.0))
    assert engine.calls[-1] == {
        "samples": 32000,
        "language": "English",
        "context": "ctx",
        "max_new_tokens": 7,
        "writeable": True,
        "prefix_ids": [],
        "logprobs": False,
    }
    assert engine.threads == 2 and engine.isa == "avx2" and engine.precision == "fast"
    assert (engine.max_batch, engine.kv_budget_tokens, engine.max_waiting) == (8, None, 8)


async def test_transcribe_result() -> None:
    server, engine = _server()
    res = await server.transcribe(_pcm(1.0))
    truth = engine.streams[-1].result
    assert res.text == truth.text and res.input_tokens == truth.usage.input_tokens
    assert res.output_tokens == truth.usage.output_tokens and res.audio_tokens == truth.usage.audio_tokens
    assert [s.token_ids for s in res.segments] == [s.token_ids for s in truth.segments]


async def test_live_fixes_all_but_the_last_ids_and_decodes_on_from_them() -> None:
    server, engine = _server(max_new_tokens=None)
    first = await server.live(_pcm(3.0), None, "", [], 2, 64)  # 6 words: 4 fixed
    assert first.fixed_ids == [1000, 1001, 1002, 1003] and first.text == "w0 w1 w2 w3"
    assert engine.calls[-1]["prefix_ids"] == [] and engine.calls[-1]["max_new_tokens"] == 64
    second = await server.live(_pcm(4.0), None, "", first.fixed_ids, 2, 64)  # 8 words: 6 fixed
    assert second.fixed_ids == [1000 + i for i in range(6)] and second.text.startswith(first.text)
    assert engine.calls[-1]["prefix_ids"] == first.fixed_ids and engine.calls[-1]["max_new_tokens"] == 4 + 64
    items = [item async for item in server.stream(_pcm(5.0), None, "", second.fixed_ids)]
    deltas = "".join(i.text for i in items if isinstance(i, TextDelta))
    assert second.text + deltas == items[-1].text == " ".join(expected_words(5.0))  # not sent twice


async def test_live_with_a_small_answer_bound_leaves_room_for_the_item() -> None:
    server, engine = _server(max_new_tokens=7)
    out = await server.live(_pcm(6.0), None, "", [], 2, 64)  # 12 words, answers of at most 7
    assert out.fixed_ids == [1000 + i for i in range(5)]  # 7 - 2 held back
    assert out.whole == " ".join(f"w{i}" for i in range(12))  # what it heard, bound or not
    again = await server.live(_pcm(7.0), None, "", out.fixed_ids, 2, 64)
    assert (again.fixed_ids, again.text) == (out.fixed_ids, out.text) and len(engine.calls) == 1
    assert again.whole is None  # as much as may be fixed: no decode, nothing heard


async def test_live_yields_to_other_requests_encoders_and_prefills() -> None:
    server, engine = _server(max_new_tokens=None)
    busy = {"max_batch": 8, "active": 2, "waiting": 0, "admitting": 1}
    engine.stats = lambda: busy  # type: ignore[method-assign]
    out = await server.live(_pcm(4.0), None, "", [1000, 1001], 2, 64)
    assert (out.fixed_ids, out.text, out.whole) == ([1000, 1001], "w0 w1", None) and engine.calls == []
    busy["admitting"] = 0
    out = await server.live(_pcm(4.0), None, "", [1000, 1001], 2, 64)
    assert len(out.fixed_ids) == 6 and len(engine.calls) == 1
    assert out.whole == "w0 w1 w2 w3 w4 w5 w6 w7"  # the fixed words' too


async def test_cancel_stops_the_engine() -> None:
    server, engine = _server()
    engine.token_delay = 0.05
    gen = server.stream(_pcm(20.0), None, "")
    assert isinstance(await gen.__anext__(), StreamStarted)
    await gen.__anext__()  # the first delta
    await gen.aclose()  # what Serve does when the client goes away
    assert engine.streams[-1].closed


async def test_task_cancellation_stops_the_engine() -> None:
    server, engine = _server()
    engine.token_delay = 0.05
    task = asyncio.ensure_future(server.transcribe(_pcm(20.0)))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.streams[-1].closed
    await asyncio.sleep(0.15)  # the worker thread stops at the next token
    assert engine.streams[-1].result is None


async def test_engine_error_propagates() -> None:
    server, engine = _server()
    engine.fail_after = 2
    with pytest.raises(RuntimeError):
        await server.transcribe(_pcm(3.0))


def test_missing_checkpoint_message(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as e:
        ModelServer("qwen-asr-0.6b", tmp_path / "nothing", repo="Qwen/Qwen3-ASR-0.6B")
    message = str(e.value)
    assert "python -m qwen_serve.download qwen-asr-0.6b" in message and "Qwen/Qwen3-ASR-0.6B" in message


def test_health() -> None:
    server, _ = _server()
    server.check_health()


def test_engine_options_are_passed() -> None:
    _, engine = _server(max_batch=3, kv_budget_tokens=4096, max_waiting=1)
    assert (engine.max_batch, engine.kv_budget_tokens, engine.max_waiting) == (3, 4096, 1)


def test_threads_default_outside_ray_is_the_engines() -> None:
    """Without Ray there is no reservation to follow: the engine picks (all online CPUs)."""
    import ray

    assert not ray.is_initialized()
    server, engine = _server(threads=None)
    assert engine.threads is None and server.threads is None
    assert not ray.is_initialized()  # and asking did not start a cluster


async def test_as_many_concurrent_streams_as_max_batch() -> None:
    """max_batch requests decode at once, beyond the default executor's min(32, cpus + 4) threads."""
    batch = 40
    server, engine = _server(max_batch=batch)
    engine.hold = threading.Event()  # streams stop after their first token until released
    gens = [server.stream(_pcm(1.0 + i / 10), None, "") for i in range(batch)]
    for gen in gens:
        assert isinstance(await gen.__anext__(), StreamStarted)
    # Each first delta needs its own worker thread inside the engine at the same time.
    firsts = await asyncio.wait_for(asyncio.gather(*(gen.__anext__() for gen in gens)), timeout=10)
    assert all(isinstance(item, TextDelta) for item in firsts)
    assert engine.stats() == {"max_batch": batch, "active": batch, "waiting": 0}
    engine.hold.set()
    texts = []
    for gen, first in zip(gens, firsts, strict=True):
        items = [first] + [item async for item in gen]
        assert isinstance(items[-1], TranscriptResult)
        texts.append("".join(i.text for i in items if isinstance(i, TextDelta)))
    assert texts == [" ".join(expected_words(1.0 + i / 10)) for i in range(batch)]
    assert engine.stats()["active"] == 0
    assert await server.stats() == {
        "max_batch": batch,
        "active": 0,
        "waiting": 0,
        "cancelled": 0,
        "threads": 2,
    }


async def test_busy_engine_is_replica_busy_before_anything_starts() -> None:
    server, engine = _server(max_batch=1, max_waiting=0)
    engine.token_delay = 0.05
    running = server.stream(_pcm(5.0), None, "")
    assert isinstance(await running.__anext__(), StreamStarted)
    with pytest.raises(ReplicaBusy):
        await server.stream(_pcm(1.0), None, "").__anext__()  # no StreamStarted first
    with pytest.raises(ReplicaBusy):
        await server.transcribe(_pcm(1.0))
    assert len(engine.streams) == 1
    await running.aclose()
    assert engine.stats()["active"] == 0
    assert (await server.transcribe(_pcm(1.0))).text == " ".join(expected_words(1.0))  # room again


async def test_request_larger_than_the_kv_budget_is_busy() -> None:
    server, _ = _server(kv_budget_tokens=100)
    assert (await server.transcribe(_pcm(2.0))).text  # 35 tokens fit
    with pytest.raises(ReplicaBusy, match="KV"):
        await server.transcribe(_pcm(10.0))  # 139 do not


async def test_cancel_frees_the_slot_and_spares_the_others() -> None:
    server, engine = _server(max_batch=4)
    engine.token_delay = 0.02
    gone = server.stream(_pcm(20.0), None, "")
    assert isinstance(await gone.__anext__(), StreamStarted)
    others = [asyncio.ensure_future(server.transcribe(_pcm(s))) for s in (1.0, 2.0, 3.0)]
    await gone.__anext__()
    assert engine.stats()["active"] == 4
    await gone.aclose()
    assert engine.stats()["active"] == 3  # at once, not when the others finish
    assert (await server.stats())["cancelled"] == 1
    results = await asyncio.gather(*others)
    assert [r.text for r in results] == [" ".join(expected_words(s)) for s in (1.0, 2.0, 3.0)]
    assert engine.stats()["active"] == 0
