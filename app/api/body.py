"""Request bodies read by hand (size limits before and after gzip, JSON with our own
errors) and validated into a model."""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError

from app.errors import InvalidInput, MalformedBody, PayloadTooLarge, first_error
from app.ingest.schemas import MAX_BODY_BYTES

SEGMENT_MAX_DECOMPRESSED = 16 * MAX_BODY_BYTES


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


async def body_model(request: Request, model: type[BaseModel], *, optional: bool = False) -> Any:
    raw = await read_body(request)
    data = {} if optional and not raw.strip() else parse_json(raw)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        field, code, message = first_error(exc)
        raise InvalidInput(message, code=code, field=field) from None
