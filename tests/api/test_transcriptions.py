"""POST /v1/audio/transcriptions through the official SDK (in-process) and raw HTTP."""

from __future__ import annotations

import json

import numpy as np
import openai
import pytest
import srt
import webvtt
from fastapi.testclient import TestClient
from openai import AsyncOpenAI

from .conftest import MODEL, MODEL_B, TOKEN, Harness, make_settings, wav_bytes
from .fakes import expected_words, fake_logprob

pytestmark = pytest.mark.anyio

TWO_SECONDS = " ".join(expected_words(2.0))


# ---- every response format through the SDK ---------------------------------------


async def test_json_default(openai_client: AsyncOpenAI, harness: Harness) -> None:
    res = await openai_client.audio.transcriptions.create(model=MODEL, file=("a.wav", wav_bytes(2.0)))
    assert res.text == TWO_SECONDS
    engine = harness.engines[MODEL]
    result = engine.streams[-1].result
    assert res.usage is not None and res.usage.type == "tokens"
    assert res.usage.input_tokens == result.usage.input_tokens
    assert res.usage.output_tokens == result.usage.output_tokens
    assert res.usage.total_tokens == result.usage.input_tokens + result.usage.output_tokens
    assert engine.calls[-1]["language"] is None and engine.calls[-1]["context"] == ""
    assert [lang.code for lang in res.languages or []] == ["en"]  # what the model named


async def test_text_is_raw(openai_client: AsyncOpenAI) -> None:
    res = await openai_client.audio.transcriptions.create(
        model=MODEL, file=("a.wav", wav_bytes()), response_format="text"
    )
    assert isinstance(res, str)
    assert res == TWO_SECONDS + "\n"


@pytest.mark.no_aligner
async def test_srt_parses(openai_client: AsyncOpenAI, harness: Harness) -> None:
    harness.engines[MODEL].chunk_seconds = 1.0
    res = await openai_client.audio.transcriptions.create(
        model=MODEL, file=("a.wav", wav_bytes(2.5)), response_format="srt"
    )
    subs = list(srt.parse(res))
    assert [s.content for s in subs] == ["w0 w1", "w2 w3", "w4"]
    assert [s.start.total_seconds() for s in subs] == [0.0, 1.0, 2.0]
    assert subs[-1].end.total_seconds() == pytest.approx(2.5)


@pytest.mark.no_aligner
async def test_vtt_parses(openai_client: AsyncOpenAI, harness: Harness) -> None:
    harness.engines[MODEL].chunk_seconds = 1.0
    res = await openai_client.audio.transcriptions.create(
        model=MODEL, file=("a.wav", wav_bytes(2.0)), response_format="vtt"
    )
    assert res.startswith("WEBVTT")
    captions = webvtt.from_string(res).captions
    assert [c.text for c in captions] == ["w0 w1", "w2 w3"]
    assert [(c.start, c.end) for c in captions] == [
        ("00:00:00.000", "00:00:01.000"),
        ("00:00:01.000", "00:00:02.000"),
    ]


@pytest.mark.no_aligner
async def test_verbose_json(openai_client: AsyncOpenAI, harness: Harness) -> None:
    harness.engines[MODEL].chunk_seconds = 1.0
    res = await openai_client.audio.transcriptions.create(
        model=MODEL,
        file=("a.wav", wav_bytes(2.0)),
        response_format="verbose_json",
        timestamp_granularities=["segment"],
        language="de",
    )
    assert res.language == "german"
    assert res.duration == pytest.approx(2.0)
    assert res.text == TWO_SECONDS
    assert res.segments is not None and [s.text for s in res.segments] == ["w0 w1", "w2 w3"]
    assert [(s.id, s.start, s.end, s.seek) for s in res.segments] == [(0, 0.0, 1.0, 0), (1, 1.0, 2.0, 100)]
    assert all(s.tokens and s.temperature == 0.0 for s in res.segments)
    # each chunk's mean log-probability: the engine was asked for them
    assert harness.engines[MODEL].calls[-1]["logprobs"] is True
    result = harness.engines[MODEL].streams[-1].result
    means = [s.avg_logprob for s in result.segments]
    assert means[0] == pytest.approx((fake_logprob(0) + fake_logprob(1)) / 2)
    assert [s.avg_logprob for s in res.segments] == pytest.approx(means)
    assert res.usage is not None and res.usage.seconds == pytest.approx(2.0)
    raw = res.model_dump()
    assert raw.get("words") is None


