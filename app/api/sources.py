"""Admin API: sources (create, list, change, rotate the key, remove) and each source's
debugger, ``GET /v1/sources/{name}/recent``.

A ``segment`` source is created with a write key (shown once) for Segment's and
RudderStack's SDKs and the browser origins allowed to use it; a platform source
(``google_ads_lead_form``, ``calendly``, ``typeform``, ``intercom``, ``generic``) with the
secret its platform signs with and the hook URL to paste into the platform.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from app.api.body import BODY_ERRORS, RequestBody
from app.api.deps import RuntimeDep, SessionDep, after_commit
from app.api.keys import MAX_BURST, MAX_RATE
from app.api.read import ERRORS
from app.auth import AdminKey, ReadKey
from app.clock import iso
from app.errors import error_responses
from app.ingest import hooks
from app.runtime.service import Runtime
from app.sources import KINDS, Source, registry

router = APIRouter()
KIND_HELP = "one of " + ", ".join(KINDS)
Rate = Annotated[
    float | None,
    Field(default=None, gt=0, le=MAX_RATE, description="events per second; null: the default"),
]
Burst = Annotated[
    int | None,
    Field(default=None, ge=1, le=MAX_BURST, description="bucket size in events; null: default"),
]


class SourceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1, max_length=64, description="the events' `source`: a-z, 0-9, _ . -"
    )
    kind: str = Field(description=KIND_HELP)
    allowed_origins: list[str] | None = Field(
        default=None,
        description="segment: browser origins allowed to use the write key, e.g. "
        '"https://www.example.com", or "*"; none: server-side SDKs only',
    )
    secret: str | None = Field(
        default=None,
        description="platform sources: the platform's signing secret (required for intercom, "
        "its app's client secret); generated when left out",
    )
    signal: str | None = Field(
        default=None, description="platform sources: the signal its events score as"
    )
    config: dict[str, Any] | None = Field(
        default=None,
        description="generic: {mapping: {event_id, type, occurred_at, lead.email, …: "
        "JMESPath}, signature: {header, algorithm, encoding, prefix, timestamp_header, "
        "tolerance_seconds}}",
    )
    rate_limit: Rate = None
    rate_burst: Burst = None


class SourcePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allowed_origins: list[str] | None = None
    secret: str | None = None
    signal: str | None = None
    config: dict[str, Any] | None = None
    rate_limit: Rate = None
    rate_burst: Burst = None


class SourceView(BaseModel):
    name: str
    kind: str
    allowed_origins: list[str]
    signal: str | None = Field(description="the signal its events score as (platform sources)")
    config: dict[str, Any]
    hook_url: str | None = Field(description="platform sources: the URL to paste into it")
    write_key_prefix: str | None = Field(description="segment: the write key's first characters")
    created_at: str | None
    updated_at: str | None
    rate_limit: float | None = Field(description="events per second; null: the default")
    rate_burst: int | None = Field(description="null: the default")
    write_key: str | None = Field(default=None, description="shown only when created or rotated")
    secret: str | None = Field(
        default=None, description="a generated secret, shown only when created or rotated"
    )


class SourceList(BaseModel):
    sources: list[SourceView]


class RecentMessage(BaseModel):
    received_at: str | None
    transport: str = Field(description="segment | hook")
    message_id: str
    kind: str = Field(description="the message's type: track, page, invitee.created, …")
    outcome: str = Field(description="accepted | duplicate | ignored | rejected")
    code: str | None
    reason: str | None
    event_id: str | None
    event_type: str | None
    sample: str | None = Field(description="the message as received, cut to 2 KB")


class RecentMessages(BaseModel):
    source: str
    messages: list[RecentMessage] = Field(description="newest first, at most 100")


def _hook_url(request: Request, runtime: Runtime, name: str) -> str:
    base = runtime.settings.public_url or str(request.base_url).rstrip("/")
    return f"{base}/v1/hooks/{name}"


def _view(
    request: Request,
    runtime: Runtime,
    s: Source,
    *,
    write_key: str | None = None,
    secret: str | None = None,
) -> SourceView:
    is_hook = s.kind != "segment"
    return SourceView(
        name=s.name,
        kind=s.kind,
        allowed_origins=list(s.allowed_origins),
        signal=(s.signal or hooks.DEFAULT_SIGNAL.get(s.kind)) if is_hook else None,
        config=s.config,
        hook_url=_hook_url(request, runtime, s.name) if is_hook else None,
        write_key_prefix=s.write_key_prefix,
        created_at=iso(s.created_at),
        updated_at=iso(s.updated_at),
        rate_limit=s.rate_limit,
        rate_burst=s.rate_burst,
        write_key=write_key,
        secret=secret,
    )


def _spec(body: SourceIn | SourcePatch) -> registry.SourceSpec:
    return registry.SourceSpec(
        allowed_origins=body.allowed_origins,
        signal=body.signal,
        config=body.config,
        secret=body.secret,
        quota=body.model_dump(include={"rate_limit", "rate_burst"}, exclude_unset=True),
    )


@router.post(
    "/v1/sources",
    operation_id="createSource",
    status_code=201,
    summary="Register a source; its write key or generated secret is shown once",
    response_model=SourceView,
    responses={**BODY_ERRORS, **error_responses(409)},
)
async def create_source(
    key: AdminKey,
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    body: Annotated[SourceIn, RequestBody(SourceIn)],
) -> SourceView:
    source, write_key, secret = await registry.create_source(
        session,
        body.name,
        body.kind,
        _spec(body),
        signals=runtime.current_policy().signals,
        box=runtime.box,
        now=runtime.clock.now(),
    )
    after_commit(session, runtime.sources.invalidate)
    return _view(request, runtime, source, write_key=write_key, secret=secret)


@router.get(
    "/v1/sources",
    operation_id="listSources",
    summary="Registered sources (never their keys or secrets)",
    response_model=SourceList,
    responses=ERRORS,
)
async def list_sources(
    key: ReadKey, request: Request, session: SessionDep, runtime: RuntimeDep
) -> SourceList:
    rows = await registry.source_rows(session)
    return SourceList(sources=[_view(request, runtime, s) for s in rows])


@router.get(
    "/v1/sources/{name}",
    operation_id="getSource",
    summary="One source",
    response_model=SourceView,
    responses=ERRORS,
)
async def get_source(
    name: str, key: ReadKey, request: Request, session: SessionDep, runtime: RuntimeDep
) -> SourceView:
    return _view(request, runtime, await registry.source_row(session, name))


@router.patch(
    "/v1/sources/{name}",
    operation_id="updateSource",
    summary="Change a source's allowed origins, secret, signal or config",
    response_model=SourceView,
    responses=BODY_ERRORS,
)
async def update_source(
    name: str,
    key: AdminKey,
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    body: Annotated[SourcePatch, RequestBody(SourcePatch)],
) -> SourceView:
    source = await registry.update_source(
        session,
        name,
        _spec(body),
        signals=runtime.current_policy().signals,
        box=runtime.box,
        now=runtime.clock.now(),
    )
    after_commit(session, runtime.sources.invalidate)
    return _view(request, runtime, source)


@router.post(
    "/v1/sources/{name}/rotate-key",
    operation_id="rotateSourceKey",
    summary="A new write key (segment) or generated secret; the old one stops working",
    response_model=SourceView,
    responses={**ERRORS, **error_responses(422)},
)
async def rotate_source_key(
    name: str, key: AdminKey, request: Request, session: SessionDep, runtime: RuntimeDep
) -> SourceView:
    source, new = await registry.rotate_source(
        session, name, box=runtime.box, now=runtime.clock.now()
    )
    after_commit(session, runtime.sources.invalidate)
    if source.kind == "segment":
        return _view(request, runtime, source, write_key=new)
    return _view(request, runtime, source, secret=new)


@router.delete(
    "/v1/sources/{name}",
    operation_id="deleteSource",
    status_code=204,
    summary="Remove a source: its write key or hook stops working (its events stay)",
    responses=ERRORS,
)
async def delete_source(
    name: str, key: AdminKey, session: SessionDep, runtime: RuntimeDep
) -> Response:
    await registry.delete_source(session, name)
    after_commit(session, runtime.sources.invalidate)
    after_commit(session, lambda: runtime.debugger.forget(name))
    return Response(status_code=204)


@router.get(
    "/v1/sources/{name}/recent",
    operation_id="sourceDebugger",
    summary="The source's last 100 messages and what became of each (why, if rejected)",
    response_model=RecentMessages,
    responses=ERRORS,
)
async def source_recent(
    name: str, key: ReadKey, session: SessionDep, runtime: RuntimeDep
) -> RecentMessages:
    recent = runtime.debugger.recent(name)
    if not recent:  # an API key's name has a debugger too, but only once it has sent
        await registry.source_row(session, name)  # 404 for an unknown source
    return RecentMessages(source=name, messages=[RecentMessage(**o.as_dict()) for o in recent])
