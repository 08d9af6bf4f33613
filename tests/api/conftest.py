"""The ingress app in-process: real routes and ModelServer, fake engine behind a fake handle."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from fastapi import FastAPI
from fastapi.testclient import TestClient
from openai import AsyncOpenAI

from qwen_serve.api import HandleBackend, ModelInfo, ServedModel, create_app
from qwen_serve.api.backend import HandleAlignerBackend
from qwen_serve.model import ModelServer
from qwen_serve.model.aligner_server import AlignerServer
from qwen_serve.settings import Settings
from qwen_serve.testing.clips import speech_like

from .fakes import FakeAligner, FakeEngine, FakeHandle

try:  # the openai SDK 3.x is built on httpx2; older ones on httpx
    import httpx2 as sdk_http
except ImportError:  # pragma: no cover
    import httpx as sdk_http  # type: ignore[no-redef]

TOKEN = "sk-unit-test"
MODEL = "qwen-asr-0.6b"
MODEL_B = "qwen-asr-1.7b"


def wav_bytes(seconds: float = 2.0, rate: int = 16000, channels: int = 1, subtype: str = "PCM_16") -> bytes:
    pcm = speech_like(seconds)
    if rate != 16000:
        import soxr

        pcm = soxr.resample(pcm, 16000, rate)
    data = np.repeat(pcm[:, None], channels, axis=1)
    buf = io.BytesIO()
    sf.write(buf, data, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


class Harness:
    """The app plus what is behind it, so tests can look at the engines and handles."""

    def __init__(self, settings: Settings, busy: bool = False, aligner: bool = True, **server_options: Any):
        self.settings = settings
        self.engines: dict[str, FakeEngine] = {}
        self.handles: dict[str, FakeHandle] = {}
        served = {}
        for model_id in (MODEL, MODEL_B):
            server = ModelServer(
                model_id, f"/models/{model_id}", engine_factory=self._factory(model_id), **server_options
            )
            handle = FakeHandle(server, busy=busy)
            self.handles[model_id] = handle
            info = ModelInfo(
                id=model_id,
                created=1_700_000_000,
                languages=tuple(self.engines[model_id].supported_languages),
            )
            served[model_id] = ServedModel(info, HandleBackend(handle))
        unavailable = {"qwen-asr-huge": "Fetch it with `python -m qwen_serve.download qwen-asr-huge`."}
        self.aligner: FakeAligner | None = None
        self.aligner_handle: FakeHandle | None = None
        backend = None
        if aligner:
            server = AlignerServer("/models/aligner", aligner_factory=self._make_aligner)
            self.aligner_handle = FakeHandle(server, busy=busy)
            backend = HandleAlignerBackend(self.aligner_handle)
        missing = "Word timestamps need the forced aligner, which is not installed on this server."
        self.served: dict[str, ServedModel] = served
        self.app: FastAPI = create_app(
            settings, served, unavailable, aligner=backend, aligner_missing=missing
        )

    def _make_aligner(self, model_dir: Any, **options: Any) -> FakeAligner:
        self.aligner = FakeAligner(model_dir, **options)
        return self.aligner

    def _factory(self, model_id: str) -> Callable[..., FakeEngine]:
        def make(model_dir: Any, **options: Any) -> FakeEngine:
            engine = FakeEngine(model_dir, **options)
            self.engines[model_id] = engine
            return engine

        return make


def make_settings(**overrides: Any) -> Settings:
    args: dict[str, Any] = {"api_token": f"{TOKEN},sk-second", "max_upload_mb": 1, "max_audio_seconds": 60}
    args.update(overrides)
    return Settings.from_args(args)


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Harness:
    """With the (fake) forced aligner, unless the test is marked `no_aligner` (chunk cues)."""
    for var in ("QWEN_API_TOKEN", "QWEN_MAX_UPLOAD_MB", "QWEN_MAX_AUDIO_SECONDS", "QWEN_MODELS"):
        monkeypatch.delenv(var, raising=False)
    return Harness(make_settings(), aligner=request.node.get_closest_marker("no_aligner") is None)


@pytest.fixture
def client(harness: Harness) -> TestClient:
    return TestClient(harness.app, headers={"Authorization": f"Bearer {TOKEN}"})


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def openai_client(harness: Harness) -> AsyncIterator[AsyncOpenAI]:
    transport = sdk_http.ASGITransport(app=harness.app)
    async with sdk_http.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield AsyncOpenAI(api_key=TOKEN, base_url="http://testserver/v1", http_client=http, max_retries=0)
