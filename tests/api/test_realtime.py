"""/v1/realtime (transcription sessions) through the official SDK's realtime client.

The in-process app (real routes, ModelServer, fake engine) is served by
uvicorn on 127.0.0.1 in a thread: a WebSocket needs a real socket. Every
wait has a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import numpy as np
import pytest
import soxr
import uvicorn
import websockets
from openai import AsyncOpenAI

from qwen_serve.api.realtime.audio import ALAW, ULAW
from qwen_serve.api.realtime.session import LIVE_FIRST_S, LIVE_MAX_SECONDS
from qwen_serve.testing.clips import speech_like

from .conftest import MODEL, MODEL_B, TOKEN, Harness, make_settings
from .fakes import expected_words

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

INTENT = {"intent": "transcription"}
RECV_TIMEOUT_S = 10.0
MANUAL = {"type": "transcription", "audio": {"input": {"turn_detection": None}}}


# ---- the server and the client ------------------------------------------------------


@contextlib.contextmanager
def serve(harness: Harness) -> Iterator[str]:
    """The harness app on a free port of 127.0.0.1; yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(harness.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def make_harness(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Harness]:
    for var in ("QWEN_API_TOKEN", "QWEN_MAX_UPLOAD_MB", "QWEN_MAX_AUDIO_SECONDS", "QWEN_MODELS"):
        monkeypatch.delenv(var, raising=False)

    def make(busy: bool = False, **settings: Any) -> Harness:
        return Harness(make_settings(**settings), busy=busy)

    return make


@pytest.fixture
def harness(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness()


@pytest.fixture
def base_url(harness: Harness) -> Iterator[str]:
    with serve(harness) as url:
        yield url


def sdk(base_url: str, api_key: str = TOKEN) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=api_key, base_url=f"{base_url}/v1", max_retries=0)


@contextlib.asynccontextmanager
async def connect(base_url: str, model: str | None = MODEL, api_key: str = TOKEN) -> AsyncIterator[Any]:
    kwargs: dict[str, Any] = {"extra_query": INTENT}
    if model is not None:
        kwargs["model"] = model
    async with sdk(base_url, api_key).realtime.connect(**kwargs) as conn:
        yield conn


@contextlib.asynccontextmanager
async def manual_session(base_url: str) -> AsyncIterator[Any]:
    """A connected session with server VAD off (manual commits), past session.created/updated."""
    async with connect(base_url) as conn:
        assert (await recv(conn)).type == "session.created"
        await conn.session.update(session=MANUAL)
        assert (await recv(conn)).type == "session.updated"
        yield conn


async def recv(conn: Any) -> Any:
    return await asyncio.wait_for(conn.recv(), RECV_TIMEOUT_S)


async def recv_until(conn: Any, last: str, limit: int = 400) -> list[Any]:
    """Events up to and including the first of type `last`."""
    events = []
    for _ in range(limit):
        event = await recv(conn)
        events.append(event)
        if event.type == last:
            return events
    raise AssertionError(f"no {last} in {limit} events: {[e.type for e in events]}")


async def expect_error(conn: Any, code: str) -> Any:
    event = await recv(conn)
    assert event.type == "error", event
    assert event.error.code == code, event.error
    assert event.error.message and event.event_id
    return event.error


async def refused(url: str, code: str, headers: dict[str, str] | None = None) -> int | None:
    """A raw connection that gets one `error` with `code`, then is closed; returns the close code."""
    async with websockets.connect(url, additional_headers=headers or {}) as ws:
        event = json.loads(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S))
        assert event["type"] == "error" and event["error"]["code"] == code, event
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S)
    return ws.close_code


# ---- audio -------------------------------------------------------------------------------


def pcm24(x16k: np.ndarray) -> bytes:
    """16 kHz float32 -> what OpenAI clients send: 24 kHz 16-bit little-endian mono."""
    x = soxr.resample(x16k, 16000, 24000)
    return np.clip(np.round(x * 32767), -32768, 32767).astype("<i2").tobytes()


def g711(x16k: np.ndarray, table: np.ndarray) -> bytes:
    """16 kHz float32 -> 8 kHz G.711 bytes: each sample coded as the nearest table value."""
    x = np.clip(np.round(soxr.resample(x16k, 16000, 8000) * 32767), -32768, 32767)
    order = np.argsort(table)
    values = table[order].astype(np.float64)
    idx = np.clip(np.searchsorted(values, x), 1, values.size - 1)
    nearer_left = np.abs(x - values[idx - 1]) <= np.abs(values[idx] - x)
    return order[np.where(nearer_left, idx - 1, idx)].astype(np.uint8).tobytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def append(conn: Any, data: bytes, chunk: int = 4800) -> None:
    """In 100 ms appends (at 24 kHz pcm16), as a microphone client would."""
    for i in range(0, len(data), chunk):
        await conn.input_audio_buffer.append(audio=b64(data[i : i + chunk]))


