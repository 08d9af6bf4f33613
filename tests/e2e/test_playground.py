"""The playground page in headless Chromium against the real Ray Serve instance (tiny checkpoints).

Through Serve's proxy: the page's transcript of an uploaded file (json and
streamed) equals what the API returns for it, shaded by the engine's
log-probabilities when asked, and the microphone (a WAV file played by
Chromium) ends with a completed item, shaded too. English is forced: the tiny
model's random weights name no language otherwise, and the text is empty.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser.conftest import chromium  # noqa: F401  (the fixture)
from browser.page import Items, Page, microphone_wav

from .conftest import SMALL, TOKEN, Service, wav

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.timeout(300)]

WAIT_S = 120.0  # the first request may wait for a model replica to start


def test_upload_through_serve(chromium: Callable[..., Any], service: Service, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "speech.wav"
    path.write_bytes(wav(2.0, seed=3))
    with path.open("rb") as f:
        response = httpx.post(
            f"{service.base_url}/v1/audio/transcriptions",
            headers={"Authorization": f"Bearer {TOKEN}"},
            files={"file": (path.name, f, "audio/wav")},
            data={"model": SMALL, "language": "en"},  # forced: the tiny model's random text
            timeout=WAIT_S,
        )
    expected = response.json()["text"]
    assert expected
    page = Page(chromium(), service.base_url)
    page.sign_in(TOKEN, SMALL, language="en")
    for stream in (False, True):
        page.transcribe(path, stream=stream, timeout=WAIT_S)
        assert page.text("file-status").startswith("Done"), page.text("file-error")
        assert page.text("transcript") == expected
    page.screenshot(tmp_path, "serve-upload-streamed")

    # shaded by the engine's log-probabilities: each span one of its tokens (or the run of tokens
    # that spells a character), in order; the repetitions the parser collapsed are not shown
    page.transcribe(path, confidence=True, timeout=WAIT_S)
    assert page.text("transcript") == expected
    shaded = page.shaded("#transcript")
    assert shaded
    tokens, at = engine_logprobs(service, path), 0
    for text, logprob, title, unsure in shaded:
        assert title == f"p = {math.exp(logprob):.3f}" and unsure == (math.exp(logprob) < 0.5)
        run, at = next_run(tokens, at, text)
        assert logprob == pytest.approx(sum(t["logprob"] for t in run), abs=1e-12)


def next_run(tokens: list[dict[str, Any]], start: int, text: str) -> tuple[list[dict[str, Any]], int]:
    """The first run of 1-4 tokens from `start` on whose bytes spell `text` (spaces around it
    aside), and the index after it."""
    for i in range(start, len(tokens)):
        for n in range(1, 5):
            if (
                b"".join(bytes(t["bytes"]) for t in tokens[i : i + n]).decode(errors="replace").strip()
                == text
            ):
                return tokens[i : i + n], i + n
    raise AssertionError(f"no run of tokens from {start} on spells {text!r}")


def engine_logprobs(service: Service, path: Path) -> list[dict[str, Any]]:
    with path.open("rb") as f:
        response = httpx.post(
            f"{service.base_url}/v1/audio/transcriptions",
            headers={"Authorization": f"Bearer {TOKEN}"},
            files={"file": (path.name, f, "audio/wav")},
            data={"model": SMALL, "language": "en", "include[]": "logprobs"},
            timeout=WAIT_S,
        )
    return list(response.json()["logprobs"])


def test_microphone_through_serve(chromium: Callable[..., Any], service: Service, tmp_path: Path) -> None:  # noqa: F811
    page = Page(chromium(microphone=microphone_wav(tmp_path / "mic.wav")), service.base_url)
    page.sign_in(TOKEN, SMALL, language="en")

    def completed(items: Items) -> bool:
        return bool(items) and items[0][1] in ("done", "failed")

    items = page.live(completed, timeout=WAIT_S, confidence=True)
    page.screenshot(tmp_path, "serve-microphone")
    assert items[0][1] == "done" and items[0][0], items  # the tiny model's text is random, but some
    shaded = page.shaded("#items li .text")  # the completed item's tokens, with include logprobs
    assert shaded and all(text in items[0][0] for text, *_ in shaded), shaded