async def test_language_and_prompt_reach_engine(openai_client: AsyncOpenAI, harness: Harness) -> None:
    await openai_client.audio.transcriptions.create(
        model=MODEL, file=("a.wav", wav_bytes()), language="zh", prompt="Qwen, Ray Serve", temperature=0.3
    )
    call = harness.engines[MODEL].calls[-1]
    assert call["language"] == "Chinese"
    assert call["context"] == "Qwen, Ray Serve"
    assert call["writeable"] is True  # the replica copied the read-only array


async def test_keywords_join_the_context_and_one_possible_language_is_forced(
    openai_client: AsyncOpenAI, harness: Harness
) -> None:
    res = await openai_client.audio.transcriptions.create(
        model=MODEL,
        file=("a.wav", wav_bytes()),
        prompt="A talk about serving.",
        keywords=[" Qwen3-ASR", "Ray Serve", "KubeRay "],
        languages=["de"],
    )
    call = harness.engines[MODEL].calls[-1]
    assert call["context"] == "A talk about serving.\nQwen3-ASR\nRay Serve\nKubeRay"
    assert call["language"] == "German"
    assert [lang.code for lang in res.languages or []] == ["de"]
    await openai_client.audio.transcriptions.create(
        model=MODEL, file=("a.wav", wav_bytes()), keywords=["Qwen"], language="ja", languages=["ja", "en"]
    )
    call = harness.engines[MODEL].calls[-1]
    assert call["context"] == "Qwen" and call["language"] == "Japanese"


async def test_two_models(openai_client: AsyncOpenAI, harness: Harness) -> None:
    await openai_client.audio.transcriptions.create(model=MODEL_B, file=("a.wav", wav_bytes()))
    assert len(harness.engines[MODEL_B].calls) == 1 and not harness.engines[MODEL].calls


async def test_resampled_stereo_input(openai_client: AsyncOpenAI, harness: Harness) -> None:
    res = await openai_client.audio.transcriptions.create(
        model=MODEL, file=("x.bin", wav_bytes(3.0, rate=44100, channels=2))
    )
    assert res.text == " ".join(expected_words(3.0))
    assert abs(harness.engines[MODEL].calls[-1]["samples"] - 48000) <= 2


# ---- streaming -----------------------------------------------------------------------


async def test_stream_events(openai_client: AsyncOpenAI, harness: Harness) -> None:
    stream = await openai_client.audio.transcriptions.create(
        model=MODEL, file=("a.wav", wav_bytes(3.0)), stream=True
    )
    events = [event async for event in stream]
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    done = events[-1]
    assert done.type == "transcript.text.done"
    assert deltas and "".join(deltas) == done.text == " ".join(expected_words(3.0))
    assert [lang.code for lang in done.languages or []] == ["en"]
    result = harness.engines[MODEL].streams[-1].result
    assert done.usage is not None and done.usage.type == "tokens"
    assert (done.usage.input_tokens, done.usage.output_tokens) == (
        result.usage.input_tokens,
        result.usage.output_tokens,
    )


# ---- logprobs ------------------------------------------------------------------------


async def test_logprobs_json(openai_client: AsyncOpenAI, harness: Harness) -> None:
    res = await openai_client.audio.transcriptions.create(
        model=MODEL, file=("a.wav", wav_bytes(2.0)), include=["logprobs"]
    )
    assert harness.engines[MODEL].calls[-1]["logprobs"] is True
    assert res.logprobs is not None
    words = expected_words(2.0)
    assert [(lp.token, lp.logprob) for lp in res.logprobs] == [
        (w if i == 0 else " " + w, fake_logprob(i)) for i, w in enumerate(words)
    ]
    assert b"".join(bytes(int(b) for b in lp.bytes or []) for lp in res.logprobs).decode() == res.text
    plain = await openai_client.audio.transcriptions.create(model=MODEL, file=("a.wav", wav_bytes(2.0)))
    assert plain.logprobs is None and harness.engines[MODEL].calls[-1]["logprobs"] is False


async def test_logprobs_stream(openai_client: AsyncOpenAI, harness: Harness) -> None:
    harness.engines[MODEL].token_delay = 0.02  # deltas one at a time, not coalesced into one
    stream = await openai_client.audio.transcriptions.create(
        model=MODEL, file=("a.wav", wav_bytes(3.0)), stream=True, include=["logprobs"]
    )
    events = [event async for event in stream]
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    done = events[-1]
    assert done.type == "transcript.text.done" and done.logprobs is not None
    assert len(deltas) > 1 and all(d.logprobs for d in deltas)

    # each delta carries its own tokens: together they are the done event's, and spell the text
    def triples(logprobs: list) -> list[tuple]:
        return [(lp.token, lp.logprob, lp.bytes) for lp in logprobs]

    assert triples([lp for d in deltas for lp in d.logprobs or []]) == triples(done.logprobs)
    for d in deltas:
        assert "".join(lp.token for lp in d.logprobs or []) == d.delta
    assert [lp.logprob for lp in done.logprobs] == [fake_logprob(i) for i in range(6)]


