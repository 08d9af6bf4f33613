"""The browser playground: static files (HTML, CSS, JS; no build step, nothing from a CDN) at /playground/.

The page needs no auth of its own; it asks for an API key and calls the /v1
routes with it (`Authorization: Bearer` over HTTP, the
`openai-insecure-api-key.<key>` subprotocol for /v1/realtime). It finds them
relative to its own address, so it works under any Serve route prefix.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).with_name("static")


def mount_playground(app: FastAPI) -> None:
    """`/playground/` (index.html and its assets) and `/` redirecting there."""
    app.mount("/playground", StaticFiles(directory=STATIC_DIR, html=True), name="playground")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("playground/")
