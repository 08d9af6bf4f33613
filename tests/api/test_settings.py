"""Settings: defaults, app args, environment on top, token handling."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from qwen_serve.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("QWEN_"):
            monkeypatch.delenv(key)


def test_defaults() -> None:
    s = Settings.from_args()
    assert (s.host, s.port, s.model_pool_size, s.model_idle_timeout) == ("0.0.0.0", 8011, 1, 300.0)
    assert (s.max_upload_mb, s.max_audio_seconds, s.threads, s.isa) == (25.0, 1200.0, None, "auto")
    assert s.precision == "fast"
    assert s.api_tokens() == ["sk-test-key"] and s.uses_default_token
    assert s.max_upload_bytes == 25 * 1024 * 1024
    assert s.model_dir("qwen-asr-0.6b") == Path("models/qwen3-asr-0.6b")
    assert s.model_dir("qwen-asr-1.7b") == Path("models/qwen3-asr-1.7b")
    assert s.models["qwen-asr-1.7b"].repo == "Qwen/Qwen3-ASR-1.7B"
    assert (s.max_batch, s.kv_budget_tokens, s.model_num_cpus) == (8, None, 1.0)
    assert (s.encoder_cache_windows, s.prefix_cache_tokens) == (32, 1024)
    assert s.weight_cache == "~/.cache/qwen-serve/weights"


def test_batching_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWEN_MAX_BATCH", "16")
    monkeypatch.setenv("QWEN_KV_BUDGET_TOKENS", "32768")
    monkeypatch.setenv("QWEN_THREADS", "3")
    monkeypatch.setenv("QWEN_ENCODER_CACHE_WINDOWS", "0")
    s = Settings.from_args({"max_batch": 4, "kv_budget_tokens": 1000, "encoder_cache_windows": 8})
    assert (s.max_batch, s.kv_budget_tokens, s.threads, s.encoder_cache_windows) == (16, 32768, 3, 0)
    assert Settings.from_args({"max_batch": 1}).max_batch == 16  # env still wins


def test_env_wins_over_args(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWEN_PORT", "9000")
    monkeypatch.setenv("QWEN_MODEL_IDLE_TIMEOUT", "0")
    monkeypatch.setenv("QWEN_MODELS_DIR", "/srv/models")
    monkeypatch.setenv("QWEN_API_TOKEN", "sk-a, sk-b ,")
    monkeypatch.setenv("QWEN_ISA", "avx512bf16")
    monkeypatch.setenv("QWEN_PRECISION", "exact")
    monkeypatch.setenv("QWEN_WEIGHT_CACHE", "")
    s = Settings.from_args(
        {"port": 8500, "model_pool_size": 3, "models_dir": "elsewhere", "isa": "avx2", "precision": "fast"}
    )
    assert s.weight_cache == ""  # turned off
    assert s.port == 9000 and s.model_pool_size == 3 and s.model_idle_timeout == 0
    assert s.isa == "avx512bf16" and s.precision == "exact"
    assert s.model_dir("qwen-asr-0.6b") == Path("/srv/models/qwen3-asr-0.6b")
    assert s.api_tokens() == ["sk-a", "sk-b"] and not s.uses_default_token


def test_token_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWEN_API_TOKEN", "sk-very-secret")
    s = Settings.from_args()
    assert "sk-very-secret" not in repr(s) and "sk-very-secret" not in str(s.model_dump())


def test_models_are_added(tmp_path: Path) -> None:
    s = Settings.from_args(
        {"models": {"my-asr": str(tmp_path / "ckpt"), "tuned": {"path": "tuned-dir", "repo": "me/tuned"}}}
    )
    assert set(s.models) == {"qwen-asr-0.6b", "qwen-asr-1.7b", "my-asr", "tuned"}
    assert s.model_dir("my-asr") == tmp_path / "ckpt"
    assert s.model_dir("tuned") == Path("models/tuned-dir")
    s2 = Settings.from_args({"models": {"qwen-asr-1.7b": None}})
    assert set(s2.models) == {"qwen-asr-0.6b"}


@pytest.mark.parametrize(
    "args",
    [
        {"model_pool_size": 0},
        {"model_idle_timeout": -1},
        {"port": 70000},
        {"api_token": " , "},
        {"max_upload_mb": 0},
        {"unknown_option": 1},
        {"isa": "sse2"},
        {"precision": "int4"},
        {"max_batch": 0},
        {"kv_budget_tokens": 0},
        {"encoder_cache_windows": -1},
        {"prefix_cache_tokens": -5},
        {"max_waiting": 2},  # not a setting: Serve's queue (max_queued_requests) is the waiting line
        {"models": {"x": {"path": "p", "bogus": 1}}},
        {"drain_timeout": -1},
        {"metrics_port": 0},
    ],
)
def test_invalid(args: dict) -> None:
    with pytest.raises(ValidationError):
        Settings.from_args(args)


def test_invalid_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWEN_MODEL_POOL_SIZE", "many")
    with pytest.raises(ValidationError):
        Settings.from_args()


def test_operations_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings.from_args()
    assert s.cors_origin_list() == [] and s.drain_timeout == 300.0 and s.metrics is True
    assert s.metrics_port is None
    assert Settings.from_args(
        {"cors_origins": ["https://a.example", "https://b.example"]}
    ).cors_origin_list() == [
        "https://a.example",
        "https://b.example",
    ]
    monkeypatch.setenv("QWEN_CORS_ORIGINS", " https://a.example, http://localhost:3000 ,")
    monkeypatch.setenv("QWEN_DRAIN_TIMEOUT", "60")
    monkeypatch.setenv("QWEN_METRICS", "false")
    monkeypatch.setenv("QWEN_METRICS_PORT", "8080")
    s = Settings.from_args({"cors_origins": "*", "drain_timeout": 5})
    assert s.cors_origin_list() == ["https://a.example", "http://localhost:3000"]
    assert (s.drain_timeout, s.metrics, s.metrics_port) == (60.0, False, 8080)
