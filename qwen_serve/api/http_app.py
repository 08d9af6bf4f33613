"""`create_app()`: the FastAPI application of the ingress, built from settings and model backends."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from .. import __version__, metrics
from ..settings import Settings
from .access import AccessLog
from .auth import token_checker
from .backend import AlignerBackend, ServedModel
from .errors import install_error_handlers
from .playground import mount_playground
from .realtime import realtime_router
from .routes import build_router
from .service import TranscriptionService

DESCRIPTION = """\
Speech to text with Qwen3-ASR, compatible with OpenAI's Audio API
(`POST /v1/audio/transcriptions`). Every `/v1` route needs
`Authorization: Bearer <QWEN_API_TOKEN>`. Errors use OpenAI's envelope
`{"error": {"message", "type", "param", "code"}}`.
"""


def create_app(
    settings: Settings,
    models: Mapping[str, ServedModel],
    unavailable: Mapping[str, str] | None = None,
    aligner: AlignerBackend | None = None,
    aligner_missing: str = "",
) -> FastAPI:
    """The HTTP app. `models`: id -> info + backend; `unavailable`: id -> why it cannot be served;
    `aligner`: the forced aligner (word timestamps), or None and `aligner_missing` saying why."""
    app = FastAPI(title="qwen-serve", version=__version__, description=DESCRIPTION, docs_url="/docs")
    install_error_handlers(app)
    service = TranscriptionService(settings, models, unavailable or {}, aligner, aligner_missing)
    app.include_router(build_router(service, token_checker(settings.api_tokens())))
    app.include_router(realtime_router(service, token_checker(settings.api_tokens())))
    mount_playground(app)
    origins = settings.cors_origin_list()
    if origins:  # off unless configured: browsers then refuse cross-origin calls
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],  # Authorization, and the SDK's own x-stainless-* headers
            expose_headers=["x-request-id", "x-engine-time-ms", "retry-after"],
            max_age=600,
        )
    metrics.configure(settings.metrics)
    app.add_middleware(AccessLog)  # outermost of ours: sees every answer, CORS preflights too
    return app
