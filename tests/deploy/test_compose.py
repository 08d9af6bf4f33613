"""compose.yaml, the Dockerfile and the PodMonitor without Docker or a cluster: parsed and held to
each other and to the settings (`docker compose config` needs a Docker engine, which CI lacks)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwen_serve.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("QWEN_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="module")
def service() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert set(compose) <= {"name", "services", "volumes"}
    (svc,) = compose["services"].values()
    assert compose["volumes"] == {"models": None, "weight-cache": None}  # named volumes, declared
    return svc


def dockerfile() -> list[str]:
    """The instructions of the final stage, comments and blank lines dropped."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    last_from = max(i for i, ln in enumerate(lines) if ln.startswith("FROM "))
    return lines[last_from:]


def instruction(name: str) -> list[str]:
    return [ln[len(name) + 1 :].strip() for ln in dockerfile() if ln.startswith(name + " ")]


_VAR = re.compile(r"^\$\{(?P<name>[A-Z0-9_]+)(?::(?P<op>[-?])(?P<arg>.*))?\}$")


def resolve(value: Any, given: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?message}` for a whole value."""
    text = str(value)
    m = _VAR.match(text)
    if m is None:
        assert "${" not in text, text
        return text
    if m["name"] in given:
        return given[m["name"]]
    assert m["op"] == "-", f"{m['name']} is required: {m['arg']}"
    return m["arg"]


def test_environment_is_settings(service: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    env = service["environment"]
    assert isinstance(env, dict)
    fields = {f"QWEN_{name.upper()}" for name in Settings.model_fields}
    unknown = [k for k in env if k.startswith("QWEN_") and k not in fields]
    assert not unknown, f"not settings: {unknown}"
    # The token has no default: compose refuses to start without it ...
    with pytest.raises(AssertionError, match="QWEN_API_TOKEN is required"):
        resolve(env["QWEN_API_TOKEN"], {})
    # ... and with it, every value (defaults included) is a valid setting.
    values = {k: resolve(v, {"QWEN_API_TOKEN": "sk-compose"}) for k, v in env.items()}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_args()
    assert settings.api_tokens() == ["sk-compose"]
    assert settings.models_dir == Path("/models") and settings.metrics_port == 8080
    assert settings.cors_origin_list() == []  # CORS stays off unless set


def test_ports_user_and_volume_match_the_image(service: dict) -> None:
    port = Settings.from_args().port
    assert instruction("EXPOSE") == [str(port)]
    published = {int(p.split(":")[1]): int(p.split(":")[0]) for p in service["ports"]}
    assert published[port] == port
    metrics_port = int(service["environment"]["QWEN_METRICS_PORT"])
    assert published[metrics_port] == metrics_port
    (user,) = instruction("USER")
    assert service["user"] == user
    assert f"--uid {user}" in " ".join(instruction("RUN"))  # the image creates that user
    assert service["volumes"] == ["models:/models", "weight-cache:/weight-cache"]
    assert service["environment"]["QWEN_MODELS_DIR"] == "/models"
    assert service["environment"]["QWEN_WEIGHT_CACHE"] == "/weight-cache"
    assert "chown ray /models /weight-cache" in " ".join(instruction("RUN"))  # the volumes start owned by it
    assert service["build"] == "." and (ROOT / "Dockerfile").is_file()


def test_command_healthcheck_and_restart(service: dict) -> None:
    assert service["command"] == ["python", "-m", "qwen_serve.app", "serve_config.yaml"]
    assert "COPY serve_config.yaml ./" in dockerfile()
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD" and f"http://127.0.0.1:{Settings.from_args().port}/health" in test
    assert service["restart"] in ("always", "unless-stopped")
    assert service["stop_signal"] == "SIGINT" and service["init"] is True  # the launcher's clean stop
    assert service["shm_size"]


def test_dockerfile_runs_as_non_root_with_a_healthcheck() -> None:
    (user,) = instruction("USER")
    assert user not in ("0", "root")
    lines = dockerfile()
    assert lines.index(f"USER {user}") > max(
        i for i, ln in enumerate(lines) if ln.startswith(("RUN ", "COPY "))
    )
    (check,) = instruction("HEALTHCHECK")
    assert f"http://127.0.0.1:{Settings.from_args().port}/health" in check
    assert "wget" in " ".join(instruction("RUN"))  # the probe's tool is installed


def test_podmonitor_scrapes_every_pod() -> None:
    (monitor,) = [d for d in yaml.safe_load_all((ROOT / "k8s" / "podmonitor.yaml").read_text()) if d]
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    service = next(
        d
        for d in yaml.safe_load_all((ROOT / "k8s" / "rayservice.yaml").read_text())
        if d["kind"] == "RayService"
    )
    cluster = service["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for template in templates:
        assert selector.items() <= template["metadata"]["labels"].items()
        (container,) = template["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports[endpoint["port"]] == 8080  # KubeRay's metrics-export-port
