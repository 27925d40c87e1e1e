"""``POST /v1/events``: the native format, over the framework and on its fast path."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from app.api.body import RequestBody, parse_json, read_body
from app.api.deps import RuntimeDep
from app.api.errors import app_error_response, internal_error_response
from app.api.ratelimit import charge, event_count
from app.auth import ApiKey, IngestKey, authenticate
from app.errors import AppError, PayloadTooLarge, error_responses
from app.events import EventStatus, encoded_size
from app.ingest.native import Slots, merge, parse_native, with_source
from app.ingest.schemas import MAX_BATCH_EVENTS, MAX_EVENT_BYTES, EventBatchIn, EventIn
from app.observability import metrics
from app.policy.schema import CompiledPolicy
from app.runtime.service import Runtime

log = logging.getLogger(__name__)
router = APIRouter()

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


def _response(
    slots: list[EventStatus | None], statuses: list[EventStatus], headers: dict[str, str]
) -> Response:
    """The ``IngestResponse`` document, serialised directly (this is the hot path)."""
    merged = merge(slots, statuses)
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
    return Response(
        orjson.dumps(body), status_code=202, media_type="application/json", headers=headers
    )


def _as_sent(data: Any, _raw: bytes) -> Any:
    # Validated event by event in parse_native: one bad event in a batch is rejected, not
    # the batch; the declared type is what the document shows.
    return data


EVENTS_BODY = RequestBody(EventIn | EventBatchIn, validate=_as_sent)


@router.post(
    "/v1/events",
    status_code=202,
    operation_id="ingestEvents",
    summary="Ingest one event or a batch of up to 1,000",
    response_model=IngestResponse,
    responses=INGEST_ERRORS,
)
async def ingest_events(
    key: IngestKey, data: Annotated[Any, EVENTS_BODY], runtime: RuntimeDep
) -> Response:
    """202 after the events are durably committed; a status per event.

    A single event that fails validation is a 422; in a batch, each invalid event is
    reported as ``rejected`` with its field and the rest are accepted.
    """
    return await ingest(runtime, data, runtime.clock.now(), key)


async def ingest(
    runtime: Runtime, data: Any, received_at: float, key: ApiKey, size: int | None = None
) -> Response:
    """Events from the decoded body (``size`` bytes, when known), ingested; the
    ``IngestResponse``. The key's quota pays one token per event first; an event without a
    ``source`` takes the key's name."""
    assert runtime.policy is not None
    quota = charge(runtime, key, event_count(data))
    events, slots = _parse(data, key.name, runtime.policy, received_at, size)
    statuses = await runtime.ingest(events) if events else []
    return _response(slots, statuses, quota)


def _parse(
    data: Any, name: str, policy: CompiledPolicy, received_at: float, size: int | None
) -> tuple[list[Any], Slots]:
    """``parse_native`` with the per-event size cap (``MAX_EVENT_BYTES`` as sent, in JSON):
    in a batch an event over it is rejected alone (``event_too_large``), alone it is 413."""
    items = data.get("events") if isinstance(data, dict) else None
    if (size is not None and size <= MAX_EVENT_BYTES) or not isinstance(data, dict):
        big: set[int] = set()
    elif not isinstance(items, list):
        if _too_large(data):
            metrics.EVENTS_REJECTED.labels("http", "event_too_large").inc()
            raise PayloadTooLarge(
                f"the event exceeds {MAX_EVENT_BYTES} bytes", code="event_too_large", field="body"
            )
        big = set()
    else:
        big = set() if len(items) > MAX_BATCH_EVENTS else _oversized(items)
    data = with_source(data, name)
    if not big:
        return parse_native(data, policy, received_at)
    assert isinstance(items, list)
    kept = [i for i in range(len(items)) if i not in big]
    events, sub = parse_native({**data, "events": [items[i] for i in kept]}, policy, received_at)
    slots: Slots = [None] * len(items)
    for i in big:
        event_id = items[i].get("event_id") if isinstance(items[i], dict) else None
        slots[i] = EventStatus(
            str(event_id) if isinstance(event_id, str | int) else "",
            "rejected",
            "event_too_large",
            f"events[{i}]",
            f"the event exceeds {MAX_EVENT_BYTES} bytes",
        )
        metrics.EVENTS_REJECTED.labels("http", "event_too_large").inc()
    for j, (i, slot) in enumerate(zip(kept, sub, strict=True)):
        if slot is not None and slot.field is not None:  # renumbered as the batch was sent
            slot.field = slot.field.replace(f"events[{j}]", f"events[{i}]", 1)
        slots[i] = slot
    return events, slots


def _too_large(item: Any) -> bool:
    """Over the size cap, or nested past what JSON can be written back at (not storable
    either way; the encoder stops at 254 levels)."""
    size = encoded_size(item)
    return size is None or size > MAX_EVENT_BYTES


def _oversized(items: list[Any]) -> set[int]:
    return {i for i, item in enumerate(items) if _too_large(item)}


async def handle_events(request: Request, key: ApiKey) -> Response:
    """``POST /v1/events`` once the key is checked, on the fast path: the body parsed here
    by the same rules as ``EVENTS_BODY``, without the framework."""
    runtime: Runtime = request.app.state.runtime
    received_at = runtime.clock.now()
    body = await read_body(request)
    return await ingest(runtime, parse_json(body), received_at, key, len(body))


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
            key = await authenticate(request, "ingest")
            response = await handle_events(request, key)
        except AppError as exc:
            response = app_error_response(exc)
        except Exception:
            log.exception("unhandled error in POST /v1/events")
            response = internal_error_response()
        await response(scope, receive, send)
