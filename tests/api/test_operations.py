"""Operations in-process: the access log line, what the metrics record, client disconnects, CORS."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from qwen_serve import metrics
from qwen_serve.model import StreamStarted, TextDelta

from .conftest import MODEL, TOKEN, Harness, make_settings, wav_bytes

pytestmark = pytest.mark.anyio


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def access(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.getMessage().startswith("access ")]

    def errors(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.WARNING]


@pytest.fixture
def serve_log() -> Iterator[Records]:
    """The service logs to "ray.serve", which Ray does not propagate to the root logger."""
    handler = Records()
    logger = logging.getLogger("ray.serve")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[Any, ...]]]:
    """Every call of the metrics' event functions, by name."""
    calls: dict[str, list[tuple[Any, ...]]] = {}
    for name in ("request_finished", "transcription_finished", "model_loaded", "model_unloaded"):

        def record(*args: Any, _name: str = name) -> None:
            calls.setdefault(_name, []).append(args)

        monkeypatch.setattr(metrics, name, record)
    return calls


# ---- the access log ----------------------------------------------------------------------


def test_one_access_line_per_request(client: TestClient, serve_log: Records) -> None:
    data = wav_bytes(2.0)
    r = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", data)},
        data={"model": MODEL, "prompt": "secret words"},
        headers={"x-request-id": "req-123"},
    )
    assert r.status_code == 200
    (line,) = serve_log.access()
    assert line.startswith("access request_id=req-123 POST /v1/audio/transcriptions ")
    fields = dict(p.split("=", 1) for p in line.split() if "=" in p)
    assert fields["model"] == MODEL and fields["audio_s"] == "2.00" and fields["status"] == "200"
    assert 0 <= float(fields["latency_ms"]) < 10_000
    assert TOKEN not in line and "secret" not in line and "Bearer" not in line
    assert not serve_log.errors()


def test_access_line_for_errors_and_a_generated_id(client: TestClient, serve_log: Records) -> None:
    r = client.post(
        "/v1/audio/transcriptions", files={"file": ("a.wav", wav_bytes())}, data={"model": "nope"}
    )
    assert r.status_code == 404
    client.get("/v1/models", headers={"Authorization": "Bearer wrong"})
    lines = serve_log.access()
    assert len(lines) == 2
    assert "status=404" in lines[0] and "model=" not in lines[0] and "audio_s" not in lines[0]
    assert "GET /v1/models" in lines[1] and "status=401" in lines[1] and "wrong" not in lines[1]
    ids = [line.split()[1] for line in lines]
    assert ids[0] != ids[1] and all(len(i) > len("request_id=") + 8 for i in ids)


def test_stream_access_line(client: TestClient, serve_log: Records) -> None:
    r = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", wav_bytes(1.0))},
        data={"model": MODEL, "stream": "true"},
    )
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
    (line,) = serve_log.access()
    assert "status=200" in line and "stream=true" in line and "first_delta_ms=" in line


def test_health_is_logged_at_debug_only(client: TestClient, serve_log: Records) -> None:
    assert client.get("/health").status_code == 200
    (record,) = [r for r in serve_log.records if r.getMessage().startswith("access ")]
    assert record.levelno == logging.DEBUG


# ---- what the metrics record --------------------------------------------------------------


def test_request_metrics(client: TestClient, harness: Harness, recorded: dict) -> None:
    harness.engines[MODEL].fail_after = 1
    ok = client.post("/v1/models")  # 405
    assert ok.status_code == 405
    client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav_bytes(1.0))}, data={"model": "x"})
    client.get("/nowhere")
    stream = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", wav_bytes(2.0))},
        data={"model": MODEL, "stream": "true"},
    )
    assert stream.status_code == 200 and '"error"' in stream.text  # failed after its 200
    harness.engines[MODEL].fail_after = None
    client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav_bytes(1.5))}, data={"model": MODEL})

    calls = recorded["request_finished"]
    got = [(model, endpoint, status) for model, endpoint, status, *_ in calls]
    assert got == [
        ("", "/v1/models", 405),
        ("", "/v1/audio/transcriptions", 404),
        ("", "other", 404),
        (MODEL, "/v1/audio/transcriptions", 500),  # the status of the error event
        (MODEL, "/v1/audio/transcriptions", 200),
    ]
    latency, audio, first_delta = calls[-1][3:]
    assert 0 < latency < 10 and audio == pytest.approx(1.5) and first_delta is None
    assert calls[3][4] == pytest.approx(2.0) and 0 < calls[3][5] <= calls[3][3]  # stream: first delta
    # the model replica: one finished transcription (the failed stream is not one)
    ((model, audio_s, engine_s, tokens),) = recorded["transcription_finished"]
    result = harness.engines[MODEL].streams[-1].result
    assert (model, audio_s, tokens) == (MODEL, 1.5, result.usage.output_tokens)
    assert engine_s == pytest.approx(result.timings.total_ms / 1e3)


