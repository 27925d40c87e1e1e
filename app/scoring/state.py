"""Lead and account state: loaded for a whole batch in one query, written back in one.

The pipeline mutates these plain objects in memory while it applies a batch, then
``save_*`` upserts every touched row in a single statement.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import accounts, dumps, leads, loads, upsert
from app.scoring.decay import Accumulators

CHUNK = 5000


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


def _accs(text: str | None) -> Accumulators:
    return {k: (v[0], v[1]) for k, v in loads(text).items()}


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

    def row(self) -> dict[str, Any]:
        return {
            "lead_id": self.lead_id,
            "email": self.email,
            "account_domain": self.account_domain,
            "attributes": dumps(self.attributes),
            "signals": dumps(self.signals),
            "fit": self.fit,
            "intent": self.intent,
            "band": self.band,
            "band_at": self.band_at,
            "policy_version": self.policy_version,
            "source": self.source,
            "first_seen_at": self.first_seen_at,
            "last_event_at": self.last_event_at,
            "last_decision_at": self.last_decision_at,
            "last_decision_band": self.last_decision_band,
            "last_decision_tier": self.last_decision_tier,
            "merged_into": self.merged_into,
            "updated_at": self.updated_at,
        }


def lead_from_row(r: Any) -> LeadState:
    return LeadState(
        lead_id=r.lead_id,
        email=r.email,
        account_domain=r.account_domain,
        attributes=loads(r.attributes),
        signals=_accs(r.signals),
        fit=r.fit,
        intent=r.intent,
        band=r.band,
        band_at=r.band_at,
        policy_version=r.policy_version,
        source=r.source,
        first_seen_at=r.first_seen_at,
        last_event_at=r.last_event_at,
        last_decision_at=r.last_decision_at,
        last_decision_band=r.last_decision_band,
        last_decision_tier=r.last_decision_tier,
        merged_into=r.merged_into,
        updated_at=r.updated_at,
    )


ACCOUNT_COLUMNS = (
    "name",
    "tier",
    "owner",
    "territory",
    "industry",
    "employees",
    "country",
    "annual_revenue",
)


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

    def row(self) -> dict[str, Any]:
        out: dict[str, Any] = {"domain": self.domain}
        for col in ACCOUNT_COLUMNS:
            out[col] = getattr(self, col)
        out.update(
            attributes=dumps(self.attributes),
            signals=dumps(self.signals),
            active_leads=self.active_leads,
            last_event_at=self.last_event_at,
            last_decision_at=self.last_decision_at,
            last_decision_tier=self.last_decision_tier,
            updated_at=self.updated_at,
        )
        return out


def account_from_row(r: Any) -> AccountState:
    return AccountState(
        domain=r.domain,
        name=r.name,
        tier=r.tier,
        owner=r.owner,
        territory=r.territory,
        industry=r.industry,
        employees=r.employees,
        country=r.country,
        annual_revenue=r.annual_revenue,
        attributes=loads(r.attributes),
        signals=_accs(r.signals),
        active_leads=r.active_leads,
        last_event_at=r.last_event_at,
        last_decision_at=r.last_decision_at,
        last_decision_tier=r.last_decision_tier,
        updated_at=r.updated_at,
    )


async def load_leads(session: AsyncSession, lead_ids: Iterable[str]) -> dict[str, LeadState]:
    ids = sorted(set(lead_ids))
    out: dict[str, LeadState] = {}
    for chunk in _chunks(ids):
        result = await session.execute(select(leads).where(leads.c.lead_id.in_(chunk)))
        for r in result:
            out[r.lead_id] = lead_from_row(r)
    return out


async def load_accounts(session: AsyncSession, domains: Iterable[str]) -> dict[str, AccountState]:
    ids = sorted(set(domains))
    out: dict[str, AccountState] = {}
    for chunk in _chunks(ids):
        result = await session.execute(select(accounts).where(accounts.c.domain.in_(chunk)))
        for r in result:
            out[r.domain] = account_from_row(r)
    return out


async def save_leads(session: AsyncSession, states: Iterable[LeadState]) -> None:
    rows = [s.row() for s in states if s.dirty]
    if rows:
        await upsert(session, leads, rows, ["lead_id"])


async def save_accounts(session: AsyncSession, states: Iterable[AccountState]) -> None:
    rows = [s.row() for s in states if s.dirty]
    if rows:
        await upsert(session, accounts, rows, ["domain"])
