"""A real Ray Serve instance serving tiny checkpoints with the real Engine, once per session.

Short autoscaling windows (metrics every 0.5 s, 2 s look-back, 4 s idle
timeout) keep the life-cycle tests quick; the ingress listens on 127.0.0.1
only. Clients are the official `openai` SDK. Ray exports its metrics (ours
included) on a known port, `Service.metrics_url`, every second.

The main app ("qwen", both models, no forced aligner) runs the default
max_batch (8) with a generous Serve queue, so that 16 clients at once are all
served. A second,
small app ("limits", only the 1.7B, one resident replica, started on first
use) has the tight limits the backpressure tests need: max_batch 4, a Serve
queue of 2, and a KV budget that three short requests fit but one 60 s chunk
does not. Its replica is also where a test needs one that idle scale-down
cannot take away mid-test (live text during a realtime turn).
"""

from __future__ import annotations

import io
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf

from qwen_serve.testing.clips import speech_like

TOKEN = "sk-e2e-token"
SMALL = "qwen-asr-0.6b"
LARGE = "qwen-asr-1.7b"
APP = "qwen"
IDLE_TIMEOUT_S = 4.0
POOL_SIZE = 2
MAX_NEW_TOKENS = 32
MAX_QUEUED = 32
LIMITS_APP = "limits"
LIMITS_MAX_BATCH = 4
LIMITS_MAX_QUEUED = 2
LIMITS_MAX_NEW_TOKENS = 300  # long enough that streams are still decoding when a client hangs up
# KV tokens per request = prompt (15 + 13 per second of audio) + LIMITS_MAX_NEW_TOKENS: clips of
# 1, 2 and 3 s need 328 + 341 + 354 = 1023 together (they fit), one 60 s chunk 1095 (never fits).
LIMITS_KV_BUDGET = 1050


def wav(seconds: float = 2.0, seed: int = 0, rate: int = 16000, subtype: str = "PCM_16") -> bytes:
    pcm = speech_like(seconds, seed=seed)
    if rate != 16000:
        import soxr

        pcm = soxr.resample(pcm, 16000, rate)
    buf = io.BytesIO()
    sf.write(buf, pcm, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    base_url: str
    dirs: dict[str, Path]
    metrics_url: str = ""
    """The node's Prometheus endpoint (Ray's metrics agent)."""
    weight_cache: str = ""
    """The apps' weight cache directory."""
    initial_replicas: dict[str, dict[str, int]] = field(default_factory=dict)

    def replicas(self, model_id: str) -> dict[str, int]:
        from ray import serve

        from qwen_serve.app import deployment_name

        status = serve.status().applications[APP].deployments[deployment_name(model_id)]
        return {str(k.value if hasattr(k, "value") else k): int(v) for k, v in status.replica_states.items()}

    def running(self, model_id: str) -> int:
        return self.replicas(model_id).get("RUNNING", 0)

    def wait_for_running(self, model_id: str, count: int, timeout: float) -> float:
        """Seconds until exactly `count` replicas are running (and nothing else is starting or stopping)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            states = self.replicas(model_id)
            if states.get("RUNNING", 0) == count and sum(states.values()) == count:
                return time.monotonic() - start
            time.sleep(0.25)
        raise AssertionError(
            f"{model_id}: {self.replicas(model_id)} after {timeout} s, wanted {count} running"
        )


@pytest.fixture(scope="session")
def weight_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The apps' weight cache directory (not the user's ~/.cache): shared, as replicas on a node share it."""
    return str(tmp_path_factory.mktemp("weight-cache"))


@pytest.fixture(scope="session")
def service(tiny_dirs: dict[str, Path], weight_cache: str) -> Iterator[Service]:
    import ray
    from ray import serve

    from qwen_serve.app import build_app

    # Settings come from the args below only; QWEN_LIBRARY (which libqwen to load) is not one.
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("QWEN_") and k != "QWEN_LIBRARY"}
    port = _free_port()
    dirs = {SMALL: tiny_dirs["tiny-0.6b"], LARGE: tiny_dirs["tiny-1.7b"]}
    args: dict[str, Any] = {
        "api_token": f"{TOKEN},sk-e2e-other",
        "models": {model_id: {"path": str(d)} for model_id, d in dirs.items()},
        "aligner": "",  # segments and cues are the audio chunks here; the "words" app has the aligner
        "model_pool_size": POOL_SIZE,
        "model_idle_timeout": IDLE_TIMEOUT_S,
        "threads": 1,
        "max_new_tokens": MAX_NEW_TOKENS,
        "model_num_cpus": 0.5,
        "max_queued_requests": MAX_QUEUED,
        "max_upload_mb": 2,
        "max_audio_seconds": 150,
        "autoscaling": {"metrics_interval_s": 0.5, "look_back_period_s": 2.0, "upscale_delay_s": 0.0},
        "weight_cache": weight_cache,
    }
    metrics_port = _free_port()
    ray.init(
        address="local",  # a cluster of its own, even when another one runs on this machine
        include_dashboard=False,
        num_cpus=2,
        namespace="serve",
        log_to_driver=False,
        _metrics_export_port=metrics_port,
        _system_config={"metrics_report_interval_ms": 1000},
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name=APP, route_prefix="/")
        svc = Service(
            base_url=f"http://127.0.0.1:{port}",
            dirs=dirs,
            metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
            weight_cache=weight_cache,
        )
        svc.initial_replicas = {m: svc.replicas(m) for m in dirs}
        yield svc
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.update(saved)