def test_model_load_and_unload_metrics(recorded: dict) -> None:
    harness = Harness(make_settings(), weight_cache="/cache")  # ModelServer's weight_cache reaches the engine
    loads = recorded["model_loaded"]
    assert [m for m, _, _ in loads] == [MODEL, "qwen-asr-1.7b"] and all(0 <= s < 5 for _, s, _ in loads)
    assert [state for _, _, state in loads] == ["loaded", "loaded"]  # the engines' weight_cache_state
    server = harness.handles[MODEL].server
    gc.collect()  # servers of earlier tests unload when collected
    before = len(recorded.get("model_unloaded", []))
    server.__del__()  # what Serve calls on a stopping replica, after the drain
    server.__del__()  # once only
    assert recorded["model_unloaded"][before:] == [(MODEL,)] and harness.engines[MODEL].closed


def test_engine_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    from qwen_serve.model import server as server_module

    samples: list[tuple[Any, ...]] = []
    monkeypatch.setattr(server_module, "METRICS_INTERVAL_S", 0.02)
    monkeypatch.setattr(metrics, "engine_sampled", lambda *args: samples.append(args))
    harness = Harness(make_settings())
    counts = {"steps": 10, "step_sequences": 25, "encoder_cache_hits": 2, "prefix_cache_tokens_reused": 64}
    stats = {"max_batch": 8, "active": 3, "waiting": 2}
    monkeypatch.setattr(harness.engines[MODEL], "stats", lambda: {**stats, **counts})

    def mine() -> list[tuple[Any, ...]]:  # not those of servers of earlier tests, still sampling
        return [s for s in samples if s[0] == MODEL and "steps" in s[1]]

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 5
        while len(mine()) < n and time.monotonic() < deadline:
            time.sleep(0.01)

    wait_for(1)
    counts.update(steps=14, step_sequences=37, encoder_cache_hits=5, prefix_cache_tokens_reused=192)
    wait_for(4)
    assert mine()[0][1]["waiting"] == 2 and mine()[0][1]["active"] == 3
    totals = {key: sum(s[2][key] for s in mine()) for key in counts}
    assert totals == counts  # the deltas add up
    assert all(s[2]["encoder_cache_misses"] == 0 for s in mine())  # a count the engine does not report
    harness.handles[MODEL].server.__del__()
    time.sleep(0.05)
    n = len(mine())
    time.sleep(0.1)
    assert len(mine()) == n  # stopped with the replica


def test_metrics_module_without_ray() -> None:
    """Outside a Ray worker every event is a no-op; configure(False) creates nothing at all."""
    metrics.configure(False)
    try:
        metrics.request_finished(MODEL, "/v1/audio/transcriptions", 200, 0.1, 1.0, 0.05)
        assert metrics._registry is None or isinstance(metrics._registry, metrics._Registry)
    finally:
        metrics.configure(True)
    metrics.request_finished(MODEL, "/v1/audio/transcriptions", 200, 0.1, 1.0, 0.05)
    metrics.transcription_finished(MODEL, 2.0, 0.5, 10)
    metrics.engine_sampled(
        MODEL, {"active": 1, "waiting": 0}, {"steps": 3, "step_sequences": 3, "encoder_cache_hits": 1}
    )
    metrics.model_loaded(MODEL, 1.0, "written")
    metrics.model_unloaded(MODEL)
    registry = metrics._registry
    assert registry is not None
    assert registry.requests.info["tag_keys"] == ("model", "endpoint", "status")
    assert registry.loads.info["tag_keys"] == ("model", "weight_cache")
    assert registry.latency.info["name"] == "qwen_request_latency_seconds"


# ---- the client goes away ------------------------------------------------------------------


def _model_fails(monkeypatch: pytest.MonkeyPatch, server: Any, fail: Callable[[], Awaitable[None]]) -> None:
    """The model's calls end in `fail()`: at once, or a stream after its first delta."""

    async def transcribe(*args: Any) -> Any:
        await fail()

    async def stream(*args: Any) -> Any:
        yield StreamStarted()
        yield TextDelta("w0")
        await fail()

    monkeypatch.setattr(server, "transcribe", transcribe)
    monkeypatch.setattr(server, "stream", stream)


