"""The Segment HTTP Tracking API: ``/segment/v1/{batch,track,identify,…}``."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from app.api.body import RequestBody
from app.api.deps import RuntimeDep
from app.api.events import INGEST_ERRORS
from app.auth import SegmentKey
from app.errors import InvalidInput
from app.ingest.native import validate_batch
from app.ingest.segment import SEGMENT_TYPES, to_native
from app.runtime.service import Runtime

log = logging.getLogger(__name__)
router = APIRouter()


# Documented without null: Segment's SDKs leave a field out rather than send null.
Text = str | SkipJsonSchema[None]
Object = dict[str, Any] | SkipJsonSchema[None]
Timestamp = AwareDatetime | SkipJsonSchema[None]


class SegmentResponse(BaseModel):
    success: bool


async def _segment(runtime: Runtime, data: Any, kind: str | None, key_name: str) -> SegmentResponse:
    assert runtime.policy is not None
    received_at = runtime.clock.now()
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
    events, slots = validate_batch(valid, runtime.policy, received_at, transport="segment")
    for slot in slots:
        if slot is not None:
            log.info("segment message rejected: %s %s", slot.code, slot.message)
    if events:
        await runtime.ingest(events)
    # Segment's SDKs treat anything but 200 as an error and retry; invalid messages are
    # dropped (and counted) rather than retried forever.
    return SegmentResponse(success=True)


class SegmentMessage(BaseModel):
    """The fields of a Segment message the mapping reads (app/ingest/segment.py); Segment
    sends more, which are ignored. Documentation only: a message that does not fit is
    dropped (and counted), not refused, as Segment's SDKs expect."""

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


class SegmentBatch(BaseModel):
    model_config = ConfigDict(extra="allow")

    batch: list[SegmentMessage]


def _as_sent(data: Any, _raw: bytes) -> Any:
    return data  # checked message by message in _segment


BATCH_BODY = RequestBody(SegmentBatch, validate=_as_sent)
MESSAGE_BODY = RequestBody(SegmentMessage, validate=_as_sent)
SEGMENT_DOC: dict[str, Any] = {
    "summary": "Segment-compatible",
    "response_model": SegmentResponse,
    "responses": INGEST_ERRORS,
}


@router.post("/segment/v1/batch", operation_id="segmentBatch", **SEGMENT_DOC)
async def segment_batch(
    key: SegmentKey, data: Annotated[Any, BATCH_BODY], runtime: RuntimeDep
) -> SegmentResponse:
    """Segment HTTP Tracking API batch (what the SDKs send)."""
    return await _segment(runtime, data, None, key.name)


def _single(kind: str) -> None:
    async def handler(
        key: SegmentKey, data: Annotated[Any, MESSAGE_BODY], runtime: RuntimeDep
    ) -> SegmentResponse:
        return await _segment(runtime, data, kind, key.name)

    handler.__doc__ = f"Segment HTTP Tracking API `{kind}` call."
    router.add_api_route(
        f"/segment/v1/{kind}",
        handler,
        methods=["POST"],
        operation_id=f"segment_{kind}",
        **SEGMENT_DOC,
    )


for _kind in ("track", "identify", "page", "screen", "group", "alias"):
    _single(_kind)
