"""Lead and account state: loaded for a whole batch in one query, written back in one.

The pipeline mutates these plain objects in memory while it applies a batch, then
``save_*`` upserts every touched row in a single statement.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import accounts, dumps, leads, loads
from app.db.bulk import Bulk
from app.events import ACCOUNT_FIELDS
from app.scoring.decay import Accumulators


def _accs(text: str | None) -> Accumulators:
    # Stored as {"signal": [acc, t_ref]}; the decay functions only index the pairs.
    accs: Accumulators = loads(text)
    return accs


@dataclass(slots=True)
class LeadState:
    lead_id: str
    email: str | None
    account_domain: str | None
    attributes: dict[str, Any]
    signals: Accumulators
    fit: float
    intent: float
    band: str
    band_at: float
    policy_version: int
    source: str | None
    first_seen_at: float
    last_event_at: float
    last_decision_at: float | None = None
    last_decision_band: str | None = None
    last_decision_tier: str | None = None
    merged_into: str | None = None
    updated_at: float = 0.0
    dirty: bool = False
    is_new: bool = False
    # In memory only: the account the row had when loaded, and what the fit was computed for.
    stored_account_domain: str | None = None
    fit_key: tuple[Any, ...] | None = None

    def values(self) -> tuple[Any, ...]:
        """The row, in ``LEAD_COLUMNS`` order."""
        return (
            self.lead_id,
            self.email,
            self.account_domain,
            dumps(self.attributes),
            dumps(self.signals),
            self.fit,
            self.intent,
            self.band,
            self.band_at,
            self.policy_version,
            self.source,
            self.first_seen_at,
            self.last_event_at,
            self.last_decision_at,
            self.last_decision_band,
            self.last_decision_tier,
            self.merged_into,
            self.updated_at,
        )


LEAD_COLUMNS = tuple(c.name for c in leads.columns)


def lead_from_row(r: Sequence[Any]) -> LeadState:
    """From a row in ``LEAD_COLUMNS`` order (a driver tuple or a SQLAlchemy Row)."""
    return LeadState(
        lead_id=r[0],
        email=r[1],
        account_domain=r[2],
        attributes=loads(r[3]),
        signals=_accs(r[4]),
        fit=r[5],
        intent=r[6],
        band=r[7],
        band_at=r[8],
        policy_version=r[9],
        source=r[10],
        first_seen_at=r[11],
        last_event_at=r[12],
        last_decision_at=r[13],
        last_decision_band=r[14],
        last_decision_tier=r[15],
        merged_into=r[16],
        updated_at=r[17],
        stored_account_domain=r[2],
    )


ACCOUNT_COLUMNS = ACCOUNT_FIELDS


@dataclass(slots=True)
class AccountState:
    domain: str
    name: str | None = None
    tier: str | None = None
    owner: str | None = None
    territory: str | None = None
    industry: str | None = None
    employees: int | None = None
    country: str | None = None
    annual_revenue: float | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    signals: Accumulators = field(default_factory=dict)
    active_leads: int = 0
    last_event_at: float | None = None
    last_decision_at: float | None = None
    last_decision_tier: str | None = None
    updated_at: float = 0.0
    dirty: bool = False
    rev: int = 0  # in memory: attribute changes within the current batch

    def context(self) -> dict[str, Any]:
        """What conditions see under ``account.``."""
        ctx = dict(self.attributes)
        ctx["domain"] = self.domain
        for col in ACCOUNT_COLUMNS:
            ctx[col] = getattr(self, col)
        ctx["active_leads"] = self.active_leads
        return ctx

    def update(self, attrs: dict[str, Any]) -> bool:
        """Merge attributes from an event; True when anything changed."""
        changed = False
        for key, value in attrs.items():
            if key in ACCOUNT_COLUMNS:
                if getattr(self, key) != value:
                    setattr(self, key, value)
                    changed = True
            elif self.attributes.get(key) != value:
                self.attributes[key] = value
                changed = True
        return changed

    def values(self) -> tuple[Any, ...]:
        """The row, in ``ACCOUNT_ROW_COLUMNS`` order."""
        return (
            self.domain,
            self.name,
            self.tier,
            self.owner,
            self.territory,
            self.industry,
            self.employees,
            self.country,
            self.annual_revenue,
            dumps(self.attributes),
            dumps(self.signals),
            self.active_leads,
            self.last_event_at,
            self.last_decision_at,
            self.last_decision_tier,
            self.updated_at,
        )


ACCOUNT_ROW_COLUMNS = tuple(c.name for c in accounts.columns)


def account_from_row(r: Sequence[Any]) -> AccountState:
    """From a row in ``ACCOUNT_ROW_COLUMNS`` order (a driver tuple or a SQLAlchemy Row)."""
    return AccountState(
        domain=r[0],
        name=r[1],
        tier=r[2],
        owner=r[3],
        territory=r[4],
        industry=r[5],
        employees=r[6],
        country=r[7],
        annual_revenue=r[8],
        attributes=loads(r[9]),
        signals=_accs(r[10]),
        active_leads=r[11],
        last_event_at=r[12],
        last_decision_at=r[13],
        last_decision_tier=r[14],
        updated_at=r[15],
    )


async def load_leads(session: AsyncSession, lead_ids: Iterable[str]) -> dict[str, LeadState]:
    bulk = await Bulk.of(session)
    rows = await bulk.select_in(leads, LEAD_COLUMNS, "lead_id", sorted(set(lead_ids)))
    return {r[0]: lead_from_row(r) for r in rows}


async def load_accounts(session: AsyncSession, domains: Iterable[str]) -> dict[str, AccountState]:
    bulk = await Bulk.of(session)
    rows = await bulk.select_in(accounts, ACCOUNT_ROW_COLUMNS, "domain", sorted(set(domains)))
    return {r[0]: account_from_row(r) for r in rows}


async def save_leads(session: AsyncSession, states: Iterable[LeadState]) -> None:
    rows = [s.values() for s in states if s.dirty]
    if rows:
        await (await Bulk.of(session)).upsert(leads, LEAD_COLUMNS, ("lead_id",), rows)


async def save_accounts(session: AsyncSession, states: Iterable[AccountState]) -> None:
    rows = [s.values() for s in states if s.dirty]
    if rows:
        await (await Bulk.of(session)).upsert(accounts, ACCOUNT_ROW_COLUMNS, ("domain",), rows)


async def load_account(session: AsyncSession, domain: str | None) -> AccountState | None:
    """The account row of ``domain`` as state, or None."""
    if not domain:
        return None
    row = (await session.execute(select(accounts).where(accounts.c.domain == domain))).first()
    return account_from_row(row) if row else None
