"""Operations end to end: our metrics on Ray's Prometheus endpoint, a dropped stream in the logs.

Ray exports metrics with a delay (every second here, see conftest), so every
check polls the endpoint until it holds, within a bounded time. Counts are
differences from a scrape taken before the requests, and are taken on the
"limits" app (label application="limits"), whose model replica stays
resident: the main app's replicas come and go with its 4 s idle timeout.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from .conftest import LARGE, LIMITS_APP, SMALL, TOKEN, Limits, Service, wav

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
PATH = "/v1/audio/transcriptions"


def scrape(url: str) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url, timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def wait_until(url: str, check: Callable[[Samples], None], timeout: float = 60.0) -> Samples:
    """Scrapes until `check` passes (Ray exports with a delay); its last AssertionError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        try:
            check(samples)
            return samples
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(1.0)


def settled(url: str, timeout: float = 30.0) -> Samples:
    """A scrape once our metrics stopped moving (what earlier tests did has been exported)."""
    deadline = time.monotonic() + timeout
    last = {k: v for k, v in scrape(url).items() if k[0].startswith("ray_qwen_")}
    while True:
        time.sleep(2.5)  # two export intervals
        now = {k: v for k, v in scrape(url).items() if k[0].startswith("ray_qwen_")}
        gauges = ("ray_qwen_engine_waiting_requests", "ray_qwen_engine_active_sequences")
        if {k: v for k, v in now.items() if k[0] not in gauges} == {
            k: v for k, v in last.items() if k[0] not in gauges
        } or time.monotonic() > deadline:
            return now
        last = now


def test_metrics_reach_the_prometheus_endpoint(service: Service, limits: Limits) -> None:
    app = {"application": LIMITS_APP}
    before = settled(service.metrics_url)
    c = OpenAI(base_url=f"{limits.base_url}/v1", api_key=TOKEN, max_retries=0, timeout=120)
    seconds = [1.0, 2.0, 1.5]
    tokens = []
    for i, s in enumerate(seconds):
        res = c.audio.transcriptions.create(model=LARGE, file=("c.wav", wav(s, seed=300 + i)))
        assert res.usage is not None
        tokens.append(res.usage.output_tokens)
    events = list(c.audio.transcriptions.create(model=LARGE, file=("c.wav", wav(2.5, seed=310)), stream=True))
    assert events[-1].type == "transcript.text.done" and events[-1].usage is not None
    tokens.append(events[-1].usage.output_tokens)
    seconds.append(2.5)
    with pytest.raises(openai.BadRequestError):
        c.audio.transcriptions.create(model=LARGE, file=("c.wav", wav(1.0)), language="xx")
    with pytest.raises(openai.NotFoundError):
        c.audio.transcriptions.create(model=SMALL, file=("c.wav", wav(1.0)))  # not in this app

    def delta(now: Samples, name: str, **labels: str) -> float:
        return total(now, name, **app, **labels) - total(before, name, **app, **labels)

    def check(now: Samples) -> None:
        ok = {"model": LARGE, "endpoint": PATH, "status": "200"}
        assert delta(now, "ray_qwen_requests_total", **ok, deployment="Ingress") == 4
        assert delta(now, "ray_qwen_requests_total", model=LARGE, endpoint=PATH, status="400") == 1
        assert delta(now, "ray_qwen_requests_total", endpoint=PATH, status="404") == 1
        assert delta(now, "ray_qwen_request_latency_seconds_count", **ok) == 4
        assert 0 < delta(now, "ray_qwen_request_latency_seconds_sum", **ok) < 4 * 60
        assert delta(now, "ray_qwen_time_to_first_delta_seconds_count", model=LARGE) == 1
        assert delta(now, "ray_qwen_audio_seconds_total", model=LARGE) == pytest.approx(
            sum(seconds), abs=0.01
        )
        model_labels = {"model": LARGE, "deployment": f"Model:{LARGE}"}
        assert delta(now, "ray_qwen_real_time_factor_count", **model_labels) == 4
        assert delta(now, "ray_qwen_real_time_factor_sum", **model_labels) > 0
        assert delta(now, "ray_qwen_output_tokens_total", **model_labels) == sum(tokens)
        steps = delta(now, "ray_qwen_engine_steps_total", **model_labels)
        assert steps >= max(tokens)  # one token per step for each sequence in it
        assert steps <= delta(now, "ray_qwen_engine_step_sequences_total", **model_labels) <= 4 * steps
        assert total(now, "ray_qwen_model_loads_total", **app, **model_labels) == 1  # resident
        # packed and written by the first replica of the checkpoint, or mapped from its file (conftest:
        # the apps share a weight cache directory)
        cached = [
            total(now, "ray_qwen_model_loads_total", **app, **model_labels, weight_cache=s)
            for s in ("written", "loaded")
        ]
        assert sum(cached) == 1
        assert total(now, "ray_qwen_model_load_seconds_count", **app, **model_labels) == 1
        assert 0 < total(now, "ray_qwen_model_load_seconds_sum", **app, **model_labels) < 60

    wait_until(service.metrics_url, check)
    # The engine's gauges, per replica: nothing waiting or decoding once the requests are done.
    wait_until(service.metrics_url, lambda now: _assert_gauges_zero(now, app), timeout=20)


