"""Phrases and subtitle cues from word timestamps (api/subtitles.py, api/formats.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re

import numpy as np
import pytest
import srt
import webvtt

from qwen_serve.api import subtitles
from qwen_serve.api.formats import render, to_srt, to_vtt, token_offsets, verbose
from qwen_serve.api.subtitles import Phrase, cues, display_pieces, phrases, width
from qwen_serve.engine.alignment import split_words
from qwen_serve.model.results import ResultLogprob, ResultSegment, ResultWord, TranscriptResult

EN = (
    "Hello, world. This is a test of the subtitle layout, which should cut at sentence ends. "
    "Then it continues with a rather long sentence that has no commas at all and goes on and on "
    "until it must be cut somewhere sensible. Short one! Dr. Smith and J. K. Rowling arrived at 9:30 — "
    "right on time."
)
ZH = (
    "今天天气很好，我们去公园散步吧。公园里有很多人在跑步、打太极拳，还有小朋友在放风筝。"
    "我们用AI技术做了一个语音识别系统，它可以把长音频切成字幕，每一行都不会太长。"
)


def _words(
    text: str,
    language: str = "English",
    rate: float = 0.07,
    gap: float = 0.05,
    pauses: dict[int, float] | None = None,
) -> list[ResultWord]:
    """Words of text timed one after another: rate s per character, gap s between words."""
    out = []
    t = 0.0
    for i, w in enumerate(split_words(text, language)):
        t += (pauses or {}).get(i, 0.0)
        d = rate * len(w.cleaned) + 0.05
        out.append(ResultWord(text[w.span[0] : w.span[1]], round(t, 3), round(t + d, 3), w.span))
        t += d + gap
    return out


def _result(text: str, words: list[ResultWord]) -> TranscriptResult:
    end = words[-1].end if words else 1.0
    return TranscriptResult(
        text, "English", end, 10, 3, 8, [ResultSegment(0.0, end, text, [1, 2])], 1.0, words
    )


def _vtt_seconds(stamp: str) -> float:
    h, m, s = stamp.split(":")
    return round(int(h) * 3600 + int(m) * 60 + float(s), 3)


def _squash(s: str) -> str:
    return re.sub(r"\s+", "", s)


# ==== display pieces =================================================================


@pytest.mark.parametrize(
    ("text", "language", "pieces"),
    [
        ("Hello, world.", "English", ["Hello, ", "world."]),
        ("  (Yes.) «No» - maybe!  ", "French", ["  (Yes.) ", "«No» - ", "maybe!  "]),
        ("你好，世界。", "Chinese", ["你", "好，", "世", "界。"]),
        ("他说「你好」。", "Chinese", ["他", "说", "「你", "好」。"]),
        ("用AI做的", "Chinese", ["用", "AI", "做", "的"]),
    ],
)
def test_display_pieces(text: str, language: str, pieces: list[str]) -> None:
    got = display_pieces(text, _words(text, language))
    assert got == pieces
    assert "".join(got) == text


def test_display_pieces_rebuild_any_transcript() -> None:
    rng = np.random.default_rng(3)
    pool = list("abcXYZ019'.,!?-—「」（）。，《》 \t\n我们的AIé") + ["\u0301", "\u093f"]
    for _ in range(500):
        text = "".join(rng.choice(pool, size=int(rng.integers(0, 50))))
        words = _words(text, "Chinese")
        pieces = display_pieces(text, words)
        assert len(pieces) == len(words)
        if words:
            assert "".join(pieces) == text
        for w, p in zip(words, pieces, strict=True):
            assert w.word in p


# ==== verbose_json segments ==========================================================


def test_phrases_cut_at_sentence_ends_not_abbreviations() -> None:
    got = phrases(EN, _words(EN))
    assert [p.text for p in got] == [
        "Hello, world.",
        "This is a test of the subtitle layout, which should cut at sentence ends.",
        "Then it continues with a rather long sentence that has no commas at all and goes on and on "
        "until it must be cut somewhere sensible.",
        "Short one!",
        "Dr. Smith and J. K. Rowling arrived at 9:30 — right on time.",
    ]
    words = _words(EN)
    for p in got:
        assert (p.start, p.end) == (words[p.first].start, words[p.stop - 1].end)
    assert [p.first for p in got] == [0] + [p.stop for p in got[:-1]]  # consecutive


def test_phrases_cut_at_pauses() -> None:
    text = "so we waited and then it started to rain"
    words = _words(text, pauses={3: 0.5, 5: 0.9})  # 0.5 s before "then": no cut; 0.9 s before "it": cut
    assert [p.text for p in phrases(text, words)] == ["so we waited and then", "it started to rain"]


def test_long_sentence_is_cut_at_its_best_break() -> None:
    text = "word " * 40 + "and then, " + "word " * 40
    words = _words(text.strip(), rate=0.1)
    got = phrases(text.strip(), words, max_seconds=30.0)
    assert len(got) >= 2
    assert got[0].text.endswith("then,")  # the comma, not the middle of a run of words
    assert all(p.end - p.start <= 30.0 or p.stop - p.first == 1 for p in got)


def test_token_offsets() -> None:
    text = "Hello, wörld. Hi"
    tokens = [b"Hello", b",", b" w", b"\xc3", b"\xb6rld", b".", b"\n", b"zzz", b" Hi", b" "]
    # the halves of "ö" start together; a token not in the text stays where the last one ended
    assert token_offsets(text, tokens) == [0, 5, 7, 8, 8, 12, 13, 13, 14, 16]
    assert token_offsets("a b", [b"b", b"a"]) == [0, 0]  # "b" is not next: it stays at the start
    assert token_offsets("x", [b"x", b"\xff", b"\xe4"]) == [0, 1, 1]  # invalid bytes, a cut-off end


def test_verbose_phrase_avg_logprob() -> None:
    """Each phrase's avg_logprob is the mean of the tokens that begin in it."""
    words = _words(EN)
    got = phrases(EN, words)
    pieces = re.findall(r"\s*\S+", EN)  # tokens as the model spells them: leading space kept
    logprobs, at = [], 0
    for piece in pieces:
        start = EN.index(piece.strip(), at)
        at = start + len(piece.strip())
        k = max(i for i, p in enumerate(got) if words[p.first].span[0] <= start)
        logprobs.append(ResultLogprob(piece, -1.0 - k - 0.1 * (len(logprobs) % 2), list(piece.encode())))
    res = dataclasses.replace(_result(EN, words), logprobs=logprobs)
    want = []
    for k in range(len(got)):
        mine = [lp.logprob for lp in logprobs if round(-lp.logprob - 1.0) == k]
        want.append(sum(mine) / len(mine))
    assert [s.avg_logprob for s in verbose(res, None).segments] == pytest.approx(want, abs=1e-6)
    assert [s.avg_logprob for s in verbose(_result(EN, words), None).segments] == [0.0] * len(got)


