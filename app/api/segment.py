"""The Segment HTTP Tracking API, where every Segment and RudderStack SDK posts.

``/v1/{batch,track,identify,page,screen,group,alias}`` at the root, so an SDK pointed at
this service's host (as it would be at ``api.segment.io``) works unchanged, and the same
under ``/segment/v1/…``. The sender is a registered ``segment`` source, by its write key
(Basic auth's user name, as the SDKs send it, or ``writeKey`` in the body), or an API key
with the ``ingest`` scope; its name is the ``source`` of the events.

As Segment does, a message that cannot be used does not fail the request (the SDK would
retry it forever): it is rejected alone, counted, logged with its ``messageId`` and shown
in the source's debugger (``GET /v1/sources/{name}/recent``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from app.api.body import RequestBody
from app.api.deps import RuntimeDep
from app.api.events import INGEST_ERRORS
from app.api.ratelimit import charge
from app.auth import KEY_PREFIX, ApiKey, check_key, credential
from app.errors import SEGMENT_CHALLENGE, AppError, Forbidden, InvalidInput, Unauthenticated
from app.events import EventStatus, encoded_size
from app.ingest.native import merge, validate_batch
from app.ingest.schemas import MAX_EVENT_BYTES
from app.ingest.segment import SEGMENT_TYPES, message_id, to_native
from app.runtime.service import Runtime
from app.sources import Outcome, Source
from app.sources.debugger import rejection_reason, sample_of

log = logging.getLogger(__name__)
router = APIRouter()

# Segment's own limits (its HTTP API documentation): a message, a batch's bytes (as
# unpacked) and its messages. Over the batch limits the request is a 400, as Segment
# answers; Segment then also drops messages past 2,500 silently, which we do not copy.
MAX_MESSAGE_BYTES = MAX_EVENT_BYTES
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_MESSAGES = 2500

# Documented without null: Segment's SDKs leave a field out rather than send null.
Text = str | SkipJsonSchema[None]
Object = dict[str, Any] | SkipJsonSchema[None]
Timestamp = AwareDatetime | SkipJsonSchema[None]


class SegmentResponse(BaseModel):
    success: bool


@dataclass(frozen=True)
class Sender:
    """Who posted: a registered source, or an API key (``source`` None)."""

    name: str
    source: Source | None
    api_key: ApiKey | None = None  # when an API key posted

    @property
    def quota(self) -> ApiKey | Source:
        """Whose bucket the messages are taken from."""
        sender = self.source or self.api_key
        assert sender is not None
        return sender


async def segment_sender(request: Request, runtime: Runtime, data: dict[str, Any]) -> Sender:
    key = credential(request)
    if key is None and isinstance(data.get("writeKey"), str) and data["writeKey"]:
        key = data["writeKey"]
    if key is None:
        raise Unauthenticated(
            "a write key is required: Basic auth with the write key as user name (what the "
            "SDKs send), writeKey in the body, or Authorization: Bearer <API key>",
            field="writeKey",
            headers={"WWW-Authenticate": SEGMENT_CHALLENGE},
        )
    if key.startswith(KEY_PREFIX):
        api_key = await check_key(request, key, "ingest")
        return Sender(api_key.name, None, api_key)
    source = await runtime.sources.by_write_key(key)
    if source is None:
        raise Unauthenticated(
            "unknown or rotated write key",
            field="writeKey",
            headers={"WWW-Authenticate": SEGMENT_CHALLENGE},
        )
    origin = request.headers.get("origin")
    if origin is not None and not source.allows_origin(origin):
        raise Forbidden(
            f'the write key of source "{source.name}" may not be used from {origin[:200]}: '
            "add the origin to the source's allowed_origins",
            code="origin_not_allowed",
            field="origin",
        )
    return Sender(source.name, source)


class OverLimit(AppError):
    """Over one of Segment's batch limits: a 400, as Segment answers (its SDKs do not
    retry a 400)."""

    status = 400


def _messages(data: dict[str, Any], kind: str | None, raw_size: int) -> list[Any]:
    if raw_size > MAX_BATCH_BYTES:
        raise OverLimit(
            f"the body is {raw_size} bytes; Segment's limit is {MAX_BATCH_BYTES} per batch",
            code="batch_too_large",
            field="body",
        )
    if kind is not None:
        return [data]
    messages = data.get("batch")
    if not isinstance(messages, list):
        raise InvalidInput("batch: must be a list of messages", field="batch")
    if len(messages) > MAX_BATCH_MESSAGES:
        raise OverLimit(
            f"batch: {len(messages)} messages; the limit is {MAX_BATCH_MESSAGES} per batch",
            code="too_many_messages",
            field="batch",
        )
    return messages


def _refusal(msg: Any, kind: str | None) -> tuple[str, str] | None:
    """Why a message cannot even be mapped: (code, reason), or None."""
    if not isinstance(msg, dict):
        return "invalid_message", "a message must be a JSON object"
    msg_type = msg.get("type") or kind
    if msg_type not in SEGMENT_TYPES:
        shown = repr(msg_type[:50]) if isinstance(msg_type, str) else type(msg_type).__name__
        return "unsupported_type", f"type {shown} is not one of {SEGMENT_TYPES}"
    if not (msg.get("userId") or msg.get("anonymousId") or msg.get("previousId")):
        return "missing_identity", "userId or anonymousId is required"
    size = encoded_size(msg)
    if size is None:
        return "too_deep", "the message is nested too deeply to store"
    if size > MAX_MESSAGE_BYTES:
        return "message_too_large", f"the message exceeds {MAX_MESSAGE_BYTES} bytes"
    return None


async def handle_segment(
    request: Request,
    runtime: Runtime,
    data: Any,
    kind: str | None,
    raw_size: int,
    response: Response,
) -> SegmentResponse:
    """Map, validate and ingest a batch (``kind`` None) or one message of ``kind``; a 429
    when the sender's quota cannot pay a token per message (Segment's SDKs retry a 429)."""
    policy = runtime.current_policy()
    received_at = runtime.clock.now()
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object", code="invalid_body", field="body")
    sender = await segment_sender(request, runtime, data)
    messages = _messages(data, kind, raw_size)
    response.headers.update(charge(runtime, sender.quota, len(messages)))
    batch_sent_at = data.get("sentAt") if kind is None else None
    outcomes: list[Outcome | None] = []
    natives: list[dict[str, Any]] = []
    where: list[int] = []  # natives[j] came from messages[where[j]]
    for i, msg in enumerate(messages):
        refused = _refusal(msg, kind)
        if refused is not None:
            outcomes.append(_outcome(msg, kind, received_at, "rejected", *refused))
            continue
        outcomes.append(None)
        natives.append(
            to_native(
                msg,
                kind=kind,
                policy=policy,
                source=sender.name,
                received_at=received_at,
                batch_sent_at=batch_sent_at,
            )
        )
        where.append(i)
    events, slots = validate_batch(natives, policy, received_at, transport="segment")
    ingested = await runtime.ingest(events) if events else []
    for j, status in enumerate(merge(slots, ingested)):
        i = where[j]
        outcomes[i] = _status_outcome(messages[i], kind, received_at, status, natives[j]["type"])
    for outcome in outcomes:
        assert outcome is not None
        runtime.debugger.record(sender.name, outcome)
    return SegmentResponse(success=True)


# Native fields a rejection names, as the Segment message calls them.
_SEGMENT_FIELDS = {"occurred_at": "timestamp", "lead.email": "traits.email", "type": "event"}


def _type_of(msg: Any, kind: str | None) -> str:
    """The message's type for the debugger: its own when a string (never ``str()`` of an
    object, which for one nested a thousand deep is a RecursionError), else the route's."""
    given = msg.get("type") if isinstance(msg, dict) else None
    return (given if isinstance(given, str) and given else kind or "")[:50]