def _assert_gauges_zero(samples: Samples, app: dict[str, str]) -> None:
    for name in ("ray_qwen_engine_waiting_requests", "ray_qwen_engine_active_sequences"):
        series = [v for (n, ls), v in samples.items() if n == name and set(app.items()) <= ls]
        assert series and all(v == 0 for v in series), (name, series)


def test_model_unload_is_counted(service: Service, client: OpenAI) -> None:
    """The main app's 0.6B unloads after its idle timeout: the stopping replica counts it."""
    service.wait_for_running(SMALL, 0, timeout=60)
    before = settled(service.metrics_url)
    assert client.audio.transcriptions.create(model=SMALL, file=("c.wav", wav(1.0))).usage is not None
    service.wait_for_running(SMALL, 0, timeout=60)
    labels = {"application": "qwen", "model": SMALL}

    def check(now: Samples) -> None:
        loads = total(now, "ray_qwen_model_loads_total", **labels) - total(
            before, "ray_qwen_model_loads_total", **labels
        )
        unloads = total(now, "ray_qwen_model_unloads_total", **labels) - total(
            before, "ray_qwen_model_unloads_total", **labels
        )
        assert (loads, unloads) == (1, 1)

    wait_until(service.metrics_url, check, timeout=30)


# ---- a client drops its stream --------------------------------------------------------------


def _log_lines(pattern: str, needle: str) -> list[str]:
    return [line for path in _log_files(pattern) for line in _read(path).splitlines() if needle in line]