def is_live(call: dict[str, Any]) -> bool:
    """An engine call of a live decode during a turn, not an item's decode after its commit: the
    harness's servers have no max_new_tokens setting, live decodes bound their answers."""
    return call["max_new_tokens"] is not None


def item_calls(harness: Harness, model: str = MODEL) -> list[dict[str, Any]]:
    return [c for c in harness.engines[model].calls if not is_live(c)]


def record_pcm(harness: Harness, model: str = MODEL) -> list[np.ndarray]:
    """The float32 audio every item's decode hands the engine."""
    engine = harness.engines[model]
    seen: list[np.ndarray] = []
    original = engine.stream

    def stream(pcm: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("max_new_tokens") is None:
            seen.append(np.array(pcm))
        return original(pcm, *args, **kwargs)

    engine.stream = stream  # type: ignore[method-assign]
    return seen


def similar(a: np.ndarray, b: np.ndarray) -> float:
    n = min(a.size, b.size)
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


def words(samples: int) -> str:
    return " ".join(expected_words(samples / 16000))


async def transcribed(conn: Any) -> tuple[Any, list[Any], Any]:
    """committed, the deltas, completed (of one item)."""
    events = await recv_until(conn, "conversation.item.input_audio_transcription.completed")
    committed = [e for e in events if e.type == "input_audio_buffer.committed"]
    deltas = [e for e in events if e.type == "conversation.item.input_audio_transcription.delta"]
    assert len(committed) == 1, [e.type for e in events]
    assert all(d.item_id == committed[0].item_id for d in deltas) and deltas
    assert events[-1].item_id == committed[0].item_id
    return committed[0], deltas, events[-1]


# ---- manual commits ---------------------------------------------------------------------


async def test_manual_commit_transcribes_each_item_in_order(harness: Harness, base_url: str) -> None:
    seen = record_pcm(harness)
    clips = [speech_like(2.2, seed=1), speech_like(1.2, seed=2)]
    async with connect(base_url) as conn:
        created = await recv(conn)
        assert created.type == "session.created" and created.event_id
        assert created.session.type == "transcription"
        session = {
            "type": "transcription",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "transcription": {
                        "model": MODEL,
                        "language": "en",
                        "prompt": "Names: Qwen.",
                        "keywords": ["Ray Serve", "KubeRay"],
                    },
                    "turn_detection": None,
                }
            },
        }
        await conn.session.update(session=session)
        updated = await recv(conn)
        assert updated.type == "session.updated"
        shown = updated.session.audio.input
        assert shown.turn_detection is None and shown.transcription.language == "en"
        assert shown.transcription.model == MODEL and shown.format.type == "audio/pcm"
        assert shown.transcription.keywords == ["Ray Serve", "KubeRay"]

        items = []
        for clip in clips:
            await append(conn, pcm24(clip))
            await conn.input_audio_buffer.commit()
            items.append(await transcribed(conn))
    (c1, d1, done1), (c2, d2, done2) = items
    assert c1.previous_item_id is None and c2.previous_item_id == c1.item_id != c2.item_id
    for (_, deltas, done), clip in zip(items, clips, strict=True):
        assert "".join(d.delta for d in deltas) == done.transcript == words(clip.size)
        assert done.usage.type == "tokens" and done.usage.total_tokens > done.usage.input_tokens > 0
        assert [lang.code for lang in done.languages] == ["en"]
    calls = item_calls(harness)
    assert [c["language"] for c in calls] == ["English", "English"]
    assert [c["context"] for c in calls] == ["Names: Qwen.\nRay Serve\nKubeRay"] * 2
    for pcm, clip in zip(seen, clips, strict=True):  # 24 kHz in, the same 16 kHz signal to the model
        assert abs(pcm.size - clip.size) <= 2
        assert similar(pcm, clip) > 0.99