@dataclass
class Limits:
    base_url: str
    handle: Any
    """DeploymentHandle of the app's 1.7B deployment (one replica)."""

    def stats(self) -> dict[str, int]:
        return dict(self.handle.stats.remote().result(timeout_s=30))


@pytest.fixture(scope="session")
def limits(service: Service, weight_cache: str) -> Limits:
    """The small app with tight limits, next to the main one (same Serve instance and proxy)."""
    from ray import serve

    from qwen_serve.app import build_app, deployment_name

    args: dict[str, Any] = {
        "api_token": TOKEN,
        "models": {SMALL: None, LARGE: {"path": str(service.dirs[LARGE])}},
        "aligner": "",
        "model_pool_size": 1,
        "model_idle_timeout": 0,  # one replica, resident: the handle's stats() reach it
        "threads": 1,
        "model_num_cpus": 0,  # the main app holds the 2 CPUs
        "max_batch": LIMITS_MAX_BATCH,
        "max_queued_requests": LIMITS_MAX_QUEUED,
        "kv_budget_tokens": LIMITS_KV_BUDGET,
        "max_new_tokens": LIMITS_MAX_NEW_TOKENS,
        "max_upload_mb": 4,
        "weight_cache": weight_cache,
    }
    serve.run(build_app(args), name=LIMITS_APP, route_prefix=f"/{LIMITS_APP}")
    handle = serve.get_deployment_handle(deployment_name(LARGE), app_name=LIMITS_APP)
    return Limits(base_url=f"{service.base_url}/{LIMITS_APP}", handle=handle)


WORDS_APP = "words"


@pytest.fixture(scope="session")
def words_url(service: Service, tiny_aligner_dir: Path, weight_cache: str) -> str:
    """An app with the 0.6B model and the tiny forced aligner (word timestamps, cues from words),
    next to the main one, started on first use."""
    from ray import serve

    from qwen_serve.app import build_app

    args: dict[str, Any] = {
        "api_token": TOKEN,
        "models": {SMALL: {"path": str(service.dirs[SMALL])}, LARGE: None},
        "aligner": str(tiny_aligner_dir),
        "model_pool_size": 1,
        "model_idle_timeout": IDLE_TIMEOUT_S,
        "threads": 1,
        "model_num_cpus": 0,  # the main app holds the 2 CPUs
        "max_new_tokens": MAX_NEW_TOKENS,
        "max_upload_mb": 2,
        "weight_cache": weight_cache,
    }
    serve.run(build_app(args), name=WORDS_APP, route_prefix=f"/{WORDS_APP}")
    return f"{service.base_url}/{WORDS_APP}"


@pytest.fixture(scope="session")
def engines(service: Service) -> Iterator[dict[str, Any]]:
    """The real Engine on the same checkpoints, in this process, for reference results: at the
    precision the service runs by default (its args above leave it unset)."""
    from qwen_serve.engine import Engine
    from qwen_serve.settings import Settings

    precision = Settings.model_fields["precision"].default
    loaded = {model_id: Engine(d, threads=1, precision=precision) for model_id, d in service.dirs.items()}
    yield loaded
    for engine in loaded.values():
        engine.close()


@pytest.fixture
def client(service: Service) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{service.base_url}/v1", api_key=TOKEN, max_retries=0, timeout=120)
