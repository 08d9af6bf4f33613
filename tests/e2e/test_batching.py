"""Continuous batching through the whole service: many clients at once, hang-ups, a full engine.

Every expected result is the real Engine's answer to the same clip alone, in
this process; the service must give each client exactly that, whatever else
shares its replica's batch.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from qwen_serve.audio_decoding import decode_audio

from .conftest import (
    APP,
    LARGE,
    LIMITS_KV_BUDGET,
    LIMITS_MAX_NEW_TOKENS,
    MAX_NEW_TOKENS,
    TOKEN,
    Limits,
    Service,
    wav,
)

pytestmark = pytest.mark.e2e

CLIENTS = 16


def _alone(engines: dict[str, Any], data: bytes, max_new_tokens: int) -> Any:
    return engines[LARGE].transcribe(decode_audio(data), max_new_tokens=max_new_tokens)


def _run_all(jobs: list[Any]) -> list[Any]:
    """Runs the callables at once (a barrier lines them up); their results, or the first error."""
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = jobs[i]()
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:1]
    return results


def _max_stat(handle: Any, key: str, calls: int = 12) -> int:
    """The largest value of a stats key over several calls (the handle may reach either replica)."""
    return max(int(handle.stats.remote().result(timeout_s=30).get(key, 0)) for _ in range(calls))


def test_concurrent_clients_get_their_own_text(service: Service, engines: dict) -> None:
    """16 clients, 16 different clips, at once: each gets what the engine gives that clip alone."""
    from ray import serve

    from qwen_serve.app import deployment_name

    clips = [wav(1.0 + (i % 5) * 0.7, seed=100 + i) for i in range(CLIENTS)]
    alone = [_alone(engines, data, MAX_NEW_TOKENS) for data in clips]
    assert len({a.text for a in alone}) >= CLIENTS // 4  # answers differ, so a mix-up would show
    in_flight = 0
    peak = 0
    lock = threading.Lock()

    def job(i: int) -> Any:
        nonlocal in_flight, peak
        c = OpenAI(base_url=f"{service.base_url}/v1", api_key=TOKEN, max_retries=0, timeout=120)
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        try:
            if i % 2:  # half stream, half ask for the generated token ids
                events = list(
                    c.audio.transcriptions.create(model=LARGE, file=("c.wav", clips[i]), stream=True)
                )
                deltas = "".join(e.delta for e in events if e.type == "transcript.text.delta")
                assert deltas == events[-1].text
                return events[-1].text, events[-1].usage.output_tokens, None
            res = c.audio.transcriptions.create(
                model=LARGE, file=("c.wav", clips[i]), response_format="verbose_json"
            )
            return res.text, None, [t for s in res.segments or [] for t in s.tokens]
        finally:
            with lock:
                in_flight -= 1

    results = _run_all([lambda i=i: job(i) for i in range(CLIENTS)])
    for i, (text, output_tokens, token_ids) in enumerate(results):
        assert text == alone[i].text, i
        if token_ids is not None:
            assert token_ids == alone[i].token_ids, i
        else:
            assert output_tokens == alone[i].usage.output_tokens, i
    assert peak >= CLIENTS // 2  # the clients really overlapped
    # ... and the replicas decoded several of them together.
    handle = serve.get_deployment_handle(deployment_name(LARGE), app_name=APP)
    assert _max_stat(handle, "peak_active") >= 2


def test_hang_up_mid_stream_frees_the_slot_and_spares_the_others(limits: Limits, engines: dict) -> None:
    """Two streams decode; a third client hangs up after its first delta. Its sequence stops
    there (the replica counts it cancelled), the two finish with their alone text, and the
    engine ends with nothing active or waiting."""
    others = [wav(1.0, seed=201), wav(3.0, seed=202)]
    alone = [_alone(engines, data, LIMITS_MAX_NEW_TOKENS).text for data in others]
    before = limits.stats()
    assert before["active"] == 0

    started = [threading.Event() for _ in others]
    finished_at = [0.0] * len(others)
    texts = [""] * len(others)
    errors: list[BaseException] = []

    def listen(i: int) -> None:
        try:
            c = OpenAI(base_url=f"{limits.base_url}/v1", api_key=TOKEN, max_retries=0, timeout=120)
            stream = c.audio.transcriptions.create(model=LARGE, file=("c.wav", others[i]), stream=True)
            deltas = []
            for event in stream:
                if event.type == "transcript.text.delta":
                    deltas.append(event.delta)
                    started[i].set()
                else:
                    texts[i] = event.text
            assert "".join(deltas) == texts[i]
            finished_at[i] = time.monotonic()
        except BaseException as e:  # reported below
            errors.append(e)
            started[i].set()

    threads = [threading.Thread(target=listen, args=(i,)) for i in range(len(others))]
    for t in threads:
        t.start()
    assert all(e.wait(60) for e in started) and not errors, errors[:1]

    with (
        httpx.Client(timeout=60) as http,
        http.stream(
            "POST",
            f"{limits.base_url}/v1/audio/transcriptions",
            headers={"Authorization": f"Bearer {TOKEN}"},
            files={"file": ("c.wav", wav(2.0, seed=200))},
            data={"model": LARGE, "stream": "true"},
        ) as victim,
    ):
        assert victim.status_code == 200
        first = next(line for line in victim.iter_lines() if line.startswith("data: "))
        assert json.loads(first[6:])["type"] == "transcript.text.delta"  # 299 tokens to go
    hung_up = time.monotonic()
    for t in threads:
        t.join()
    assert not errors, errors[:1]
    assert texts == alone
    assert min(finished_at) > hung_up  # the others were still decoding when it went

    deadline = time.monotonic() + 30
    while (stats := limits.stats())["active"] or stats["waiting"]:
        assert time.monotonic() < deadline, stats
        time.sleep(0.05)
    assert stats["cancelled"] == before["cancelled"] + 1  # stopped mid-decode, not run to the end


def test_request_over_the_kv_budget_is_503_not_500(limits: Limits, engines: dict) -> None:
    """A 60 s chunk needs more KV cache than the app's whole budget: 503 + Retry-After, both ways."""
    from qwen_serve.engine import Engine, EngineBusy

    # The engine itself refuses it with this budget (else this test would prove nothing).
    with (
        Engine(engines[LARGE].model_dir, threads=1, max_batch=4, kv_budget_tokens=LIMITS_KV_BUDGET) as probe,
        pytest.raises(EngineBusy),
    ):
        probe.stream(decode_audio(wav(60.0)), max_new_tokens=LIMITS_MAX_NEW_TOKENS)
    data = wav(60.0, rate=8000, subtype="PCM_U8")  # under the 4 MB upload limit
    c = OpenAI(base_url=f"{limits.base_url}/v1", api_key=TOKEN, max_retries=0, timeout=120)
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as e:
            c.audio.transcriptions.create(model=LARGE, file=("long.wav", data), stream=stream)
        assert e.value.status_code == 503
        assert e.value.response.headers["retry-after"] == "2"
        error = e.value.response.json()["error"]
        assert (error["type"], error["code"]) == ("service_unavailable_error", "model_busy")
    # A request that fits is still served.
    assert c.audio.transcriptions.create(model=LARGE, file=("c.wav", wav(1.0))).usage is not None
