"""Bearer auth on /v1, open /health and /docs, and the models endpoints."""

from __future__ import annotations

import logging

import openai
import pytest
from fastapi.testclient import TestClient
from openai import AsyncOpenAI

from qwen_serve.api.auth import token_checker
from qwen_serve.api.errors import APIError
from qwen_serve.settings import DEFAULT_API_TOKEN, Settings

from .conftest import MODEL, MODEL_B, TOKEN, Harness, make_settings, wav_bytes

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("path", ["/v1/models", f"/v1/models/{MODEL}"])
@pytest.mark.parametrize(
    "headers, code",
    [
        ({}, None),
        ({"Authorization": "Bearer wrong"}, "invalid_api_key"),
        ({"Authorization": f"Basic {TOKEN}"}, None),
        ({"Authorization": f"Bearer {TOKEN}x"}, "invalid_api_key"),
        ({"Authorization": "Bearer "}, None),
    ],
)
def test_401_envelope(harness: Harness, path: str, headers: dict, code: str | None) -> None:
    r = TestClient(harness.app).get(path, headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == code
    assert TOKEN not in r.text and "wrong" not in r.text


def test_401_before_upload_is_parsed(harness: Harness) -> None:
    r = TestClient(harness.app).post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", wav_bytes())},
        data={"model": MODEL},
        headers={"Authorization": "Bearer nope"},
    )
    assert r.status_code == 401
    assert not harness.engines[MODEL].calls


@pytest.mark.parametrize("token", [TOKEN, "sk-second"])
def test_every_listed_token_works(harness: Harness, token: str) -> None:
    r = TestClient(harness.app).get("/v1/models", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200


def test_health_and_docs_need_no_auth(harness: Harness) -> None:
    c = TestClient(harness.app)
    assert c.get("/health").json() == {"status": "ok"}
    assert c.get("/docs").status_code == 200
    spec = c.get("/openapi.json").json()
    body = spec["paths"]["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert {"file", "model", "language", "prompt", "response_format", "stream"} <= set(
        body["schema"]["properties"]
    )
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


async def test_models_through_sdk(openai_client: AsyncOpenAI) -> None:
    page = await openai_client.models.list()
    assert sorted(m.id for m in page.data) == [MODEL, MODEL_B]
    assert all(m.object == "model" and m.owned_by == "qwen" and m.created > 0 for m in page.data)
    model = await openai_client.models.retrieve(MODEL_B)
    assert model.id == MODEL_B
    with pytest.raises(openai.NotFoundError):
        await openai_client.models.retrieve("whisper-1")


async def test_sdk_wrong_key(harness: Harness, openai_client: AsyncOpenAI) -> None:
    bad = openai_client.with_options(api_key="sk-wrong")
    with pytest.raises(openai.AuthenticationError) as e:
        await bad.models.list()
    assert e.value.code == "invalid_api_key"


async def test_token_checker_compares_all() -> None:
    check = token_checker(["a", "bb", "ccc"])
    from fastapi.security import HTTPAuthorizationCredentials

    await check(HTTPAuthorizationCredentials(scheme="Bearer", credentials="ccc"))
    with pytest.raises(APIError):
        await check(HTTPAuthorizationCredentials(scheme="Bearer", credentials="cc"))


def test_default_token_warning(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QWEN_API_TOKEN", raising=False)
    settings = Settings.from_args({})
    assert settings.uses_default_token
    with caplog.at_level(logging.WARNING, logger="qwen_serve"):
        settings.warn_if_default_token()
    assert DEFAULT_API_TOKEN in caplog.text and "QWEN_API_TOKEN" in caplog.text
    caplog.clear()
    make_settings().warn_if_default_token()
    assert not caplog.text
