"""Word timestamps and subtitles through a real Ray Serve instance, with the openai SDK.

The "words" app serves the tiny forced aligner next to the 0.6B model; its answers
are compared with the Engine and the Aligner run in this process on the same
checkpoints (the same words and milliseconds), and SRT/VTT are read back
with real parsers. The tiny ASR model's random weights say little (with
English forced, a clip gives a word or two), so the aligner deployment is
also called through its handle with a real sentence. The main app runs
without an aligner: a word-level request there is a 400 that says how to
enable it (and its segments and cues stay the audio chunks: test_service.py).
"""

from __future__ import annotations

from typing import Any

import openai
import pytest
import srt
import webvtt

from qwen_serve.audio_decoding import decode_audio

from .conftest import MAX_NEW_TOKENS, SMALL, TOKEN, WORDS_APP, Service, wav

pytestmark = pytest.mark.e2e

MAX_LINE = 42
MAX_LINES = 2
MAX_CUE_S = 7.0


@pytest.fixture
def client(words_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{words_url}/v1", api_key=TOKEN, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def aligner(service: Service, tiny_aligner_dir: Any) -> Any:
    from qwen_serve.engine import Aligner
    from qwen_serve.settings import Settings

    precision = Settings.model_fields["precision"].default
    with Aligner(tiny_aligner_dir, threads=1, precision=precision) as a:
        yield a


def reference_words(engines: dict, aligner: Any, data: bytes) -> list[Any]:
    pcm = decode_audio(data)
    result = engines[SMALL].transcribe(pcm, language="English", max_new_tokens=MAX_NEW_TOKENS)
    return aligner.align_transcription(pcm, result)


def test_aligner_deployment_through_its_handle(words_url: str, aligner: Any) -> None:
    from ray import serve

    from qwen_serve.app import aligner_deployment_name

    text = "Hello there, this is a test of the aligner. 你好世界 and more words."
    pcm = decode_audio(wav(6.0, seed=2))
    chunks = [(0.0, 3.0, text[:43]), (3.0, 6.0, text[44:])]  # 9 words, then 4 characters + 3 words
    handle = serve.get_deployment_handle(aligner_deployment_name(), app_name=WORDS_APP)
    words = handle.align.remote(pcm, text, chunks, "English").result(timeout_s=120)
    truth = aligner.align_chunks(pcm, text, chunks, "English")
    assert len(words) == len(truth) == 16
    assert [(w.word, w.start, w.end, w.span) for w in words] == [
        (w.word, w.start, w.end, w.span) for w in truth
    ]
    assert all(text[w.span[0] : w.span[1]] == w.word for w in words)
    assert all(w.start >= 3.0 for w in words[9:])  # the second chunk's times are shifted by its start


def test_words_equal_the_engine_and_aligner(client: openai.OpenAI, engines: dict, aligner: Any) -> None:
    data = wav(4.0, seed=3)
    res = client.audio.transcriptions.create(
        model=SMALL,
        file=("clip.wav", data),
        language="en",
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    truth = reference_words(engines, aligner, data)
    assert truth, "the tiny model's transcript has words to align"
    words = res.words or []
    assert [(w.word, w.start, w.end) for w in words] == [(w.word, w.start, w.end) for w in truth]
    starts = [w.start for w in words]
    assert starts == sorted(starts)
    assert all(w.start <= w.end for w in words)
    position = 0
    for w in words:  # every word is a piece of the transcript, in order
        position = res.text.index(w.word, position) + len(w.word)
    assert res.segments and res.segments[0].start == words[0].start
    assert res.segments[-1].end == max(w.end for w in words)


def _check_cue(text: str, start: float, end: float, word_times: list[tuple[float, float]]) -> None:
    lines = text.split("\n")
    assert 1 <= len(lines) <= MAX_LINES, text
    for line in lines:
        assert len(line) <= MAX_LINE or " " not in line.strip(), line
    assert end - start <= MAX_CUE_S + 1e-6
    assert any(abs(start - a) < 2e-3 for a, _ in word_times), (start, word_times)
    assert any(abs(end - b) < 2e-3 for _, b in word_times), (end, word_times)


def test_srt_and_vtt_cues_from_words(client: openai.OpenAI, engines: dict, aligner: Any) -> None:
    data = wav(12.0, seed=5)
    truth = reference_words(engines, aligner, data)
    times = [(w.start, w.end) for w in truth]
    assert truth
    body = client.audio.transcriptions.create(
        model=SMALL, file=("clip.wav", data), language="en", response_format="srt"
    )
    cues = list(srt.parse(str(body)))
    assert cues
    previous_end = 0.0
    for cue in cues:
        start, end = cue.start.total_seconds(), cue.end.total_seconds()
        assert start >= previous_end - 1e-6  # in order, never overlapping
        previous_end = end
        _check_cue(cue.content, start, end, times)
    vtt_body = client.audio.transcriptions.create(
        model=SMALL, file=("clip.wav", data), language="en", response_format="vtt"
    )
    captions = webvtt.from_string(str(vtt_body)).captions
    assert [c.text for c in captions] == [c.content for c in cues]
    for c in captions:  # (webvtt-py's *_in_seconds are whole seconds)
        _check_cue(c.text, _seconds(c.start), _seconds(c.end), times)


def _seconds(stamp: str) -> float:
    h, m, s = stamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def test_stream_still_streams_text(client: openai.OpenAI) -> None:
    data = wav(2.0, seed=1)
    events = list(client.audio.transcriptions.create(model=SMALL, file=("clip.wav", data), stream=True))
    assert events and events[-1].type == "transcript.text.done"


def test_no_aligner_word_request_is_400(service: Service) -> None:
    client = openai.OpenAI(base_url=f"{service.base_url}/v1", api_key=TOKEN, max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.transcriptions.create(
            model=SMALL,
            file=("clip.wav", wav(1.0)),
            response_format="verbose_json",
            timestamp_granularities=["word"],
        )
    assert e.value.body["param"] == "timestamp_granularities"  # type: ignore[index]
    assert "turned off" in e.value.body["message"]  # type: ignore[index]