@pytest.mark.parametrize("fmt, table", [("audio/pcmu", ULAW), ("audio/pcma", ALAW)])
async def test_g711_input(harness: Harness, base_url: str, fmt: str, table: np.ndarray) -> None:
    seen = record_pcm(harness)
    clip = speech_like(2.2, seed=3)
    async with connect(base_url) as conn:
        await recv(conn)
        await conn.session.update(
            session={
                "type": "transcription",
                "audio": {"input": {"format": {"type": fmt}, "turn_detection": None}},
            }
        )
        assert (await recv(conn)).session.audio.input.format.type == fmt
        await append(conn, g711(clip, table), chunk=800)
        await conn.input_audio_buffer.commit()
        _, _, done = await transcribed(conn)
    assert done.transcript == words(clip.size)
    assert abs(seen[0].size - clip.size) <= 2
    assert similar(seen[0], clip) > 0.97  # 8-bit companding and 4 kHz bandwidth, still the same signal


async def test_beta_transcription_session_update(harness: Harness, base_url: str) -> None:
    clip = speech_like(1.2, seed=4)
    async with connect(base_url, model=None) as conn:
        await recv(conn)
        beta = {
            "type": "transcription_session.update",
            "session": {
                "input_audio_format": "g711_ulaw",
                "input_audio_transcription": {"model": MODEL_B, "languages": ["de"]},
                "turn_detection": None,
            },
        }
        await conn.send(beta)
        updated = json.loads(await asyncio.wait_for(conn.recv_bytes(), RECV_TIMEOUT_S))
        assert updated["type"] == "transcription_session.updated"
        assert updated["session"]["input_audio_format"] == "g711_ulaw"
        assert updated["session"]["input_audio_transcription"]["model"] == MODEL_B
        assert updated["session"]["input_audio_transcription"]["languages"] == ["de"]
        semantic = {"type": "semantic_vad", "eagerness": "low"}  # the beta shape takes it too
        await conn.send({"type": "transcription_session.update", "session": {"turn_detection": semantic}})
        updated = json.loads(await asyncio.wait_for(conn.recv_bytes(), RECV_TIMEOUT_S))
        assert updated["session"]["turn_detection"] == semantic
        await conn.send({"type": "transcription_session.update", "session": {"turn_detection": None}})
        updated = json.loads(await asyncio.wait_for(conn.recv_bytes(), RECV_TIMEOUT_S))
        assert updated["session"]["turn_detection"] is None
        await append(conn, g711(clip, ULAW), chunk=800)
        await conn.input_audio_buffer.commit()
        _, _, done = await transcribed(conn)
    assert done.transcript == words(clip.size)
    assert item_calls(harness, MODEL_B)[-1]["language"] == "German"


async def test_clear_empties_the_buffer(harness: Harness, base_url: str) -> None:
    async with manual_session(base_url) as conn:
        await append(conn, pcm24(speech_like(3.0)))
        await conn.input_audio_buffer.clear()
        assert (await recv(conn)).type == "input_audio_buffer.cleared"
        await conn.input_audio_buffer.commit()
        await expect_error(conn, "input_audio_buffer_commit_empty")
        clip = speech_like(1.2, seed=5)
        await append(conn, pcm24(clip))
        await conn.input_audio_buffer.commit()
        _, _, done = await transcribed(conn)
    assert done.transcript == words(clip.size)  # nothing of the cleared 3 s


async def test_two_sessions_at_once(harness: Harness, base_url: str) -> None:
    harness.engines[MODEL].token_delay = 0.02  # both items decode at the same time

    async def one(seconds: float, seed: int) -> str:
        async with manual_session(base_url) as conn:
            await append(conn, pcm24(speech_like(seconds, seed=seed)))
            await conn.input_audio_buffer.commit()
            _, _, done = await transcribed(conn)
            return str(done.transcript)

    texts = await asyncio.gather(one(3.2, 6), one(1.2, 7))
    assert texts == [words(int(3.2 * 16000)), words(int(1.2 * 16000))]
    assert len(item_calls(harness)) == 2


# ---- server VAD --------------------------------------------------------------------------


def speech_and_silence() -> tuple[np.ndarray, list[tuple[float, float]]]:
    """0.6 s silence, 2 s speech, 1.2 s silence, 1.5 s speech, 1.2 s silence; the speech spans in s."""
    z = lambda s: np.zeros(int(s * 16000), dtype=np.float32)  # noqa: E731
    parts = [z(0.6), speech_like(2.0, seed=8), z(1.2), speech_like(1.5, seed=9), z(1.2)]
    return np.concatenate(parts), [(0.6, 2.6), (3.8, 5.3)]


