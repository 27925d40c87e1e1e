"""Events back from the events table, as the pipeline first saw them: what a replay runs.

A row keeps the document as received (native JSON, or a CloudEvent in its structured
form) beside the columns the pipeline derived from it. The document is parsed again the
way it was accepted; the columns decide what it was (type, source, times), so a mapping
changed since (Segment's, a CloudEvents type map, a key's source name) replays the event
as it was scored then.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from app.events import Event
from app.ingest.kafka import unwrap
from app.ingest.schemas import EVENT_ADAPTER, to_event
from app.policy.schema import CompiledPolicy

STORED_COLUMNS = ("event_id", "received_at", "occurred_at", "type", "source", "transport")


class Unreadable(Exception):
    """A stored event that no longer parses (it is skipped and counted, never guessed)."""


def stored_event(row: Any, payload: str, policy: CompiledPolicy) -> Event:
    """The event of a row (``STORED_COLUMNS`` as attributes) and its stored payload."""
    try:
        parsed = EVENT_ADAPTER.validate_json(payload)
    except ValidationError:
        try:
            raw, _ = unwrap(payload.encode(), {}, policy=policy, received_at=row.received_at)
            parsed = EVENT_ADAPTER.validate_python(raw)
        except Exception as exc:  # whatever an old document does to today's parser
            raise Unreadable(f"{row.event_id}: {type(exc).__name__}") from None
    ev = to_event(parsed, received_at=row.received_at, transport=row.transport, raw_json=payload)
    ev.event_id, ev.type, ev.source = row.event_id, row.type, row.source
    ev.occurred_at = row.occurred_at
    return ev