def _raw_connection(base_url: str, request: httpx.Request, cut: bool = False) -> socket.socket:
    """A socket that has sent `request` (only the first half of its body if `cut`)."""
    body = request.read()
    url = httpx.URL(base_url)
    sock = socket.create_connection((url.host, url.port))
    head = [f"POST {url.raw_path.decode()}{PATH} HTTP/1.1", f"Host: {url.host}"]
    head += [f"{k}: {v}" for k, v in request.headers.items() if k.lower() != "host"]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + (body[: len(body) // 2] if cut else body))
    return sock


def _hang_up(limits: Limits, mode: str, request_id: str) -> None:
    """A client that goes away: mid-stream, before the first delta, mid-decode, mid-upload."""
    base_url = limits.base_url
    headers = {"Authorization": f"Bearer {TOKEN}", "x-request-id": request_id}
    files = {"file": ("c.wav", wav(8.0, seed=320))}
    if mode == "json mid-decode":
        # Hang up once the model replica is decoding it (not after a fixed time: a fast box
        # finishes sooner, and a reply that comes first is shown, not taken for a hang-up).
        request = httpx.Request(
            "POST", f"{base_url}{PATH}", headers=headers, files=files, data={"model": LARGE}
        )
        with _raw_connection(base_url, request) as sock:
            sock.settimeout(0.05)
            deadline = time.monotonic() + 30
            while not limits.stats()["active"]:
                try:
                    reply = sock.recv(4096)
                except TimeoutError:
                    reply = None
                assert reply is None, f"the server answered before decoding it: {reply!r}"
                assert time.monotonic() < deadline, "the request never reached the engine"
        return
    if mode == "upload cut":
        request = httpx.Request(
            "POST", f"{base_url}{PATH}", headers=headers, files=files, data={"model": LARGE}
        )
        with _raw_connection(base_url, request, cut=True):
            time.sleep(0.5)
        return
    with (
        httpx.Client(timeout=60) as http,
        http.stream(
            "POST", f"{base_url}{PATH}", headers=headers, files=files, data={"model": LARGE, "stream": "true"}
        ) as victim,
    ):
        assert victim.status_code == 200 and victim.headers["x-request-id"] == request_id
        if mode == "stream after a delta":
            first = next(line for line in victim.iter_lines() if line.startswith("data: "))
            assert json.loads(first[6:])["type"] == "transcript.text.delta"  # 299 tokens to go


@pytest.mark.parametrize(
    "mode", ["stream after a delta", "stream before a delta", "json mid-decode", "upload cut"]
)
def test_client_gone_is_one_info_line(limits: Limits, mode: str) -> None:
    """The client hangs up: the ingress logs one info line (status 499), no error and no
    traceback, in either replica's log; the model replica stops decoding for it."""
    request_id = f"gone-{uuid.uuid4().hex[:12]}"
    _hang_up(limits, mode, request_id)
    deadline = time.monotonic() + 30
    ingress_logs = f"replica_{LIMITS_APP}_Ingress_*.log"
    while not (access := [x for x in _log_lines(ingress_logs, request_id) if "access " in x]):
        assert time.monotonic() < deadline, "no access line"
        time.sleep(0.5)
    time.sleep(2.0)  # anything else the replicas log about it
    ingress = _log_lines(ingress_logs, request_id)
    model = _log_lines(f"replica_{LIMITS_APP}_Model*.log", request_id)
    (line,) = access
    assert "status=499" in line and "(client gone)" in line and " INFO " in f" {line} "
    for text in ingress + model:
        assert "ERROR" not in text and "WARN" not in text and "Traceback" not in text, text
    if mode != "upload cut":  # the model replica had it, and stopped decoding it
        assert any("request cancelled, decoding stopped" in text for text in model), model
    deadline = time.monotonic() + 30
    while (stats := limits.stats())["active"] or stats["waiting"]:
        assert time.monotonic() < deadline, stats
        time.sleep(0.1)


# ---- a stopping replica drains -----------------------------------------------------------------

DRAIN_APP = "drain"
DRAIN_MAX_NEW_TOKENS = 500  # 3-4 s of decoding a chunk on the tiny model
DRAIN_SECONDS = 150.0  # three chunks (cut near 60 s and 120 s), decoded one after the other: ~10 s


def _drain_args(service: Service, drain_timeout: float, kv_budget_tokens: int) -> dict[str, Any]:
    return {
        "api_token": TOKEN,
        "models": {SMALL: None, LARGE: {"path": str(service.dirs[LARGE])}},
        "model_pool_size": 1,
        "model_idle_timeout": 0,  # one resident replica
        "threads": 1,
        "model_num_cpus": 0,
        "max_batch": 1,  # a long file's chunks decode one after the other: a long stream
        "max_new_tokens": DRAIN_MAX_NEW_TOKENS,
        "kv_budget_tokens": kv_budget_tokens,
        "max_audio_seconds": 200,
        "max_upload_mb": 8,
        "drain_timeout": drain_timeout,
        "weight_cache": service.weight_cache,
    }


def _stream_across_a_redeploy(service: Service, drain_timeout: float) -> tuple[dict[str, Any], str]:
    """Starts a long stream, redeploys the app (Serve stops the old replicas) once its first delta
    arrived, and returns what the client got plus its request id."""
    from ray import serve

    from qwen_serve.app import build_app

    serve.run(
        build_app(_drain_args(service, drain_timeout, 4000)), name=DRAIN_APP, route_prefix=f"/{DRAIN_APP}"
    )
    request_id = f"drain-{uuid.uuid4().hex[:12]}"
    c = OpenAI(
        base_url=f"{service.base_url}/{DRAIN_APP}/v1",
        api_key=TOKEN,
        max_retries=0,
        timeout=300,
        default_headers={"x-request-id": request_id},
    )
    got: dict[str, Any] = {"deltas": [], "done": None, "error": None}
    started = threading.Event()

    def listen() -> None:
        try:
            data = wav(DRAIN_SECONDS, seed=330, rate=8000, subtype="PCM_U8")
            for event in c.audio.transcriptions.create(model=LARGE, file=("long.wav", data), stream=True):
                if event.type == "transcript.text.delta":
                    got["deltas"].append(event.delta)
                    started.set()
                else:
                    got["done"] = event
        except BaseException as e:  # reported by the caller
            got["error"] = e
        finally:
            got["ended"] = time.monotonic()
            started.set()

    listener = threading.Thread(target=listen)
    listener.start()
    assert started.wait(120) and got["error"] is None, got["error"]
    # Same results, new version: Serve replaces the ingress and the model replica.
    got["redeployed"] = time.monotonic()
    serve.run(
        build_app(_drain_args(service, drain_timeout, 4001)), name=DRAIN_APP, route_prefix=f"/{DRAIN_APP}"
    )
    listener.join(300)
    assert not listener.is_alive()
    return got, request_id


def test_redeploy_drains_a_running_stream(service: Service) -> None:
    from ray import serve

    try:
        got, request_id = _stream_across_a_redeploy(service, drain_timeout=120)
        assert got["error"] is None, got["error"]
        done = got["done"]
        assert done is not None and done.type == "transcript.text.done"
        assert "".join(got["deltas"]) == done.text
        assert got["ended"] > got["redeployed"]  # it was still streaming when the stop began
        # The old replica that served it was stopped, after it finished (its log has both) ...
        served_by = [p for p in _log_files(f"replica_{DRAIN_APP}_Model*") if request_id in _read(p)]
        assert len(served_by) == 1
        assert "unloaded" in _read(served_by[0]), "the replica that served it was not stopped"
        # ... and the new version gives the same answer: nothing was cut.
        c = OpenAI(base_url=f"{service.base_url}/{DRAIN_APP}/v1", api_key=TOKEN, max_retries=0, timeout=300)
        data = wav(DRAIN_SECONDS, seed=330, rate=8000, subtype="PCM_U8")
        again = c.audio.transcriptions.create(model=LARGE, file=("long.wav", data))
        assert again.text == done.text and again.usage.output_tokens == done.usage.output_tokens
    finally:
        serve.delete(DRAIN_APP)


def test_drain_timeout_cuts_a_stream_with_a_retryable_error(service: Service) -> None:
    """The other side of the setting: a drain shorter than the stream ends it, with a 503
    (`model_unavailable`, retry) error event rather than a 500."""
    from ray import serve

    try:
        got, _ = _stream_across_a_redeploy(service, drain_timeout=1)
        error = got["error"]
        assert isinstance(error, openai.APIError), got
        assert error.body["code"] == "model_unavailable" and error.body["type"] == "service_unavailable_error"
    finally:
        serve.delete(DRAIN_APP)


def _log_files(pattern: str) -> list[str]:
    import ray

    return glob.glob(os.path.join(ray._private.worker._global_node.get_logs_dir_path(), "serve", pattern))


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()
