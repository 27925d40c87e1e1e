"""Events back from the events table, as the pipeline first saw them: what a replay runs.

A row keeps the document as received (native JSON, or a CloudEvent in its structured
form) beside the columns the pipeline derived from it. The document is parsed again the
way it was accepted; the columns decide what it was (type, source, times), so a mapping
changed since (Segment's, a CloudEvents type map, a key's source name) replays the event
as it was scored then.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from app.events import Event
from app.ingest.cloudevents import stored_cloudevent
from app.ingest.schemas import EVENT_ADAPTER, to_event

STORED_COLUMNS = ("event_id", "received_at", "occurred_at", "type", "source", "transport")


class Unreadable(Exception):
    """A stored event that no longer parses (it is skipped and counted, never guessed)."""


def stored_event(row: Any, payload: str) -> Event:
    """The event of a row (``STORED_COLUMNS`` as attributes) and its stored payload."""
    try:
        parsed = EVENT_ADAPTER.validate_json(payload)
    except ValidationError:
        try:  # a CloudEvent, kept in its structured form
            raw = stored_cloudevent(payload.encode())
            raw.update(
                type=row.type,
                source=row.source,
                occurred_at=datetime.fromtimestamp(row.occurred_at, UTC),
            )
            parsed = EVENT_ADAPTER.validate_python(raw)
        except Exception as exc:  # whatever an old (or erased) document does to the parser
            raise Unreadable(f"{row.event_id}: {type(exc).__name__}") from None
    ev = to_event(parsed, received_at=row.received_at, transport=row.transport, raw_json=payload)
    ev.event_id, ev.type, ev.source = row.event_id, row.type, row.source
    ev.occurred_at = row.occurred_at
    return ev
