"""Response formats: a TranscriptResult as json, text, srt, vtt or verbose_json.

With word timestamps (`result.words`, from the forced aligner), verbose_json
segments are phrases (cut at sentence ends and pauses), `words` lists every
word when asked for, and SRT/VTT cues are laid out from the words as
subtitle tools do (api/subtitles.py). Without them, segments and cues are
the audio chunks the engine transcribed one after another (long audio is
cut at quiet points), timed by the chunk boundaries.
"""

from __future__ import annotations

import bisect
import json
import re
import zlib
from collections.abc import Collection, Sequence

from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ..languages import to_language_codes, to_response_language
from ..model.results import ResultLogprob, ResultSegment, TranscriptResult
from . import subtitles
from .protocol import (
    DurationUsage,
    InputTokenDetails,
    Language,
    Logprob,
    TextDeltaEvent,
    TextDoneEvent,
    TokenUsage,
    TranscriptionResponse,
    TranscriptionSegment,
    TranscriptionVerboseResponse,
    TranscriptionWord,
)


def token_usage(result: TranscriptResult) -> TokenUsage:
    return TokenUsage(
        input_tokens=result.input_tokens,
        output_tokens=result.output_tokens,
        total_tokens=result.total_tokens,
        input_token_details=InputTokenDetails(
            audio_tokens=result.audio_tokens, text_tokens=result.input_tokens - result.audio_tokens
        ),
    )


def languages(result: TranscriptResult) -> list[Language]:
    """OpenAI's `languages`: the language the model named (or was given), [] for none."""
    return [Language(code=code) for code in to_language_codes(result.language)]


def logprobs(items: list[ResultLogprob] | None) -> list[Logprob] | None:
    return (
        None if items is None else [Logprob(token=i.token, logprob=i.logprob, bytes=i.bytes) for i in items]
    )


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def token_offsets(text: str, tokens: Sequence[bytes]) -> list[int]:
    """Where each token (its bytes, in order, as the model spelled the transcript) starts in
    `text`. Tokens that end inside a character go with the next; one not next in the text (past
    whitespace: text the repetition fix took out) is put where the previous one ended."""
    out: list[int] = []
    cursor = 0
    pending = 0  # tokens waiting for the rest of a character
    buf = b""
    for i, data in enumerate(tokens):
        buf += data
        pending += 1
        try:
            piece = buf.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            if e.reason == "unexpected end of data" and i + 1 < len(tokens):
                continue
            piece = buf.decode("utf-8", errors="replace").strip()
        at = text.find(piece, cursor) if piece else -1
        if at >= 0 and not text[cursor:at].strip():
            out += [at] * pending
            cursor = at + len(piece)
        else:
            out += [cursor] * pending
        pending, buf = 0, b""
    return out


def phrase_logprobs(result: TranscriptResult, phrases: Sequence[subtitles.Phrase]) -> list[float]:
    """The mean log-probability of the transcript tokens that start in each phrase (the first
    phrase from the text's start, each up to the next one's first word); 0.0 without logprobs."""
    if not result.logprobs or not phrases:
        return [0.0] * len(phrases)
    starts = [result.words[p.first].span[0] for p in phrases][1:]
    groups: list[list[float]] = [[] for _ in phrases]
    offsets = token_offsets(result.text, [bytes(lp.bytes) for lp in result.logprobs])
    for at, lp in zip(offsets, result.logprobs, strict=True):
        groups[bisect.bisect_right(starts, at)].append(lp.logprob)
    return [sum(g) / len(g) if g else 0.0 for g in groups]


def _segment(
    i: int, start: float, end: float, text: str, tokens: list[int], avg_logprob: float | None
) -> TranscriptionSegment:
    return TranscriptionSegment(
        id=i,
        seek=round(start * 100),
        start=round(start, 3),
        end=round(end, 3),
        text=text,
        tokens=tokens,
        temperature=0.0,
        avg_logprob=round(avg_logprob or 0.0, 6),
        compression_ratio=round(compression_ratio(text), 4),
        no_speech_prob=0.0,
    )


