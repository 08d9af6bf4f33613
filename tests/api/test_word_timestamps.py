"""Word timestamps through the ingress: the forced aligner's deployment behind a fake handle.

The fake aligner (fakes.py) gives each word of a chunk an even share of the
chunk's time, so the expected words and times are known here.
"""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient
from openai import AsyncOpenAI

from .conftest import MODEL, TOKEN, Harness, make_settings, wav_bytes
from .fakes import expected_words


def _post(client: TestClient, **data: object) -> httpx.Response:
    return client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", wav_bytes(2.0), "audio/wav")},
        data={"model": MODEL, **data},
    )


def test_word_request_without_aligner_is_400_naming_the_command() -> None:
    harness = Harness(make_settings(), aligner=False)
    client = TestClient(harness.app, headers={"Authorization": f"Bearer {TOKEN}"})
    r = _post(client, response_format="verbose_json", **{"timestamp_granularities[]": "word"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "timestamp_granularities"
    assert error["code"] == "unsupported_value"
    assert "forced aligner" in error["message"]
    # everything else still works as before: cues are the audio chunks
    r = _post(client, response_format="srt")
    assert r.status_code == 200 and "w0 w1 w2 w3" in r.text


def test_untimed_formats_do_not_call_the_aligner(client: TestClient, harness: Harness) -> None:
    for fmt in ("json", "text"):
        assert _post(client, response_format=fmt).status_code == 200
    assert harness.aligner is not None and harness.aligner.calls == []


def test_aligner_gets_the_chunks_and_the_language(client: TestClient, harness: Harness) -> None:
    r = _post(client, response_format="srt", language="en")
    assert r.status_code == 200
    assert harness.aligner is not None
    [(chunks, language)] = harness.aligner.calls
    assert language == "English"
    assert [text.strip() for _, _, text in chunks] == [" ".join(expected_words(2.0))]
    assert chunks[0][0] == 0.0 and chunks[0][1] == pytest.approx(2.0)


@pytest.mark.anyio
async def test_words_through_the_sdk(openai_client: AsyncOpenAI) -> None:
    result = await openai_client.audio.transcriptions.create(
        model=MODEL,
        file=("a.wav", wav_bytes(2.0)),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    words = result.words or []
    assert [w.word for w in words] == expected_words(2.0)
    starts = [w.start for w in words]
    assert starts == sorted(starts) and all(w.end > w.start for w in words)
    assert words[-1].end <= 2.0
    assert result.segments and result.segments[0].start == words[0].start


@pytest.mark.anyio
async def test_words_only_when_asked(openai_client: AsyncOpenAI) -> None:
    result = await openai_client.audio.transcriptions.create(
        model=MODEL, file=("a.wav", wav_bytes(2.0)), response_format="verbose_json"
    )
    assert not result.words
    assert result.segments  # cut from the aligned words
    assert result.segments[0].end <= 2.0


def test_aligner_busy_is_503_with_retry_after() -> None:
    harness = Harness(make_settings())
    assert harness.aligner_handle is not None
    harness.aligner_handle.busy = True
    client = TestClient(harness.app, headers={"Authorization": f"Bearer {TOKEN}"})
    r = _post(client, response_format="vtt")
    assert r.status_code == 503
    assert r.headers["retry-after"]
    assert r.json()["error"]["code"] == "model_busy"


@pytest.mark.anyio
async def test_srt_cues_from_words(openai_client: AsyncOpenAI, harness: Harness) -> None:
    import srt

    harness.engines[MODEL].chunk_seconds = 1.0  # chunk cues would be 1 s each
    body = await openai_client.audio.transcriptions.create(
        model=MODEL, file=("a.wav", wav_bytes(2.5)), response_format="srt"
    )
    cues = list(srt.parse(str(body)))
    assert " ".join(c.content.replace("\n", " ") for c in cues) == " ".join(expected_words(2.5))
    # the fake aligner gives each of the 2 words of a 1 s chunk 0.4 s of speech: cues end with it
    assert cues[0].start.total_seconds() == 0.0
    assert cues[-1].end.total_seconds() == pytest.approx(2.0 + 0.8 * 0.5, abs=1e-3)
