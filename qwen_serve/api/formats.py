"""Response formats: a TranscriptResult as json, text, srt, vtt or verbose_json.

Segments are the audio chunks the engine transcribed one after another
(long audio is cut at quiet points); their times are the chunk boundaries.
There is no word-level timing.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Sequence

from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ..languages import to_response_language
from ..model.results import ResultSegment, TranscriptResult
from .protocol import (
    DurationUsage,
    InputTokenDetails,
    TextDeltaEvent,
    TextDoneEvent,
    TokenUsage,
    TranscriptionResponse,
    TranscriptionSegment,
    TranscriptionVerboseResponse,
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


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def verbose(result: TranscriptResult, language: str | None) -> TranscriptionVerboseResponse:
    segments = [
        TranscriptionSegment(
            id=i,
            seek=round(s.start * 100),
            start=round(s.start, 3),
            end=round(s.end, 3),
            text=s.text,
            tokens=list(s.token_ids),
            temperature=0.0,
            avg_logprob=0.0,
            compression_ratio=round(compression_ratio(s.text), 4),
            no_speech_prob=0.0,
        )
        for i, s in enumerate(result.segments)
    ]
    return TranscriptionVerboseResponse(
        language=to_response_language(result.language or language),
        duration=round(result.duration, 3),
        text=result.text,
        segments=segments,
        usage=DurationUsage(seconds=round(result.duration, 3)),
    )


def _timestamp(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _cues(segments: list[ResultSegment]) -> list[tuple[float, float, str]]:
    cues = []
    for seg in segments:
        text = re.sub(r"\n\s*\n+", "\n", seg.text.strip())  # a blank line would end the cue
        if text:
            cues.append((seg.start, max(seg.end, seg.start + 0.001), text))
    return cues


def to_srt(result: TranscriptResult) -> str:
    blocks = [
        f"{i}\n{_timestamp(a, ',')} --> {_timestamp(b, ',')}\n{text}\n"
        for i, (a, b, text) in enumerate(_cues(result.segments), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(result: TranscriptResult) -> str:
    out = ["WEBVTT\n"]
    for a, b, text in _cues(result.segments):
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        out.append(f"{_timestamp(a, '.')} --> {_timestamp(b, '.')}\n{text}\n")
    return "\n".join(out)


def render(
    result: TranscriptResult, response_format: str, language: str | None, granularities: Sequence[str] = ()
) -> Response:
    """The HTTP response for a finished transcription (`granularities`: verbose_json's
    timestamp_granularities[]; words are listed only when "word" is among them)."""
    headers = {"x-engine-time-ms": f"{result.engine_ms:.1f}"}
    if response_format == "text":
        return PlainTextResponse(result.text + "\n", headers=headers)
    if response_format == "srt":
        return PlainTextResponse(to_srt(result), headers=headers)
    if response_format == "vtt":
        return Response(to_vtt(result), media_type="text/vtt; charset=utf-8", headers=headers)
    if response_format == "verbose_json":
        return JSONResponse(verbose(result, language).model_dump(), headers=headers)
    body = TranscriptionResponse(text=result.text, usage=token_usage(result))
    return JSONResponse(body.model_dump(exclude_none=True), headers=headers)


# ---- server-sent events --------------------------------------------------------


def sse(data: str) -> str:
    return f"data: {data}\n\n"


def delta_event(text: str) -> str:
    return sse(TextDeltaEvent(delta=text).model_dump_json())


def done_event(result: TranscriptResult) -> str:
    return sse(TextDoneEvent(text=result.text, usage=token_usage(result)).model_dump_json())


def error_event(body: dict) -> str:
    return sse(json.dumps(body))


DONE = sse("[DONE]")