def test_verbose_with_words() -> None:
    words = _words(EN)
    res = _result(EN, words)
    v = verbose(res, None, granularities=["word", "segment"])
    assert v.words is not None and [w.word for w in v.words] == [w.word for w in words]
    assert v.words[0].model_dump() == {"word": "Hello", "start": 0.0, "end": words[0].end}
    assert [s.text for s in v.segments][:2] == ["Hello, world.", phrases(EN, words)[1].text]
    assert [s.id for s in v.segments] == list(range(len(v.segments)))
    assert v.segments[1].seek == round(words[2].start * 100) and v.segments[1].tokens == []
    assert verbose(res, None, granularities=["segment"]).words is None
    body = json.loads(render(res, "verbose_json", None, ["segment"]).body)
    assert "words" not in body and len(body["segments"]) == 5
    body = json.loads(render(res, "verbose_json", None, ["word"]).body)
    assert body["words"][1] == {"word": "world", "start": words[1].start, "end": words[1].end}


def test_verbose_with_words_parses_as_the_sdk_model() -> None:
    from openai.types.audio import TranscriptionVerbose

    words = _words(EN)
    body = json.loads(render(_result(EN, words), "verbose_json", "English", ["word", "segment"]).body)
    parsed = TranscriptionVerbose.model_validate(body)
    assert parsed.words is not None and len(parsed.words) == len(words)
    assert (parsed.words[3].word, parsed.words[3].start, parsed.words[3].end) == (
        words[3].word,
        words[3].start,
        words[3].end,
    )
    assert parsed.segments is not None and parsed.segments[0].text == "Hello, world."


def test_verbose_word_granularity_with_nothing_said() -> None:
    res = TranscriptResult("", None, 0.4, 5, 1, 4, [ResultSegment(0.0, 0.4, "")], 0.0)
    v = verbose(res, None, granularities=["word"])
    assert v.words == [] and len(v.segments) == 1  # chunks as before


# ==== cues ===========================================================================


def _check_cues(text: str, words: list[ResultWord], got: list[Phrase]) -> None:
    assert got[0].first == 0 and got[-1].stop == len(words)
    prev_end, prev_stop = 0.0, 0
    for c in got:
        assert c.first == prev_stop < c.stop  # every word in exactly one cue, in order
        lines = c.text.split("\n")
        assert 1 <= len(lines) <= 2
        single = c.stop - c.first == 1
        assert all(width(line) <= 42 for line in lines) or single
        assert all(len(line) <= 42 for line in lines) or single
        assert c.end - c.start <= 7.0 or single
        assert words[c.first].start <= c.start <= c.end <= words[c.stop - 1].end  # never beyond its speech
        assert c.start >= prev_end  # in order, no overlap
        prev_end, prev_stop = c.end, c.stop
    assert _squash("".join(c.text for c in got)) == _squash(text)  # no text lost or added


