"""HTTP routes only: each one hands off to the service or answers from the registry."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from .errors import APIError, bad_request
from .forms import FORM_OVERHEAD, limited_body, parse_transcription_form, read_form
from .protocol import (
    ErrorResponse,
    HealthResponse,
    ModelCard,
    ModelList,
    TranscriptionRequest,
    TranscriptionResponse,
    TranscriptionVerboseResponse,
)
from .service import TranscriptionService


def _multipart_schema() -> dict[str, Any]:
    """The form's OpenAPI schema (the body is parsed by hand, so FastAPI cannot infer it)."""
    schema = TranscriptionRequest.model_json_schema()
    properties = {"file": {"type": "string", "format": "binary", "description": "The audio file."}}
    properties.update(schema["properties"])
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["file", "model"], "properties": properties}
                }
            },
        }
    }


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 500, 503)
}


def build_router(service: TranscriptionService, authenticate: Any) -> APIRouter:
    router = APIRouter()
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authenticate)], responses=_ERRORS)

    @v1.post(
        "/audio/transcriptions",
        summary="Transcribe audio",
        response_model=TranscriptionResponse | TranscriptionVerboseResponse,
        openapi_extra=_multipart_schema(),
        responses={200: {"content": {"text/plain": {}, "text/vtt": {}, "text/event-stream": {}}}},
    )
    async def create_transcription(request: Request) -> Response:
        """OpenAI's `audio.transcriptions.create`: json, text, srt, vtt, verbose_json, or SSE with stream=true."""
        fields, upload = await read_form(request, service.settings.max_upload_bytes)
        req = parse_transcription_form(fields)
        return await service.transcribe(req, upload)

    @v1.post("/audio/translations", summary="Translate audio (not supported)", status_code=400)
    async def create_translation(request: Request) -> Response:
        """Always 400: Qwen3-ASR transcribes in the spoken language; it does not translate."""
        limit = service.settings.max_upload_bytes + FORM_OVERHEAD
        async for _ in limited_body(request.stream(), limit):  # read the upload so the client sees the answer
            pass
        raise bad_request(
            "Translation is not supported: the Qwen3-ASR models transcribe speech in the language spoken. "
            "Use POST /v1/audio/transcriptions.",
            code="unsupported_endpoint",
        )

    @v1.get("/models", response_model=ModelList, summary="List models")
    async def list_models() -> ModelList:
        """The model ids this server transcribes with."""
        return ModelList(data=[_card(service, m) for m in sorted(service.models)])

    @v1.get("/models/{model_id}", response_model=ModelCard, summary="Retrieve a model")
    async def retrieve_model(model_id: str) -> ModelCard:
        if model_id not in service.models:
            raise APIError(
                404, f"The model '{model_id}' does not exist.", param="model", code="model_not_found"
            )
        return _card(service, model_id)

    @router.get("/health", response_model=HealthResponse, summary="Liveness (no auth)")
    async def health() -> HealthResponse:
        return HealthResponse()

    router.include_router(v1)
    return router


def _card(service: TranscriptionService, model_id: str) -> ModelCard:
    info = service.models[model_id].info
    return ModelCard(id=info.id, created=info.created, owned_by=info.owned_by)