def test_stream_without_logprobs_has_no_field(client: TestClient) -> None:
    r = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", wav_bytes(1.0))},
        data={"model": MODEL, "stream": "true"},
    )
    events = [json.loads(b[6:]) for b in r.text.split("\n\n") if b and b != "data: [DONE]"]
    assert events and all("logprobs" not in e for e in events)


def test_stream_wire_format(client: TestClient) -> None:
    r = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", wav_bytes(1.0))},
        data={"model": MODEL, "stream": "true", "response_format": "text"},
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in r.text.split("\n\n") if b]
    assert all(b.startswith("data: ") for b in blocks)
    assert blocks[-1] == "data: [DONE]"
    first, last = json.loads(blocks[0][6:]), json.loads(blocks[-2][6:])
    assert first["type"] == "transcript.text.delta" and "delta" in first
    assert last["type"] == "transcript.text.done"
    assert set(last["usage"]) >= {"type", "input_tokens", "output_tokens", "total_tokens"}


def test_stream_error_after_start_is_an_sse_error(client: TestClient, harness: Harness) -> None:
    harness.engines[MODEL].fail_after = 1
    r = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", wav_bytes(2.0))},
        data={"model": MODEL, "stream": "true"},
    )
    assert r.status_code == 200
    payloads = [b[6:] for b in r.text.split("\n\n") if b]
    error = json.loads(payloads[-2])["error"]
    assert error["type"] == "server_error"
    assert "secret" not in r.text and "libqwen" not in r.text and "Traceback" not in r.text
    assert payloads[-1] == "[DONE]"


