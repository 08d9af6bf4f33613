"""Bearer-token check for every /v1 route (OpenAI's 401 envelope on failure)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .errors import APIError

_bearer = HTTPBearer(auto_error=False, description="QWEN_API_TOKEN (any one of its comma-separated tokens)")


def _unauthorized(message: str, code: str | None) -> APIError:
    return APIError(401, message, code=code, headers={"WWW-Authenticate": "Bearer"})


def token_checker(tokens: Sequence[str]) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency accepting any of `tokens`, compared in constant time."""
    accepted = [t.encode("utf-8") for t in tokens]

    async def authenticate(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if credentials is None or not credentials.credentials:
            raise _unauthorized(
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code=None,
            )
        given = credentials.credentials.encode("utf-8")
        match = False
        for token in accepted:  # no early exit: every token is compared
            match |= hmac.compare_digest(given, token)
        if not match:
            raise _unauthorized("Incorrect API key provided.", code="invalid_api_key")

    return authenticate
