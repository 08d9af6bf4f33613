"""The model deployment's class without Ray: streaming, coalescing, cancellation, errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from qwen_serve.model import ModelServer, StreamStarted, TextDelta, TranscriptResult

from .fakes import FakeEngine, expected_words

pytestmark = pytest.mark.anyio


def _server(engine: FakeEngine | None = None) -> tuple[ModelServer, FakeEngine]:
    holder: dict[str, FakeEngine] = {}

    def factory(model_dir: Path, threads: int | None, isa: str) -> FakeEngine:
        holder["e"] = engine or FakeEngine(model_dir, threads, isa)
        return holder["e"]

    server = ModelServer("m", "/models/m", threads=2, max_new_tokens=7, isa="avx2", engine_factory=factory)
    return server, holder.get("e")  # type: ignore[return-value]


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
    }
    assert engine.threads == 2 and engine.isa == "avx2"


async def test_transcribe_result() -> None:
    server, engine = _server()
    res = await server.transcribe(_pcm(1.0))
    truth = engine.streams[-1].result
    assert res.text == truth.text and res.input_tokens == truth.usage.input_tokens
    assert res.output_tokens == truth.usage.output_tokens and res.audio_tokens == truth.usage.audio_tokens
    assert [s.token_ids for s in res.segments] == [s.token_ids for s in truth.segments]


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