async def test_stream_error_raises_in_sdk(openai_client: AsyncOpenAI, harness: Harness) -> None:
    harness.engines[MODEL].fail_after = 1
    stream = await openai_client.audio.transcriptions.create(
        model=MODEL, file=("a.wav", wav_bytes(2.0)), stream=True
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


async def test_stream_busy_is_http_503(harness: Harness) -> None:
    for handle in harness.handles.values():
        handle.busy = True
    with TestClient(harness.app, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        r = c.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", wav_bytes())},
            data={"model": MODEL, "stream": "true"},
        )
    assert r.status_code == 503
    assert r.headers["retry-after"] == "2"
    assert r.json()["error"]["code"] == "model_busy"


# ---- errors ----------------------------------------------------------------------------


def _post(client: TestClient, data: dict, file: bytes | None = None, name: str = "a.wav") -> tuple[int, dict]:
    files = {"file": (name, file if file is not None else wav_bytes(1.0))}
    r = client.post("/v1/audio/transcriptions", files=files, data=data)
    return r.status_code, r.json()


def _assert_envelope(body: dict) -> dict:
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    for leak in ("Traceback", ".py", "/models", "/secret", "/tmp"):
        assert leak not in err["message"]
    return err


@pytest.mark.parametrize(
    "data, param, code",
    [
        ({}, "model", None),
        ({"model": MODEL, "response_format": "yaml"}, "response_format", None),
        ({"model": MODEL, "response_format": "diarized_json"}, "response_format", "unsupported_value"),
        ({"model": MODEL, "temperature": "1.5"}, "temperature", None),
        ({"model": MODEL, "temperature": "hot"}, "temperature", None),
        ({"model": MODEL, "stream": "maybe"}, "stream", None),
        ({"model": MODEL, "language": "xx"}, "language", "unsupported_language"),
        (
            {"model": MODEL, "language": "ko"},
            "language",
            "unsupported_language",
        ),  # not in the fake model's list
        ({"model": MODEL, "include[]": "tokens"}, "include", "unsupported_value"),
        (
            {"model": MODEL, "include[]": "logprobs", "response_format": "verbose_json"},
            "include",
            "unsupported_value",
        ),
        (
            {"model": MODEL, "include[]": "logprobs", "response_format": "text"},
            "include",
            "unsupported_value",
        ),
        ({"model": MODEL, "timestamp_granularities[]": "segment"}, "timestamp_granularities", None),
        ({"model": MODEL, "timestamp_granularities[]": "word"}, "timestamp_granularities", None),
        (
            {"model": MODEL, "timestamp_granularities[]": "phrase", "response_format": "verbose_json"},
            "timestamp_granularities",
            None,
        ),
        ({"model": MODEL, "stream": "true", "response_format": "srt"}, "stream", "unsupported_value"),
        ({"model": MODEL, "chunking_strategy[type]": "server_vad"}, "chunking_strategy", "unsupported_value"),
        ({"model": MODEL, "known_speaker_names[]": "agent"}, "known_speaker_names", None),
        ({"model": MODEL, "keywords[]": ["Qwen", " "]}, "keywords", None),
        ({"model": MODEL, "keywords[]": "x" * 3000, "prompt": "y" * 1000}, "keywords", None),
        ({"model": MODEL, "languages[]": ["en", "de"]}, "languages", "unsupported_language"),
        ({"model": MODEL, "languages[]": "xx"}, "languages", "unsupported_language"),
        (
            {"model": MODEL, "language": "fr", "languages[]": ["en", "de"]},
            "languages",
            "unsupported_language",
        ),
        ({"model": MODEL, "language": "xx"}, "language", "unsupported_language"),
        ({"model": MODEL, "speed": "2"}, "speed", None),
    ],
)
def test_bad_fields_are_400_with_param(client: TestClient, data: dict, param: str, code: str | None) -> None:
    status, body = _post(client, data)
    assert status == 400, body
    err = _assert_envelope(body)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    if code:
        assert err["code"] == code


def test_accepted_compat_fields(client: TestClient) -> None:
    data = {
        "model": MODEL,
        "chunking_strategy": "auto",
        "response_format": "verbose_json",
        "timestamp_granularities[]": ["segment"],
        "temperature": "0.8",
        "prompt": "",
        "language": "",
    }
    status, body = _post(client, data)
    assert status == 200, body


def test_unknown_model_404(client: TestClient) -> None:
    status, body = _post(client, {"model": "whisper-1"})
    assert status == 404
    err = _assert_envelope(body)
    assert err["code"] == "model_not_found" and err["param"] == "model"


def test_not_installed_model_503_without_retry(client: TestClient) -> None:
    r = client.post(
        "/v1/audio/transcriptions", files={"file": ("a.wav", wav_bytes())}, data={"model": "qwen-asr-huge"}
    )
    assert r.status_code == 503
    assert r.headers["x-should-retry"] == "false"
    assert "qwen_serve.download" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "payload, code",
    [
        (b"", "empty_audio"),
        (b"not audio at all" * 100, "unsupported_audio"),
        (b"RIFF\x00\x00\x00\x00WAVEjunk", "unsupported_audio"),
    ],
)
def test_bad_audio_400(client: TestClient, harness: Harness, payload: bytes, code: str) -> None:
    status, body = _post(client, {"model": MODEL}, file=payload)
    assert status == 400
    err = _assert_envelope(body)
    assert err["param"] == "file" and err["code"] == code
    assert not harness.engines[MODEL].calls  # nothing reached the model


def test_too_long_audio(client: TestClient) -> None:
    status, body = _post(client, {"model": MODEL}, file=wav_bytes(61.0, rate=8000, subtype="PCM_U8"))
    assert status == 400
    assert _assert_envelope(body)["code"] == "audio_too_long"


def test_too_large_413(client: TestClient) -> None:
    big = wav_bytes(40.0)  # 1.28 MB > max_upload_mb=1
    status, body = _post(client, {"model": MODEL}, file=big)
    assert status == 413
    err = _assert_envelope(body)
    assert err["type"] == "invalid_request_error" and err["code"] == "file_too_large"


def test_too_large_without_content_length_413(client: TestClient) -> None:
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{MODEL}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    ).encode()

    def body():
        yield head
        for _ in range(40):
            yield b"\x00" * 65536

    r = client.post(
        "/v1/audio/transcriptions",
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 413


@pytest.mark.parametrize(
    "kwargs, code",
    [
        ({"files": {"model": (None, MODEL)}}, "missing_file"),
        ({"data": {"model": MODEL}}, "invalid_content_type"),
        ({"json": {"model": MODEL}}, "invalid_content_type"),
        ({"content": b"--x\r\ngarbage", "headers": {"Content-Type": "multipart/form-data"}}, "invalid_form"),
        (
            {"files": [("file", ("a.wav", b"1")), ("file", ("b.wav", b"2"))], "data": {"model": MODEL}},
            "invalid_form",
        ),
    ],
)
def test_malformed_requests(client: TestClient, kwargs: dict, code: str) -> None:
    r = client.post("/v1/audio/transcriptions", **kwargs)
    assert r.status_code == 400
    assert _assert_envelope(r.json())["code"] == code


def test_duplicate_field_400(client: TestClient) -> None:
    status, body = _post(client, {"model": [MODEL, MODEL_B]})
    assert status == 400 and body["error"]["param"] == "model"


def test_backpressure_503_retry_after(harness: Harness, client: TestClient) -> None:
    harness.handles[MODEL].busy = True
    r = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav_bytes())}, data={"model": MODEL})
    assert r.status_code == 503
    assert r.headers["retry-after"] == "2"
    err = _assert_envelope(r.json())
    assert err["type"] == "service_unavailable_error"


