"""The HTTP side: OpenAI-compatible routes, auth, forms, response formats, SSE."""

from .backend import HandleBackend, ModelBackend, ModelInfo, ServedModel
from .http_app import create_app

__all__ = ["HandleBackend", "ModelBackend", "ModelInfo", "ServedModel", "create_app"]
