"""The source debugger: each source's last messages and what became of them.

What a Segment user looks at when "my events don't show up": every message a source
sent, accepted or not, with the reason when it was not. Kept in memory per process (a
diagnostic view, not a record: the events table is the record), bounded in sources,
messages per source and bytes per message.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from app.clock import iso
from app.events import shallow
from app.observability import metrics

log = logging.getLogger(__name__)

PER_SOURCE = 100
MAX_SOURCES = 500
SAMPLE_BYTES = 2048
SAMPLE_DEPTH = 16


@dataclass(frozen=True)
class Outcome:
    """One message: ``accepted`` (went to the pipeline), ``ignored`` (carries nothing to
    score, e.g. a ping or a test lead) or ``rejected`` (with the code and reason)."""

    received_at: float
    transport: str  # segment | hook
    message_id: str
    kind: str  # track, page, invitee.created, form_response, …
    outcome: str
    code: str | None = None
    reason: str | None = None
    event_id: str | None = None
    event_type: str | None = None
    sample: str | None = None  # the message as sent, cut to SAMPLE_BYTES

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["received_at"] = iso(self.received_at)
        return out


def sample_of(message: Any) -> str:
    """The message as JSON, cut to ``SAMPLE_BYTES``: whatever its depth (levels past
    ``SAMPLE_DEPTH`` show as "…"; ``repr`` of a deep object is a RecursionError)."""
    try:
        text = orjson.dumps(shallow(message, SAMPLE_DEPTH), default=_text).decode()
    except TypeError:  # an integer past 64 bits, from a webhook parsed with json
        text = f"<{type(message).__name__} that cannot be shown as JSON>"
    return text if len(text) <= SAMPLE_BYTES else text[:SAMPLE_BYTES] + "…"


def _text(value: Any) -> str:
    return f"<{type(value).__name__}>"


def rejection_reason(st: Any, fields: dict[str, str] | None = None) -> str:
    """A validator's rejection of one mapped event as the debugger shows it: the field
    relative to the message (not its place in the batch), in the sender's words when
    ``fields`` renames it."""
    field = re.sub(r"^events\[\d+\]\.?", "", st.field or "")
    message = re.sub(r"^[\w.\[\]]+: ", "", st.message or "")
    if not field:
        return message
    return f"{(fields or {}).get(field, field)}: {message}"


class Debugger:
    def __init__(self) -> None:
        self._recent: OrderedDict[str, deque[Outcome]] = OrderedDict()

    def record(self, source: str, outcome: Outcome) -> None:
        """Keep the outcome; a message not stored is also counted by reason and logged
        with its id, so nothing is dropped without trace."""
        ring = self._recent.get(source)
        if ring is None:
            ring = self._recent[source] = deque(maxlen=PER_SOURCE)
            if len(self._recent) > MAX_SOURCES:
                self._recent.popitem(last=False)
        else:
            self._recent.move_to_end(source)
        ring.append(outcome)
        if outcome.outcome != "accepted":
            metrics.MESSAGES_NOT_STORED.labels(
                outcome.transport, outcome.outcome, outcome.code or outcome.outcome
            ).inc()
            log.info(
                "%s message %s from %s %s: %s",
                outcome.transport,
                outcome.message_id or "(no id)",
                source,
                outcome.outcome,
                outcome.reason or outcome.code,
                extra={"source": source, "message_id": outcome.message_id},
            )

    def recent(self, source: str) -> list[Outcome]:
        """Newest first."""
        return list(reversed(self._recent.get(source, ())))

    def forget_mentions(self, needles: list[str]) -> int:
        """Drop every kept message that mentions one of ``needles`` (an erased person's
        identifiers, compared without case); how many were dropped."""
        lowered = [n.lower() for n in needles if n]
        if not lowered:
            return 0
        dropped = 0
        for source, ring in self._recent.items():
            kept = [o for o in ring if not _mentions(o, lowered)]
            dropped += len(ring) - len(kept)
            self._recent[source] = deque(kept, maxlen=PER_SOURCE)
        return dropped

    def forget(self, source: str) -> None:
        self._recent.pop(source, None)


def _mentions(o: Outcome, needles: list[str]) -> bool:
    text = " ".join(v for v in (o.sample, o.message_id, o.reason, o.event_id) if v).lower()
    return any(n in text for n in needles)