def test_request_over_the_kv_budget_is_503_retry_after() -> None:
    """The engine refuses at submission (EngineBusy): 503 + Retry-After, streamed or not, never a 500."""
    harness = Harness(make_settings(), kv_budget_tokens=20)  # 0.5 s needs 15 tokens, 2 s needs 35
    with TestClient(harness.app, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        short = c.post(
            "/v1/audio/transcriptions", files={"file": ("a.wav", wav_bytes(0.5))}, data={"model": MODEL}
        )
        assert short.status_code == 200 and short.json()["text"] == "w0"
        for stream in ("false", "true"):
            r = c.post(
                "/v1/audio/transcriptions",
                files={"file": ("a.wav", wav_bytes(2.0))},
                data={"model": MODEL, "stream": stream},
            )
            assert r.status_code == 503 and r.headers["retry-after"] == "2", r.text
            err = _assert_envelope(r.json())
            assert (err["type"], err["code"]) == ("service_unavailable_error", "model_busy")
            assert "KV" not in err["message"]  # the engine's words stay in the log
    assert [call["samples"] for call in harness.engines[MODEL].calls] == [8000]


@pytest.mark.parametrize("stream", ["false", "true"])
def test_full_engine_queue_is_503_then_recovers(stream: str) -> None:
    """max_batch 1 and no waiting line: while one request holds the slot, the next gets 503."""
    harness = Harness(make_settings(), max_batch=1, max_waiting=0)
    engine = harness.engines[MODEL]
    holder = engine.stream(np.zeros(16000, dtype=np.float32))  # submitted, holds the only slot
    assert engine.stats() == {"max_batch": 1, "active": 1, "waiting": 0}
    with TestClient(harness.app, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        post = {"files": {"file": ("a.wav", wav_bytes(2.0))}, "data": {"model": MODEL, "stream": stream}}
        r = c.post("/v1/audio/transcriptions", **post)
        assert r.status_code == 503 and r.headers["retry-after"] == "2", r.text
        assert _assert_envelope(r.json())["code"] == "model_busy"
        holder.close()  # frees the slot at once
        r = c.post("/v1/audio/transcriptions", **post)
        assert r.status_code == 200
        assert TWO_SECONDS in r.text
    assert engine.stats()["active"] == 0


def test_engine_failure_is_500_without_details(client: TestClient, harness: Harness) -> None:
    harness.engines[MODEL].fail_after = 0
    r = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav_bytes())}, data={"model": MODEL})
    assert r.status_code == 500
    err = _assert_envelope(r.json())
    assert err["type"] == "server_error"
    assert "secret" not in r.text and "libqwen" not in r.text


async def test_sdk_error_types(openai_client: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        await openai_client.audio.transcriptions.create(model="nope", file=("a.wav", wav_bytes()))
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e2:
        await openai_client.audio.transcriptions.create(model=MODEL, file=("a.wav", b"garbage!"))
    assert e2.value.param == "file"


def test_translations_400(client: TestClient) -> None:
    r = client.post("/v1/audio/translations", files={"file": ("a.wav", wav_bytes())}, data={"model": MODEL})
    assert r.status_code == 400
    assert _assert_envelope(r.json())["code"] == "unsupported_endpoint"


async def test_translations_sdk(openai_client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="not supported"):
        await openai_client.audio.translations.create(model=MODEL, file=("a.wav", wav_bytes()))


def test_unknown_route_and_method(client: TestClient) -> None:
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and _assert_envelope(r.json())["code"] == "unknown_url"
    r = client.get("/v1/audio/transcriptions")
    assert r.status_code == 405 and _assert_envelope(r.json())


def test_engine_time_header(client: TestClient) -> None:
    r = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav_bytes())}, data={"model": MODEL})
    assert float(r.headers["x-engine-time-ms"]) == pytest.approx(1.5)
