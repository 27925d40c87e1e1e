"""Application errors: one small hierarchy, each with a status and a stable machine code."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, ValidationError

from app.events import NO_CONTROL


class ErrorBody(BaseModel):
    """The body of every error response: a stable ``code`` and a human ``message``."""

    code: str = Field(description="stable and machine-readable, e.g. invalid_input")
    message: str = Field(description="for a human")
    field: str | None = Field(default=None, description="the offending field, when there is one")
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="every problem found, when there was more than one to report"
    )


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each with the ``ErrorBody`` schema."""
    return {status: {"model": ErrorBody} for status in statuses}


BEARER_CHALLENGE = 'Bearer realm="intent-router"'
# Segment's routes: the write key as Basic auth's user name (what the SDKs send), or a key.
SEGMENT_CHALLENGE = 'Basic realm="intent-router", Bearer realm="intent-router"'


class AppError(Exception):
    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code:
            self.code = code
        self.errors = errors
        self.headers = headers

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        if self.errors is not None:
            out["errors"] = self.errors
        return out


class InvalidInput(AppError):
    status = 422
    code = "invalid_input"


class MalformedBody(AppError):
    status = 400
    code = "malformed_json"


class PayloadTooLarge(AppError):
    status = 413
    code = "payload_too_large"


class Unauthenticated(AppError):
    """A 401: it names how to authenticate (RFC 9110), a bearer API key unless the raiser
    gives its own ``WWW-Authenticate`` (Segment's routes also take Basic auth)."""

    status = 401
    code = "unauthenticated"
    challenge = BEARER_CHALLENGE

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers = {"WWW-Authenticate": self.challenge, **(self.headers or {})}


class Forbidden(AppError):
    status = 403
    code = "forbidden"


class NotFound(AppError):
    status = 404
    code = "not_found"


class Conflict(AppError):
    status = 409
    code = "conflict"


class Overloaded(AppError):
    status = 429
    code = "overloaded"


class Unavailable(AppError):
    status = 503
    code = "unavailable"


def error_field(loc: tuple[int | str, ...]) -> str:
    """A pydantic location as a dotted path: ``("lead", "email")`` → ``lead.email``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("function-"):
            continue
        else:
            out += ("." if out else "") + part
    return out


def first_error(exc: ValidationError, strip: int = 0) -> tuple[str, str, str]:
    """(field, code, message) of the first validation error, location shortened by ``strip``."""
    err = exc.errors()[0]
    loc = tuple(err["loc"])[strip:]
    path = error_field(loc)
    code = "unknown_field" if err["type"] == "extra_forbidden" else err["type"]
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = f'unknown field "{path}"'
    elif err["type"] == "missing":
        msg = f'"{path}" is required'
    elif (
        err["type"] == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") == NO_CONTROL
    ):
        msg = "must not contain control characters (such as CR, LF, tab or NUL)"
    return path, code, f"{path}: {msg}" if path and not msg.startswith(('"', "unknown")) else msg