def verbose(
    result: TranscriptResult, language: str | None, granularities: Collection[str] = ()
) -> TranscriptionVerboseResponse:
    """verbose_json: segments are phrases when the result has words, else audio chunks;
    `words` is listed when "word" is among the requested granularities."""
    if result.words:
        phrases = subtitles.phrases(result.text, result.words)
        means = phrase_logprobs(result, phrases)
        segments = [_segment(i, p.start, p.end, p.text, [], means[i]) for i, p in enumerate(phrases)]
    else:
        segments = [
            _segment(i, s.start, s.end, s.text, list(s.token_ids), s.avg_logprob)
            for i, s in enumerate(result.segments)
        ]
    words = None
    if "word" in granularities:
        words = [
            TranscriptionWord(word=w.word, start=round(w.start, 3), end=round(w.end, 3)) for w in result.words
        ]
    return TranscriptionVerboseResponse(
        language=to_response_language(result.language or language),
        duration=round(result.duration, 3),
        text=result.text,
        segments=segments,
        words=words,
        usage=DurationUsage(seconds=round(result.duration, 3)),
    )


def _timestamp(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _chunk_cues(segments: list[ResultSegment]) -> list[tuple[float, float, str]]:
    cues = []
    for seg in segments:
        text = re.sub(r"\n\s*\n+", "\n", seg.text.strip())  # a blank line would end the cue
        if text:
            cues.append((seg.start, max(seg.end, seg.start + 0.001), text))
    return cues


def _cues(result: TranscriptResult) -> list[tuple[float, float, str]]:
    """(start, end, text) of each cue: laid out from the words when there are any, else one per chunk."""
    if result.words:
        return [(c.start, c.end, c.text) for c in subtitles.cues(result.text, result.words)]
    return _chunk_cues(result.segments)


def to_srt(result: TranscriptResult) -> str:
    blocks = [
        f"{i}\n{_timestamp(a, ',')} --> {_timestamp(b, ',')}\n{text}\n"
        for i, (a, b, text) in enumerate(_cues(result), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(result: TranscriptResult) -> str:
    out = ["WEBVTT\n"]
    for a, b, text in _cues(result):
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        out.append(f"{_timestamp(a, '.')} --> {_timestamp(b, '.')}\n{text}\n")
    return "\n".join(out)


def render(
    result: TranscriptResult, response_format: str, language: str | None, granularities: Collection[str] = ()
) -> Response:
    """The HTTP response for a finished transcription (granularities: `timestamp_granularities[]`)."""
    headers = {"x-engine-time-ms": f"{result.engine_ms:.1f}"}
    if response_format == "text":
        return PlainTextResponse(result.text + "\n", headers=headers)
    if response_format == "srt":
        return PlainTextResponse(to_srt(result), headers=headers)
    if response_format == "vtt":
        return Response(to_vtt(result), media_type="text/vtt; charset=utf-8", headers=headers)
    if response_format == "verbose_json":
        return JSONResponse(
            verbose(result, language, granularities).model_dump(exclude_none=True), headers=headers
        )
    body = TranscriptionResponse(
        text=result.text,
        languages=languages(result),
        logprobs=logprobs(result.logprobs),
        usage=token_usage(result),
    )
    return JSONResponse(body.model_dump(exclude_none=True), headers=headers)


# ---- server-sent events --------------------------------------------------------


def sse(data: str) -> str:
    return f"data: {data}\n\n"


def delta_event(text: str, items: list[ResultLogprob] | None = None) -> str:
    return sse(TextDeltaEvent(delta=text, logprobs=logprobs(items)).model_dump_json(exclude_none=True))


def done_event(result: TranscriptResult) -> str:
    event = TextDoneEvent(
        text=result.text,
        languages=languages(result),
        logprobs=logprobs(result.logprobs),
        usage=token_usage(result),
    )
    return sse(event.model_dump_json(exclude_none=True))


def error_event(body: dict) -> str:
    return sse(json.dumps(body))


DONE = sse("[DONE]")
