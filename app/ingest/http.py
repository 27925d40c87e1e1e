"""HTTP ingest: ``POST /v1/events`` (native) and the Segment-compatible routes."""

from __future__ import annotations

import logging
import zlib
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from app.auth import IngestKey, SegmentKey, authenticate
from app.errors import (
    AppError,
    InvalidInput,
    MalformedBody,
    PayloadTooLarge,
    error_responses,
    first_error,
)
from app.events import Event, EventStatus
from app.ingest.schemas import (
    EVENT_ADAPTER,
    MAX_BATCH_EVENTS,
    MAX_BODY_BYTES,
    EventBatchIn,
    EventIn,
    fast_events,
    to_event,
)
from app.ingest.segment import SEGMENT_TYPES, to_native
from app.observability import metrics
from app.pipeline import check_event
from app.runtime.service import Runtime

log = logging.getLogger(__name__)
router = APIRouter()

SEGMENT_MAX_DECOMPRESSED = 16 * MAX_BODY_BYTES
INGEST_ERRORS = error_responses(400, 401, 403, 413, 422, 429, 503)


class EventResult(BaseModel):
    event_id: str | None
    status: Literal["accepted", "duplicate", "rejected"]
    code: str | None = None
    field: str | None = None
    message: str | None = None


class IngestResponse(BaseModel):
    accepted: int
    duplicates: int
    rejected: int
    results: list[EventResult]


class SegmentResponse(BaseModel):
    success: bool


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


def _rejection(event_id: Any, field: str, code: str, message: str) -> EventStatus:
    return EventStatus(
        str(event_id) if isinstance(event_id, str | int) else "", "rejected", code, field, message
    )


def _validate_batch(
    items: list[Any], runtime: Runtime, received_at: float, transport: str = "http"
) -> tuple[list[Event], list[EventStatus | None]]:
    """Validate each item; returns the valid events and, per position, a rejection or None."""
    assert runtime.policy is not None
    events: list[Event] = []
    slots: list[EventStatus | None] = []
    # The batch in one call with the fast forms; what they do not cover (rejections,
    # values that need a Python normaliser) is validated one by one, as it always was.
    fast = fast_events(items, received_at=received_at, transport=transport)
    for i, (item, ev) in enumerate(zip(items, fast, strict=True)):
        if ev is None:
            try:
                parsed = EVENT_ADAPTER.validate_python(item)
            except ValidationError as exc:
                field, code, message = first_error(exc)
                event_id = item.get("event_id") if isinstance(item, dict) else None
                path = f"events[{i}].{field}" if field else f"events[{i}]"
                slots.append(_rejection(event_id, path, code, message))
                metrics.EVENTS_REJECTED.labels(transport, code).inc()
                continue
            ev = to_event(parsed, received_at=received_at, transport=transport, raw=item)
        bad = check_event(ev, runtime.policy, received_at)
        if bad is not None:
            bad.field = f"events[{i}].{bad.field}"
            slots.append(bad)
            metrics.EVENTS_REJECTED.labels(transport, bad.code or "invalid").inc()
            continue
        events.append(ev)
        slots.append(None)
    return events, slots


def _response(slots: list[EventStatus | None], statuses: list[EventStatus]) -> Response:
    """The ``IngestResponse`` document, serialised directly (this is the hot path)."""
    it = iter(statuses)
    merged = [s if s is not None else next(it) for s in slots]
    counts = {"accepted": 0, "duplicate": 0, "rejected": 0}
    results = []
    for s in merged:
        counts[s.status] += 1
        results.append(
            {
                "event_id": s.event_id,
                "status": s.status,
                "code": s.code,
                "field": s.field,
                "message": s.message,
            }
        )
    body = {
        "accepted": counts["accepted"],
        "duplicates": counts["duplicate"],
        "rejected": counts["rejected"],
        "results": results,
    }
    return Response(orjson.dumps(body), status_code=202, media_type="application/json")


@router.post(
    "/v1/events",
    status_code=202,
    operation_id="ingestEvents",
    summary="Ingest one event or a batch of up to 1,000",
    response_model=IngestResponse,
    responses=INGEST_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"$ref": "#/components/schemas/EventIn"},
                            {"$ref": "#/components/schemas/EventBatchIn"},
                        ]
                    }
                }
            },
        }
    },
)
async def ingest_events(request: Request, key: IngestKey) -> Response:
    """202 after the events are durably committed; a status per event.

    A single event that fails validation is a 422; in a batch, each invalid event is
    reported as ``rejected`` with its field and the rest are accepted.
    """
    return await handle_events(request)


