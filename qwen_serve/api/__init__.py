"""The HTTP side: OpenAI-compatible routes, auth, forms, response formats, SSE."""

from .app import create_app
from .backend import HandleBackend, ModelBackend, ModelInfo, ServedModel

__all__ = ["HandleBackend", "ModelBackend", "ModelInfo", "ServedModel", "create_app"]