def _scope_and_body(harness: Harness, data: dict[str, str], seconds: float) -> tuple[dict, bytes]:
    request = httpx.Request(
        "POST",
        "http://testserver/v1/audio/transcriptions",
        files={"file": ("a.wav", wav_bytes(seconds))},
        data=data,
        headers={"Authorization": f"Bearer {TOKEN}", "x-request-id": "gone-1"},
    )
    body = request.read()
    scope = {
        "type": "http",
        "asgi": {
            "version": "3.0"
        },  # spec 2.0, as Ray's replicas give it: Starlette listens for the disconnect
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/audio/transcriptions",
        "raw_path": b"/v1/audio/transcriptions",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in request.headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    return scope, body


@pytest.mark.parametrize("hang_up", ["disconnect", "receive raises"])
async def test_dropped_stream_is_one_info_line(
    harness: Harness, serve_log: Records, recorded: dict, hang_up: str
) -> None:
    """The client hangs up after the first delta: the stream stops, one access line, 499. When
    Serve cancels such a stream, the receive() it listens on may raise Ray's TaskCancelledError
    instead of returning http.disconnect (seen in CI, where Serve then logged "Request failed."
    at error level): the same outcome, nothing raised out of the app."""
    from ray.exceptions import TaskCancelledError

    engine = harness.engines[MODEL]
    engine.token_delay = 0.05  # 40 words: 2 s, unless the client goes
    scope, body = _scope_and_body(harness, {"model": MODEL, "stream": "true"}, 20.0)
    gone = asyncio.Event()
    sent: list[dict] = []
    requested = False

    async def receive() -> dict:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        if hang_up == "receive raises":
            raise TaskCancelledError()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)
        if b"transcript.text.delta" in message.get("body", b""):
            gone.set()  # the client hangs up after its first delta

    await asyncio.wait_for(harness.app(scope, receive, send), timeout=5)
    assert sent[0]["status"] == 200
    assert not any(m.get("more_body") is False for m in sent)  # the stream never ended
    await asyncio.sleep(0.1)
    assert engine.streams[-1].closed  # decoding stopped
    (line,) = serve_log.access()
    assert "request_id=gone-1" in line and "status=499" in line and "(client gone)" in line
    assert not serve_log.errors(), serve_log.errors()
    assert [c[2] for c in recorded["request_finished"]] == [499]


