"""/v1/realtime through a real Ray Serve instance (proxy, ingress, model replica, real Engine).

The official SDK's realtime client connects through Serve's HTTP proxy; the
transcript of a committed item must be the engine's own transcript of the
same 16 kHz audio (what the ingress makes of the 24 kHz appends).
"""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import soxr
from openai import AsyncOpenAI

from qwen_serve.api.realtime.audio import AudioDecoder, to_float32
from qwen_serve.testing.clips import speech_like

from .conftest import LARGE, LIMITS_MAX_NEW_TOKENS, MAX_NEW_TOKENS, SMALL, TOKEN, Limits, Service

pytestmark = [pytest.mark.e2e, pytest.mark.anyio, pytest.mark.timeout(300)]

RECV_TIMEOUT_S = 120.0  # the first item may wait for a model replica to start


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def recv(conn: Any) -> Any:
    return await asyncio.wait_for(conn.recv(), RECV_TIMEOUT_S)


def pcm24(seconds: float, seed: int) -> bytes:
    x = soxr.resample(speech_like(seconds, seed=seed), 16000, 24000)
    return np.clip(np.round(x * 32767), -32768, 32767).astype("<i2").tobytes()


def wav_bytes(x: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def as_the_ingress_hears(data: bytes) -> np.ndarray:
    decoder = AudioDecoder("audio/pcm")
    return to_float32(np.concatenate([decoder.feed(data), decoder.flush()]))


async def test_manual_commit_equals_engine(service: Service, engines: dict[str, Any]) -> None:
    clips = [pcm24(2.0, seed=11), pcm24(1.5, seed=12)]
    client = AsyncOpenAI(base_url=f"{service.base_url}/v1", api_key=TOKEN, max_retries=0)
    done = []
    async with client.realtime.connect(model=SMALL, extra_query={"intent": "transcription"}) as conn:
        assert (await recv(conn)).type == "session.created"
        session = {"type": "transcription", "audio": {"input": {"turn_detection": None}}}
        await conn.session.update(session=session)
        assert (await recv(conn)).type == "session.updated"
        for data in clips:  # one append each, so that the reference resamples the same chunk
            await conn.input_audio_buffer.append(audio=base64.b64encode(data).decode())
            await conn.input_audio_buffer.commit()
        deltas: dict[str, list[str]] = {}
        for _ in range(400):
            event = await recv(conn)
            assert event.type != "conversation.item.input_audio_transcription.failed", event
            if event.type == "input_audio_buffer.committed":
                deltas[event.item_id] = []
            elif event.type == "conversation.item.input_audio_transcription.delta":
                deltas[event.item_id].append(event.delta)
            elif event.type == "conversation.item.input_audio_transcription.completed":
                done.append(event)
                if len(done) == len(clips):
                    break
    assert len(done) == 2 and list(deltas) == [e.item_id for e in done]  # in commit order
    for event, data in zip(done, clips, strict=True):
        reference = engines[SMALL].transcribe(as_the_ingress_hears(data), max_new_tokens=MAX_NEW_TOKENS)
        assert event.transcript == reference.text
        assert "".join(deltas[event.item_id]) == event.transcript
        assert event.usage.output_tokens == reference.usage.output_tokens


async def test_logprobs_through_the_proxy(service: Service, engines: dict[str, Any]) -> None:
    """include logprobs: the completed item's are the engine's tokens for the same audio (their
    values may come from live decodes of the turn's start), and the deltas carry them too."""
    data = pcm24(3.0, seed=1)
    client = AsyncOpenAI(base_url=f"{service.base_url}/v1", api_key=TOKEN, max_retries=0)
    async with client.realtime.connect(model=LARGE, extra_query={"intent": "transcription"}) as conn:
        assert (await recv(conn)).type == "session.created"
        session = {
            "type": "transcription",
            "audio": {"input": {"turn_detection": None}},
            "include": ["item.input_audio_transcription.logprobs"],
        }
        await conn.session.update(session=session)
        assert (await recv(conn)).session.include == ["item.input_audio_transcription.logprobs"]
        await conn.input_audio_buffer.append(audio=base64.b64encode(data).decode())
        await conn.input_audio_buffer.commit()
        deltas = []
        for _ in range(400):
            event = await recv(conn)
            assert event.type != "conversation.item.input_audio_transcription.failed", event
            if event.type == "conversation.item.input_audio_transcription.delta":
                deltas.append(event)
            elif event.type == "conversation.item.input_audio_transcription.completed":
                break
    reference = engines[LARGE].transcribe(
        as_the_ingress_hears(data), max_new_tokens=MAX_NEW_TOKENS, logprobs=True
    )
    assert event.transcript == reference.text and reference.text  # the tiny 1.7B says something here
    assert event.logprobs is not None and reference.logprobs is not None
    assert [lp.token for lp in event.logprobs] == [lp.token for lp in reference.logprobs]
    assert all(lp.logprob <= 0 for lp in event.logprobs)
    sent = spelled = ""
    for d in deltas:  # each delta's tokens are behind its text, and all of them go out
        sent += d.delta
        spelled += "".join(lp.token for lp in d.logprobs or [])
        assert sent.startswith(spelled.strip())
    assert [lp.token for d in deltas for lp in d.logprobs or []] == [lp.token for lp in event.logprobs]


async def test_bad_token_is_refused_through_the_proxy(service: Service) -> None:
    client = AsyncOpenAI(base_url=f"{service.base_url}/v1", api_key="sk-not-this", max_retries=0)
    async with client.realtime.connect(model=SMALL, extra_query={"intent": "transcription"}) as conn:
        event = await recv(conn)
        assert event.type == "error" and event.error.code == "invalid_api_key"


async def append_paced(conn: Any, data: bytes) -> None:
    """100 ms appends every 50 ms (twice real time: live decodes keep up, as with a microphone)."""
    for i in range(0, len(data), 4800):
        await conn.input_audio_buffer.append(audio=base64.b64encode(data[i : i + 4800]).decode())
        await asyncio.sleep(0.05)


async def until_completed(conn: Any) -> list[Any]:
    """The events up to an item's completion (none may be an error or a failed item)."""
    events: list[Any] = []
    for _ in range(400):
        event = await recv(conn)
        assert event.type not in ("error", "conversation.item.input_audio_transcription.failed"), event
        events.append(event)
        if event.type == "conversation.item.input_audio_transcription.completed":
            return events
    raise AssertionError(f"no completed item in 400 events: {[e.type for e in events]}")


async def test_server_vad_through_the_proxy(service: Service) -> None:
    """The default session (server VAD) cuts speech-silence-speech-silence into two transcribed items."""
    silence = np.zeros(int(1.2 * 24000), dtype="<i2").tobytes()
    audio = silence + pcm24(2.0, seed=13) + silence + pcm24(1.5, seed=14) + silence
    client = AsyncOpenAI(base_url=f"{service.base_url}/v1", api_key=TOKEN, max_retries=0)
    kinds: list[str] = []
    completed: list[Any] = []
    async with client.realtime.connect(model=SMALL, extra_query={"intent": "transcription"}) as conn:
        created = await recv(conn)
        assert created.session.audio.input.turn_detection.type == "server_vad"
        for i in range(0, len(audio), 4800):  # 100 ms appends
            await conn.input_audio_buffer.append(audio=base64.b64encode(audio[i : i + 4800]).decode())
        for _ in range(400):
            event = await recv(conn)
            kinds.append(event.type)
            assert event.type not in ("error", "conversation.item.input_audio_transcription.failed"), event
            if event.type == "conversation.item.input_audio_transcription.completed":
                completed.append(event)
                if len(completed) == 2:
                    break
    assert kinds.count("input_audio_buffer.speech_started") == 2, kinds
    assert kinds.count("input_audio_buffer.speech_stopped") == 2, kinds
    assert kinds.count("input_audio_buffer.committed") == 2, kinds
    assert all(e.usage.input_token_details.audio_tokens > 0 for e in completed)


async def test_semantic_vad_through_the_proxy(service: Service) -> None:
    """semantic_vad (high eagerness) with the real engine behind Serve: the turn ends after the
    short silence (300 ms) if the words the replica heard at the pause end a sentence, else
    after the longest (2 s); either way one item, transcribed."""
    silence = np.zeros(int(0.6 * 24000), dtype="<i2").tobytes()
    tail = np.zeros(int(3.0 * 24000), dtype="<i2").tobytes()
    audio = silence + pcm24(2.5, seed=17) + tail
    client = AsyncOpenAI(base_url=f"{service.base_url}/v1", api_key=TOKEN, max_retries=0)
    async with client.realtime.connect(model=SMALL, extra_query={"intent": "transcription"}) as conn:
        assert (await recv(conn)).type == "session.created"
        vad = {"type": "semantic_vad", "eagerness": "high"}
        session = {"type": "transcription", "audio": {"input": {"turn_detection": vad}}}
        await conn.session.update(session=session)
        updated = await recv(conn)
        assert updated.session.audio.input.turn_detection.type == "semantic_vad"
        await append_paced(conn, audio)
        events = await until_completed(conn)
    kinds = [e.type for e in events]
    assert kinds.count("input_audio_buffer.speech_stopped") == 1, kinds
    stopped = events[kinds.index("input_audio_buffer.speech_stopped")]
    silence_s = stopped.audio_end_ms / 1000 - 3.1  # after the speech's end
    assert 0.15 <= silence_s <= 2.4, silence_s
    assert events[-1].usage.input_token_details.audio_tokens > 0


async def test_text_comes_during_speech(limits: Limits) -> None:
    """Appended at twice real time, a 6 s turn gets deltas before its commit (live decodes on
    the model replica, after the ids fixed so far); all deltas add up to the transcript, and
    the usage is the whole answer's. The tiny 1.7B's random weights give varied text.

    Through the app whose 1.7B replica is resident: in the main app a warm-up request was too
    short for the autoscaler's metrics, and an idle scale-down already under way took the
    replica away mid-turn (its restart outlasted the turn, so no live text came; seen once in
    CI)."""
    data = pcm24(6.0, seed=15)
    client = AsyncOpenAI(base_url=f"{limits.base_url}/v1", api_key=TOKEN, max_retries=0)
    warm = soxr.resample(speech_like(1.0, seed=16), 16000, 24000)  # the replica has loaded its model
    await client.audio.transcriptions.create(model=LARGE, file=("w.wav", wav_bytes(warm, 24000)))
    async with client.realtime.connect(model=LARGE, extra_query={"intent": "transcription"}) as conn:
        assert (await recv(conn)).type == "session.created"
        session = {"type": "transcription", "audio": {"input": {"turn_detection": None}}}
        await conn.session.update(session=session)
        assert (await recv(conn)).type == "session.updated"
        await append_paced(conn, data)
        await conn.input_audio_buffer.commit()
        events = await until_completed(conn)
    kinds = [e.type for e in events]
    committed = kinds.index("input_audio_buffer.committed")
    deltas = [e for e in events if e.type == "conversation.item.input_audio_transcription.delta"]
    early = [e for e in events[:committed] if e.type == "conversation.item.input_audio_transcription.delta"]
    done = events[-1]
    assert early, kinds
    assert {e.item_id for e in deltas} == {events[committed].item_id} == {done.item_id}
    assert "".join(e.delta for e in deltas) == done.transcript
    assert 0 < done.usage.output_tokens <= LIMITS_MAX_NEW_TOKENS + 1
