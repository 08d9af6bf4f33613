"""Service configuration: one settings object for the whole application.

Values come from the application's `args` in serve_config.yaml, with the
QWEN_* environment variables on top (an environment variable wins over the
file). Nothing is read at import time: the app builder calls
`Settings.from_args(args)` once and hands the object to the deployments.

    QWEN_HOST, QWEN_PORT            listen address (http_options of the Serve config)
    QWEN_MODEL_POOL_SIZE            replicas per model at most (default 1: one per node; a cluster raises it)
    QWEN_MODEL_IDLE_TIMEOUT         seconds idle before a model is unloaded (0 = resident)
    QWEN_API_TOKEN                  bearer token(s), comma-separated
    QWEN_MODELS_DIR                 where checkpoint directories live (default ./models)
    QWEN_MAX_UPLOAD_MB              largest upload accepted (default 25)
    QWEN_MAX_AUDIO_SECONDS          longest audio accepted (default 1200)
    QWEN_MAX_BATCH                  requests a model replica takes at once and decodes together (default 8)
    QWEN_KV_BUDGET_TOKENS           KV-cache tokens a replica reserves across them (default: sized from max_batch)
    QWEN_ENCODER_CACHE_WINDOWS      complete 8 s encoder windows a replica keeps for reuse (default 32; 0: off)
    QWEN_PREFIX_CACHE_TOKENS        KV rows of prompt prefixes a replica keeps for reuse (default 1024; 0: off)
    QWEN_THREADS                    compute threads per model replica (default: all the node's CPUs)
    QWEN_ISA                        kernel set: auto (default), scalar, avx2, avx512, avx512bf16, neon
    QWEN_PRECISION                  fast (default: int8 decoder weights) or exact (f32, the reference's tokens)
    QWEN_WEIGHT_CACHE               directory for the weights a replica packs at load, mapped by the next load
                                    (default ~/.cache/qwen-serve/weights; "" turns it off)
    QWEN_ALIGNER                    forced-aligner checkpoint for word timestamps and subtitle cues
                                    (default qwen3-forcedaligner-0.6b under QWEN_MODELS_DIR; "" turns it off)
    QWEN_REALTIME_*                 realtime sessions: max_sessions, max_buffer_seconds, max_append_mb,
                                    live_text, idle_timeout, max_session_seconds (docs/realtime.md)
    QWEN_CORS_ORIGINS               browser origins allowed to call the API, comma-separated (default: none, CORS off)
    QWEN_DRAIN_TIMEOUT              seconds a stopping model replica waits for its running requests (default 300)
    QWEN_METRICS                    record the service metrics in Ray's metrics system (default true)
    QWEN_METRICS_PORT               Prometheus port of the Ray node `python -m qwen_serve.app` starts (default: Ray's choice)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

logger = logging.getLogger("qwen_serve")

DEFAULT_API_TOKEN = "sk-test-key"


class ModelSpec(BaseModel):
    """One model the service offers: where its checkpoint lives and where to fetch it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    """Checkpoint directory; relative paths are taken under `models_dir`."""
    repo: str | None = None
    """Hugging Face repository the download command fetches it from."""


DEFAULT_MODELS: dict[str, ModelSpec] = {
    "qwen-asr-0.6b": ModelSpec(path="qwen3-asr-0.6b", repo="Qwen/Qwen3-ASR-0.6B"),
    "qwen-asr-1.7b": ModelSpec(path="qwen3-asr-1.7b", repo="Qwen/Qwen3-ASR-1.7B"),
}

ALIGNER_ID = "qwen3-forcedaligner-0.6b"
"""The forced aligner's id (its Serve deployment, the download command's argument)."""
ALIGNER_REPO = "Qwen/Qwen3-ForcedAligner-0.6B"


