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
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
import yaml
from fastapi import Request, params
from pydantic import TypeAdapter, ValidationError

from app.errors import InvalidInput, MalformedBody, PayloadTooLarge, error_responses, first_error
from app.ingest.schemas import MAX_BODY_BYTES

T = TypeVar("T")
SEGMENT_MAX_DECOMPRESSED = 16 * MAX_BODY_BYTES
MAX_ADMIN_BODY = 32 * 1024 * 1024
# Routes that read a body also answer 400 (not JSON/YAML/CSV) and 413 (too large).
BODY_ERRORS = error_responses(401, 403, 404, 422, 503, 400, 413)


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refusing more than ``limit`` bytes (before and after gzip)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body exceeds {limit} bytes", field="body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body exceeds {limit} bytes", field="body")
        chunks.append(chunk)
    body = b"".join(chunks)
    if request.headers.get("content-encoding", "").lower() == "gzip":
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            body = d.decompress(body, SEGMENT_MAX_DECOMPRESSED)
        except zlib.error as exc:
            raise MalformedBody(
                f"the gzip body is corrupt: {exc}", code="malformed_gzip", field="body"
            ) from exc
        if d.unconsumed_tail:
            raise PayloadTooLarge(
                f"the body exceeds {SEGMENT_MAX_DECOMPRESSED} bytes uncompressed", field="body"
            )
    return body


def parse_json(body: bytes) -> Any:
    if not body.strip():
        raise MalformedBody("the body is empty; send a JSON object", field="body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"the body is not valid JSON: {exc}", field="body") from exc


def parse_yaml(body: bytes) -> Any:
    try:
        return yaml.safe_load(body)
    except yaml.YAMLError as exc:
        raise MalformedBody(
            f"the body is not valid YAML: {exc}", code="malformed_yaml", field="body"
        ) from None


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
    ) -> None:
        self.schema = schema
        self.formats = formats
        self.validate = validate
        self.limit = limit
        self.optional = optional

    def format_of(self, request: Request) -> Format:
        ctype = request.headers.get("content-type", "").lower()
        for fmt in self.formats[1:]:
            if any(m in ctype for m in fmt.matches):
                return fmt
        return self.formats[0]

    async def read(self, request: Request) -> T:
        raw = await read_body(request, self.limit)
        if self.optional and not raw.strip():
            return self.validate({}, raw)
        return self.validate(self.format_of(request).decode(raw), raw)


def RequestBody(  # named like FastAPI's Body() and Depends(), and used the same way
    schema: Any,
    *formats: Format,
    validate: Callable[[Any, bytes], Any] | None = None,
    limit: int = MAX_BODY_BYTES,
    optional: bool = False,
) -> params.Depends:
    """The body as a parameter: ``Annotated[T, RequestBody(T)]``.

    ``formats`` default to JSON. ``validate(data, raw)`` turns the decoded body (and its
    bytes) into the handler's value; by default the body validated as ``schema``.
    ``optional``: an empty body is ``{}``."""
    reader = BodyReader(
        schema,
        formats or (JSON,),
        validate or validated(schema),
        limit=limit,
        optional=optional,
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
