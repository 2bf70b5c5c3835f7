"""One error envelope for every service: `{"error", "message", "details", "request_id"}`."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from urllib3.exceptions import HTTPError as StorageConnectionError

from servicekit.logs import request_id_var

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error that knows its HTTP status and its machine-readable code."""

    status: int = 400
    code: str = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details = details
        self.headers = headers


class NotFound(ServiceError):
    """The resource does not exist, or belongs to someone else."""

    status = 404
    code = "not_found"


class Conflict(ServiceError):
    """The request conflicts with the resource's current state."""

    status = 409
    code = "conflict"


class Unauthorized(ServiceError):
    """No valid credentials."""

    status = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    """Valid credentials without the right to do this."""

    status = 403
    code = "forbidden"


class Unavailable(ServiceError):
    """A dependency is down; try again later."""

    status = 503
    code = "service_unavailable"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The common error envelope."""
    return {
        "error": code,
        "message": message,
        "details": details,
        "request_id": request_id_var.get(),
    }


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def install_error_handlers(app: FastAPI) -> None:
    """Map every failure to the common envelope; never leak internals."""

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code, exc.message, exc.details),
            status_code=exc.status,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {
                "field": ".".join(str(p) for p in err.get("loc", ()) if p != "body"),
                "message": err.get("msg", "invalid value"),
                "type": err.get("type"),
            }
            for err in exc.errors()
        ]
        return JSONResponse(
            error_body("validation_failed", "The request is not valid.", jsonable_encoder(details)),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else "Request failed."
        return JSONResponse(
            error_body(code, message), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(OSError)
    # The S3 client (minio over urllib3) reports an unreachable server this way.
    @app.exception_handler(StorageConnectionError)
    async def _dependency_down(_: Request, exc: Exception) -> JSONResponse:
        logger.warning("dependency unavailable: %s", type(exc).__name__)
        return JSONResponse(
            error_body("service_unavailable", "A backing service is unavailable; try again."),
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(DBAPIError)
    async def _db_error(_: Request, exc: DBAPIError) -> JSONResponse:
        if exc.connection_invalidated:
            return await _dependency_down(_, exc)
        sqlstate = str(getattr(exc.orig, "sqlstate", "") or getattr(exc.orig, "pgcode", "") or "")
        if sqlstate.startswith("22"):
            # Class 22 is "data exception": a value PostgreSQL cannot store (a NUL character,
            # a number or date out of range). That is the caller's input, not our failure.
            return JSONResponse(
                error_body(
                    "invalid_value",
                    "The request contains a value that cannot be stored "
                    "(for example a NUL character, or a number or date out of range).",
                ),
                status_code=422,
            )
        logger.exception("database error")
        return JSONResponse(
            error_body("internal_error", "Something went wrong on our side."), status_code=500
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return JSONResponse(
            error_body("internal_error", "Something went wrong on our side."), status_code=500
        )