class Settings(BaseSettings):
    """Everything the service can be configured with (app args, then QWEN_* env on top)."""

    model_config = SettingsConfigDict(
        env_prefix="QWEN_",
        extra="forbid",
        frozen=True,
        protected_namespaces=(),
    )

    host: str = "0.0.0.0"
    """Address the HTTP proxy listens on."""
    port: int = Field(default=8011, ge=1, le=65535)
    """Port the HTTP proxy listens on."""
    model_pool_size: int = Field(default=1, ge=1)
    """Most replicas (loaded engines) per model; Serve's `max_replicas`. 1 by default: a replica
    computes on all the node's cores and batches its requests, so a second one on the same node
    only competes for them (docs/service.md); a cluster sets one per node (k8s/: 2)."""
    model_idle_timeout: float = Field(default=300.0, ge=0)
    """Seconds without requests before a model scales to zero replicas; 0 keeps one resident."""
    api_token: SecretStr = SecretStr(DEFAULT_API_TOKEN)
    """Accepted bearer tokens, comma-separated. Never logged."""
    models_dir: Path = Path("models")
    """Directory holding the checkpoint directories."""
    models: dict[str, ModelSpec] = Field(default_factory=lambda: dict(DEFAULT_MODELS))
    """Model id -> checkpoint. Ids given in the config are added to (or replace) the defaults."""
    max_upload_mb: float = Field(default=25.0, gt=0)
    """Largest accepted upload in MiB (413 above it)."""
    max_audio_seconds: float = Field(default=1200.0, gt=0)
    """Longest accepted audio in seconds (400 above it)."""
    threads: int | None = Field(default=None, ge=1)
    """Compute threads per model replica; None: all CPUs of the node the replica runs on (as Ray
    counts them), so that one request alone gets every core."""
    isa: Literal["auto", "scalar", "avx2", "avx512", "avx512bf16", "neon"] = "auto"
    """libqwen kernel set; auto picks the best exact one the CPU has (avx512bf16 is opt-in only)."""
    precision: Literal["exact", "fast"] = "fast"
    """libqwen precision: "fast" runs the decoder's linears on int8 weights (quantized at load, half
    the memory traffic of bf16 per token), keeps the KV cache in int8 and runs the encoder on bf16
    dot products where the CPU has them; "exact" is f32 throughout, token for token the official implementation. README:
    "Precision" has the measured speed and distance between the two."""
    weight_cache: str = "~/.cache/qwen-serve/weights"
    """Directory (on each node; "~" is the replica's home) where a replica keeps the weights it packs
    at load with precision fast (the int8 decoder, the encoder's bf16 panels or tiles): the first
    load of a checkpoint writes them (about 1.1 GB for 0.6B, 2.7 GB for 1.7B), every later load
    maps that file instead of packing again (0.03 s instead of 0.7-2.9 s on the Zen 5) and the
    replicas on a node share its pages. A new library build or a changed checkpoint rewrites it.
    "" turns it off."""
    max_new_tokens: int | None = Field(default=None, ge=1)
    """Generated tokens per audio chunk at most; None keeps the engine's default."""
    model_num_cpus: float = Field(default=1.0, ge=0)
    """CPUs Ray reserves for each model replica (a scheduling unit: 1 lets both models be resident on
    a 2-core machine; the replica computes on all the node's cores, see `threads`)."""
    max_batch: int = Field(default=8, ge=1)
    """Requests one model replica decodes together, one pass over the weights per token for all of
    them; it accepts twice this many (Serve's max_ongoing_requests), the rest waiting in its engine's
    queue for a free slot. Autoscaling adds a replica only when the running ones hold this many and
    more wait. 1 is the old one-request-at-a-time behaviour."""
    kv_budget_tokens: int | None = Field(default=None, ge=1)
    """KV-cache tokens (prompt plus generated, summed over sequences) a replica reserves for its
    batch; None sizes it from max_batch. A request that does not fit waits for room; one that
    needs more than the whole budget, or finds the engine's waiting line full, gets 503."""
    encoder_cache_windows: int = Field(default=32, ge=0)
    """Complete 8 s encoder windows a replica keeps (about 0.8 MB each for 0.6B, 1.2 MB for 1.7B):
    audio that comes again, a live turn's earlier windows above all, is not encoded again.
    0 turns the cache off."""
    prefix_cache_tokens: int = Field(default=1024, ge=0)
    """KV rows of prompt prefixes a replica keeps (65 KB each with fast, 229 KB with exact, both models;
    1024 is about 66 or 235 MB):
    the prompt up to the audio that can still change, so the next decode of a growing live turn
    prefills only its last window's audio and the text. 0 turns the cache off."""
    max_queued_requests: int = Field(default=16, ge=-1)
    """Requests waiting for a busy model beyond which clients get 503 + Retry-After (-1: no limit)."""
    ingress_replicas: int = Field(default=1, ge=1)
    """Replicas of the HTTP ingress (it only parses, decodes audio and routes)."""
    autoscaling: dict[str, Any] = Field(default_factory=dict)
    """Extra Ray Serve autoscaling_config keys for the model deployments (e.g. look_back_period_s)."""
    aligner: str = ALIGNER_ID
    """Checkpoint directory of Qwen3-ForcedAligner (absolute, or under `models_dir`): word timestamps
    (`timestamp_granularities[]=word`), verbose_json segments and SRT/VTT cues cut from aligned
    words. "" turns it off; a missing checkpoint only disables those features (word requests get a
    400 naming the download command). It scales like a model: lazy load, pool size, idle unload."""
    realtime_max_sessions: int = Field(default=32, ge=1, le=192)
    """Realtime (WebSocket) transcription sessions one ingress replica holds at once; more are refused
    with an `error` event and close code 1013. Each holds one of the ingress replica's 256 concurrent
    requests (app.py) for its whole life, so at most 192 leave room for HTTP requests."""
    realtime_max_buffer_seconds: float = Field(default=900.0, gt=0)
    """Audio one realtime session holds at once (its input buffer plus committed items waiting for
    transcription), in seconds; 900 s is 28.8 MB of 16 kHz int16. Appends beyond it get an `error`."""
    realtime_max_append_mb: float = Field(default=15.0, gt=0)
    """Largest audio payload of one `input_audio_buffer.append` in MiB (OpenAI's limit is 15)."""
    realtime_live_text: bool = True
    """Send text during speech: a realtime turn is decoded as it grows (every second, after the
    text fixed so far), so only its last words are left to decode when it ends. Off: each item is
    decoded once, after its commit (less CPU per session, the text comes after the turn)."""
    realtime_idle_timeout: float = Field(default=120.0, gt=0)
    """Seconds without a client event before a realtime session is closed."""
    realtime_max_session_seconds: float = Field(default=3600.0, gt=0)
    """Longest a realtime session may last, in seconds (OpenAI's is 60 minutes)."""
    cors_origins: str = ""
    """Origins (`https://app.example.com`) allowed to call the API from a browser, comma-separated;
    `*` for any. Empty: no CORS headers at all (browsers refuse cross-origin calls)."""
    drain_timeout: float = Field(default=300.0, ge=0)
    """Seconds a model replica that is being stopped (scale-down, idle unload, redeploy) keeps
    serving its running requests and streams before it is stopped anyway: Serve's
    graceful_shutdown_timeout_s. Set it above the longest transcription you expect."""
    metrics: bool = True
    """Record the service metrics (request counts and latency, real-time factor, engine queue and
    batch, model loads) in Ray's metrics system; docs/operations.md lists them."""
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    """Port of the Prometheus endpoint (Ray's `--metrics-export-port`) of the local Ray node that
    `python -m qwen_serve.app` starts; None lets Ray pick one. `ray start` and KubeRay (8080) set
    their own."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first: QWEN_* variables override the app args of serve_config.yaml.
        return env_settings, init_settings

    @field_validator("models", mode="before")
    @classmethod
    def _merge_models(cls, value: Any) -> Any:
        """A config's `models` adds ids to the defaults; a plain string is a checkpoint path."""
        if not isinstance(value, dict):
            return value
        merged: dict[str, Any] = dict(DEFAULT_MODELS)
        for model_id, spec in value.items():
            if spec is None:  # `qwen-asr-1.7b: null` removes a default
                merged.pop(model_id, None)
            else:
                merged[model_id] = {"path": spec} if isinstance(spec, str) else spec
        return merged

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins_as_text(cls, value: Any) -> Any:
        """A list in the app args is the same as the comma-separated form of the variable."""
        return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value

    @field_validator("api_token")
    @classmethod
    def _tokens_not_empty(cls, value: SecretStr) -> SecretStr:
        if not [t for t in value.get_secret_value().split(",") if t.strip()]:
            raise ValueError("api_token must hold at least one token")
        return value

    @classmethod
    def from_args(cls, args: dict[str, Any] | None = None) -> Settings:
        """Settings from app args (serve_config.yaml), environment variables on top."""
        return cls(**(args or {}))

    # ---- derived values ----------------------------------------------------
    def api_tokens(self) -> list[str]:
        """The accepted bearer tokens."""
        return [t.strip() for t in self.api_token.get_secret_value().split(",") if t.strip()]

    def cors_origin_list(self) -> list[str]:
        """The origins CORS allows; empty when CORS is off."""
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def uses_default_token(self) -> bool:
        return DEFAULT_API_TOKEN in self.api_tokens()

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def model_dir(self, model_id: str) -> Path:
        """Checkpoint directory of a model id (absolute, or under models_dir)."""
        path = Path(self.models[model_id].path).expanduser()
        return path if path.is_absolute() else self.models_dir.expanduser() / path

    def aligner_dir(self) -> Path | None:
        """Checkpoint directory of the forced aligner, None when turned off."""
        if not self.aligner.strip():
            return None
        path = Path(self.aligner).expanduser()
        return path if path.is_absolute() else self.models_dir.expanduser() / path

    def checkpoints(self) -> dict[str, tuple[Path, str | None]]:
        """Every checkpoint the service can use: model ids and the aligner -> (directory, HF repo)."""
        found = {m: (self.model_dir(m), self.models[m].repo) for m in self.models}
        aligner = self.aligner_dir()
        if aligner is not None:
            found[ALIGNER_ID] = (aligner, ALIGNER_REPO)
        return found

    def warn_if_default_token(self) -> None:
        if self.uses_default_token:
            logger.warning(
                "\n" + "!" * 78 + "\n"
                "!! QWEN_API_TOKEN is not set: the service accepts the public default token\n"
                f"!! '{DEFAULT_API_TOKEN}'. Anyone who can reach this port can use it. Set\n"
                "!! QWEN_API_TOKEN (comma-separated for several tokens) before exposing it.\n" + "!" * 78
            )
