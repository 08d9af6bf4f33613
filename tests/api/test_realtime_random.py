"""Random client event sequences against one realtime session (seeded, reproducible).

A session is driven directly (no WebSocket) with what clients can send, in
any order: speech and silence, appends of broken base64 or odd byte counts,
commits (also of too little audio), clears, and session updates that switch
between manual commits, server VAD and semantic VAD (every eagerness),
change the model, the language (also one the model lacks) and logprobs in
the middle of turns, and malformed messages. Whatever happens, the session
must answer every message, and its events must stay consistent: each
committed item gets exactly one completed or failed event, in commit order;
an item's deltas come before its completion and add up to its transcript;
speech_started and speech_stopped alternate, and a stopped turn is
committed; refusals are `error` events
with a code. The fake model sometimes fails (failed items, live decoding
stopped) and sometimes ends its answers with a full stop (semantic VAD's
early end). `QWEN_TEST_REALTIME_SEEDS=150` runs more seeds than the suite's 16
(150 passed, 6 minutes on 2 cores).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
from typing import Any

import numpy as np
import pytest
import soxr

from qwen_serve.api.realtime.session import Limits, RealtimeSession
from qwen_serve.api.service import TranscriptionService
from qwen_serve.testing.clips import speech_like

from .conftest import MODEL, MODEL_B, Harness

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

SEEDS = int(os.environ.get("QWEN_TEST_REALTIME_SEEDS", "16"))
DELTA = "conversation.item.input_audio_transcription.delta"
COMPLETED = "conversation.item.input_audio_transcription.completed"
FAILED = "conversation.item.input_audio_transcription.failed"


def pcm24(seconds: float, speech: bool, seed: int) -> bytes:
    x = speech_like(seconds, seed=seed) if speech else np.zeros(int(seconds * 16000), dtype=np.float32)
    return np.round(soxr.resample(x, 16000, 24000) * 32767).astype("<i2").tobytes()


def turn_detection(rng: random.Random) -> dict[str, Any] | None:
    kind = rng.choice(["none", "server", "semantic"])
    if kind == "none":
        return None
    if kind == "server":
        return {"type": "server_vad", "silence_duration_ms": rng.choice([200, 500, 900])}
    return {"type": "semantic_vad", "eagerness": rng.choice(["low", "medium", "high", "auto"])}


def client_events(rng: random.Random, step: int) -> list[str]:
    """The next client messages: audio as a microphone sends it (100 ms appends of speech or of
    silence, up to 2.5 s), or one other event."""
    roll = rng.random()
    if roll < 0.6:  # audio: mostly good, sometimes broken
        data = pcm24(rng.uniform(0.05, 2.5), speech=rng.random() < 0.5, seed=step)
        if rng.random() < 0.05:
            data = data[:-1]  # half a sample
        pieces = [base64.b64encode(data[i : i + 4800]).decode() for i in range(0, len(data), 4800)]
        if rng.random() < 0.03:
            pieces[-1] = pieces[-1][:-3] + "!!"
        return [json.dumps({"type": "input_audio_buffer.append", "audio": a}) for a in pieces]
    if roll < 0.72:
        return [json.dumps({"type": "input_audio_buffer.commit"})]
    if roll < 0.76:
        return [json.dumps({"type": "input_audio_buffer.clear"})]
    if roll < 0.95:
        audio_input: dict[str, Any] = {}
        if rng.random() < 0.5:
            audio_input["turn_detection"] = turn_detection(rng)
        if rng.random() < 0.4:
            transcription: dict[str, Any] = {"model": rng.choice([MODEL, MODEL, MODEL_B, "whisper-1"])}
            if rng.random() < 0.5:
                transcription["language"] = rng.choice(["en", "de", "xx", None])
            audio_input["transcription"] = transcription
        session: dict[str, Any] = {"type": "transcription", "audio": {"input": audio_input}}
        if rng.random() < 0.3:
            session["include"] = rng.choice([[], ["item.input_audio_transcription.logprobs"]])
        return [json.dumps({"type": "session.update", "session": session})]
    return [
        rng.choice(['{"type": ', "[]", json.dumps({"type": "response.create"}), json.dumps({"no": "type"})])
    ]


@pytest.mark.parametrize("seed", range(SEEDS))
async def test_random_client_events_keep_the_session_consistent(harness: Harness, seed: int) -> None:
    rng = random.Random(seed)
    for engine in harness.engines.values():
        engine.sentence_end = rng.choice(["", "."])
        if rng.random() < 0.4:  # the model fails a decode after so many words: items fail, live text stops
            engine.fail_after = rng.randint(0, 12)
    service = TranscriptionService(harness.settings, harness.served, {})
    limits = Limits(max_audio_seconds=30.0, max_message_bytes=2_000_000, live_text=rng.random() < 0.8)
    events: list[dict[str, Any]] = []

    async def send(event: dict[str, Any]) -> None:
        events.append(event)

    session = RealtimeSession(service, limits, send, model=MODEL)
    await session.start()
    for step in range(rng.randint(25, 50)):
        for message in client_events(rng, step):
            await session.handle(message)  # raises nothing: refusals are events
            await asyncio.sleep(rng.choice([0, 0.002, 0.01]))  # decodes run in between, or not
    committed = [e["item_id"] for e in events if e["type"] == "input_audio_buffer.committed"]
    for _ in range(500):  # the items decode on
        if sum(e["type"] in (COMPLETED, FAILED) for e in events) >= len(committed):
            break
        await asyncio.sleep(0.01)
    await session.close()

    assert all(isinstance(e.get("event_id"), str) for e in events)
    assert len(set(committed)) == len(committed)
    ends = [e for e in events if e["type"] in (COMPLETED, FAILED)]
    assert [e["item_id"] for e in ends] == committed  # each item once, in commit order
    for end in ends:
        item = end["item_id"]
        deltas = [i for i, e in enumerate(events) if e["type"] == DELTA and e["item_id"] == item]
        assert all(i < events.index(end) for i in deltas)
        if end["type"] == COMPLETED:
            assert "".join(events[i]["delta"] for i in deltas) == end["transcript"]
    turn: str | None = None
    for e in events:
        if e["type"] == "input_audio_buffer.speech_started":
            turn = e["item_id"]  # a new turn (a clear or a VAD change drops the one before)
        elif e["type"] == "input_audio_buffer.speech_stopped":
            assert e["item_id"] == turn and turn in committed  # a turn that stops is an item
            turn = None
        elif e["type"] == "error":
            assert e["error"]["code"] and e["error"]["message"]
    assert events[0]["type"] == "session.created"
