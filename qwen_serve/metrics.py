"""Service metrics through Ray's own metrics system: one function per event the service records.

Every metric is a `ray.serve.metrics` Counter, Histogram or Gauge. Each Ray
process records into its core worker, which hands the values to its node's
metrics agent; Prometheus scrapes the agent at
`http://<node>:<metrics export port>/metrics` (`ray start
--metrics-export-port=8080`, `ray.init(_metrics_export_port=...)`; KubeRay
pods expose it as the container port named `metrics`). There is no exporter
of ours. On the wire Ray prefixes every name with `ray_` and counters end in
`_total`; Serve adds the labels `deployment`, `replica` and `application`.

    ingress (per HTTP request, from api/access.py)
      qwen_requests_total{model, endpoint, status}         counter
      qwen_request_latency_seconds{model, endpoint, status} histogram
      qwen_time_to_first_delta_seconds{model}              histogram (streams)
      qwen_audio_seconds_total{model}                      counter (decoded audio sent to a model)
    model replica (model/server.py)
      qwen_real_time_factor{model}                         histogram (engine time / audio time)
      qwen_output_tokens_total{model}                      counter
      qwen_engine_waiting_requests{model}                  gauge (queue depth)
      qwen_engine_active_sequences{model}                  gauge (sequences in the batch)
      qwen_engine_steps_total{model}                       counter (decode steps)
      qwen_engine_step_sequences_total{model}              counter (sum of batch sizes over steps)
      qwen_encoder_cache_hits_total{model}                 counter (complete 8 s windows not encoded again)
      qwen_encoder_cache_misses_total{model}               counter (complete windows encoded)
      qwen_prefix_cache_tokens_reused_total{model}         counter (prompt rows not prefilled again)
      qwen_model_load_seconds{model,weight_cache}          histogram
      qwen_model_loads_total{model,weight_cache}, qwen_model_unloads_total{model}  counters

`status` is the HTTP status, except that a stream which failed after its 200
went out counts with the status of the error event it carried, and a
request whose client went away first counts as 499. `endpoint` is the route
template (`/v1/audio/transcriptions`, `/v1/models/{model_id}`), `other` for
unknown URLs; `model` is a configured model id or empty.

The metric objects are created on first use in each process (nothing at
import: Serve pickles deployment classes, and a process that records
nothing creates nothing). Outside a Ray worker recording is a no-op.
`configure(enabled=False)` (the setting `metrics`) turns recording off in
the calling process. Per request this is a handful of calls; the engine's
scheduler only counts steps in two integers, read once a second.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec

P = ParamSpec("P")
logger = logging.getLogger("ray.serve")

LATENCY_BUCKETS_S = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0]
RTF_BUCKETS = [0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0]
LOAD_BUCKETS_S = [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0]

_lock = threading.Lock()
_enabled = True
_registry: _Registry | None = None


class _Registry:
    """The metric objects of this process."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Gauge, Histogram

        model = ("model",)
        request: Any = ("model", "endpoint", "status")  # Ray annotates tag_keys as a 1-tuple
        load: Any = ("model", "weight_cache")
        self.requests = Counter(
            "qwen_requests",
            description="HTTP requests by model, endpoint and status (499: the client went away).",
            tag_keys=request,
        )
        self.latency = Histogram(
            "qwen_request_latency_seconds",
            description="Time from the request's arrival at the ingress to its last byte.",
            boundaries=LATENCY_BUCKETS_S,
            tag_keys=request,
        )
        self.first_delta = Histogram(
            "qwen_time_to_first_delta_seconds",
            description="Streams: time from the request's arrival to its first text delta.",
            boundaries=LATENCY_BUCKETS_S,
            tag_keys=model,
        )
        self.audio = Counter(
            "qwen_audio_seconds", description="Seconds of decoded audio sent to a model.", tag_keys=model
        )
        self.rtf = Histogram(
            "qwen_real_time_factor",
            description="Engine wall time of a transcription divided by its audio duration.",
            boundaries=RTF_BUCKETS,
            tag_keys=model,
        )
        self.output_tokens = Counter(
            "qwen_output_tokens", description="Generated tokens (stop tokens included).", tag_keys=model
        )
        self.waiting = Gauge(
            "qwen_engine_waiting_requests",
            description="Requests in a replica's engine waiting for a batch slot (queue depth).",
            tag_keys=model,
        )
        self.active = Gauge(
            "qwen_engine_active_sequences",
            description="Sequences holding a batch slot of a replica's engine (batch size now).",
            tag_keys=model,
        )
        self.steps = Counter(
            "qwen_engine_steps", description="Scheduling steps (one decode pass each).", tag_keys=model
        )
        self.step_sequences = Counter(
            "qwen_engine_step_sequences",
            description="Sequences in the batch, summed over steps: /steps is the mean batch size.",
            tag_keys=model,
        )
        self.encoder_cache_hits = Counter(
            "qwen_encoder_cache_hits",
            description="Complete 8 s encoder windows taken from libqwen's cache instead of encoded.",
            tag_keys=model,
        )
        self.encoder_cache_misses = Counter(
            "qwen_encoder_cache_misses",
            description="Complete 8 s encoder windows encoded (not in libqwen's cache).",
            tag_keys=model,
        )
        self.prefix_cache_tokens_reused = Counter(
            "qwen_prefix_cache_tokens_reused",
            description="Prompt rows whose KV came from libqwen's prefix cache instead of a prefill.",
            tag_keys=model,
        )
        self.load_time = Histogram(
            "qwen_model_load_seconds",
            description="Time a replica took to load its model.",
            boundaries=LOAD_BUCKETS_S,
            tag_keys=load,
        )
        self.loads = Counter(
            "qwen_model_loads",
            description="Models loaded (replicas started).",
            tag_keys=load,
        )
        self.unloads = Counter(
            "qwen_model_unloads", description="Models unloaded (replicas stopped).", tag_keys=model
        )


