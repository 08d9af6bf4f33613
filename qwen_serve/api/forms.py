"""Multipart form parsing with limits: bounded memory, no temporary files, early 413.

The body is read through a counter that stops at the upload limit (plus room
for the other fields), so an oversized upload is refused while it arrives,
Content-Length or not. The file part is kept in memory (Starlette's spool
never rolls over to disk below its size). Field names follow the SDK's
encoding: `name[]` repeated for lists, `name[key]` for objects.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from .errors import APIError, bad_request
from .protocol import TranscriptionRequest

FORM_OVERHEAD = 1024 * 1024
"""Bytes allowed on top of the upload limit for boundaries, headers and the other fields."""
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 64

_LIST_FIELDS = {name for name, f in TranscriptionRequest.model_fields.items() if f.annotation == list[str]}


@dataclass(frozen=True)
class Upload:
    filename: str | None
    content_type: str | None
    data: bytes


def too_large(limit: int) -> APIError:
    mb = limit / (1024 * 1024)
    return APIError(
        413,
        f"Maximum content size limit ({limit} bytes, {mb:g} MB) exceeded.",
        param="file",
        code="file_too_large",
    )


class _InMemoryParser(MultiPartParser):
    def __init__(self, *args: Any, spool_size: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.spool_max_size = spool_size  # never spill the upload to a temporary file


async def limited_body(stream: AsyncIterator[bytes], limit: int) -> AsyncGenerator[bytes, None]:
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise too_large(limit - FORM_OVERHEAD)
        yield chunk


async def read_form(request: Request, max_upload: int) -> tuple[list[tuple[str, str]], Upload]:
    """The text fields and the single `file` part of a multipart request."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise bad_request(
            "The request must be multipart/form-data with a 'file' part.", code="invalid_content_type"
        )
    body_limit = max_upload + FORM_OVERHEAD
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > body_limit:
        raise too_large(max_upload)
    parser = _InMemoryParser(
        request.headers,
        limited_body(request.stream(), body_limit),
        max_files=1,
        max_fields=MAX_FIELDS,
        max_part_size=MAX_FIELD_BYTES,
        spool_size=body_limit + 1,
    )
    try:
        form = await parser.parse()
    except MultiPartException as e:
        msg = str(e)
        if "files" in msg:
            msg = "Only one file may be uploaded, in the 'file' field."
        raise bad_request(f"Malformed multipart form: {msg}", code="invalid_form") from None
    try:
        fields: list[tuple[str, str]] = []
        upload: Upload | None = None
        for key, value in form.multi_items():
            if isinstance(value, str):
                fields.append((key, value))
            elif key != "file":
                raise bad_request(f"Unexpected file in field '{key}'; upload the audio as 'file'.", param=key)
            else:
                upload = await _read_upload(value, max_upload)
    finally:
        await form.close()
    if upload is None:
        raise bad_request("The 'file' field is required.", param="file", code="missing_file")
    return fields, upload


async def _read_upload(file: UploadFile, max_upload: int) -> Upload:
    data = await file.read()
    if len(data) > max_upload:
        raise too_large(max_upload)
    return Upload(filename=file.filename, content_type=file.content_type, data=data)


_BRACKETS = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\[([A-Za-z0-9_]*)\]$")


def fields_to_dict(fields: list[tuple[str, str]]) -> dict[str, Any]:
    """SDK form encoding -> plain values: `a[]` repeated -> list, `a[k]` -> dict, "" -> absent."""
    out: dict[str, Any] = {}
    for key, value in fields:
        m = _BRACKETS.match(key)
        if m and m[2] == "":
            out.setdefault(m[1], [])
            if not isinstance(out[m[1]], list):
                raise bad_request(f"Field '{m[1]}' is given twice.", param=m[1])
            if value != "":
                out[m[1]].append(value)
        elif m:
            obj = out.setdefault(m[1], {})
            if not isinstance(obj, dict):
                raise bad_request(f"Field '{m[1]}' is given twice.", param=m[1])
            obj[m[2]] = value
        elif key in out:
            if key in _LIST_FIELDS and isinstance(out[key], list):
                out[key].append(value)
            else:
                raise bad_request(f"Field '{key}' is given more than once.", param=key)
        elif value == "":
            continue  # the SDK sends None as an empty string
        else:
            out[key] = [value] if key in _LIST_FIELDS else value
    return out


def parse_transcription_form(fields: list[tuple[str, str]]) -> TranscriptionRequest:
    """Validates the text fields; a bad one is a 400 naming it in `param`."""
    values = fields_to_dict(fields)
    try:
        return TranscriptionRequest.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        param = str(err["loc"][0]) if err["loc"] else None
        if err["type"] == "extra_forbidden":
            raise bad_request(f"Unrecognized request argument supplied: {param}", param=param) from None
        if err["type"] == "missing":
            raise bad_request(f"Missing required parameter: '{param}'.", param=param) from None
        raise bad_request(f"Invalid value for '{param}': {err['msg']}.", param=param) from None
