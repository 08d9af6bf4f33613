"""The OpenAI contract end to end: real Serve, real Engine on tiny checkpoints, the official SDK."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import srt
import webvtt

from qwen_serve.audio_decoding import decode_audio

from .conftest import LARGE, MAX_NEW_TOKENS, SMALL, TOKEN, Service, wav

pytestmark = pytest.mark.e2e


def reference(
    engines: dict[str, Any], model_id: str, data: bytes, language: str | None = None, context: str = ""
) -> Any:
    pcm = decode_audio(data)
    return engines[model_id].transcribe(
        pcm, language=language, context=context, max_new_tokens=MAX_NEW_TOKENS
    )


@pytest.mark.parametrize("model_id", [SMALL, LARGE])
def test_json_equals_engine(client: openai.OpenAI, engines: dict, model_id: str) -> None:
    data = wav(2.0)
    res = client.audio.transcriptions.create(model=model_id, file=("clip.wav", data))
    truth = reference(engines, model_id, data)
    assert res.text == truth.text
    assert res.usage is not None and res.usage.type == "tokens"
    assert res.usage.input_tokens == truth.usage.input_tokens
    assert res.usage.output_tokens == truth.usage.output_tokens
    assert res.usage.total_tokens == truth.usage.input_tokens + truth.usage.output_tokens


def test_stream_equals_non_stream_and_engine(client: openai.OpenAI, engines: dict) -> None:
    data = wav(3.0, seed=1)
    events = list(client.audio.transcriptions.create(model=LARGE, file=("clip.wav", data), stream=True))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    done = events[-1]
    assert done.type == "transcript.text.done"
    assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * len(deltas)
    truth = reference(engines, LARGE, data)
    assert truth.text  # the tiny 1.7B checkpoint says something for this clip
    assert "".join(deltas) == done.text == truth.text
    assert done.text == client.audio.transcriptions.create(model=LARGE, file=("clip.wav", data)).text
    assert done.usage is not None and done.usage.type == "tokens"
    assert (done.usage.input_tokens, done.usage.output_tokens) == (
        truth.usage.input_tokens,
        truth.usage.output_tokens,
    )


def test_logprobs_equal_the_engine(client: openai.OpenAI, engines: dict) -> None:
    """include[]=logprobs through Serve, whole and streamed, against the engine's own."""
    data = wav(3.0, seed=1)
    pcm = decode_audio(data)
    truth = engines[LARGE].transcribe(pcm, max_new_tokens=MAX_NEW_TOKENS, logprobs=True)
    assert truth.text and truth.logprobs  # the tiny 1.7B checkpoint says something for this clip
    want = [(lp.token, lp.logprob, lp.bytes) for lp in truth.logprobs]
    res = client.audio.transcriptions.create(model=LARGE, file=("clip.wav", data), include=["logprobs"])
    assert res.text == truth.text and res.logprobs is not None
    got = [(lp.token, lp.logprob, [int(b) for b in lp.bytes or []]) for lp in res.logprobs]
    assert [(t, b) for t, _, b in got] == [(t, b) for t, _, b in want]
    assert [g[1] for g in got] == pytest.approx([w[1] for w in want], rel=1e-5, abs=1e-9)
    assert all(lp.logprob is not None and lp.logprob <= 0 for lp in res.logprobs)
    events = list(
        client.audio.transcriptions.create(
            model=LARGE, file=("clip.wav", data), stream=True, include=["logprobs"]
        )
    )
    done = events[-1]
    assert done.type == "transcript.text.done" and done.logprobs is not None
    streamed = [lp for e in events[:-1] if e.type == "transcript.text.delta" for lp in e.logprobs or []]
    assert [(lp.token, lp.logprob) for lp in streamed] == [(lp.token, lp.logprob) for lp in done.logprobs]
    assert [lp.token for lp in done.logprobs] == [w[0] for w in want]
    assert [lp.logprob for lp in done.logprobs] == pytest.approx([w[1] for w in want], rel=1e-5, abs=1e-9)


def test_stream_wire_ends_with_done(service: Service) -> None:
    r = httpx.post(
        f"{service.base_url}/v1/audio/transcriptions",
        headers={"Authorization": f"Bearer {TOKEN}"},
        files={"file": ("clip.wav", wav(1.0))},
        data={"model": LARGE, "stream": "true"},
        timeout=60,
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in r.text.split("\n\n") if b]
    assert blocks[-1] == "data: [DONE]"
    assert json.loads(blocks[-2][6:])["type"] == "transcript.text.done"