async def test_server_vad_commits_one_item_per_utterance(harness: Harness, base_url: str) -> None:
    seen = record_pcm(harness)
    audio, spans = speech_and_silence()
    async with connect(base_url) as conn:
        created = await recv(conn)
        assert created.session.audio.input.turn_detection.type == "server_vad"  # OpenAI's default
        vad = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}
        await conn.session.update(
            session={"type": "transcription", "audio": {"input": {"turn_detection": vad}}}
        )
        assert (await recv(conn)).session.audio.input.turn_detection.silence_duration_ms == 500
        await append(conn, pcm24(audio))
        events = await recv_until(conn, "conversation.item.input_audio_transcription.completed")
        events += await recv_until(conn, "conversation.item.input_audio_transcription.completed")
    kinds = [e.type for e in events if not e.type.endswith(".delta")]
    turn = [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.completed",
    ]
    started = [e for e in events if e.type == "input_audio_buffer.speech_started"]
    stopped = [e for e in events if e.type == "input_audio_buffer.speech_stopped"]
    completed = [e for e in events if e.type.endswith(".completed")]
    assert len(started) == len(stopped) == len(completed) == 2, kinds
    assert sorted(kinds[:4]) == sorted(turn) and kinds[0] == turn[0] and kinds[1] == turn[1]
    for (begin, end), s, e, done, pcm in zip(spans, started, stopped, completed, seen, strict=True):
        assert s.item_id == e.item_id == done.item_id
        # the turn starts prefix_padding_ms before the first speech frame, and stops silence_duration_ms after
        assert begin - 0.45 <= s.audio_start_ms / 1000 <= begin - 0.15, (s.audio_start_ms, begin)
        assert end + 0.35 <= e.audio_end_ms / 1000 <= end + 0.8, (e.audio_end_ms, end)
        assert abs(pcm.size - (e.audio_end_ms - s.audio_start_ms) * 16) <= 16
        assert done.transcript == words(pcm.size)
    commits = [e for e in events if e.type == "input_audio_buffer.committed"]
    assert commits[1].previous_item_id == commits[0].item_id


# ---- text during speech (live turns) ---------------------------------------------------------

DELTA = "conversation.item.input_audio_transcription.delta"


async def append_paced(conn: Any, x16k: np.ndarray, piece_s: float = 0.5, pause_s: float = 0.05) -> None:
    """Appends of piece_s seconds with a pause after each, so the session's live decodes
    (instant on the fake engine) keep up, as they do with a real-time microphone."""
    piece = int(piece_s * 16000)
    for i in range(0, x16k.size, piece):
        await append(conn, pcm24(x16k[i : i + piece]))
        await asyncio.sleep(pause_s)


async def test_live_text_comes_during_the_turn_and_adds_up(harness: Harness, base_url: str) -> None:
    """Without VAD: deltas of the fixed words come before the commit; after it the item's decode
    goes on from the fixed ids, and all deltas concatenate to the transcript."""
    clip = speech_like(6.0, seed=21)
    async with manual_session(base_url) as conn:
        await append_paced(conn, clip)
        await conn.input_audio_buffer.commit()
        events = await recv_until(conn, "conversation.item.input_audio_transcription.completed")
    committed = next(i for i, e in enumerate(events) if e.type == "input_audio_buffer.committed")
    live = [e for e in events[:committed] if e.type == DELTA]
    after = [e for e in events[committed:] if e.type == DELTA]
    done = events[-1]
    assert live, [e.type for e in events]  # text during speech
    assert {e.item_id for e in live + after} == {events[committed].item_id} == {done.item_id}
    assert "".join(e.delta for e in live + after) == done.transcript == words(clip.size)
    assert (
        done.usage.output_tokens == len(done.transcript.split()) + 1
    )  # the whole answer's, as if decoded whole
    calls = harness.engines[MODEL].calls
    decodes = [c for c in calls if is_live(c)]
    assert len(decodes) >= 3 and all(c["samples"] <= LIVE_MAX_SECONDS * 16000 for c in decodes)
    sizes = [c["samples"] for c in decodes]
    assert sizes == sorted(sizes) and sizes[0] >= LIVE_FIRST_S * 16000 - 2  # a growing turn
    for before, later in zip(decodes, decodes[1:], strict=False):  # each decodes on after what was fixed
        assert later["prefix_ids"][: len(before["prefix_ids"])] == before["prefix_ids"]
    (item,) = item_calls(harness)
    fixed = "".join(e.delta for e in live)
    assert item["prefix_ids"] and len(item["prefix_ids"]) == len(fixed.split())
    last = decodes[-1]["prefix_ids"]  # the item goes on from what the last live decode fixed
    assert item["prefix_ids"][: len(last)] == last


