"""Form decoding (the SDK's bracket encoding), language mapping, SRT/VTT rendering."""

from __future__ import annotations

import datetime as dt

import pytest
import srt
import webvtt

from qwen_serve.api.errors import APIError
from qwen_serve.api.formats import compression_ratio, languages, to_srt, to_vtt, verbose
from qwen_serve.api.forms import fields_to_dict, parse_transcription_form
from qwen_serve.languages import (
    ISO_TO_MODEL,
    SUPPORTED_LANGUAGES,
    LanguageError,
    forced_language,
    to_language_codes,
    to_model_language,
    to_response_language,
)
from qwen_serve.model.results import ResultSegment, TranscriptResult

# ---- forms --------------------------------------------------------------------


def test_sdk_encoding() -> None:
    fields = [
        ("model", "m"),
        ("timestamp_granularities[]", "segment"),
        ("timestamp_granularities[]", "word"),
        ("include[]", "logprobs"),
        ("chunking_strategy[type]", "server_vad"),
        ("chunking_strategy[threshold]", "0.5"),
        ("prompt", ""),
        ("stream", "false"),
    ]
    assert fields_to_dict(fields) == {
        "model": "m",
        "timestamp_granularities": ["segment", "word"],
        "include": ["logprobs"],
        "chunking_strategy": {"type": "server_vad", "threshold": "0.5"},
        "stream": "false",
    }


def test_lists_without_brackets() -> None:
    assert fields_to_dict([("include", "a"), ("include", "b")]) == {"include": ["a", "b"]}


def test_typed_values() -> None:
    req = parse_transcription_form(
        [("model", "m"), ("stream", "true"), ("temperature", "0.25"), ("language", "en")]
    )
    assert req.stream is True and req.temperature == 0.25 and req.language == "en"
    assert req.response_format == "json"


@pytest.mark.parametrize(
    "fields, param",
    [
        ([("model", "m"), ("nope", "1")], "nope"),
        ([], "model"),
        ([("model", "m"), ("temperature", "-0.1")], "temperature"),
        ([("model", "m"), ("model", "n")], "model"),
        ([("model", "m"), ("prompt", "x" * 4001)], "prompt"),
    ],
)
def test_form_errors_name_the_param(fields: list, param: str) -> None:
    with pytest.raises(APIError) as e:
        parse_transcription_form(fields)
    assert e.value.status == 400 and e.value.param == param


# ---- languages ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, name",
    [
        ("en", "English"),
        ("EN", "English"),
        ("en-US", "English"),
        ("zh_CN", "Chinese"),
        ("yue", "Cantonese"),
        ("tl", "Filipino"),
        ("fil", "Filipino"),
        ("English", "English"),
        ("ja", "Japanese"),
        ("mk", "Macedonian"),
    ],
)
def test_iso_codes(value: str, name: str) -> None:
    assert to_model_language(value, SUPPORTED_LANGUAGES) == name


def test_one_language_table() -> None:
    """The engine's names, the ingress's codes and the app builder's default come from one table."""
    from qwen_serve import app, languages
    from qwen_serve.engine import text

    assert text.SUPPORTED_LANGUAGES is languages.SUPPORTED_LANGUAGES
    assert app.SUPPORTED_LANGUAGES is languages.SUPPORTED_LANGUAGES
    assert set(ISO_TO_MODEL.values()) == set(SUPPORTED_LANGUAGES) and len(SUPPORTED_LANGUAGES) == 30
    assert all(len(code) in (2, 3) and code.islower() for code in ISO_TO_MODEL)


@pytest.mark.parametrize("value", ["xx", "klingon", "", "sw"])
def test_unsupported(value: str) -> None:
    with pytest.raises(LanguageError, match="Unsupported language"):
        to_model_language(value, SUPPORTED_LANGUAGES)


def test_restricted_to_the_model() -> None:
    with pytest.raises(LanguageError):
        to_model_language("ko", ["English", "Chinese"])


def test_response_language() -> None:
    assert to_response_language("English") == "english"
    assert to_response_language(None) == "unknown"


