"""Deployment artefacts without a cluster: the RayService against KubeRay's CRD schema, its
embedded Serve config against Ray's own schema and our settings, serve_config.yaml, the Dockerfile."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from qwen_serve.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = Path(__file__).with_name("rayservice_schema.json")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("QWEN_"):
            monkeypatch.delenv(key)


def strict(schema: Any) -> Any:
    """Like `kubectl --validate=strict`: unknown fields are errors (the API server would drop them)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(strict(json.loads(SCHEMA.read_text())))


def load_docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ROOT / "k8s" / name).read_text()) if d]


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    docs = [d for d in load_docs("rayservice.yaml") if d["kind"] == "RayService"]
    assert len(docs) == 1
    return docs[0]


def test_rayservice_matches_crd(validator: jsonschema.Draft7Validator, rayservice: dict) -> None:
    errors = sorted(validator.iter_errors(rayservice), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)
    assert rayservice["apiVersion"] == "ray.io/v1"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["spec"].update(serveConfigV3="x"),  # misspelt field
        lambda d: d["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(replicas="one"),  # wrong type
        lambda d: d["spec"]["rayClusterConfig"]["authOptions"].update(mode="password"),  # not in the enum
        lambda d: d["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0].pop(
            "name"
        ),
    ],
)
def test_schema_catches_mistakes(
    validator: jsonschema.Draft7Validator, rayservice: dict, mutate: Any
) -> None:
    broken = copy.deepcopy(rayservice)
    mutate(broken)
    assert list(validator.iter_errors(broken))


def serve_config(rayservice: dict) -> ServeDeploySchema:
    return ServeDeploySchema.model_validate(yaml.safe_load(rayservice["spec"]["serveConfigV2"]))


def test_embedded_serve_config(rayservice: dict) -> None:
    config = serve_config(rayservice)
    (app,) = config.applications
    local = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "serve_config.yaml").read_text()))
    assert app.import_path == local.applications[0].import_path == "qwen_serve.app:build_app"
    settings = Settings.from_args(app.args)
    assert settings.models_dir == Path("/models")
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__

    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert ports["serve"] == config.http_options.port
    assert config.http_options.host == "0.0.0.0"


def test_pods_share_image_env_and_models(rayservice: dict) -> None:
    cluster = rayservice["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in cluster["workerGroupSpecs"]
    ]
    images = {c["image"] for p in pods for c in p["containers"]}
    assert len(images) == 1
    for pod in pods:
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert "secretKeyRef" in env["QWEN_API_TOKEN"]["valueFrom"]  # never a literal token
        assert "value" not in env["QWEN_API_TOKEN"]
        assert env["QWEN_MODELS_DIR"]["value"] == "/models"
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "qwen-models"


def test_capacity_fits_the_pool(rayservice: dict) -> None:
    """Every model at full pool size fits in the workers the autoscaler may start."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    settings = Settings.from_args(serve_config(rayservice).applications[0].args)
    worker = cluster["workerGroupSpecs"][0]
    cpus_per_worker = float(worker["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    needed = len(settings.models) * settings.model_pool_size * settings.model_num_cpus
    assert needed <= cpus_per_worker * worker["maxReplicas"]
    assert settings.threads is not None and settings.threads <= settings.model_num_cpus


def test_models_job_downloads_into_the_claim(rayservice: dict) -> None:
    docs = {d["kind"]: d for d in load_docs("models.yaml")}
    assert docs["PersistentVolumeClaim"]["metadata"]["name"] == "qwen-models"
    job = docs["Job"]["spec"]["template"]["spec"]
    (container,) = job["containers"]
    assert container["command"][:3] == ["python", "-m", "qwen_serve.download"]
    assert "/models" in container["command"]
    image = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "image"
    ]
    assert container["image"] == image


def test_serve_config_yaml() -> None:
    config = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "serve_config.yaml").read_text()))
    (app,) = config.applications
    settings = Settings.from_args(app.args)
    defaults = Settings.from_args()
    assert (config.http_options.host, config.http_options.port) == (defaults.host, defaults.port)
    assert settings.model_dir("qwen-asr-0.6b") == Path("models/qwen3-asr-0.6b")
    assert settings.model_dir("qwen-asr-1.7b") == Path("models/qwen3-asr-1.7b")
    assert (settings.model_pool_size, settings.model_idle_timeout, settings.max_upload_mb) == (1, 300, 25)
    assert app.route_prefix == "/"


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    froms = [ln for ln in lines if ln.startswith("FROM ")]
    # Both stages on the base image argument, whose default is the official slim image.
    assert len(froms) == 2 and all(f.startswith("FROM ${BASE_IMAGE}") for f in froms)
    (base,) = [ln for ln in lines if ln.startswith("ARG BASE_IMAGE=")]
    assert base.startswith("ARG BASE_IMAGE=python:") and "slim" in base
    assert 'pip install ".[serve]"' in text
    for path in ("pyproject.toml", "README.md", "native", "qwen_serve", "serve_config.yaml"):
        assert path in text and (ROOT / path).exists()
    assert lines[-1] == 'CMD ["serve", "run", "serve_config.yaml"]'
    assert "USER 1000" in lines
    assert f"EXPOSE {Settings.from_args().port}" in lines
    assert "-march=native" not in text
