"""The policy: the active version, its history, and a new version (or its dry run, or a
shadow run beside the one in force: app.api.shadow); a stored version made active again.

A dry run re-scores recent leads under both policies (``band_changes``) and replays the
last week of recorded batches (at most ``DRY_RUN_MAX_EVENTS`` events, the newest) under the
candidate and under the versions then in force, both from an empty state, for a decision
diff; it waits for that replay up to ``DRY_RUN_WAIT_SECONDS`` and otherwise names the job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.api import shadow
from app.api.body import ADMIN_JSON, BODY_ERRORS, MAX_POLICY_BODY, YAML, RequestBody
from app.api.deps import PolicyDep, RuntimeDep, SessionDep, after_commit
from app.api.views import ERRORS
from app.auth import AdminKey, ReadKey
from app.clock import iso
from app.db import batches, events, policies
from app.errors import Conflict, InvalidInput, NotFound, error_responses
from app.policy.bounded import MAX_DOCUMENT_BYTES
from app.policy.impact.dry_run import band_changes
from app.policy.impact.jobs import queue_and_wait
from app.policy.schema import CompiledPolicy, PolicyDoc
from app.policy.store import (
    PROPOSED,
    PolicyUnloadable,
    in_force_version,
    load_document,
    save_version,
    shown_status,
    storable,
    stored_size,
    validate_or_raise,
)
from app.runtime.service import Runtime

router = APIRouter()

DRY_RUN_WINDOW_SECONDS = 7 * 86400.0
DRY_RUN_MAX_EVENTS = 50_000
DRY_RUN_WAIT_SECONDS = 10.0
CONFLICTS = {**ERRORS, **error_responses(409)}


class PolicyVersionView(BaseModel):
    version: int
    created_at: str | None
    created_by: str | None
    comment: str | None
    status: Literal["active", "superseded", "proposed", "unloadable"] = Field(
        description='"active": the version in force; "superseded": applied once, replaced '
        'by a newer version since; "proposed": from calibration, waiting for review (apply '
        'it with PUT /v1/policy); "unloadable": applied, but the service cannot load it '
        "(stored by an older release or by hand) and runs the newest version that loads "
        "(GET /readyz says why)",
    )


class PolicyView(PolicyVersionView):
    policy: dict[str, Any]
    report: dict[str, Any] | None = Field(
        default=None, description="for a proposed version: what it would change and why"
    )


class PolicyVersions(BaseModel):
    versions: list[PolicyVersionView]


class DryRunReplay(BaseModel):
    id: str
    url: str = Field(description="GET it for the progress and, once done, the diff")
    status: str = Field(description="queued | running | done | failed")


class DryRun(BaseModel):
    valid: bool
    would_be_version: int
    changes: list[str]
    leads_evaluated: int
    band_changes: dict[str, int]
    examples: list[dict[str, Any]]
    decision_diff: dict[str, Any] | None = Field(
        description="the last 7 days of recorded batches (at most the newest 50,000 events) "
        "replayed from an empty state under the candidate and under the versions then in "
        "force: what the candidate decides differently (the shape of GET /v1/replays/{id}'s "
        "diff); null when the replay was not done within 10 s (poll `replay.url`)"
    )
    replay: DryRunReplay


def _version_view(r: Any, in_force: int | None, runtime: Runtime) -> dict[str, Any]:
    unloadable = r.version in runtime.policy_skipped
    return {
        "version": r.version,
        "created_at": iso(r.created_at),
        "created_by": r.created_by,
        "comment": r.comment,
        "status": "unloadable" if unloadable else shown_status(r.status, r.version, in_force),
    }


def _cannot_show(version: int, why: str) -> Conflict:
    return Conflict(
        f"policy version {version} cannot be shown: its stored document is {why}",
        code="policy_unloadable",
        field="version",
    )


def _policy_view(r: Any, in_force: int | None, runtime: Runtime) -> PolicyView:
    # A document written into the table by hand can be anything: shown only if it is a
    # JSON object.
    try:
        document = orjson.loads(r.document)
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:  # orjson.JSONDecodeError is one
        raise _cannot_show(r.version, str(exc)) from None
    return PolicyView(
        **_version_view(r, in_force, runtime),
        policy=document,
        report=orjson.loads(r.report) if r.report else None,
    )


@router.get(
    "/v1/policy",
    operation_id="getPolicy",
    summary="The policy in force, or a stored version by number",
    response_model=PolicyView,
    responses=ERRORS,
)
async def get_policy(
    key: ReadKey,
    session: SessionDep,
    runtime: RuntimeDep,
    version: Annotated[int | None, Query(ge=1)] = None,
) -> PolicyView:
    in_force = await in_force_version(session, skip=runtime.policy_skipped)
    wanted = in_force if version is None else version
    size = await stored_size(session, wanted) if wanted is not None else None
    if wanted is None or size is None:
        raise NotFound(f"no policy version {version}", field="version")
    if size > MAX_DOCUMENT_BYTES:  # not fetched: a hand-written row can be gigabytes
        raise _cannot_show(wanted, f"over {MAX_DOCUMENT_BYTES} bytes")
    row = (await session.execute(select(policies).where(policies.c.version == wanted))).one()
    return _policy_view(row, in_force, runtime)


@router.get(
    "/v1/policy/versions",
    operation_id="listPolicyVersions",
    summary="Every stored policy version",
    response_model=PolicyVersions,
    responses=ERRORS,
)
async def list_policy_versions(
    key: ReadKey, session: SessionDep, runtime: RuntimeDep
) -> PolicyVersions:
    """Newest first. The one in force is ``active``; applied versions before it are
    ``superseded``; calibration's proposals are ``proposed`` until applied; an applied
    version the service cannot load is ``unloadable``."""
    in_force = await in_force_version(session, skip=runtime.policy_skipped)
    rows = await session.execute(
        select(
            policies.c.version,
            policies.c.created_at,
            policies.c.created_by,
            policies.c.comment,
            policies.c.status,
        ).order_by(policies.c.version.desc())
    )
    return PolicyVersions(
        versions=[PolicyVersionView(**_version_view(r, in_force, runtime)) for r in rows]
    )


def describe_changes(old: PolicyDoc, new: PolicyDoc) -> list[str]:
    out = []
    for name in sorted(set(old.signals) | set(new.signals)):
        a, b = old.signals.get(name), new.signals.get(name)
        if a is None:
            out.append(f"signal {name} added ({b.points if b else 0:+g} points)")
        elif b is None:
            out.append(f"signal {name} removed")
        elif a != b:
            out.append(
                f"signal {name}: {a.points:+g} → {b.points:+g} points, half-life "
                f"{a.half_life:g}s → {b.half_life:g}s"
            )
    old_fit = {r.name: r for r in old.fit.rules}
    new_fit = {r.name: r for r in new.fit.rules}
    for name in sorted(set(old_fit) | set(new_fit)):
        if old_fit.get(name) != new_fit.get(name):
            out.append(
                f"fit rule {name} "
                + (
                    "added"
                    if name not in old_fit
                    else "removed"
                    if name not in new_fit
                    else "changed"
                )
            )
    if [r.model_dump() for r in old.routing.rules] != [r.model_dump() for r in new.routing.rules]:
        out.append("routing rules changed")
    if old.scoring != new.scoring:
        out.append("bands or score limits changed")
    for section in ("lists", "segment", "teams", "feedback"):
        if getattr(old, section) != getattr(new, section):
            out.append(f"{section} changed")
    if old.routing.cooldown != new.routing.cooldown:
        out.append(f"cooldown {old.routing.cooldown:g}s → {new.routing.cooldown:g}s")
    return out


@dataclass(frozen=True)
class PolicyUpload:
    doc: PolicyDoc
    text: str  # as sent (YAML keeps its comments), stored beside the document


def _upload(data: Any, raw: bytes) -> PolicyUpload:
    return PolicyUpload(validate_or_raise(data), raw.decode("utf-8", "replace"))


# At most 1 MiB as sent and once parsed (as JSON); YAML aliases and nesting bounded
# (app.policy.bounded); decoded off the event loop when large.
POLICY_BODY = RequestBody(
    PolicyDoc, ADMIN_JSON, YAML, validate=_upload, limit=MAX_POLICY_BODY, admin=True
)


async def dry_run_since(session: AsyncSession, now: float) -> float:
    """The start of a dry run's window: a week back, later if that holds more than
    ``DRY_RUN_MAX_EVENTS`` events (then just after the batch of the newest event past the
    cap, so that the window holds at most that many)."""
    since = now - DRY_RUN_WINDOW_SECONDS
    past = (
        await session.execute(
            select(batches.c.at)
            .join(events, events.c.batch_id == batches.c.id)
            .order_by(events.c.batch_id.desc())
            .offset(DRY_RUN_MAX_EVENTS)
            .limit(1)
        )
    ).scalar()
    if past is not None:
        since = max(since, math.nextafter(past, math.inf))
    return since


async def dry_run_replay(
    runtime: Runtime, session: AsyncSession, doc: PolicyDoc, *, created_by: str, now: float
) -> tuple[dict[str, Any] | None, DryRunReplay]:
    """Queue the dry run's replay (committed in a transaction of its own: the replay process
    must see it) and wait for it up to ``DRY_RUN_WAIT_SECONDS``; its diff (``None`` if not
    done by then) and the job."""
    document, _ = storable(doc, 0)
    row = await queue_and_wait(
        runtime.sessionmaker,
        poke=runtime.replays.poke,
        within=DRY_RUN_WAIT_SECONDS,
        kind="dry_run",
        version=None,
        document=document,
        since=await dry_run_since(session, now),
        until=None,
        start="empty",
        examples=5,
        created_by=created_by,
        now=now,
    )
    job = DryRunReplay(id=row.id, url=f"/v1/replays/{row.id}", status=row.status)
    done = row.status == "done" and row.result is not None
    return (orjson.loads(row.result) if done else None), job


@router.put(
    "/v1/policy",
    operation_id="putPolicy",
    status_code=200,
    summary="Validate and apply a new policy version (or preview it with dry_run=true, or run "
    "it beside the one in force with mode=shadow)",
    response_model=PolicyView | DryRun | shadow.ShadowView,
    responses={
        **BODY_ERRORS,
        **error_responses(409),
        202: {"model": shadow.ShadowView, "description": "mode=shadow: the shadow, queued"},
    },
)
async def put_policy(
    key: AdminKey,
    upload: Annotated[PolicyUpload, POLICY_BODY],
    session: SessionDep,
    runtime: RuntimeDep,
    policy: PolicyDep,
    response: Response,
    dry_run: bool = False,
    mode: Annotated[
        Literal["apply", "shadow"],
        Query(
            description="shadow: run the policy beside the one in force (202; GET "
            "/v1/policy/shadow), recording its decisions and delivering none"
        ),
    ] = "apply",
    comment: Annotated[str | None, Query(max_length=500)] = None,
) -> PolicyView | DryRun | shadow.ShadowView:
    doc = upload.doc
    now = runtime.clock.now()
    if mode == "shadow":
        if dry_run:
            raise InvalidInput("dry_run: not with mode=shadow", field="dry_run")
        row = await shadow.start_shadow(session, doc, created_by=key.name, now=now)
        after_commit(session, runtime.replays.poke)
        response.status_code = 202
        return shadow.shadow_view(row)
    if dry_run:
        candidate = CompiledPolicy(policy.version + 1, doc)
        n, changes, examples = await band_changes(session, policy, candidate, now)
        decided, job = await dry_run_replay(runtime, session, doc, created_by=key.name, now=now)
        return DryRun(
            valid=True,
            would_be_version=policy.version + 1,
            changes=describe_changes(policy.doc, doc),
            leads_evaluated=n,
            band_changes=changes,
            examples=examples,
            decision_diff=decided,
            replay=job,
        )
    compiled = await save_version(
        session, doc, source_text=upload.text, created_by=key.name, now=now, comment=comment
    )
    return await _in_force_now(session, runtime, compiled)


async def _in_force_now(
    session: AsyncSession, runtime: Runtime, compiled: CompiledPolicy
) -> PolicyView:
    """The version just saved, put in force once the request commits; its view."""
    after_commit(session, lambda: runtime.set_policy(compiled))
    row = (
        await session.execute(select(policies).where(policies.c.version == compiled.version))
    ).one()
    return _policy_view(row, compiled.version, runtime)


@router.post(
    "/v1/policy/shadow/promote",
    operation_id="promoteShadowPolicy",
    summary="Make the shadow policy the next version, in force at once",
    response_model=PolicyView,
    responses=CONFLICTS,
)
async def promote_shadow(key: AdminKey, session: SessionDep, runtime: RuntimeDep) -> PolicyView:
    row = await shadow.end_shadow(session, "promoted")
    try:
        candidate = load_document(0, row.policy_text or "")
    except PolicyUnloadable as exc:
        raise Conflict(
            f"shadow {row.id}'s policy does not load: {exc.reason}", code="policy_unloadable"
        ) from None
    compiled = await save_version(
        session,
        candidate.doc,
        source_text=None,
        created_by=key.name,
        now=runtime.clock.now(),
        comment=f"promoted from shadow {row.id}",
    )
    return await _in_force_now(session, runtime, compiled)


@router.post(
    "/v1/policy/versions/{version}/activate",
    operation_id="activatePolicyVersion",
    summary="Put a stored version in force again (recorded as a new version)",
    response_model=PolicyView,
    responses=CONFLICTS,
)
async def activate_version(
    key: AdminKey,
    session: SessionDep,
    runtime: RuntimeDep,
    version: Annotated[int, Path(ge=1)],
) -> PolicyView:
    """Version ``version``'s stored document becomes the next version (comment "rollback to
    version N"; for a calibration proposal "activate proposed version N"), in force at once.
    The version list keeps the history: the new one ``active``, the others ``superseded``."""
    size = await stored_size(session, version)
    if size is None:
        raise NotFound(
            f"no policy version {version}", code="policy_version_not_found", field="version"
        )
    if size > MAX_DOCUMENT_BYTES:  # not fetched: a hand-written row can be gigabytes
        raise _cannot_show(version, f"over {MAX_DOCUMENT_BYTES} bytes")
    row = (await session.execute(select(policies).where(policies.c.version == version))).one()
    try:
        stored = load_document(version, row.document)
    except PolicyUnloadable as exc:
        raise Conflict(
            f"policy version {version} cannot be activated: {exc.reason}",
            code="policy_unloadable",
            field="version",
        ) from None
    proposed = row.status == PROPOSED
    compiled = await save_version(
        session,
        stored.doc,
        source_text=row.source_text,
        created_by=key.name,
        now=runtime.clock.now(),
        comment=f"activate proposed version {version}"
        if proposed
        else f"rollback to version {version}",
    )
    return await _in_force_now(session, runtime, compiled)
