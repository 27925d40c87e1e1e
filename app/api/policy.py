"""The policy: the active version, its history, and a new version (or its dry run)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import select

from app.api.body import ADMIN_JSON, BODY_ERRORS, MAX_POLICY_BODY, YAML, RequestBody
from app.api.deps import PolicyDep, RuntimeDep, SessionDep, after_commit
from app.api.views import ERRORS
from app.auth import AdminKey, ReadKey
from app.clock import iso
from app.db import policies
from app.errors import Conflict, NotFound
from app.policy.bounded import MAX_DOCUMENT_BYTES
from app.policy.impact.dry_run import band_changes
from app.policy.schema import CompiledPolicy, PolicyDoc
from app.policy.store import (
    in_force_version,
    save_version,
    shown_status,
    stored_size,
    validate_or_raise,
)
from app.runtime.service import Runtime

router = APIRouter()


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


class DryRun(BaseModel):
    valid: bool
    would_be_version: int
    changes: list[str]
    leads_evaluated: int
    band_changes: dict[str, int]
    examples: list[dict[str, Any]]


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


@router.put(
    "/v1/policy",
    operation_id="putPolicy",
    summary="Validate and apply a new policy version (or preview it with dry_run=true)",
    response_model=PolicyView | DryRun,
    responses=BODY_ERRORS,
)
async def put_policy(
    key: AdminKey,
    upload: Annotated[PolicyUpload, POLICY_BODY],
    session: SessionDep,
    runtime: RuntimeDep,
    policy: PolicyDep,
    dry_run: bool = False,
    comment: Annotated[str | None, Query(max_length=500)] = None,
) -> PolicyView | DryRun:
    doc = upload.doc
    now = runtime.clock.now()
    if dry_run:
        candidate = CompiledPolicy(policy.version + 1, doc)
        n, changes, examples = await band_changes(session, policy, candidate, now)
        return DryRun(
            valid=True,
            would_be_version=policy.version + 1,
            changes=describe_changes(policy.doc, doc),
            leads_evaluated=n,
            band_changes=changes,
            examples=examples,
        )
    compiled = await save_version(
        session, doc, source_text=upload.text, created_by=key.name, now=now, comment=comment
    )
    after_commit(session, lambda: runtime.set_policy(compiled))
    row = (
        await session.execute(select(policies).where(policies.c.version == compiled.version))
    ).one()
    return _policy_view(row, compiled.version, runtime)