def test_text_srt_vtt_verbose(client: openai.OpenAI, engines: dict) -> None:
    data = wav(2.0, seed=2)
    truth = reference(engines, LARGE, data)
    text = client.audio.transcriptions.create(model=LARGE, file=("c.wav", data), response_format="text")
    assert text == truth.text + "\n"

    subs = list(
        srt.parse(
            client.audio.transcriptions.create(model=LARGE, file=("c.wav", data), response_format="srt")
        )
    )
    assert len(subs) == 1 and subs[0].start.total_seconds() == 0.0
    assert subs[0].end.total_seconds() == pytest.approx(2.0)

    vtt = client.audio.transcriptions.create(model=LARGE, file=("c.wav", data), response_format="vtt")
    captions = webvtt.from_string(vtt).captions
    assert len(captions) == 1 and captions[0].end == "00:00:02.000"

    verbose = client.audio.transcriptions.create(
        model=LARGE, file=("c.wav", data), response_format="verbose_json", timestamp_granularities=["segment"]
    )
    assert verbose.text == truth.text and verbose.duration == pytest.approx(2.0)
    assert verbose.language == (truth.language or "unknown").lower()
    assert verbose.segments is not None and len(verbose.segments) == len(truth.segments) == 1
    assert verbose.segments[0].tokens == truth.segments[0].token_ids
    # the chunk's mean log-probability, as the engine computes it when asked
    scored = engines[LARGE].transcribe(decode_audio(data), max_new_tokens=MAX_NEW_TOKENS, logprobs=True)
    mean = scored.segments[0].avg_logprob
    assert mean is not None and mean < 0 and verbose.segments[0].avg_logprob == pytest.approx(mean, abs=1e-6)
    assert verbose.usage is not None and verbose.usage.seconds == pytest.approx(2.0)


def test_language_and_prompt_are_used(client: openai.OpenAI, engines: dict) -> None:
    data = wav(2.0)
    res = client.audio.transcriptions.create(
        model=LARGE, file=("c.wav", data), language="en", prompt="Names: Qwen, Ray."
    )
    truth = reference(engines, LARGE, data, language="English", context="Names: Qwen, Ray.")
    assert res.text == truth.text
    assert res.usage is not None and res.usage.input_tokens == truth.usage.input_tokens
    plain = reference(engines, LARGE, data)
    assert truth.usage.input_tokens > plain.usage.input_tokens  # context and language are in the prompt
    assert [lang.code for lang in res.languages or []] == ["en"]
    # keywords follow the prompt in the context, one a line; one possible language is forced
    res = client.audio.transcriptions.create(
        model=LARGE, file=("c.wav", data), prompt="Names:", keywords=["Qwen", "Ray"], languages=["de"]
    )
    truth = reference(engines, LARGE, data, language="German", context="Names:\nQwen\nRay")
    assert res.text == truth.text
    assert res.usage is not None and res.usage.input_tokens == truth.usage.input_tokens
    assert [lang.code for lang in res.languages or []] == ["de"]


def test_other_containers(client: openai.OpenAI, engines: dict) -> None:
    import io

    import av

    pcm = decode_audio(wav(2.0))
    io_bytes = io.BytesIO()
    with av.open(io_bytes, "w", format="ipod") as out:  # M4A / AAC, named .bin: recognised by content
        stream = out.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame) + stream.encode(None):
            out.mux(packet)
    buf = io_bytes.getvalue()
    res = client.audio.transcriptions.create(model=LARGE, file=("upload.bin", buf))
    assert res.text == reference(engines, LARGE, buf).text


def test_models(client: openai.OpenAI) -> None:
    assert sorted(m.id for m in client.models.list().data) == [SMALL, LARGE]
    model = client.models.retrieve(SMALL)
    assert model.id == SMALL and model.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("whisper-1")


def test_health_and_docs(service: Service) -> None:
    assert httpx.get(f"{service.base_url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{service.base_url}/docs").status_code == 200
    assert "/v1/audio/transcriptions" in httpx.get(f"{service.base_url}/openapi.json").json()["paths"]


def _envelope(e: openai.APIStatusError) -> dict:
    body = e.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in e.response.text and ".py" not in e.response.text
    return body["error"]