def test_cues_respect_the_limits_on_random_speech() -> None:
    rng = np.random.default_rng(9)
    vocab = [
        "the", "a", "speech", "recognition", "model", "turns", "audio", "into", "text", "and", "every",
        "subtitle", "line", "must", "stay", "short", "extraordinarily,", "internationalization.", "well?",
        "yes!", "(maybe)", "«quote»", "don't", "e-mail", "42", "3.14",
    ]  # fmt: skip
    for _ in range(150):
        text = " ".join(rng.choice(vocab, size=int(rng.integers(1, 120))))
        pauses = {int(i): float(rng.choice([0.2, 0.6, 1.0, 2.0])) for i in rng.integers(0, 120, size=6)}
        words = _words(text, rate=float(rng.uniform(0.03, 0.12)), pauses=pauses)
        _check_cues(text, words, cues(text, words))


def test_cues_prefer_sentence_ends() -> None:
    text = "The first sentence is here. And the second one follows it right away, without a pause."
    got = cues(text, _words(text, rate=0.06))
    assert [c.text for c in got] == [
        "The first sentence is here.",
        "And the second one follows it right away,\nwithout a pause.",
    ]


def test_cues_cut_at_long_pauses_and_never_span_them() -> None:
    text = "yes I know. but wait"
    words = _words(text, pauses={3: 1.6})
    got = cues(text, words)
    assert [c.text for c in got] == ["yes I know.", "but wait"]
    assert got[0].end == words[2].end and got[1].start == words[3].start


def test_long_word_gets_a_cue_of_its_own() -> None:
    long = "Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch-station"
    text = f"We went to {long} today."
    got = cues(text, _words(text))
    _check_cues(text, _words(text), got)
    assert any(c.text == long for c in got)


def test_chinese_cues_wrap_without_spaces() -> None:
    words = _words(ZH, "Chinese", rate=0.18, gap=0.02)
    got = cues(ZH, words)
    _check_cues(ZH, words, got)
    for c in got:
        assert " " not in c.text
        assert all(len(line) <= 21 for line in c.text.split("\n"))  # wide characters count two columns
    assert "".join(c.text.replace("\n", "") for c in got) == ZH


def test_cues_stay_in_order_when_chunks_overlap() -> None:
    text = "first chunk ends here. second chunk starts early"
    words = _words(text)
    # the aligner of the second chunk put its first words before the end of the first chunk
    words[4:6] = [
        ResultWord(words[4].word, words[3].start - 0.3, words[3].start - 0.1, words[4].span),
        ResultWord(words[5].word, words[3].start - 0.1, words[3].end + 0.2, words[5].span),
    ]
    got = cues(text, words)
    for a, b in zip(got, got[1:], strict=False):
        assert a.end <= b.start
    assert all(c.start <= c.end for c in got)


# ==== SRT and VTT ====================================================================


def test_srt_and_vtt_from_words_parse_and_respect_the_limits() -> None:
    text = EN + " " + ZH
    words = _words(text, "Chinese")
    res = _result(text, words)
    expected = cues(text, words)
    subs = list(srt.parse(to_srt(res)))
    captions = webvtt.from_string(to_vtt(res)).captions
    assert len(subs) == len(captions) == len(expected) > 5
    for sub, cap, c in zip(subs, captions, expected, strict=True):
        assert sub.content == cap.text == c.text
        assert sub.start == dt.timedelta(seconds=c.start) and sub.end == dt.timedelta(seconds=c.end)
        assert (_vtt_seconds(cap.start), _vtt_seconds(cap.end)) == (c.start, c.end)
        assert len(sub.content.split("\n")) <= 2
        assert all(len(line) <= 42 for line in sub.content.split("\n"))
        assert (sub.end - sub.start).total_seconds() <= 7.0
    for a, b in zip(subs, subs[1:], strict=False):
        assert a.end <= b.start
    assert subs[0].start == dt.timedelta(seconds=words[0].start)
    assert subs[-1].end == dt.timedelta(seconds=words[-1].end)


def test_vtt_escapes_cue_text_from_words() -> None:
    text = "a < b & c"
    res = _result(text, _words(text))
    captions = webvtt.from_string(to_vtt(res)).captions
    assert "&lt;" in captions[0].raw_text and "&amp;" in captions[0].raw_text


def test_without_words_cues_are_chunks() -> None:
    res = TranscriptResult("one. two.", "English", 9.0, 1, 1, 1, [ResultSegment(0.0, 9.0, "one. two.")])
    subs = list(srt.parse(to_srt(res)))
    assert [(s.start.total_seconds(), s.end.total_seconds(), s.content) for s in subs] == [
        (0.0, 9.0, "one. two.")
    ]
    assert subtitles.cues("one. two.", []) == [] and phrases("x", []) == []
