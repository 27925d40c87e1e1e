"""The native event format (``POST /v1/events``, one event or a batch) → events."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from app.errors import InvalidInput, PayloadTooLarge, first_error
from app.events import Event, EventStatus
from app.ingest.schemas import (
    EVENT_ADAPTER,
    MAX_BATCH_EVENTS,
    check_event,
    fast_events,
    to_event,
)
from app.observability import metrics
from app.policy.schema import CompiledPolicy

# Per position in the request: a rejection, or None where the event went on.
Slots = list[EventStatus | None]


def merge(slots: Slots, statuses: list[EventStatus]) -> list[EventStatus]:
    """Per position, what became of it: its rejection, or (in order) the status the
    pipeline gave the events that went on."""
    it = iter(statuses)
    return [s if s is not None else next(it) for s in slots]


def _rejection(event_id: Any, field: str, code: str, message: str) -> EventStatus:
    return EventStatus(
        str(event_id) if isinstance(event_id, str | int) else "", "rejected", code, field, message
    )


def validate_batch(
    items: list[Any], policy: CompiledPolicy, received_at: float, transport: str = "http"
) -> tuple[list[Event], Slots]:
    """Validate each item; returns the valid events and, per position, a rejection or None."""
    events: list[Event] = []
    slots: Slots = []
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
        bad = check_event(ev, policy, received_at)
        if bad is not None:
            bad.field = f"events[{i}].{bad.field}" if bad.field else f"events[{i}]"
            slots.append(bad)
            metrics.EVENTS_REJECTED.labels(transport, bad.code or "invalid").inc()
            continue
        events.append(ev)
        slots.append(None)
    return events, slots


def with_source(data: Any, name: str) -> Any:
    """The body with ``source`` set to ``name`` on each event that has none (an event's own
    ``source`` wins): the sender's key or source names where events come from."""
    items = data.get("events") if isinstance(data, dict) and "events" in data else [data]
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict) and item.get("source") is None:
            item["source"] = name
    return data


def parse_native(
    data: Any, policy: CompiledPolicy, received_at: float
) -> tuple[list[Event], Slots]:
    """The events of a native body. A single invalid event raises (a 422); in a batch each
    invalid event is a rejection in its slot and the rest go on."""
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
        events, slots = validate_batch(items, policy, received_at)
    elif isinstance(data, dict):
        try:
            parsed = EVENT_ADAPTER.validate_python(data)
        except ValidationError as exc:
            field, code, message = first_error(exc)
            metrics.EVENTS_REJECTED.labels("http", code).inc()
            raise InvalidInput(message, code=code, field=field) from None
        ev = to_event(parsed, received_at=received_at, transport="http", raw=data)
        bad = check_event(ev, policy, received_at)
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
    return events, slots