def test_error_paths(client: openai.OpenAI, service: Service) -> None:
    data = wav(1.0)
    with pytest.raises(openai.AuthenticationError) as auth:
        client.with_options(api_key="sk-nope").audio.transcriptions.create(model=SMALL, file=("c.wav", data))
    assert _envelope(auth.value)["code"] == "invalid_api_key"

    with pytest.raises(openai.NotFoundError) as unknown:
        client.audio.transcriptions.create(model="whisper-1", file=("c.wav", data))
    assert _envelope(unknown.value)["param"] == "model"

    cases: list[tuple[dict, str]] = [
        ({"file": ("c.wav", b"definitely not audio" * 10)}, "file"),
        ({"file": ("c.wav", b"")}, "file"),
        ({"file": ("c.wav", wav(151.0, rate=8000, subtype="PCM_U8"))}, "file"),  # over max_audio_seconds=150
        ({"file": ("c.wav", data), "language": "xx"}, "language"),
        (
            {"file": ("c.wav", data), "response_format": "verbose_json", "timestamp_granularities": ["word"]},
            "timestamp_granularities",
        ),
        ({"file": ("c.wav", data), "include": ["logprobs"], "response_format": "verbose_json"}, "include"),
        ({"file": ("c.wav", data), "response_format": "diarized_json"}, "response_format"),
        ({"file": ("c.wav", data), "temperature": 3.0}, "temperature"),
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as bad:
            client.audio.transcriptions.create(model=SMALL, **kwargs)
        assert _envelope(bad.value)["param"] == param, kwargs

    with pytest.raises(openai.APIStatusError) as big:
        client.audio.transcriptions.create(model=SMALL, file=("c.wav", wav(70.0)))  # 2.2 MB > 2 MB
    assert big.value.status_code == 413 and _envelope(big.value)["code"] == "file_too_large"

    with pytest.raises(openai.BadRequestError) as translation:
        client.audio.translations.create(model=SMALL, file=("c.wav", data))
    assert _envelope(translation.value)["code"] == "unsupported_endpoint"

    r = httpx.get(f"{service.base_url}/v1/models")
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"


def test_both_models_at_once(service: Service, engines: dict) -> None:
    from openai import OpenAI

    results: dict[str, str] = {}
    errors: list[BaseException] = []
    data = wav(2.0)

    def run(model_id: str) -> None:
        try:
            c = OpenAI(base_url=f"{service.base_url}/v1", api_key="sk-e2e-other", max_retries=0, timeout=120)
            results[model_id] = c.audio.transcriptions.create(model=model_id, file=("c.wav", data)).text
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(m,)) for m in (SMALL, LARGE)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == {m: reference(engines, m, data).text for m in (SMALL, LARGE)}


def test_client_disconnect_mid_stream(service: Service, client: openai.OpenAI) -> None:
    with (
        httpx.Client(timeout=60) as http,
        http.stream(
            "POST",
            f"{service.base_url}/v1/audio/transcriptions",
            headers={"Authorization": f"Bearer {TOKEN}"},
            files={"file": ("c.wav", wav(30.0))},
            data={"model": LARGE, "stream": "true"},
        ) as r,
    ):
        assert r.status_code == 200
        next(r.iter_lines())  # the first event, then hang up
    # The replica is fine afterwards.
    assert client.audio.transcriptions.create(model=LARGE, file=("c.wav", wav(1.0))).usage is not None


def test_float_and_stereo_input(client: openai.OpenAI, engines: dict) -> None:
    import io

    import soundfile as sf

    pcm = decode_audio(wav(2.0))
    buf = io.BytesIO()
    sf.write(buf, np.stack([pcm, pcm], axis=1), 16000, format="WAV", subtype="FLOAT")
    res = client.audio.transcriptions.create(model=LARGE, file=("c.wav", buf.getvalue()))
    assert res.text == reference(engines, LARGE, buf.getvalue()).text


def test_long_audio_is_chunked_and_streamed(client: openai.OpenAI, engines: dict) -> None:
    """130 s: the engine cuts it at quiet points into three chunks; segments are those chunks."""
    data = wav(130.0, rate=8000, subtype="PCM_U8")  # 1 MB, under the 2 MB upload limit
    truth = reference(engines, LARGE, data)
    assert len(truth.segments) == 3
    verbose = client.audio.transcriptions.create(
        model=LARGE, file=("long.wav", data), response_format="verbose_json"
    )
    assert verbose.text == truth.text
    assert verbose.segments is not None
    assert [(s.start, s.end) for s in verbose.segments] == [
        (round(s.start, 3), round(s.end, 3)) for s in truth.segments
    ]
    assert verbose.segments[-1].end == pytest.approx(130.0, abs=0.01)
    events = list(client.audio.transcriptions.create(model=LARGE, file=("long.wav", data), stream=True))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert len(deltas) > 3 and "".join(deltas) == events[-1].text == truth.text