async def test_logprobs_of_live_text_and_of_the_item(harness: Harness, base_url: str) -> None:
    """include logprobs: every delta (those of live text during the turn and those after the commit)
    carries its tokens', and the completed event all of them, which spell the transcript."""
    clip = speech_like(6.0, seed=21)
    async with connect(base_url) as conn:
        assert (await recv(conn)).type == "session.created"
        await conn.session.update(session={**MANUAL, "include": ["item.input_audio_transcription.logprobs"]})
        updated = await recv(conn)
        assert updated.type == "session.updated"
        assert updated.session.include == ["item.input_audio_transcription.logprobs"]
        await append_paced(conn, clip)
        await conn.input_audio_buffer.commit()
        events = await recv_until(conn, "conversation.item.input_audio_transcription.completed")
        await conn.session.update(session={"type": "transcription", "include": []})  # off again
        assert (await recv(conn)).session.include is None
        await append(conn, pcm24(speech_like(1.0, seed=3)))
        await conn.input_audio_buffer.commit()
        _, plain_deltas, plain = await transcribed(conn)
    committed = next(i for i, e in enumerate(events) if e.type == "input_audio_buffer.committed")
    deltas = [e for e in events if e.type == DELTA]
    done = events[-1]
    assert any(e.type == DELTA for e in events[:committed])  # live text, with its logprobs
    assert all(d.logprobs for d in deltas)
    for d in deltas:
        assert "".join(lp.token for lp in d.logprobs) == d.delta
    tokens = [(lp.token, lp.logprob, lp.bytes) for d in deltas for lp in d.logprobs]
    assert done.logprobs is not None and [(lp.token, lp.logprob, lp.bytes) for lp in done.logprobs] == tokens
    assert "".join(t for t, _, _ in tokens) == done.transcript == words(clip.size)
    assert all(lp < 0 for _, lp, _ in tokens)
    assert plain.logprobs is None and all(d.logprobs is None for d in plain_deltas)
    assert [c["logprobs"] for c in item_calls(harness)] == [True, False]


async def test_live_text_of_a_cleared_turn_gets_no_item(harness: Harness, base_url: str) -> None:
    async with manual_session(base_url) as conn:
        await append_paced(conn, speech_like(5.0, seed=22))
        await conn.input_audio_buffer.clear()
        events = await recv_until(conn, "input_audio_buffer.cleared")
        dropped = {e.item_id for e in events if e.type == DELTA}
        assert dropped  # it had sent text
        clip = speech_like(1.2, seed=23)
        await append(conn, pcm24(clip))
        await conn.input_audio_buffer.commit()
        committed, _, done = await transcribed(conn)
    assert committed.item_id not in dropped and done.transcript == words(clip.size)
    assert item_calls(harness)[-1]["prefix_ids"] == []


async def test_live_text_can_be_turned_off(make_harness: Callable[..., Harness]) -> None:
    harness = make_harness(realtime_live_text=False)
    clip = speech_like(6.0, seed=25)
    with serve(harness) as base_url:
        async with manual_session(base_url) as conn:
            await append_paced(conn, clip)
            await conn.input_audio_buffer.commit()
            events = await recv_until(conn, "conversation.item.input_audio_transcription.completed")
    assert events[0].type == "input_audio_buffer.committed"  # nothing before the commit
    assert "".join(e.delta for e in events if e.type == DELTA) == events[-1].transcript == words(clip.size)
    assert not any(is_live(c) for c in harness.engines[MODEL].calls)


async def test_server_vad_sends_text_before_the_turn_ends(harness: Harness, base_url: str) -> None:
    z = np.zeros(int(0.6 * 16000), dtype=np.float32)
    audio = np.concatenate([z, speech_like(5.0, seed=24), z, z])
    async with connect(base_url) as conn:
        assert (await recv(conn)).type == "session.created"  # server VAD is the default
        await append_paced(conn, audio)
        events = await recv_until(conn, "conversation.item.input_audio_transcription.completed")
    kinds = [e.type for e in events]
    started, stopped = (
        kinds.index("input_audio_buffer.speech_started"),
        kinds.index("input_audio_buffer.speech_stopped"),
    )
    during = [e for e in events[started:stopped] if e.type == DELTA]
    assert during and all(e.item_id == events[started].item_id for e in during)
    deltas = [e.delta for e in events if e.type == DELTA]
    assert "".join(deltas) == events[-1].transcript
    (item,) = item_calls(harness)
    assert events[-1].transcript == words(item["samples"]) and item["prefix_ids"]