def configure(enabled: bool) -> None:
    """Turns recording on or off in this process."""
    global _enabled
    _enabled = enabled


def _metrics() -> _Registry | None:
    global _registry
    if not _enabled:
        return None
    if _registry is None:
        with _lock:
            if _registry is None:
                _registry = _Registry()
    return _registry


def _never_raises(event: Callable[P, None]) -> Callable[P, None]:
    """Recording a metric never fails a request or a replica: errors are logged."""

    @functools.wraps(event)
    def record(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            event(*args, **kwargs)
        except Exception:
            logger.exception("recording the metric event %s failed", event.__name__)

    return record


# ---- the events ------------------------------------------------------------------------


@_never_raises
def request_finished(
    model: str,
    endpoint: str,
    status: int,
    latency_s: float,
    audio_s: float | None = None,
    first_delta_s: float | None = None,
) -> None:
    """An HTTP request ended (answered, failed, or its client went away: 499)."""
    m = _metrics()
    if m is None:
        return
    tags = {"model": model, "endpoint": endpoint, "status": str(status)}
    m.requests.inc(1, tags)
    m.latency.observe(latency_s, tags)
    if first_delta_s is not None:
        m.first_delta.observe(first_delta_s, {"model": model})
    if audio_s:
        m.audio.inc(audio_s, {"model": model})


@_never_raises
def transcription_finished(model: str, audio_s: float, engine_s: float, output_tokens: int) -> None:
    """A replica's engine finished a transcription."""
    m = _metrics()
    if m is None:
        return
    tags = {"model": model}
    if audio_s > 0:
        m.rtf.observe(engine_s / audio_s, tags)
    if output_tokens > 0:
        m.output_tokens.inc(output_tokens, tags)


ENGINE_COUNTS = (
    "steps",
    "step_sequences",
    "encoder_cache_hits",
    "encoder_cache_misses",
    "prefix_cache_tokens_reused",
)
"""The engine's stats() that only grow: the replica reports how much each grew (engine_sampled),
each into the registry's counter of the same name."""


@_never_raises
def engine_sampled(model: str, stats: Mapping[str, Any], counts: Mapping[str, int]) -> None:
    """A replica's periodic look at its engine: `stats()` now, and how much each of its
    ENGINE_COUNTS grew since the last look."""
    m = _metrics()
    if m is None:
        return
    tags = {"model": model}
    m.waiting.set(int(stats.get("waiting", 0)), tags)
    m.active.set(int(stats.get("active", 0)), tags)
    for key in ENGINE_COUNTS:
        if counts.get(key, 0) > 0:
            getattr(m, key).inc(counts[key], tags)


@_never_raises
def model_loaded(model: str, seconds: float, weight_cache: str = "none") -> None:
    """A replica loaded its model; `weight_cache`: what the load did with libqwen's weight cache
    ("none", "written", "loaded" from it, "failed" to write it)."""
    m = _metrics()
    if m is None:
        return
    tags = {"model": model, "weight_cache": weight_cache}
    m.load_time.observe(seconds, tags)
    m.loads.inc(1, tags)


@_never_raises
def model_unloaded(model: str) -> None:
    """A replica is closing its model."""
    m = _metrics()
    if m is not None:
        m.unloads.inc(1, {"model": model})
