"""The Ray Serve application: `import_path: qwen_serve.app:build_app` in serve_config.yaml.

    serve run serve_config.yaml            # Ray's CLI; http_options of the file give host and port
    python -m qwen_serve.app               # the same, with QWEN_HOST / QWEN_PORT applied on top

`build_app(args)` validates the app args (a `Settings`, environment on top)
and creates one deployment per model id plus the FastAPI ingress holding a
handle to each. The pool and the model life cycle are Ray Serve autoscaling:

    QWEN_MODEL_POOL_SIZE     -> max_replicas (one batching Engine per replica)
    QWEN_MAX_BATCH           -> target_ongoing_requests per replica; max_ongoing_requests twice that
    lazy load                -> min_replicas 0, initial_replicas 0: the first request starts a replica
    QWEN_MODEL_IDLE_TIMEOUT  -> downscale_delay_s / downscale_to_zero_delay_s; 0 -> min_replicas 1
    backpressure             -> max_queued_requests -> 503 + Retry-After (and the engine's EngineBusy)
    QWEN_DRAIN_TIMEOUT       -> graceful_shutdown_timeout_s: a stopping replica finishes its requests

A replica decodes up to max_batch requests together, one pass over the
weights per token for all of them, so a second replica of the same model
pays only when the first is full: the autoscaling target is max_batch
ongoing requests per replica, i.e. Serve scales up once every running
replica holds max_batch and more requests are queued. A replica reserves
`model_num_cpus` (1: both models fit a 2-core machine) and computes on all
the node's CPUs (`threads`), so one request alone is as fast as the engine
with every core.

Models whose checkpoint is missing are left out with a loud error naming the
download command (requests for them get a 503 saying so); when none is
present the build fails with that message.

The forced aligner (word timestamps, subtitle cues) is one more deployment,
`Aligner:qwen3-forcedaligner-0.6b`, with the models' pool size and life
cycle (lazy load, scale to zero). It is optional: without its checkpoint the
service runs as before and a word-level request gets a 400 naming the
download command.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from .api.backend import ModelInfo
from .api.ingress import Ingress
from .download import COMMAND, checkpoint_problem, missing_checkpoint_message
from .languages import SUPPORTED_LANGUAGES
from .model.aligner_server import AlignerServer
from .model.server import ModelServer
from .settings import ALIGNER_ID, Settings

logger = logging.getLogger("ray.serve")

INGRESS_NAME = "Ingress"
DEFAULT_DOWNSCALE_DELAY_S = 600.0
GRACEFUL_SHUTDOWN_WAIT_LOOP_S = 1.0
INGRESS_DRAIN_MARGIN_S = 10.0
"""The ingress outlives the model replicas' drain by this much: a stream whose model replica was
stopped before it ended still gets its (retryable) error event instead of a cut connection."""


def deployment_name(model_id: str) -> str:
    """The Serve deployment of a model id."""
    return f"Model:{model_id}"


ALIGNER_MAX_ONGOING = 4
"""Requests an aligner replica holds at once; it runs them one after another (each is one forward
pass on all the replica's threads), so more would only wait there instead of in Serve's queue."""


def autoscaling_config(settings: Settings, target_ongoing: int | None = None) -> dict[str, Any]:
    """Pool size and idle unload as Ray Serve autoscaling (see the module docstring)."""
    idle = settings.model_idle_timeout
    resident = idle == 0
    config: dict[str, Any] = {
        "min_replicas": 1 if resident else 0,
        "initial_replicas": 1 if resident else 0,
        "max_replicas": settings.model_pool_size,
        # scale up only when replicas are full
        "target_ongoing_requests": settings.max_batch if target_ongoing is None else target_ongoing,
        "upscale_delay_s": 1.0,
        "downscale_delay_s": DEFAULT_DOWNSCALE_DELAY_S if resident else idle,
    }
    if not resident:
        config["downscale_to_zero_delay_s"] = idle
    config.update(settings.autoscaling)
    return config


def replica_options(settings: Settings) -> dict[str, Any]:
    """Serve options that the models' and the aligner's deployments share: queue, CPU reservation,
    health checks and drain."""
    return {
        "max_queued_requests": settings.max_queued_requests,
        "ray_actor_options": {"num_cpus": settings.model_num_cpus},
        "health_check_period_s": 10,
        # A stopping replica gets no new requests and finishes the running ones (checked every
        # second) before __del__ closes its engine; only a drain longer than this cuts them.
        "graceful_shutdown_wait_loop_s": GRACEFUL_SHUTDOWN_WAIT_LOOP_S,
        "graceful_shutdown_timeout_s": settings.drain_timeout,
    }


def model_info(model_id: str, model_dir: Path) -> ModelInfo:
    """What the ingress needs to know about a model, read from its config.json (no weights loaded)."""
    config_path = model_dir / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    languages = config.get("support_languages") if isinstance(config, dict) else None
    if not isinstance(languages, list) or not languages:
        languages = list(SUPPORTED_LANGUAGES)
    return ModelInfo(
        id=model_id, created=int(config_path.stat().st_mtime), languages=tuple(map(str, languages))
    )


def build_app(args: dict[str, Any] | None = None) -> Application:
    """The app builder named by serve_config.yaml's import_path."""
    settings = Settings.from_args(args)
    settings.warn_if_default_token()

    infos: dict[str, ModelInfo] = {}
    handles: dict[str, Application] = {}
    unavailable: dict[str, str] = {}
    problems: list[str] = []
    for model_id, spec in settings.models.items():
        model_dir = settings.model_dir(model_id).expanduser().resolve()
        problem = checkpoint_problem(model_dir)
        if problem:
            message = missing_checkpoint_message(model_id, model_dir, problem, spec.repo)
            logger.error("%s The service starts without it.", message)
            problems.append(message)
            unavailable[model_id] = f"The operator can fetch it with `{COMMAND} {model_id}`."
            continue
        infos[model_id] = model_info(model_id, model_dir)
        deployment = serve.deployment(
            name=deployment_name(model_id),
            autoscaling_config=autoscaling_config(settings),
            # max_batch decode together, as many more wait in the engine's own queue and take a slot
            # the moment one frees (Serve's router retries a full replica with backoff): 16 clients
            # 3.43-3.47 req/s, p99 4.7 s, against 3.20, p99 5.9-6.0 s (bench_serve, Zen 5)
            max_ongoing_requests=2 * settings.max_batch,
            **replica_options(settings),
        )(ModelServer)
        handles[model_id] = deployment.bind(
            model_id,
            str(model_dir),
            threads=settings.threads,
            max_new_tokens=settings.max_new_tokens,
            repo=spec.repo,
            isa=settings.isa,
            precision=settings.precision,
            max_batch=settings.max_batch,
            kv_budget_tokens=settings.kv_budget_tokens,
            encoder_cache_windows=settings.encoder_cache_windows,
            prefix_cache_tokens=settings.prefix_cache_tokens,
            weight_cache=settings.weight_cache,
            record_metrics=settings.metrics,
        )
    if not handles:
        raise FileNotFoundError("No model checkpoint found. " + " ".join(problems))

    aligner, aligner_missing = aligner_deployment(settings)
    ingress = serve.deployment(
        name=INGRESS_NAME,
        num_replicas=settings.ingress_replicas,
        max_ongoing_requests=256,
        ray_actor_options={"num_cpus": 0},
        graceful_shutdown_wait_loop_s=GRACEFUL_SHUTDOWN_WAIT_LOOP_S,
        graceful_shutdown_timeout_s=settings.drain_timeout + INGRESS_DRAIN_MARGIN_S,  # holds the streams
    )(Ingress)
    return ingress.bind(settings, infos, handles, unavailable, aligner, aligner_missing)


def aligner_deployment(settings: Settings) -> tuple[Application | None, str]:
    """The forced aligner's deployment, or None and why word timestamps are off (for the 400)."""
    aligner_dir = settings.aligner_dir()
    if aligner_dir is None:
        return None, "The forced aligner is turned off on this server (QWEN_ALIGNER is empty)."
    aligner_dir = aligner_dir.expanduser().resolve()
    problem = checkpoint_problem(aligner_dir)
    if problem:
        logger.warning(
            "Word timestamps are off: the forced aligner has no usable checkpoint at %s (%s). "
            "Fetch it with `%s %s` to enable them.",
            aligner_dir,
            problem,
            COMMAND,
            ALIGNER_ID,
        )
        return None, (
            "Word timestamps need the forced aligner, which is not installed on this server. "
            f"The operator can fetch it with `{COMMAND} {ALIGNER_ID}`."
        )
    deployment = serve.deployment(
        name=aligner_deployment_name(),
        autoscaling_config=autoscaling_config(settings, target_ongoing=1),
        max_ongoing_requests=ALIGNER_MAX_ONGOING,
        **replica_options(settings),
    )(AlignerServer)
    app = deployment.bind(
        str(aligner_dir),
        threads=settings.threads,
        isa=settings.isa,
        precision=settings.precision,
        weight_cache=settings.weight_cache,
    )
    return app, ""


def aligner_deployment_name() -> str:
    return f"Aligner:{ALIGNER_ID}"


# ---- launcher: `serve run` with QWEN_HOST / QWEN_PORT applied ------------------------------


def load_config(path: Path) -> dict[str, Any]:
    """serve_config.yaml with QWEN_HOST / QWEN_PORT (when set) on top of its http_options."""
    import yaml

    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    http = config.setdefault("http_options", {})
    if os.environ.get("QWEN_HOST"):
        http["host"] = os.environ["QWEN_HOST"]
    if os.environ.get("QWEN_PORT"):
        http["port"] = int(os.environ["QWEN_PORT"])
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qwen_serve.app", description="Start the service like `serve run`."
    )
    parser.add_argument("config", nargs="?", type=Path, default=Path("serve_config.yaml"))
    parser.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    args = parser.parse_args(argv)

    import ray
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(load_config(args.config))
    options: dict[str, Any] = {}
    first_args = schema.applications[0].args if schema.applications else None
    metrics_port = Settings.from_args(first_args).metrics_port
    if args.address is None and metrics_port is not None:  # a cluster we start: its metrics port
        options["_metrics_export_port"] = metrics_port
    ray.init(address=args.address, namespace="serve", **options)
    serve.start(http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location)
    for app in schema.applications:
        module, _, attr = app.import_path.replace(":", ".").rpartition(".")
        target = getattr(importlib.import_module(module), attr)
        application = target(app.args) if callable(target) and not isinstance(target, Application) else target
        serve.run(application, name=app.name, route_prefix=app.route_prefix, blocking=False)
    host, port = schema.http_options.host, schema.http_options.port
    print(f"qwen-serve: listening on http://{host}:{port} (docs at /docs); Ctrl-C stops it", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