def _outcome(
    msg: Any, kind: str | None, received_at: float, outcome: str, code: str, reason: str
) -> Outcome:
    is_dict = isinstance(msg, dict)
    return Outcome(
        received_at=received_at,
        transport="segment",
        message_id=message_id(msg) if is_dict else "",
        kind=_type_of(msg, kind),
        outcome=outcome,
        code=code,
        reason=reason,
        sample=sample_of(msg),
    )


def _status_outcome(
    msg: dict[str, Any], kind: str | None, received_at: float, st: EventStatus, signal: str
) -> Outcome:
    if st.status == "rejected":
        reason = rejection_reason(st, _SEGMENT_FIELDS)
        return _outcome(msg, kind, received_at, "rejected", st.code or "invalid", reason)
    return Outcome(
        received_at=received_at,
        transport="segment",
        message_id=st.event_id,
        kind=str(msg.get("type") or kind or ""),
        outcome="accepted" if st.status == "accepted" else "duplicate",
        event_id=st.event_id,
        event_type=signal,
        sample=sample_of(msg),
    )


class SegmentMessage(BaseModel):
    """The fields of a Segment message the mapping reads (app/ingest/segment.py); Segment
    sends more, which are ignored (``integrations`` among them). Documentation only: a
    message that does not fit is rejected alone (see the source's debugger), not the
    request, as Segment's SDKs expect."""

    model_config = ConfigDict(extra="allow")

    type: Text = Field(default=None, description="track, identify, page, screen, group, alias")
    messageId: Text = None
    userId: Text = None
    anonymousId: Text = None
    groupId: Text = None
    previousId: Text = None
    event: Text = None
    name: Text = None
    properties: Object = None
    traits: Object = None
    context: Object = None
    timestamp: Timestamp = None
    originalTimestamp: Timestamp = None
    sentAt: Timestamp = None
    writeKey: Text = Field(default=None, description="the source's write key (browser SDKs)")