# ---- semantic VAD -----------------------------------------------------------------------------


async def semantic_turn(
    harness: Harness, base_url: str, eagerness: str, speech_s: float = 2.5, silence_s: float = 3.0
) -> tuple[float, list[Any]]:
    """0.6 s of silence, speech, silence, appended in 100 ms pieces (each followed by a moment for
    the session's decodes) with semantic_vad at `eagerness`: the silence's start (s) and the events
    up to the item's completion."""
    z = lambda s: np.zeros(int(s * 16000), dtype=np.float32)  # noqa: E731
    audio = np.concatenate([z(0.6), speech_like(speech_s, seed=8), z(silence_s)])
    vad = {"type": "semantic_vad", "eagerness": eagerness}
    async with connect(base_url) as conn:
        assert (await recv(conn)).type == "session.created"
        await conn.session.update(
            session={"type": "transcription", "audio": {"input": {"turn_detection": vad}}}
        )
        updated = await recv(conn)
        assert updated.session.audio.input.turn_detection.model_dump(exclude_none=True) == vad
        await append_paced(conn, audio, piece_s=0.1, pause_s=0.03)
        events = await recv_until(conn, "conversation.item.input_audio_transcription.completed")
    assert [e.type for e in events if e.type != DELTA][:3] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
    ]
    return 0.6 + speech_s, events


def silence_before_the_end(events: list[Any], speech_end: float) -> float:
    stopped = next(e for e in events if e.type == "input_audio_buffer.speech_stopped")
    return stopped.audio_end_ms / 1000 - speech_end


async def test_semantic_vad_ends_a_finished_sentence_soon(harness: Harness, base_url: str) -> None:
    """The turn's words end a sentence: it ends after high eagerness's 300 ms of silence (plus the
    VAD's own lag, as server VAD's test allows), not its 2 s; its words were decoded at the pause
    although the turn is shorter than live text's first decode, which fixed nothing."""
    harness.engines[MODEL].sentence_end = "."
    speech_end, events = await semantic_turn(harness, base_url, "high", speech_s=1.2)
    assert 0.15 <= silence_before_the_end(events, speech_end) <= 0.9
    live = [c for c in harness.engines[MODEL].calls if is_live(c)]
    assert live and all(c["samples"] < LIVE_FIRST_S * 16000 for c in live)  # the pause's decode
    committed = next(i for i, e in enumerate(events) if e.type == "input_audio_buffer.committed")
    assert not any(e.type == DELTA for e in events[:committed])  # no text fixed under LIVE_FIRST_S
    (item,) = item_calls(harness)
    assert item["prefix_ids"] == [] and events[-1].transcript == words(item["samples"]) + "."


@pytest.mark.parametrize(("eagerness", "longest"), [("high", 2.0), ("auto", 4.0)])
async def test_semantic_vad_waits_for_an_unfinished_sentence(
    harness: Harness, base_url: str, eagerness: str, longest: float
) -> None:
    """No sentence end in the words: the turn waits for more speech up to the eagerness's longest
    silence (high 2 s, auto = medium 4 s), then ends."""
    speech_end, events = await semantic_turn(harness, base_url, eagerness, silence_s=longest + 1.0)
    assert longest - 0.15 <= silence_before_the_end(events, speech_end) <= longest + 0.4
    assert not events[-1].transcript.endswith(".")


async def test_semantic_vad_without_words_ends_at_the_short_silence(
    make_harness: Callable[..., Harness],
) -> None:
    """Live text off: the turn's words are not decoded before its end, so it ends after the short
    silence (as server VAD would with it)."""
    harness = make_harness(realtime_live_text=False)
    with serve(harness) as base_url:
        speech_end, events = await semantic_turn(harness, base_url, "high")
    assert 0.15 <= silence_before_the_end(events, speech_end) <= 0.9
    assert not any(is_live(c) for c in harness.engines[MODEL].calls)


# ---- auth and limits -----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["sk-wrong", ""])
async def test_bad_token_is_refused_before_any_audio(harness: Harness, base_url: str, key: str) -> None:
    url = f"{base_url.replace('http', 'ws')}/v1/realtime?intent=transcription"
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    assert await refused(url, "invalid_api_key" if key else "missing_api_key", headers) == 1008
    assert harness.engines[MODEL].calls == []


