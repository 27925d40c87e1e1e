"""Policy versions in the database; the newest applied version is the one in force.

A version is stored as ``active`` (applied: PUT /v1/policy, a learned rejection, the
shipped default) or ``proposed`` (calibration's, kept for review; it never takes effect by
itself). Which applied version is in force follows from the order, so the stored status
never changes; ``shown_status`` says it the way a reader of the version list needs it:
the one in force ``active``, the applied ones before it ``superseded``.

A version the service cannot load (stored by an older release, or written into the table
by hand) never stops it: ``load_in_force`` falls back to the newest version that loads and
says which ones it skipped and why. ``save_version`` stores only what loads again: the
document is serialised, bounded (``MAX_DOCUMENT_BYTES``) and read back the way a start-up
reads it before it is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import policies
from app.errors import AppError, InvalidInput
from app.policy.bounded import MAX_DOCUMENT_BYTES, load_json
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


async def in_force_version(session: AsyncSession, skip: Collection[int] = ()) -> int | None:
    """The version in force: the newest applied one, but for those known not to load."""
    query = select(func.max(policies.c.version)).where(policies.c.status == APPLIED)
    if skip:
        query = query.where(policies.c.version.not_in(list(skip)))
    version: int | None = await session.scalar(query)
    return version


def _sqlite_sizes(path: str, versions: Sequence[int]) -> dict[int, int]:
    """Bytes of each version's document as the row's header records them: SQLite's
    length() reads a TEXT value whole to count its characters (a hand-written row of
    600 MB would cost that much), incremental blob I/O does not read it at all."""
    uri = f"file:{quote(path)}?mode=ro"
    out: dict[int, int] = {}
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        for version in versions:  # ``version`` is the table's INTEGER PRIMARY KEY: the rowid
            try:
                with conn.blobopen("policies", "document", version, readonly=True) as blob:
                    out[version] = len(blob)
            except sqlite3.Error:
                continue  # no such row
    return out


async def document_sizes(session: AsyncSession, versions: Sequence[int]) -> dict[int, int]:
    """The size in bytes of each version's document, without fetching any of them (on
    PostgreSQL ``octet_length`` reads TOAST's header, not the value)."""
    if not versions:
        return {}
    bind = session.get_bind()
    path = bind.engine.url.database if bind.dialect.name == "sqlite" else None
    if path and path != ":memory:":
        return await asyncio.to_thread(_sqlite_sizes, path, versions)
    size = (
        func.octet_length(policies.c.document)
        if bind.dialect.name == "postgresql"
        else func.length(policies.c.document)
    )
    rows = await session.execute(
        select(policies.c.version, size).where(policies.c.version.in_(list(versions)))
    )
    return {version: n for version, n in rows.all()}


async def stored_size(session: AsyncSession, version: int) -> int | None:
    """The size of version ``version``'s document (``None``: no such version)."""
    return (await document_sizes(session, [version])).get(version)


