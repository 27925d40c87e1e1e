"""``POST /v1/hooks/{name}``: a platform's own webhook, posted unchanged.

The request is verified exactly as its platform signs it (``app.ingest.hooks``), mapped to
native events, validated and ingested like any other, idempotent by the platform's own
id (a retried webhook counts once). A message that carries nothing to score (a ping, a
test lead) or cannot be used (no email or anonymous id) is answered with the platform's
success status, so the platform does not retry it forever, and shown with the reason in
the source's debugger. A wrong or stale signature is a 401 and scores nothing.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.body import read_body
from app.api.deps import RuntimeDep
from app.api.ratelimit import charge
from app.errors import AppError, NotFound, error_responses
from app.ingest import hooks
from app.ingest.native import merge, validate_batch
from app.runtime.service import Runtime
from app.sources import HOOK_KINDS, Outcome, Source
from app.sources.debugger import rejection_reason, sample_of

router = APIRouter()


class HookRefused(AppError):
    """A platform's request refused before anything is stored (signature, body)."""

    def __init__(self, exc: hooks.HookRejected) -> None:
        challenge = {"WWW-Authenticate": 'Signature realm="intent-router"'}
        super().__init__(
            exc.message,
            code=exc.code,
            field=exc.field,
            headers=challenge if exc.status == 401 else None,
        )
        self.status = exc.status


@router.post(
    "/v1/hooks/{name}",
    operation_id="platformHook",
    summary="A platform's webhook (Google Ads lead forms, Calendly, Typeform, Intercom, generic)",
    description="Verified with the source's secret as its platform signs; no API key.",
    responses=error_responses(400, 401, 404, 413, 422, 429, 503),
)
async def platform_hook(name: str, request: Request, runtime: RuntimeDep) -> JSONResponse:
    source = await runtime.sources.named(name)
    if source is None or source.kind not in HOOK_KINDS:
        raise NotFound(f'no webhook source named "{name[:64]}"', code="unknown_source")
    received_at = runtime.clock.now()
    body = await read_body(request)
    hook = source.hook()
    try:
        payload = hooks.parse(hook, body)
        hooks.verify(hook, request.headers, body, received_at, payload=payload)
    except hooks.HookRejected as exc:
        runtime.debugger.record(
            source.name,
            Outcome(
                received_at=received_at,
                transport="hook",
                message_id="",
                kind=source.kind,
                outcome="rejected",
                code=exc.code,
                reason=exc.message,
                sample=body[:2048].decode("utf-8", "replace") if exc.status != 401 else None,
            ),
        )
        raise HookRefused(exc) from None
    messages = hooks.to_native(hook, payload, received_at)
    quota = charge(runtime, source, len(messages))  # verified first: only the platform pays
    await _ingest(runtime, source, messages, received_at)
    status, answer = hooks.answer(source.kind)
    return JSONResponse(answer, status_code=status, headers=quota)


# The code a message the preset did not map is counted under.
_CODES = {"rejected": "no_identity", "test": "test_lead", "ignored": "no_signal"}


async def _ingest(
    runtime: Runtime, source: Source, messages: list[hooks.HookMessage], received_at: float
) -> None:
    mapped = [m for m in messages if m.event is not None]
    events, slots = validate_batch(
        [m.event for m in mapped], runtime.current_policy(), received_at, transport="hook"
    )
    ingested = await runtime.ingest(events) if events else []
    fate = {id(m): st for m, st in zip(mapped, merge(slots, ingested), strict=True)}
    for m in messages:
        st = fate.get(id(m))
        code: str | None
        reason: str | None
        if st is None:
            outcome, code, reason = m.outcome, _CODES.get(m.outcome, m.outcome), m.reason
        elif st.status == "rejected":
            outcome, code = "rejected", st.code
            reason = rejection_reason(st)
        else:
            outcome, code, reason = st.status, None, None
        runtime.debugger.record(
            source.name,
            Outcome(
                received_at=received_at,
                transport="hook",
                message_id=m.message_id,
                kind=str((m.event or {}).get("properties", {}).get("event_name") or source.kind),
                outcome="ignored" if outcome == "test" else outcome,
                code=code,
                reason=reason,
                event_id=(m.event or {}).get("event_id"),
                event_type=(m.event or {}).get("type"),
                sample=sample_of(m.event) if m.event is not None else None,
            ),
        )
