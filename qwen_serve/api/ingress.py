"""The ingress deployment: the FastAPI app on a Serve replica, holding one handle per model.

The app is built on the replica (`__serve_build_asgi_app__`), from the
settings and the handles the app builder passes in, so nothing is created at
import time.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve

from ..settings import Settings
from .backend import HandleAlignerBackend, HandleBackend, ModelInfo, ServedModel
from .http_app import create_app


@serve.ingress()
class Ingress:
    def __init__(
        self,
        settings: Settings,
        models: dict[str, ModelInfo],
        handles: dict[str, Any],
        unavailable: dict[str, str],
        aligner: Any = None,
        aligner_missing: str = "",
    ):
        settings.warn_if_default_token()
        served = {
            model_id: ServedModel(models[model_id], HandleBackend(h)) for model_id, h in handles.items()
        }
        backend = HandleAlignerBackend(aligner) if aligner is not None else None
        self._app = create_app(
            settings, served, unavailable, aligner=backend, aligner_missing=aligner_missing
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self._app