class PolicyUnloadable(Exception):
    """A stored document that does not load; ``reason`` says why, in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def load_document(version: int, document: str | bytes) -> CompiledPolicy:
    """A stored document as the runtime uses it, through the same bounds and validation as
    an upload; ``PolicyUnloadable`` when it does not load."""
    if len(document) > MAX_DOCUMENT_BYTES:
        raise PolicyUnloadable(f"its document is over {MAX_DOCUMENT_BYTES} bytes")
    try:
        doc, errors = parse_policy(load_json(document))
        if doc is None:
            raise PolicyUnloadable(f"invalid: {errors[0]}")
        return CompiledPolicy(version, doc)
    except PolicyUnloadable:
        raise
    except AppError as exc:
        raise PolicyUnloadable(f"{exc.code}: {exc.message}") from None
    except Exception as exc:  # whatever else a stored document can do to the compiler
        raise PolicyUnloadable(f"{type(exc).__name__}: {exc}"[:300]) from None


@dataclass(frozen=True)
class InForce:
    """The policy to run (``None``: no applied version loads) and the newer applied
    versions passed over, each with its reason."""

    policy: CompiledPolicy | None
    skipped: dict[int, str] = field(default_factory=dict)


async def load_in_force(
    session: AsyncSession,
    *,
    current: CompiledPolicy | None = None,
    known: Mapping[int, str] | None = None,
) -> InForce:
    """The newest applied version that loads. Its length is read before its document, so
    an oversized one is never fetched; ``current`` (the version running) and ``known``
    (versions already found unloadable, with their reason) are not parsed again."""
    known = known or {}
    applied = list(
        await session.scalars(
            select(policies.c.version)
            .where(policies.c.status == APPLIED)
            .order_by(policies.c.version.desc())
        )
    )
    stop = applied.index(current.version) + 1 if current and current.version in applied else None
    sizes = await document_sizes(session, applied[:stop])
    skipped: dict[int, str] = {}
    for version in applied:
        length = sizes.get(version, 0)
        if current is not None and version == current.version:
            return InForce(current, skipped)
        reason = known.get(version)
        if reason is None and length > MAX_DOCUMENT_BYTES:
            reason = f"its document is over {MAX_DOCUMENT_BYTES} bytes ({length})"
        if reason is None:
            document = await session.scalar(
                select(policies.c.document).where(policies.c.version == version)
            )
            try:
                return InForce(load_document(version, document or ""), skipped)
            except PolicyUnloadable as exc:
                reason = exc.reason
        skipped[version] = reason
    return InForce(None, skipped)


async def active_policy(session: AsyncSession) -> CompiledPolicy | None:
    """The policy in force: the newest applied version that loads."""
    return (await load_in_force(session)).policy


def storable(doc: PolicyDoc, version: int) -> tuple[str, CompiledPolicy]:
    """The document as it will be stored, and the policy a start-up will load from it; a
    422 when it would be too large or would not load again."""
    try:
        raw = orjson.dumps(doc.model_dump(mode="json", by_alias=True, exclude_none=True))
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise InvalidInput(
            f"the policy cannot be stored: {exc}", code="policy_unloadable", field="body"
        ) from None
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise InvalidInput(
            f"the policy is {len(raw)} bytes as JSON; at most {MAX_DOCUMENT_BYTES}",
            code="document_too_large",
            field="body",
        )
    try:
        return raw.decode(), load_document(version, raw)
    except PolicyUnloadable as exc:
        raise InvalidInput(
            f"the policy would not load again: {exc.reason}", code="policy_unloadable"
        ) from None


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
    kept for review and does not take effect. What is returned is the stored document as
    a start-up will load it (``storable``)."""
    if version is None:
        current = (await session.execute(select(func.max(policies.c.version)))).scalar()
        version = (current or 0) + 1
    document, compiled = storable(doc, version)
    await session.execute(
        policies.insert().values(
            version=version,
            document=document,
            source_text=source_text,
            created_at=now,
            created_by=created_by,
            comment=comment,
            status=status,
            report=report,
        )
    )
    return compiled


async def ensure_in_force(session: AsyncSession, now: float) -> InForce:
    """The policy to run and the versions skipped; on first start the shipped default
    becomes version 1, and when no applied version loads it becomes the next version.

    Several processes may start at once on an empty database: each tries to insert
    version 1, one wins, the others fail on the key (the caller retries and reads it)."""
    found = await load_in_force(session)
    if found.policy is not None:
        return found
    stored = await session.scalar(select(func.count()).select_from(policies))
    if stored and not found.skipped:
        found = await load_in_force(session)  # another process made it a moment ago
        if found.policy is not None:
            return found
    doc = validate_or_raise(default_policy_raw())
    policy = await save_version(
        session,
        doc,
        source_text=default_policy_text(),
        created_by="default",
        now=now,
        comment="shipped default policy"
        + (" (no stored version could be loaded)" if found.skipped else ""),
        version=None if stored else 1,
    )
    return InForce(policy, found.skipped)


async def ensure_default(session: AsyncSession, now: float) -> CompiledPolicy:
    """The policy in force (``ensure_in_force`` without the versions skipped)."""
    policy = (await ensure_in_force(session, now)).policy
    assert policy is not None
    return policy