async def test_sdk_with_a_wrong_key_gets_the_error(base_url: str) -> None:
    async with connect(base_url, api_key="sk-wrong") as conn:
        error = await expect_error(conn, "invalid_api_key")
        assert "Incorrect API key" in error.message


async def test_browser_token_as_subprotocol(base_url: str) -> None:
    url = f"{base_url.replace('http', 'ws')}/v1/realtime?intent=transcription&model={MODEL}"
    offered = ["realtime", f"openai-insecure-api-key.{TOKEN}", "openai-beta.realtime-v1"]
    async with websockets.connect(url, subprotocols=offered) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "realtime"  # selected: a browser requires one; never the key
        event = json.loads(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S))
        assert event["type"] == "session.created"
    bad = ["realtime", "openai-insecure-api-key.sk-wrong"]
    async with websockets.connect(url, subprotocols=bad) as ws:  # type: ignore[arg-type]
        event = json.loads(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S))
        assert event["error"]["code"] == "invalid_api_key"


async def test_session_cap_and_idle_timeout(make_harness: Callable[..., Harness]) -> None:
    harness = make_harness(realtime_max_sessions=1, realtime_idle_timeout=1.0)
    with serve(harness) as base_url:
        async with connect(base_url) as first:
            assert (await recv(first)).type == "session.created"
            url = f"{base_url.replace('http', 'ws')}/v1/realtime?intent=transcription"
            assert await refused(url, "too_many_sessions", {"Authorization": f"Bearer {TOKEN}"}) == 1013
            start = time.monotonic()
            await expect_error(first, "idle_timeout")  # nothing sent for 1 s
            assert 0.5 < time.monotonic() - start < 5
        async with connect(base_url) as again:  # the slot is free again
            assert (await recv(again)).type == "session.created"


async def test_maximum_session_duration(make_harness: Callable[..., Harness]) -> None:
    harness = make_harness(realtime_max_session_seconds=1.5, realtime_idle_timeout=10.0)
    with serve(harness) as base_url:
        async with connect(base_url) as conn:
            start = time.monotonic()
            assert (await recv(conn)).type == "session.created"
            for _ in range(40):  # an active client: an event every 0.2 s
                with contextlib.suppress(websockets.ConnectionClosedOK):  # closed: the error is still to read
                    await conn.input_audio_buffer.clear()
                event = await recv(conn)
                if event.type == "error":
                    break
                assert event.type == "input_audio_buffer.cleared"
                await asyncio.sleep(0.2)
            assert event.type == "error" and event.error.code == "session_expired", event
            assert 1.2 < time.monotonic() - start < 4


async def test_busy_model_fails_the_item_and_keeps_the_session(make_harness: Callable[..., Harness]) -> None:
    harness = make_harness(busy=True)
    with serve(harness) as base_url:
        async with manual_session(base_url) as conn:
            await append(conn, pcm24(speech_like(1.0)))
            await conn.input_audio_buffer.commit()
            committed = await recv(conn)
            failed = await recv(conn)
            assert failed.type == "conversation.item.input_audio_transcription.failed"
            assert failed.item_id == committed.item_id and failed.error.code == "model_busy"
            await conn.input_audio_buffer.clear()
            assert (await recv(conn)).type == "input_audio_buffer.cleared"


# ---- malformed input -----------------------------------------------------------------------

