"""Request bodies as typed handler parameters, through one dependency.

``body: Annotated[DestinationIn, RequestBody(DestinationIn)]`` reads the body by the
service's rules: at most ``limit`` bytes before and after gzip (413, field ``body``), JSON,
YAML or CSV chosen by content type with our own errors (400 ``malformed_json``,
``malformed_yaml``, ``malformed_csv``, field ``body``), then validated into the type (422
with the pydantic code and the field). Declare the key parameter first, so a request
without one is a 401 before its body is read.

FastAPI documents a request body only when it parses the body itself, which would give the
limits and errors up; ``app.api.openapi`` writes each route's ``requestBody`` from the type
declared here instead (a reader's ``schema``).

Admin uploads are bounded before they are parsed (README, "Security and data protection"):
a policy at most ``MAX_POLICY_BODY`` bytes, an account list ``MAX_ADMIN_BODY``; their YAML
and JSON go through ``app.policy.bounded`` (aliases, depth, expanded size). A body that has
not arrived in full within ``INTENT_BODY_TIMEOUT_SECONDS`` is a 408 ``body_timeout`` and
the connection is closed; a client that goes away mid-body ends its request without a
traceback (the access log's one line says 499).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
from fastapi import Request, params
from pydantic import TypeAdapter, ValidationError
from starlette.requests import ClientDisconnect

from app.errors import (
    AppError,
    InvalidInput,
    MalformedBody,
    PayloadTooLarge,
    error_responses,
    first_error,
)
from app.ingest.schemas import MAX_BODY_BYTES
from app.policy.bounded import MAX_DEPTH, MAX_DOCUMENT_BYTES, load_json, load_yaml

T = TypeVar("T")
SEGMENT_MAX_DECOMPRESSED = 16 * MAX_BODY_BYTES
MAX_ADMIN_BODY = 16 * 1024 * 1024  # an account list: 50,000 rows of ~300 bytes fit
MAX_POLICY_BODY = MAX_DOCUMENT_BYTES  # 1 MiB, as sent (and again once parsed, as JSON)
DEFAULT_BODY_TIMEOUT = 30.0  # seconds, when the app carries no settings
# Decoding and validating more than this runs on a worker thread, off the event loop.
THREAD_ABOVE_BYTES = 64 * 1024
# Routes that read a body also answer 400 (not JSON/YAML/CSV) and 413 (too large).
BODY_ERRORS = error_responses(401, 403, 404, 422, 503, 400, 408, 413)


class BodyTimeout(AppError):
    status = 408
    code = "body_timeout"


class ClientGone(AppError):
    """The client closed the connection before its body arrived: nobody reads the answer;
    the status is nginx's 499 so the access log says what happened."""

    status = 499
    code = "client_disconnected"


def body_timeout(request: Request) -> float:
    runtime = getattr(request.app.state, "runtime", None)
    timeout = getattr(getattr(runtime, "settings", None), "body_timeout_seconds", None)
    return float(timeout) if timeout else DEFAULT_BODY_TIMEOUT


async def _receive(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body exceeds {limit} bytes", field="body")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_body(
    request: Request, limit: int = MAX_BODY_BYTES, *, unpacked: int = SEGMENT_MAX_DECOMPRESSED
) -> bytes:
    """The request body, refusing more than ``limit`` bytes as sent (``unpacked`` once
    gunzipped) and a body still incomplete after the body timeout (408; the connection is
    closed)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body exceeds {limit} bytes", field="body")
    timeout = body_timeout(request)
    try:
        async with asyncio.timeout(timeout):
            body = await _receive(request, limit)
    except TimeoutError:
        raise BodyTimeout(
            f"the body did not arrive within {timeout:g} s",
            field="body",
            headers={"Connection": "close"},
        ) from None
    except ClientDisconnect:
        raise ClientGone("the client disconnected before its body arrived", field="body") from None
    if request.headers.get("content-encoding", "").lower() == "gzip":
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            body = d.decompress(body, unpacked)
        except zlib.error as exc:
            raise MalformedBody(
                f"the gzip body is corrupt: {exc}", code="malformed_gzip", field="body"
            ) from exc
        if d.unconsumed_tail:
            raise PayloadTooLarge(f"the body exceeds {unpacked} bytes uncompressed", field="body")
    return body


def parse_json(body: bytes) -> Any:
    if not body.strip():
        raise MalformedBody("the body is empty; send a JSON object", field="body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"the body is not valid JSON: {exc}", field="body") from exc


def parse_yaml(body: bytes) -> Any:
    """YAML within ``app.policy.bounded``'s limits: aliases, depth, size once expanded."""
    return load_yaml(body)


def parse_admin_json(body: bytes) -> Any:
    """JSON nested at most ``MAX_DEPTH`` deep, with nothing JSON cannot store again."""
    if not body.strip():
        raise MalformedBody("the body is empty; send a JSON object", field="body")
    return load_json(body, max_depth=MAX_DEPTH)


