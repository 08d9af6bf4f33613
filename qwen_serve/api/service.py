"""The transcription logic behind the routes: validate, decode, route, respond.

Order of checks (cheapest first, and nothing wakes a model that is scaled to
zero until the request is known to be good): form fields and unsupported
options -> model id -> language and context -> audio decoding (in a worker thread) ->
the model's backend. Streaming waits for the model to accept the request
before the 200 goes out, so backpressure and start-up failures are still
proper HTTP errors; anything after that travels as an SSE error event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Mapping

import numpy as np
from fastapi import Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..audio_decoding import SAMPLE_RATE, AudioError, AudioTooLongError, decode_audio
from ..languages import LanguageError, forced_language
from ..model.results import AlignmentUnsupported, StreamItem, TextDelta, TranscriptResult
from ..settings import ALIGNER_ID, Settings
from . import access, formats
from .backend import AlignerBackend, ModelBusyError, ModelUnavailableError, ServedModel
from .errors import APIError, bad_request, internal_error
from .forms import Upload
from .protocol import TranscriptionRequest, model_context

logger = logging.getLogger("ray.serve")

RETRY_AFTER_BUSY_S = 2
RETRY_AFTER_UNAVAILABLE_S = 10


TIMED_FORMATS = ("verbose_json", "srt", "vtt")
"""Response formats whose segments or cues come from aligned words when the aligner is there."""


class TranscriptionService:
    def __init__(
        self,
        settings: Settings,
        models: Mapping[str, ServedModel],
        unavailable: Mapping[str, str],
        aligner: AlignerBackend | None = None,
        aligner_missing: str = "",
    ):
        self.settings = settings
        self.models = dict(models)
        self.unavailable = dict(unavailable)
        self.aligner = aligner
        self.aligner_missing = aligner_missing or "Word timestamps are not available on this server."

    # ---- checks ----------------------------------------------------------------
    def model(self, model_id: str) -> ServedModel:
        served = self.models.get(model_id)
        if served is not None:
            return served
        if model_id in self.unavailable:
            raise APIError(
                503,
                f"The model '{model_id}' is configured but its checkpoint is not installed on this server. "
                f"{self.unavailable[model_id]}",
                code="model_not_installed",
                headers={"x-should-retry": "false"},
            )
        raise APIError(
            404,
            f"The model '{model_id}' does not exist. Available models: {', '.join(sorted(self.models)) or 'none'}.",
            param="model",
            code="model_not_found",
        )

    def check_supported(self, req: TranscriptionRequest) -> None:
        """Options the SDK can send that would change the answer and that we cannot honour: 400."""
        if req.response_format == "diarized_json":
            raise bad_request(
                "response_format 'diarized_json' is not supported: Qwen3-ASR does not identify speakers.",
                param="response_format",
                code="unsupported_value",
            )
        for item in req.include:
            if item != "logprobs":
                raise bad_request(
                    f"Invalid value for 'include': '{item}' (use 'logprobs').",
                    param="include",
                    code="unsupported_value",
                )
        if req.include and req.response_format != "json":
            raise bad_request(
                "include[]=logprobs requires response_format=json.", param="include", code="unsupported_value"
            )
        if req.known_speaker_names or req.known_speaker_references:
            param = "known_speaker_names" if req.known_speaker_names else "known_speaker_references"
            raise bad_request(f"{param}[] is not supported: there is no diarization.", param=param)
        if isinstance(req.chunking_strategy, dict):
            raise bad_request(
                "chunking_strategy server_vad is not supported: long audio is always cut at quiet points. "
                "Send 'auto' or leave it out.",
                param="chunking_strategy",
                code="unsupported_value",
            )
        for granularity in req.timestamp_granularities:
            if granularity not in ("segment", "word"):
                raise bad_request(
                    f"Invalid value for 'timestamp_granularities': '{granularity}' (use 'segment').",
                    param="timestamp_granularities",
                )
        if "word" in req.timestamp_granularities and self.aligner is None:
            raise bad_request(
                f"{self.aligner_missing} Without it, segment timestamps are the boundaries of the audio "
                "chunks: use timestamp_granularities[]=segment.",
                param="timestamp_granularities",
                code="unsupported_value",
            )
        if req.timestamp_granularities and req.response_format != "verbose_json":
            raise bad_request(
                "timestamp_granularities[] requires response_format=verbose_json.",
                param="timestamp_granularities",
            )
        if req.stream and req.response_format not in ("json", "text"):
            raise bad_request(
                f"stream=true is supported with response_format json or text, not '{req.response_format}'.",
                param="stream",
                code="unsupported_value",
            )

    async def decode(self, upload: Upload) -> np.ndarray:
        try:
            return await run_in_threadpool(
                decode_audio, upload.data, max_seconds=self.settings.max_audio_seconds
            )
        except AudioTooLongError as e:
            raise bad_request(str(e), param="file", code=e.code) from None
        except AudioError as e:
            raise bad_request(str(e), param="file", code=e.code) from None

    # ---- the request -------------------------------------------------------------
    async def transcribe(self, req: TranscriptionRequest, upload: Upload) -> Response:
        self.check_supported(req)
        served = self.model(req.model)
        access.note(model=served.info.id, stream=req.stream)
        try:
            language = forced_language(req.language, req.languages, served.info.languages)
        except LanguageError as e:
            raise bad_request(str(e), param=e.param, code="unsupported_language") from None
        try:
            context = model_context(req.prompt, req.keywords)
        except ValueError as e:
            raise bad_request(str(e), param="keywords") from None
        pcm = await self.decode(upload)
        access.note(audio_seconds=pcm.size / SAMPLE_RATE)
        logprobs = "logprobs" in req.include or req.response_format == "verbose_json"  # avg_logprob
        if req.stream:
            return await self._stream(served, pcm, language, context, logprobs)
        try:
            result = await served.backend.transcribe(pcm, language, context, logprobs)
        except Exception as e:
            raise self._failure(req.model, e) from None
        if self.aligner is not None and req.response_format in TIMED_FORMATS:
            result = await self._with_words(result, pcm, language)
        return formats.render(result, req.response_format, language, req.timestamp_granularities)

    async def _with_words(
        self, result: TranscriptResult, pcm: np.ndarray, language: str | None
    ) -> TranscriptResult:
        """The result with its words aligned by the forced aligner (segments and cues are cut from them)."""
        assert self.aligner is not None
        chunks = [(s.start, s.end, s.text) for s in result.segments if s.text.strip()]
        if not chunks:
            return dataclasses.replace(result, words=[])
        try:
            words = await self.aligner.align(pcm, result.text, chunks, result.language or language)
        except AlignmentUnsupported as e:
            raise bad_request(
                f"No word timestamps for this transcript: {e}", param="timestamp_granularities"
            ) from None
        except Exception as e:
            raise self._failure(ALIGNER_ID, e) from None
        return dataclasses.replace(result, words=words)

    async def _stream(
        self, served: ServedModel, pcm: np.ndarray, language: str | None, context: str, logprobs: bool
    ) -> Response:
        items: AsyncIterator[StreamItem] = served.backend.stream(pcm, language, context, (), logprobs)
        model_id = served.info.id
        try:
            await items.__anext__()  # StreamStarted: a replica has the request
        except Exception as e:
            await _close(items)
            raise self._failure(model_id, e) from None
        except BaseException:  # cancelled: the client went away while waiting for a replica
            await _close(items)
            raise

        async def events() -> AsyncIterator[str]:
            try:
                result: TranscriptResult | None = None
                async for item in items:
                    if isinstance(item, TextDelta):
                        access.first_delta()
                        yield formats.delta_event(item.text, item.logprobs)
                    elif isinstance(item, TranscriptResult):
                        result = item
                if result is None:
                    raise RuntimeError("the model stream ended without a result")
                yield formats.done_event(result)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                failure = self._failure(model_id, e)
                access.stream_failed(failure.status)
                yield formats.error_event(failure.body().model_dump())
            finally:
                await _close(items)
            yield formats.DONE

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    def _failure(self, model_id: str, error: Exception) -> APIError:
        """A backend exception as the client sees it (details only in the log)."""
        if isinstance(error, APIError):
            return error
        if isinstance(error, ModelBusyError):
            return APIError(
                503,
                f"The model '{model_id}' is busy: too many requests are waiting. Retry shortly.",
                code="model_busy",
                headers={"Retry-After": str(RETRY_AFTER_BUSY_S)},
            )
        if isinstance(error, ModelUnavailableError):
            logger.warning("model %s unavailable (%s)", model_id, type(error.__cause__).__name__)
            return APIError(
                503,
                f"The model '{model_id}' is unavailable right now.",
                code="model_unavailable",
                headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S)},
            )
        logger.error("transcription with %s failed", model_id, exc_info=error)
        return internal_error()


async def _close(items: AsyncIterator[StreamItem]) -> None:
    aclose = getattr(items, "aclose", None)
    if aclose is not None:
        await aclose()