async def test_cancelled_by_serve_is_one_info_line(
    harness: Harness, serve_log: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serve cancels a request whose client went away: it cancels the ingress's task, and the
    handle call awaited there raises Ray's RequestCancelledError (a TaskCancelledError) instead
    of the CancelledError. No error, no traceback: one access line, 499."""
    from ray.serve.exceptions import RequestCancelledError

    server = harness.handles[MODEL].server
    app_task: asyncio.Task | None = None

    async def serve_cancels() -> None:
        assert app_task is not None
        app_task.cancel()
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            raise RequestCancelledError("gone-1") from None  # what DeploymentResponse does

    _model_fails(monkeypatch, server, serve_cancels)
    for streamed in ("false", "true"):
        scope, body = _scope_and_body(harness, {"model": MODEL, "stream": streamed}, 1.0)
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive(messages: list[dict] = messages) -> dict:
            if messages:
                return messages.pop()
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            pass

        app_task = asyncio.ensure_future(harness.app(scope, receive, send))
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(app_task, timeout=5)
    lines = serve_log.access()
    assert len(lines) == 2 and all("status=499" in line for line in lines), lines
    assert not serve_log.errors(), serve_log.errors()


def test_cut_upload_is_not_a_server_error(harness: Harness, serve_log: Records) -> None:
    """The client hangs up while its upload arrives (Starlette's ClientDisconnect): the app answers
    499 and returns. Nothing may escape it: Serve logs an exception out of the app as "Request
    failed." at ERROR (a catch-all handler answers but Starlette then raises the error again)."""
    scope, body = _scope_and_body(harness, {"model": MODEL}, 1.0)
    parts = [
        {"type": "http.request", "body": body[: len(body) // 2], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict] = []

    async def receive() -> dict:
        return parts.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(harness.app(scope, receive, send))  # raises nothing
    assert sent and sent[0]["type"] == "http.response.start" and sent[0]["status"] == 499
    (line,) = serve_log.access()
    assert "status=499" in line and "(client gone)" in line
    assert not serve_log.errors(), serve_log.errors()


# ---- CORS ------------------------------------------------------------------------------------

ORIGIN = "https://app.example.com"
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type,x-stainless-lang",
}


def test_cors_off_by_default(client: TestClient) -> None:
    r = client.options("/v1/audio/transcriptions", headers=PREFLIGHT)
    assert r.status_code == 405 and "access-control-allow-origin" not in r.headers
    r = client.get("/v1/models", headers={"Origin": ORIGIN})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize("origins", [f"{ORIGIN}, https://other.example", "*"])
def test_cors_when_configured(origins: str) -> None:
    harness = Harness(make_settings(cors_origins=origins))
    client = TestClient(harness.app)
    r = client.options("/v1/audio/transcriptions", headers=PREFLIGHT)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] in (ORIGIN, "*")
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "x-stainless-lang" in r.headers["access-control-allow-headers"].lower()
    r = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", wav_bytes(1.0))},
        data={"model": MODEL},
        headers={"Origin": ORIGIN, "Authorization": f"Bearer {TOKEN}"},
    )
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] in (ORIGIN, "*")
    assert "x-request-id" in r.headers["access-control-expose-headers"]
    r = client.get("/v1/models", headers={"Origin": ORIGIN})  # still needs the token
    assert r.status_code == 401


def test_cors_refuses_other_origins() -> None:
    client = TestClient(Harness(make_settings(cors_origins=ORIGIN)).app)
    r = client.options("/v1/audio/transcriptions", headers={**PREFLIGHT, "Origin": "https://evil.example"})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    r = client.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


# ---- the replica dies under a request ---------------------------------------------------------


def test_replica_died_is_503_retryable(
    client: TestClient, harness: Harness, monkeypatch: pytest.MonkeyPatch, serve_log: Records
) -> None:
    """Its node went away, or it was stopped before its drain ended: the client may retry."""
    from ray.exceptions import ActorDiedError

    server = harness.handles[MODEL].server

    async def die() -> None:
        raise ActorDiedError()

    _model_fails(monkeypatch, server, die)
    r = client.post(
        "/v1/audio/transcriptions", files={"file": ("a.wav", wav_bytes(1.0))}, data={"model": MODEL}
    )
    assert r.status_code == 503 and r.headers["retry-after"] == "10"
    assert r.json()["error"]["code"] == "model_unavailable"
    r = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", wav_bytes(1.0))},
        data={"model": MODEL, "stream": "true"},
    )
    payloads = [b[6:] for b in r.text.split("\n\n") if b]
    assert r.status_code == 200 and payloads[-1] == "[DONE]"
    error = json.loads(payloads[-2])["error"]
    assert (error["type"], error["code"]) == ("service_unavailable_error", "model_unavailable")
    lines = serve_log.access()
    assert ["status=503" in line for line in lines] == [True, True]  # the stream's error event counts
    assert all("Traceback" not in r.getMessage() for r in serve_log.records)


def test_a_failing_metric_never_fails_a_request(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, serve_log: Records
) -> None:
    class Broken:
        def __getattr__(self, name: str) -> Any:
            raise RuntimeError("metrics backend down")

    monkeypatch.setattr(metrics, "_metrics", lambda: Broken())
    r = client.post(
        "/v1/audio/transcriptions", files={"file": ("a.wav", wav_bytes(1.0))}, data={"model": MODEL}
    )
    assert r.status_code == 200
    assert any("recording the metric event request_finished failed" in e for e in serve_log.errors())
    assert len(serve_log.access()) == 1


def test_request_id_is_sanitized(client: TestClient, serve_log: Records) -> None:
    client.get("/v1/models", headers={"x-request-id": "evil\nINFO forged line " + "x" * 300})
    (line,) = serve_log.access()
    assert "\n" not in line and "request_id=evil_INFO_forged_line_" in line
    assert len(line.split()[1]) == len("request_id=") + 128


def test_docs_and_dashboard_name_the_real_metrics() -> None:
    """docs/operations.md's table and the Grafana dashboard use the names Ray exports for ours."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    registry = metrics._Registry()
    exported = set()
    for metric in vars(registry).values():
        kind, name = type(metric).__name__, metric.info["name"]
        exported.add(f"ray_{name}_total" if kind == "Counter" else f"ray_{name}")
    table = set(re.findall(r"^\| `(ray_qwen_\w+)` \|", (root / "docs/operations.md").read_text(), re.M))
    assert table == exported
    dashboard = json.loads((root / "docs/grafana-dashboard.json").read_text())
    used = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"ray_qwen_\w+", target["expr"])
    }
    assert used == exported
