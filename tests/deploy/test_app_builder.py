"""The app builder without starting Ray: autoscaling mapping, deployments, missing checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ray.serve import Application

from qwen_serve.app import (
    aligner_deployment_name,
    autoscaling_config,
    build_app,
    deployment_name,
    load_config,
    model_info,
)
from qwen_serve.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("QWEN_"):
            monkeypatch.delenv(key)


def test_lazy_pool_with_idle_unload() -> None:
    config = autoscaling_config(Settings.from_args({"model_pool_size": 3, "model_idle_timeout": 120}))
    assert config["min_replicas"] == 0 and config["initial_replicas"] == 0
    assert config["max_replicas"] == 3
    assert config["downscale_to_zero_delay_s"] == 120 and config["downscale_delay_s"] == 120
    assert config["target_ongoing_requests"] == 8  # a replica is full at max_batch (default 8)


def test_replicas_take_max_batch_and_scale_when_full() -> None:
    config = autoscaling_config(Settings.from_args({"max_batch": 3}))
    assert config["target_ongoing_requests"] == 3
    config = autoscaling_config(
        Settings.from_args({"max_batch": 3, "autoscaling": {"target_ongoing_requests": 2}})
    )
    assert config["target_ongoing_requests"] == 2  # the autoscaling arg still wins


def test_idle_timeout_zero_keeps_one_resident() -> None:
    config = autoscaling_config(Settings.from_args({"model_idle_timeout": 0}))
    assert config["min_replicas"] == 1 and config["initial_replicas"] == 1
    assert "downscale_to_zero_delay_s" not in config


def test_autoscaling_overrides_are_valid_ray_config() -> None:
    from ray.serve.config import AutoscalingConfig

    settings = Settings.from_args({"autoscaling": {"metrics_interval_s": 0.5, "look_back_period_s": 2}})
    config = AutoscalingConfig(**autoscaling_config(settings))
    assert config.look_back_period_s == 2 and config.max_replicas == settings.model_pool_size == 1


def _checkpoint(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"support_languages": ["English", "Chinese"]}')
    (path / "model.safetensors").write_bytes(b"")
    (path / "vocab.json").write_text("{}")
    return path


def test_build_app_one_deployment_per_model(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "qwen3-asr-0.6b")
    _checkpoint(tmp_path / "qwen3-asr-1.7b")
    _checkpoint(tmp_path / "extra")
    app = build_app(
        {
            "models_dir": str(tmp_path),
            "models": {"my-asr": "extra"},
            "api_token": "sk-x",
            "isa": "avx2",
            "precision": "exact",
            "threads": 1,
            "max_batch": 5,
            "kv_budget_tokens": 20000,
            "encoder_cache_windows": 4,
            "prefix_cache_tokens": 512,
            "weight_cache": "/var/cache/qwen",
        }
    )
    assert isinstance(app, Application)
    ingress = app._bound_deployment
    settings, infos, handles, unavailable, aligner, aligner_missing = ingress.init_args
    assert aligner is None and "python -m qwen_serve.download qwen3-forcedaligner-0.6b" in aligner_missing
    assert set(handles) == set(infos) == {"qwen-asr-0.6b", "qwen-asr-1.7b", "my-asr"}
    assert unavailable == {}
    for model_id, bound in handles.items():
        deployment = bound._bound_deployment
        assert deployment.name == deployment_name(model_id)
        assert deployment._deployment_config.max_ongoing_requests == 10  # 5 decoding, 5 in the engine's queue
        assert deployment._deployment_config.autoscaling_config.target_ongoing_requests == 5
        assert deployment._deployment_config.autoscaling_config.max_replicas == settings.model_pool_size
        assert deployment.init_args == (model_id, str((tmp_path / settings.models[model_id].path).resolve()))
        assert deployment.init_kwargs["isa"] == "avx2" and deployment.init_kwargs["threads"] == 1
        assert deployment.init_kwargs["precision"] == "exact"
        assert (
            deployment.init_kwargs["max_batch"] == 5 and deployment.init_kwargs["kv_budget_tokens"] == 20000
        )
        assert deployment.init_kwargs["encoder_cache_windows"] == 4
        assert deployment.init_kwargs["prefix_cache_tokens"] == 512
        assert deployment.init_kwargs["weight_cache"] == "/var/cache/qwen"
        assert deployment.ray_actor_options["num_cpus"] == 1.0
    assert infos["my-asr"].languages == ("English", "Chinese")


def test_aligner_deployment_when_its_checkpoint_is_there(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "qwen3-asr-0.6b")
    _checkpoint(tmp_path / "qwen3-forcedaligner-0.6b")
    app = build_app(
        {
            "models_dir": str(tmp_path),
            "api_token": "sk-x",
            "model_pool_size": 3,
            "precision": "exact",
            "threads": 2,
        }
    )
    settings, _, _, _, aligner, missing = app._bound_deployment.init_args
    assert missing == ""
    deployment = aligner._bound_deployment
    assert deployment.name == aligner_deployment_name() == "Aligner:qwen3-forcedaligner-0.6b"
    scaling = deployment._deployment_config.autoscaling_config
    assert scaling.max_replicas == 3 and scaling.min_replicas == 0 and scaling.initial_replicas == 0
    assert deployment.init_args == (str((tmp_path / "qwen3-forcedaligner-0.6b").resolve()),)
    assert deployment.init_kwargs == {
        "threads": 2,
        "isa": "auto",
        "precision": "exact",
        "weight_cache": "~/.cache/qwen-serve/weights",  # "~": the replica's node expands it
    }


def test_aligner_turned_off(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "qwen3-asr-0.6b")
    _checkpoint(tmp_path / "qwen3-forcedaligner-0.6b")
    app = build_app({"models_dir": str(tmp_path), "api_token": "sk-x", "aligner": ""})
    *_, aligner, missing = app._bound_deployment.init_args
    assert aligner is None and "turned off" in missing


def test_missing_checkpoint_is_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _checkpoint(tmp_path / "qwen3-asr-0.6b")
    app = build_app({"models_dir": str(tmp_path), "api_token": "sk-x"})
    _, infos, handles, unavailable, _, _ = app._bound_deployment.init_args
    assert set(handles) == {"qwen-asr-0.6b"}
    assert "python -m qwen_serve.download qwen-asr-1.7b" in unavailable["qwen-asr-1.7b"]
    assert "python -m qwen_serve.download qwen-asr-1.7b" in caplog.text


def test_no_checkpoint_at_all_fails_with_the_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as e:
        build_app({"models_dir": str(tmp_path)})
    message = str(e.value)
    assert "python -m qwen_serve.download qwen-asr-0.6b" in message and "Qwen/Qwen3-ASR-1.7B" in message


def test_model_info_defaults(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    info = model_info("m", d)
    assert "English" in info.languages and "Cantonese" in info.languages and info.created > 0


def test_launcher_applies_host_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(__file__).resolve().parents[2]
    assert load_config(root / "serve_config.yaml")["http_options"] == {"host": "0.0.0.0", "port": 8011}
    monkeypatch.setenv("QWEN_HOST", "127.0.0.1")
    monkeypatch.setenv("QWEN_PORT", "9123")
    assert load_config(root / "serve_config.yaml")["http_options"] == {"host": "127.0.0.1", "port": 9123}


def test_stopping_replicas_drain_for_drain_timeout(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "qwen3-asr-0.6b")
    for args, timeout in (({}, 300.0), ({"drain_timeout": 45}, 45.0)):
        app = build_app({"models_dir": str(tmp_path), "api_token": "sk-x", **args})
        _, _, handles, *_ = app._bound_deployment.init_args
        config = handles["qwen-asr-0.6b"]._bound_deployment._deployment_config
        assert config.graceful_shutdown_timeout_s == timeout
        assert config.graceful_shutdown_wait_loop_s == 1.0
        ingress = app._bound_deployment._deployment_config  # it holds the streams: it outlives them
        assert ingress.graceful_shutdown_timeout_s == timeout + 10


def test_metrics_setting_reaches_the_replicas(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "qwen3-asr-0.6b")
    for enabled in (True, False):
        app = build_app({"models_dir": str(tmp_path), "api_token": "sk-x", "metrics": enabled})
        settings, _, handles, *_ = app._bound_deployment.init_args
        assert settings.metrics is enabled
        assert handles["qwen-asr-0.6b"]._bound_deployment.init_kwargs["record_metrics"] is enabled


def test_launcher_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m qwen_serve.app` starts its Ray node with QWEN_METRICS_PORT as Ray's metrics port."""
    import ray

    from qwen_serve import app as app_module

    root = Path(__file__).resolve().parents[2]
    seen: dict[str, object] = {}

    class Stop(Exception):
        pass

    def fake_init(**kwargs: object) -> None:
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(ray, "init", fake_init)
    for env, expected in ((None, None), ("9091", 9091)):
        seen.clear()
        if env is not None:
            monkeypatch.setenv("QWEN_METRICS_PORT", env)
        with pytest.raises(Stop):
            app_module.main([str(root / "serve_config.yaml")])
        assert seen.get("_metrics_export_port") == expected and seen["address"] is None
    seen.clear()
    with pytest.raises(Stop):  # joining a running cluster: its own metrics port
        app_module.main([str(root / "serve_config.yaml"), "--address", "ray://head:10001"])
    assert seen["address"] == "ray://head:10001" and "_metrics_export_port" not in seen