class SegmentBatch(BaseModel):
    model_config = ConfigDict(extra="allow")

    batch: list[SegmentMessage] = Field(max_length=MAX_BATCH_MESSAGES)
    sentAt: Timestamp = Field(default=None, description="when the client sent the batch")
    writeKey: Text = None


@dataclass(frozen=True)
class Sent:
    """A body as sent, with its size unpacked (checked against Segment's limits)."""

    data: Any
    size: int


def _as_sent(data: Any, raw: bytes) -> Sent:
    return Sent(data, len(raw))  # checked message by message in handle_segment


# A gzip body is held to Segment's batch limit as it is unpacked, before it is parsed.
BATCH_BODY = RequestBody(SegmentBatch, validate=_as_sent, unpacked=MAX_BATCH_BYTES)
MESSAGE_BODY = RequestBody(SegmentMessage, validate=_as_sent, unpacked=MAX_BATCH_BYTES)
SEGMENT_DOC: dict[str, Any] = {
    "summary": "Segment-compatible",
    "response_model": SegmentResponse,
    "responses": INGEST_ERRORS,
}
# The browser SDK's short paths: /v1/t is track, /v1/b a batch.
SHORT = {"t": "track", "p": "page", "i": "identify", "g": "group", "a": "alias", "s": "screen"}


def _batch_route(path: str, operation_id: str) -> None:
    async def handler(
        request: Request, data: Annotated[Sent, BATCH_BODY], runtime: RuntimeDep, response: Response
    ) -> SegmentResponse:
        return await handle_segment(request, runtime, data.data, None, data.size, response)

    handler.__doc__ = "Segment HTTP Tracking API batch (what the SDKs send)."
    router.add_api_route(path, handler, methods=["POST"], operation_id=operation_id, **SEGMENT_DOC)


def _single_route(path: str, kind: str, operation_id: str) -> None:
    async def handler(
        request: Request,
        data: Annotated[Sent, MESSAGE_BODY],
        runtime: RuntimeDep,
        response: Response,
    ) -> SegmentResponse:
        return await handle_segment(request, runtime, data.data, kind, data.size, response)

    handler.__doc__ = f"Segment HTTP Tracking API `{kind}` call."
    router.add_api_route(path, handler, methods=["POST"], operation_id=operation_id, **SEGMENT_DOC)


_batch_route("/segment/v1/batch", "segmentBatch")
_batch_route("/v1/batch", "segmentRootBatch")
_batch_route("/v1/b", "segmentBrowserBatch")
for _kind in SEGMENT_TYPES:
    _single_route(f"/segment/v1/{_kind}", _kind, f"segment_{_kind}")
    _single_route(f"/v1/{_kind}", _kind, f"segmentRoot_{_kind}")
for _short, _kind in SHORT.items():
    _single_route(f"/v1/{_short}", _kind, f"segmentBrowser_{_kind}")