BAD_SESSIONS = [
    ({"type": "realtime"}, "unsupported_value", "session.type"),
    ({"type": "transcription", "audio": {"input": {"turn_detection": {"type": "semantic_vad", "silence_duration_ms": 500}}}}, "unsupported_value", "session.audio.input.turn_detection.silence_duration_ms"),
    ({"type": "transcription", "audio": {"input": {"turn_detection": {"type": "server_vad", "eagerness": "high"}}}}, "unsupported_value", "session.audio.input.turn_detection.eagerness"),
    ({"type": "transcription", "audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "eager"}}}}, "invalid_value", None),
    ({"type": "transcription", "audio": {"input": {"noise_reduction": {"type": "near_field"}}}}, "unsupported_value", None),
    ({"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}, "invalid_value", None),
    ({"type": "transcription", "audio": {"input": {"format": {"type": "audio/opus"}}}}, "invalid_value", None),
    ({"type": "transcription", "audio": {"input": {"transcription": {"model": "whisper-1"}}}}, "model_not_found", None),
    ({"type": "transcription", "audio": {"input": {"transcription": {"language": "xx"}}}}, "unsupported_language", None),
    ({"type": "transcription", "audio": {"input": {"transcription": {"languages": ["en", "de"]}}}}, "unsupported_language", "session.audio.input.transcription.languages"),
    ({"type": "transcription", "audio": {"input": {"transcription": {"keywords": ["Qwen", ""]}}}}, "invalid_value", "session.audio.input.transcription.keywords"),
    ({"type": "transcription", "audio": {"input": {"transcription": {"delay": "low"}}}}, "unsupported_value", "session.audio.input.transcription.delay"),
    ({"type": "transcription", "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 2}}}}, "invalid_value", None),
    ({"type": "transcription", "include": ["item.input_audio_transcription.text"]}, "unsupported_value", "session.include"),
    ({"type": "transcription", "voice": "alloy"}, "invalid_value", "session.voice"),
]  # fmt: skip


async def test_malformed_events_get_errors_and_the_session_stays_usable(
    make_harness: Callable[..., Harness],
) -> None:
    harness = make_harness(realtime_max_append_mb=0.06, realtime_max_buffer_seconds=4.0)
    with serve(harness) as base_url:
        async with manual_session(base_url) as conn:
            raw = conn._connection  # noqa: SLF001 - frames the SDK would never send
            await raw.send("{not json")
            await expect_error(conn, "invalid_json")
            await raw.send("[" * 50_000)  # nested deeper than the JSON parser goes
            await expect_error(conn, "invalid_json")
            await raw.send("[1, 2]")
            await expect_error(conn, "invalid_event")
            await raw.send(b"\x00\x01binary")
            await expect_error(conn, "invalid_event")
            await raw.send(json.dumps({"type": "response.create", "event_id": "evt_mine"}))
            error = await expect_error(conn, "invalid_event_type")
            assert error.event_id == "evt_mine"
            await conn.input_audio_buffer.append(audio="%%% not base64 %%%")
            await expect_error(conn, "invalid_base64")
            await conn.input_audio_buffer.append(audio=b64(b"\x01\x02\x03"))  # half a sample
            await expect_error(conn, "invalid_audio")
            await raw.send(json.dumps({"type": "input_audio_buffer.append"}))
            await expect_error(conn, "invalid_value")
            await conn.input_audio_buffer.append(
                audio=b64(bytes(120_000))
            )  # 160 KB of base64: over the 0.06 MiB limit
            await expect_error(conn, "message_too_large")
            await conn.input_audio_buffer.commit()
            await expect_error(conn, "input_audio_buffer_commit_empty")
            for bad, code, param in BAD_SESSIONS:
                await conn.send({"type": "session.update", "session": bad})
                error = await expect_error(conn, code)
                assert param is None or error.param == param, (bad, error)
            await append(conn, pcm24(speech_like(3.0)))
            await conn.input_audio_buffer.append(audio=b64(pcm24(speech_like(1.2))))  # 4.2 s > 4 s
            await expect_error(conn, "buffer_full")
            await conn.input_audio_buffer.clear()
            assert (await recv(conn)).type == "input_audio_buffer.cleared"
            # nothing above changed the session: pcm at 24 kHz, manual commits, the model transcribes
            clip = speech_like(1.2, seed=10)
            await append(conn, pcm24(clip))
            await conn.input_audio_buffer.commit()
            _, _, done = await transcribed(conn)
            assert done.transcript == words(clip.size)


async def test_unknown_query_model_and_wrong_intent(base_url: str) -> None:
    async with connect(base_url, model="gpt-4o-transcribe") as conn:
        created = await recv(conn)
        assert created.session.audio.input.transcription.model is None
        await expect_error(conn, "model_not_found")
        await conn.session.update(session=MANUAL)
        await recv(conn)
        await append(conn, pcm24(speech_like(1.0)))
        await conn.input_audio_buffer.commit()
        await expect_error(conn, "missing_model")  # the buffer is kept: set a model and commit again
        await conn.session.update(
            session={"type": "transcription", "audio": {"input": {"transcription": {"model": MODEL}}}}
        )
        await recv(conn)
        await conn.input_audio_buffer.commit()
        _, _, done = await transcribed(conn)
        assert done.transcript == words(16000)
    url = f"{base_url.replace('http', 'ws')}/v1/realtime?intent=conversation"
    assert await refused(url, "unsupported_intent", {"Authorization": f"Bearer {TOKEN}"}) == 1008
