"""Policy versions in the database; the newest applied version is the one in force.

A version is stored as ``active`` (applied: PUT /v1/policy, a learned rejection, the
shipped default) or ``proposed`` (calibration's, kept for review; it never takes effect by
itself). Which applied version is in force follows from the order, so the stored status
never changes; ``shown_status`` says it the way a reader of the version list needs it:
the one in force ``active``, the applied ones before it ``superseded``.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import dumps, policies
from app.errors import InvalidInput
from app.policy.defaults import default_policy_raw, default_policy_text
from app.policy.schema import CompiledPolicy, PolicyDoc, parse_policy


def validate_or_raise(raw: Any) -> PolicyDoc:
    doc, errors = parse_policy(raw)
    if doc is None:
        raise InvalidInput(
            f"the policy is invalid: {errors[0]}"
            + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""),
            code="policy_invalid",
            field=errors[0].path or None,
            errors=[{"path": e.path, "message": e.message} for e in errors],
        )
    return doc


APPLIED = "active"
PROPOSED = "proposed"
SUPERSEDED = "superseded"


def shown_status(status: str, version: int, in_force: int | None) -> str:
    """``active`` for the version in force, ``superseded`` for an applied one before it,
    ``proposed`` for a calibration proposal (whatever its place)."""
    if status == APPLIED and in_force is not None and version < in_force:
        return SUPERSEDED
    return status


async def in_force_version(session: AsyncSession) -> int | None:
    """The version in force: the newest applied one."""
    version: int | None = await session.scalar(
        select(func.max(policies.c.version)).where(policies.c.status == APPLIED)
    )
    return version


async def active_policy(session: AsyncSession) -> CompiledPolicy | None:
    row = (
        await session.execute(
            select(policies)
            .where(policies.c.status == APPLIED)
            .order_by(policies.c.version.desc())
            .limit(1)
        )
    ).first()
    if row is None:
        return None
    doc = PolicyDoc.model_validate(orjson.loads(row.document))
    return CompiledPolicy(row.version, doc)


async def save_version(
    session: AsyncSession,
    doc: PolicyDoc,
    *,
    source_text: str | None,
    created_by: str | None,
    now: float,
    comment: str | None = None,
    status: str = APPLIED,
    report: str | None = None,
    version: int | None = None,
) -> CompiledPolicy:
    """Store ``doc`` as the next version (the caller commits); a ``proposed`` version is
    kept for review and does not take effect."""
    if version is None:
        current = (await session.execute(select(func.max(policies.c.version)))).scalar()
        version = (current or 0) + 1
    await session.execute(
        policies.insert().values(
            version=version,
            document=dumps(doc.model_dump(mode="json", by_alias=True, exclude_none=True)),
            source_text=source_text,
            created_at=now,
            created_by=created_by,
            comment=comment,
            status=status,
            report=report,
        )
    )
    return CompiledPolicy(version, doc)


async def ensure_default(session: AsyncSession, now: float) -> CompiledPolicy:
    """The active policy; on first start, the shipped default becomes version 1.

    Several processes may start at once on an empty database: each tries to insert
    version 1, one wins, the others fail on the key (the caller retries and reads it)."""
    policy = await active_policy(session)
    if policy is not None:
        return policy
    stored = await session.scalar(select(func.count()).select_from(policies))
    if stored:
        policy = await active_policy(session)  # another process made it a moment ago
        if policy is not None:
            return policy
    doc = validate_or_raise(default_policy_raw())
    return await save_version(
        session,
        doc,
        source_text=default_policy_text(),
        created_by="default",
        now=now,
        comment="shipped default policy",
        version=None if stored else 1,
    )