@dataclass(frozen=True)
class CsvText:
    """A CSV body as text: the route's ``validate`` reads its rows (and their errors)."""

    text: str


def csv_text(body: bytes) -> CsvText:
    return CsvText(body.decode("utf-8-sig", errors="replace"))


@dataclass(frozen=True)
class Format:
    """A body format: the content type it is documented as, the content types it answers to
    (substrings of the request's), and its decoder."""

    media_type: str
    matches: tuple[str, ...]
    decode: Callable[[bytes], Any]
    as_text: bool = False  # documented as a string (CSV), not as the body's type


JSON = Format("application/json", ("json",), parse_json)
ADMIN_JSON = Format("application/json", ("json",), parse_admin_json)
YAML = Format("application/yaml", ("yaml",), parse_yaml)
CSV = Format("text/csv", ("text/csv", "application/csv"), csv_text, as_text=True)


def validated(schema: Any) -> Callable[[Any, bytes], Any]:
    """The default ``validate``: the decoded body as ``schema``, or a 422 naming the field."""
    adapter: TypeAdapter[Any] = TypeAdapter(schema)

    def validate(data: Any, _raw: bytes) -> Any:
        try:
            return adapter.validate_python(data)
        except ValidationError as exc:
            field, code, message = first_error(exc)
            raise InvalidInput(message, code=code, field=field) from None

    return validate


class BodyReader(Generic[T]):
    """What ``RequestBody`` declares: the documented type, the formats (the first is the
    default for any other content type), the limit and how the handler's value is made."""

    def __init__(
        self,
        schema: Any,
        formats: tuple[Format, ...],
        validate: Callable[[Any, bytes], T],
        *,
        limit: int,
        optional: bool,
        admin: bool = False,
        unpacked: int | None = None,
    ) -> None:
        self.schema = schema
        self.formats = formats
        self.validate = validate
        self.limit = limit
        self.optional = optional
        self.admin = admin
        self.unpacked = unpacked

    def format_of(self, request: Request) -> Format:
        ctype = request.headers.get("content-type", "").lower()
        for fmt in self.formats[1:]:
            if any(m in ctype for m in fmt.matches):
                return fmt
        return self.formats[0]

    async def read(self, request: Request) -> T:
        if self.admin:
            raw = await read_body(request, self.limit, unpacked=self.limit)
        elif self.unpacked is not None:
            raw = await read_body(request, self.limit, unpacked=self.unpacked)
        else:
            raw = await read_body(request, self.limit)
        if self.optional and not raw.strip():
            return self.validate({}, raw)
        fmt = self.format_of(request)
        if self.admin and len(raw) > THREAD_ABOVE_BYTES:
            # A megabyte of YAML takes a second or more: not on the loop that serves ingest.
            return await asyncio.to_thread(self._value, fmt, raw)
        return self._value(fmt, raw)

    def _value(self, fmt: Format, raw: bytes) -> T:
        return self.validate(fmt.decode(raw), raw)


def RequestBody(  # named like FastAPI's Body() and Depends(), and used the same way
    schema: Any,
    *formats: Format,
    validate: Callable[[Any, bytes], Any] | None = None,
    limit: int = MAX_BODY_BYTES,
    optional: bool = False,
    admin: bool = False,
    unpacked: int | None = None,
) -> params.Depends:
    """The body as a parameter: ``Annotated[T, RequestBody(T)]``.

    ``formats`` default to JSON. ``validate(data, raw)`` turns the decoded body (and its
    bytes) into the handler's value; by default the body validated as ``schema``.
    ``optional``: an empty body is ``{}``. ``admin``: an upload whose ``limit`` holds
    after gzip too, decoded and validated on a worker thread when it is large.
    ``unpacked``: the limit once gunzipped, when not the default."""
    reader = BodyReader(
        schema,
        formats or (JSON,),
        validate or validated(schema),
        limit=limit,
        optional=optional,
        admin=admin,
        unpacked=unpacked,
    )
    # A bound method, not the instance: FastAPI reads the signature's annotations through
    # the callable's module globals, which an instance does not have.
    return params.Depends(reader.read)


def reader_of(call: Any) -> BodyReader[Any] | None:
    """The ``BodyReader`` behind a dependency callable, if it is one."""
    owner = getattr(call, "__self__", None)
    return owner if isinstance(owner, BodyReader) else None


async def body_model(request: Request, model: Any, *, optional: bool = False) -> Any:
    """The body validated as ``model``, read inside a handler.

    Kept for routes not yet on ``RequestBody`` (their document then needs the schema by
    hand); prefer ``Annotated[Model, RequestBody(Model)]``."""
    return await BodyReader(
        model, (JSON,), validated(model), limit=MAX_BODY_BYTES, optional=optional
    ).read(request)
