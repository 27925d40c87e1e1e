"""The Segment HTTP Tracking API: ``/segment/v1/{batch,track,identify,…}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from app.api.body import parse_json, read_body
from app.api.events import INGEST_ERRORS
from app.auth import SegmentKey
from app.errors import InvalidInput
from app.ingest.native import validate_batch
from app.ingest.segment import SEGMENT_TYPES, to_native
from app.runtime.service import Runtime

log = logging.getLogger(__name__)
router = APIRouter()


class SegmentResponse(BaseModel):
    success: bool


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
    events, slots = validate_batch(valid, runtime.policy, received_at, transport="segment")
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