async def handle_events(request: Request) -> Response:
    """The body of ``POST /v1/events`` once the key is checked (shared with the fast path)."""
    runtime: Runtime = request.app.state.runtime
    assert runtime.policy is not None
    received_at = runtime.clock.now()
    data = parse_json(await read_body(request))
    if isinstance(data, dict) and "events" in data:
        extra = sorted(set(data) - {"events"})
        if extra:
            raise InvalidInput(
                f'unknown field "{extra[0]}" beside "events"', code="unknown_field", field=extra[0]
            )
        items = data["events"]
        if not isinstance(items, list):
            raise InvalidInput("events: must be a list of events", field="events")
        if len(items) > MAX_BATCH_EVENTS:
            raise PayloadTooLarge(
                f"events: {len(items)} events in one batch; the limit is {MAX_BATCH_EVENTS}",
                code="batch_too_large",
                field="events",
            )
        events, slots = _validate_batch(items, runtime, received_at)
    elif isinstance(data, dict):
        try:
            parsed = EVENT_ADAPTER.validate_python(data)
        except ValidationError as exc:
            field, code, message = first_error(exc)
            metrics.EVENTS_REJECTED.labels("http", code).inc()
            raise InvalidInput(message, code=code, field=field) from None
        ev = to_event(parsed, received_at=received_at, transport="http", raw=data)
        bad = check_event(ev, runtime.policy, received_at)
        if bad is not None:
            metrics.EVENTS_REJECTED.labels("http", bad.code or "invalid").inc()
            raise InvalidInput(bad.message or "invalid event", code=bad.code, field=bad.field)
        events, slots = [ev], [None]
    else:
        raise InvalidInput(
            'the body must be an event object or {"events": [...]}',
            code="invalid_body",
            field="body",
        )
    statuses = await runtime.ingest(events) if events else []
    return _response(slots, statuses)


async def _segment(request: Request, kind: str | None, key_name: str) -> SegmentResponse:
    runtime: Runtime = request.app.state.runtime
    assert runtime.policy is not None
    received_at = runtime.clock.now()
    data = parse_json(await read_body(request))
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object", code="invalid_body", field="body")
    if kind is None:
        messages = data.get("batch")
        if not isinstance(messages, list):
            raise InvalidInput("batch: must be a list of messages", field="batch")
    else:
        messages = [data]
    natives: list[Any] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            natives.append(None)
            continue
        msg_type = msg.get("type") or kind
        if msg_type not in SEGMENT_TYPES:
            log.info("segment message %d has unsupported type %r; dropped", i, msg_type)
            natives.append(None)
            continue
        natives.append(
            to_native(
                msg, kind=kind, policy=runtime.policy, source=key_name, received_at=received_at
            )
        )
    valid = [n for n in natives if n is not None]
    events, slots = _validate_batch(valid, runtime, received_at, transport="segment")
    for slot in slots:
        if slot is not None:
            log.info("segment message rejected: %s %s", slot.code, slot.message)
    if events:
        await runtime.ingest(events)
    # Segment's SDKs treat anything but 200 as an error and retry; invalid messages are
    # dropped (and counted) rather than retried forever.
    return SegmentResponse(success=True)


SEGMENT_DOC = {
    "summary": "Segment-compatible",
    "response_model": SegmentResponse,
    "responses": INGEST_ERRORS,
}
# The fields the mapping reads (segment.py); Segment sends more, which are ignored.
SEGMENT_MESSAGE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "description": "track, identify, page, screen, group, alias"},
        **{k: {"type": "string"} for k in ("messageId", "userId", "anonymousId", "groupId")},
        **{k: {"type": "string"} for k in ("previousId", "event", "name")},
        **{k: {"type": "object"} for k in ("properties", "traits", "context")},
        **{
            k: {"type": "string", "format": "date-time"}
            for k in ("timestamp", "originalTimestamp", "sentAt")
        },
    },
}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    content = {"application/json": {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}}


@router.post(
    "/segment/v1/batch",
    operation_id="segmentBatch",
    openapi_extra=_json_body(
        {
            "type": "object",
            "properties": {"batch": {"type": "array", "items": SEGMENT_MESSAGE}},
            "required": ["batch"],
        }
    ),
    **SEGMENT_DOC,  # type: ignore[arg-type]
)
async def segment_batch(request: Request, key: SegmentKey) -> SegmentResponse:
    """Segment HTTP Tracking API batch (what the SDKs send)."""
    return await _segment(request, None, key.name)


def _single(kind: str) -> None:
    async def handler(request: Request, key: SegmentKey) -> SegmentResponse:
        return await _segment(request, kind, key.name)

    handler.__doc__ = f"Segment HTTP Tracking API `{kind}` call."
    router.add_api_route(
        f"/segment/v1/{kind}",
        handler,
        methods=["POST"],
        operation_id=f"segment_{kind}",
        openapi_extra=_json_body(SEGMENT_MESSAGE),
        **SEGMENT_DOC,  # type: ignore[arg-type]
    )


for _kind in ("track", "identify", "page", "screen", "group", "alias"):
    _single(_kind)

__all__ = ["EventBatchIn", "EventIn", "router"]


class FastIngest:
    """ASGI fast path for ``POST /v1/events``: the same handler, without the framework's
    per-request routing, dependency solving and telemetry (~half of the CPU a
    single-event post cost). The FastAPI route stays for the OpenAPI contract."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/v1/events":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        response: Response
        try:
            await authenticate(request, "ingest")
            response = await handle_events(request)
        except AppError as exc:
            response = JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
        except Exception:
            log.exception("unhandled error in POST /v1/events")
            response = JSONResponse(
                {"code": "internal_error", "message": "an unexpected error occurred"},
                status_code=500,
            )
        await response(scope, receive, send)
