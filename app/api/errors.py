"""Errors as HTTP responses: every failure is the ``ErrorBody`` JSON, never an HTML page."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import AppError, error_field

log = logging.getLogger("app")


def app_error_response(exc: AppError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def internal_error_response() -> JSONResponse:
    """The 500 body: nothing of the exception leaks out (it is logged)."""
    return JSONResponse(
        {"code": "internal_error", "message": "an unexpected error occurred"},
        status_code=500,
    )


async def _app_error(_: Request, exc: AppError) -> JSONResponse:
    return app_error_response(exc)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {
            "field": error_field(tuple(e["loc"])[1:]) or error_field(tuple(e["loc"])),
            "code": e["type"],
            "message": e["msg"],
        }
        for e in exc.errors()
    ]
    first = errors[0] if errors else {"field": None, "message": "invalid request"}
    return JSONResponse(
        {
            "code": "invalid_input",
            "message": f"{first['field']}: {first['message']}",
            "field": first["field"],
            "errors": errors,
        },
        status_code=422,
    )


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse({"code": code, "message": str(exc.detail)}, status_code=exc.status_code)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error")
    return internal_error_response()


def install_error_handlers(app: FastAPI) -> None:
    """Our errors, request validation, routing (404/405) and anything unexpected (500)."""
    app.exception_handler(AppError)(_app_error)
    app.exception_handler(RequestValidationError)(_validation_error)
    app.exception_handler(StarletteHTTPException)(_http_error)
    app.exception_handler(Exception)(_unexpected)