@pytest.mark.parametrize(
    "language, possible, name",
    [
        (None, [], None),  # the model detects it
        ("", [], None),
        ("de", [], "German"),
        (None, ["de"], "German"),
        (None, ["de", "de-AT", "German"], "German"),  # one language, however spelled
        ("de", ["en", "de"], "German"),
        ("tl", ["fil"], "Filipino"),
    ],
)
def test_forced_language(language: str | None, possible: list[str], name: str | None) -> None:
    assert forced_language(language, possible, SUPPORTED_LANGUAGES) == name


@pytest.mark.parametrize(
    "language, possible, param",
    [
        (None, ["en", "de"], "languages"),  # several cannot be enforced
        ("fr", ["en"], "languages"),  # not among the possible ones
        (None, ["xx"], "languages"),
        ("xx", [], "language"),
        ("ko", ["ko"], "languages"),  # the model below lacks it: the list's entry is at fault first
    ],
)
def test_forced_language_refusals(language: str | None, possible: list[str], param: str) -> None:
    with pytest.raises(LanguageError) as e:
        forced_language(language, possible, ["English", "German", "French"])
    assert e.value.param == param


def test_language_codes() -> None:
    assert to_language_codes("English") == ["en"]
    assert to_language_codes("Chinese,English,Chinese") == ["zh", "en"]  # long audio, chunks differ
    assert to_language_codes("Cantonese") == ["yue"] and to_language_codes("Filipino") == ["fil"]
    assert to_language_codes(None) == [] and to_language_codes("") == []
    assert to_language_codes("Klingon") == []  # a checkpoint's own language without a code
    silent = TranscriptResult("", None, 0.4, 5, 1, 4, [ResultSegment(0.0, 0.4, "")], 0.0)
    assert languages(silent) == []


# ---- srt / vtt / verbose ------------------------------------------------------------


def _result(segments: list[tuple[float, float, str]]) -> TranscriptResult:
    segs = [ResultSegment(a, b, t, [1, 2]) for a, b, t in segments]
    return TranscriptResult(
        " ".join(t for _, _, t in segments), "English", segments[-1][1], 10, 3, 8, segs, 1.0
    )


def test_srt_roundtrip_long_times() -> None:
    res = _result(
        [
            (0.0, 59.9871, "first <b> & --> part"),
            (59.9871, 3725.5, "second\n\nparagraph"),
            (3725.5, 3726.0, ""),
        ]
    )
    subs = list(srt.parse(to_srt(res)))
    assert len(subs) == 2  # the empty chunk has no cue
    assert subs[0].content == "first <b> & --> part"
    assert subs[0].end == dt.timedelta(seconds=59.987)
    assert subs[1].start == dt.timedelta(seconds=59.987)
    assert subs[1].end == dt.timedelta(hours=1, minutes=2, seconds=5.5)
    assert subs[1].content == "second\nparagraph"


def test_vtt_roundtrip() -> None:
    res = _result([(0.0, 1.25, "a < b & c"), (1.25, 3661.0, "日本語のテキスト")])
    captions = webvtt.from_string(to_vtt(res)).captions
    assert [(c.start, c.end) for c in captions] == [
        ("00:00:00.000", "00:00:01.250"),
        ("00:00:01.250", "01:01:01.000"),
    ]
    assert captions[1].text == "日本語のテキスト"
    assert "&amp;" in captions[0].raw_text


def test_empty_result_formats() -> None:
    res = TranscriptResult("", None, 0.4, 5, 1, 4, [ResultSegment(0.0, 0.4, "")], 0.0)
    assert to_srt(res) == ""
    assert webvtt.from_string(to_vtt(res)).captions == []
    v = verbose(res, None)
    assert v.language == "unknown" and v.text == "" and len(v.segments) == 1


def test_verbose_uses_requested_language_when_model_gives_none() -> None:
    res = TranscriptResult("x", None, 1.0, 5, 1, 4, [ResultSegment(0.0, 1.0, "x")], 0.0)
    assert verbose(res, "German").language == "german"


def test_compression_ratio() -> None:
    assert compression_ratio("") == 0.0
    assert compression_ratio("ab" * 200) > 10 > compression_ratio("the quick brown fox")
