"""The browser playground: static files (HTML, CSS, JS; no build step, nothing from a CDN) at /playground/.

The page needs no auth of its own; it asks for an API key and calls the /v1
routes with it (`Authorization: Bearer` over HTTP, the
`openai-insecure-api-key.<key>` subprotocol for /v1/realtime). It finds them
relative to its own address, so it works under any Serve route prefix. The
key lives in the page, so the files go out with a Content-Security-Policy
that lets only this origin's own scripts run and talk to the server.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).with_name("static")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; media-src 'self' blob:; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


class _PlaygroundFiles(StaticFiles):
    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(SECURITY_HEADERS)
        return response


def mount_playground(app: FastAPI) -> None:
    """`/playground/` (index.html and its assets) and `/` redirecting there."""
    app.mount("/playground", _PlaygroundFiles(directory=STATIC_DIR, html=True), name="playground")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("playground/")
