"""Who a person is in the database: their lead, the leads merged into it, their identity
keys, and the values that identify them (what erasure scrubs out of stored text)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import identities, leads, loads

WEAK = ("anon:", "user:")
ERASED = "[erased]"
MIN_SUBSTRING = 4  # shorter identifiers are replaced only where they are a whole value


@dataclass
class Person:
    lead_id: str
    email: str | None
    # The lead and every lead merged into it (anonymous leads stitched to it later).
    lead_ids: list[str]
    # Identity keys: ``user:<id>`` and ``anon:<id>`` (the email is the lead id itself).
    identifiers: list[str]
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        """Everything ``events.lead_id`` can hold for this person (an event stores its
        strongest identifier as it arrived)."""
        return sorted({*self.lead_ids, *self.identifiers, *([self.email] if self.email else [])})

    def suppression_keys(self) -> list[str]:
        """The identifiers a later event could name this person by."""
        return sorted(
            {*self.identifiers, *(k for k in self.lead_ids if k.startswith(WEAK) or "@" in k)}
            | ({self.email} if self.email else set())
        )

    def scrubber(self, pseudonym: str) -> Scrubber:
        ids = set(self.keys)
        ids |= {k.split(":", 1)[1] for k in ids if k.startswith(WEAK)}  # raw ids, as sent
        # A short value (a country code) identifies nobody on its own and would match the
        # account's own fields: only the lead's section (replaced whole) had it.
        values = {v for v in _strings(self.attributes) if len(v.strip()) >= MIN_SUBSTRING}
        return Scrubber({i: pseudonym for i in ids} | {v: ERASED for v in values - ids})


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


class Scrubber:
    """Replaces a person's identifiers (by their pseudonym) and attribute values (by
    ``[erased]``) wherever they occur in a JSON document or a text."""

    def __init__(self, replacements: dict[str, str]) -> None:
        self._exact = replacements
        # Longest first: ``anon:abc`` goes before ``abc``.
        self._inner = sorted(
            ((k, v) for k, v in replacements.items() if len(k) >= MIN_SUBSTRING),
            key=lambda kv: -len(kv[0]),
        )

    def text(self, value: str) -> str:
        if value in self._exact:
            return self._exact[value]
        for old, new in self._inner:
            if old in value:
                value = value.replace(old, new)
        return value

    def doc(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(k): self.doc(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.doc(v) for v in value]
        return value


def normalise(identifier: str) -> str:
    """As the read API takes it: an email in lower case; ``anon:``/``user:`` as given."""
    key = identifier.strip()
    return key.lower() if "@" in key and not key.startswith(WEAK) else key


async def find_person(session: AsyncSession, identifier: str) -> Person | None:
    """The person any of their identifiers names (email, ``anon:<id>``, ``user:<id>`` or
    the lead id), following merges; None when no lead has it."""
    key = normalise(identifier)
    target: str | None = key
    if key.startswith(WEAK):
        mapped = await session.scalar(
            select(identities.c.lead_id).where(identities.c.identifier == key)
        )
        target = mapped or key
    row = None
    for _ in range(4):  # follow merges
        row = (await session.execute(select(leads).where(leads.c.lead_id == target))).first()
        if row is None or not row.merged_into:
            break
        target = row.merged_into
    if row is None or row.merged_into:
        return None
    lead_ids = [row.lead_id]
    frontier = [row.lead_id]
    while frontier:  # the leads merged into it, and those merged into them
        merged = (
            await session.execute(select(leads.c.lead_id).where(leads.c.merged_into.in_(frontier)))
        ).scalars()
        frontier = [m for m in merged if m not in lead_ids]
        lead_ids += frontier
    ids = (
        await session.execute(
            select(identities.c.identifier).where(identities.c.lead_id.in_(lead_ids))
        )
    ).scalars()
    return Person(
        lead_id=row.lead_id,
        email=row.email,
        lead_ids=lead_ids,
        identifiers=sorted(set(ids)),
        attributes=loads(row.attributes),
    )
