"""Errors leave the service in one shape: OpenAI's `{"error": {message, type, param, code}}`.

Handlers registered by `install_error_handlers` turn our `APIError`, FastAPI's
validation errors, Starlette's HTTP errors (404 route, 405 method) and any
unexpected exception into that envelope. Unexpected exceptions are logged
here and reach the client as a bare 500 without details, stack traces or
paths. A client that went away (Serve cancelled the request, or the upload
was cut) is not one: the access log reports it (499), nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .access import CLIENT_GONE, client_gone
from .protocol import ErrorDetail, ErrorResponse

logger = logging.getLogger("ray.serve")

_TYPE_BY_STATUS = {
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


class APIError(Exception):
    """An error for the client: status, message and the envelope's type/param/code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPE_BY_STATUS.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        )

    def response(self) -> JSONResponse:
        return JSONResponse(self.body().model_dump(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def internal_error() -> APIError:
    return APIError(500, "The server had an error while processing your request.", code="internal_error")


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return exc.response()

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
        param = ".".join(loc) or None
        message = (
            f"Invalid value for '{param}': {first.get('msg', 'invalid')}" if param else "Invalid request."
        )
        return bad_request(message, param=param).response()

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}."
            err = APIError(404, message, code="unknown_url")
        elif exc.status_code == 405:
            err = APIError(405, f"Method {request.method} is not allowed on {request.url.path}.")
        else:
            err = APIError(exc.status_code, str(exc.detail))
        err.headers.update(exc.headers or {})
        return err.response()

    async def on_client_gone(request: Request, exc: Exception) -> JSONResponse:
        return APIError(CLIENT_GONE, "The client closed the request.").response()  # nobody reads it

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        if client_gone(exc):
            return await on_client_gone(request, exc)
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return internal_error().response()

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    # A cut upload (ClientDisconnect from the form parser, always before a response starts) gets
    # its own handler: Starlette hands those of a class to the inner exception middleware, which
    # answers and is done. The catch-all `Exception` handler runs in the outermost middleware, which
    # answers and then raises the error again, and Serve logs that as "Request failed." at ERROR.
    # Not Ray's TaskCancelledError: it also comes out of a stream already answering, where only the
    # outer middleware may see it (the inner one fails with "response already started").
    from starlette.requests import ClientDisconnect

    app.add_exception_handler(ClientDisconnect, on_client_gone)
    app.add_exception_handler(Exception, on_unexpected)
