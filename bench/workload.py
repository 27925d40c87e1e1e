"""Synthetic but realistic data: ABM accounts, a pool of leads and their events.

Everything is drawn from a seeded ``random.Random`` so two runs send the same mix.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

SIGNALS: tuple[tuple[str, float], ...] = (
    ("site_visit", 0.34),
    ("email_open", 0.18),
    ("email_click", 0.12),
    ("pricing_page_view", 0.12),
    ("content_download", 0.10),
    ("careers_page_view", 0.08),
    ("demo_request", 0.06),
)
SOURCES: tuple[tuple[str, float], ...] = (
    ("website", 0.40),
    ("linkedin_ads", 0.18),
    ("google_ads", 0.15),
    ("chat_widget", 0.10),
    ("marketo", 0.10),
    ("g2", 0.07),
)
URLS = {
    "site_visit": ("/", "/product", "/blog/intent-data", "/customers", "/integrations"),
    "pricing_page_view": ("/pricing", "/pricing/enterprise"),
    "careers_page_view": ("/careers", "/jobs/backend-engineer"),
    "content_download": ("/resources/abm-playbook.pdf", "/resources/roi-calculator.xlsx"),
}
TITLES: tuple[tuple[str, float], ...] = (
    ("VP Sales", 0.08),
    ("Head of Marketing", 0.08),
    ("Director of IT", 0.08),
    ("CTO", 0.03),
    ("Chief Revenue Officer", 0.02),
    ("Marketing Manager", 0.15),
    ("Software Engineer", 0.18),
    ("Product Manager", 0.12),
    ("Account Executive", 0.10),
    ("Analyst", 0.12),
    ("Student", 0.04),
)
ICP_INDUSTRIES = ("software", "internet", "financial_services", "healthcare")
OTHER_INDUSTRIES = ("retail", "manufacturing", "education", "logistics")
ICP_COUNTRIES = ("US", "US", "US", "GB", "DE", "FR", "CA", "NL", "AU")
OTHER_COUNTRIES = ("BR", "IN", "JP", "MX")
FIRST = ("dana", "alex", "sam", "kim", "lee", "noa", "ravi", "mia", "tom", "ana", "jo", "li")
LAST = ("smith", "garcia", "chen", "mueller", "rossi", "dubois", "tanaka", "silva", "khan")


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _pick(rng: random.Random, table: tuple[tuple[str, float], ...]) -> str:
    return rng.choices([name for name, _ in table], weights=[w for _, w in table])[0]


@dataclass(slots=True)
class Account:
    domain: str
    tier: str | None
    owner: str
    industry: str
    employees: int
    country: str
    annual_revenue: float

    def abm_row(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "tier": self.tier,
            "owner": self.owner,
            "industry": self.industry,
            "employees": self.employees,
            "country": self.country,
            "annual_revenue": self.annual_revenue,
        }

    def event_fields(self) -> dict[str, Any]:
        """What reverse-IP enrichment or a form would put in ``event.account``."""
        return {
            "domain": self.domain,
            "industry": self.industry,
            "employees": self.employees,
            "country": self.country,
            "annual_revenue": self.annual_revenue,
        }


@dataclass(slots=True)
class Lead:
    email: str | None
    anonymous_id: str | None
    title: str
    account: Account


def make_accounts(n: int, rng: random.Random) -> list[Account]:
    """10% tier_1 (all in the ICP), 20% tier_2, the rest untiered with a broad mix."""
    out = []
    for i in range(n):
        roll = rng.random()
        tier = "tier_1" if roll < 0.10 else "tier_2" if roll < 0.30 else None
        icp = tier == "tier_1" or rng.random() < 0.6
        out.append(
            Account(
                domain=f"bench-acct-{i:05d}.com",
                tier=tier,
                owner=f"ae{i % 40:02d}@vendor.example",
                industry=rng.choice(ICP_INDUSTRIES if icp else OTHER_INDUSTRIES),
                employees=rng.randint(200, 10_000) if icp else rng.randint(5, 150),
                country=rng.choice(ICP_COUNTRIES if icp else OTHER_COUNTRIES),
                annual_revenue=float(rng.randint(10, 900) * 1_000_000) if icp else 2_000_000.0,
            )
        )
    return out


def make_leads(n: int, accounts: list[Account], rng: random.Random) -> list[Lead]:
    """60% known by email, 25% with both email and a cookie id, 15% anonymous only."""
    out = []
    for i in range(n):
        acct = rng.choice(accounts)
        roll = rng.random()
        email = f"{rng.choice(FIRST)}.{rng.choice(LAST)}.{i}@{acct.domain}" if roll < 0.85 else None
        anon = f"a-{i:06d}-{rng.getrandbits(24):06x}" if roll >= 0.60 else None
        out.append(Lead(email, anon, _pick(rng, TITLES), acct))
    return out


class EventFactory:
    """Native events for leads of the pool, with unique ids and a realistic shape."""

    def __init__(self, leads: list[Lead], rng: random.Random, run_id: str) -> None:
        self.leads = leads
        self.rng = rng
        self.run_id = run_id
        self.n = 0
        self._types = [name for name, _ in SIGNALS]
        self._type_w = [w for _, w in SIGNALS]
        self._sources = [name for name, _ in SOURCES]
        self._source_w = [w for _, w in SOURCES]

    def next_id(self, tag: str) -> str:
        self.n += 1
        return f"evt_{self.run_id}_{tag}_{self.n:07d}"

    def event(self, now: float, tag: str = "b") -> dict[str, Any]:
        rng = self.rng
        lead = rng.choice(self.leads)
        type_ = rng.choices(self._types, weights=self._type_w)[0]
        who: dict[str, Any] = {}
        if lead.email and lead.anonymous_id:
            # Stitched leads: part of their history arrives before they identify.
            if rng.random() < 0.65:
                who["email"] = lead.email
            who["anonymous_id"] = lead.anonymous_id
        elif lead.email:
            who["email"] = lead.email
        else:
            who["anonymous_id"] = lead.anonymous_id
        if "email" in who and rng.random() < 0.5:
            who["title"] = lead.title
        ev: dict[str, Any] = {
            "event_id": self.next_id(tag),
            "type": type_,
            "occurred_at": iso(now - rng.random() * 3 * 86_400),
            "source": rng.choices(self._sources, weights=self._source_w)[0],
            "lead": who,
        }
        if ("email" not in who and rng.random() < 0.5) or rng.random() < 0.2:
            ev["account"] = lead.account.event_fields()  # reverse-IP or form enrichment
        urls = URLS.get(type_)
        if urls:
            ev["properties"] = {"url": rng.choice(urls)}
        if rng.random() < 0.3:
            ev["campaign"] = f"q4-{rng.choice(('abm', 'webinar', 'retargeting'))}"
        return ev

    def batches(self, n_events: int, size: int, now: float) -> list[bytes]:
        """``n_events`` events as ready-to-send ``{"events": [...]}`` bodies."""
        out = []
        for start in range(0, n_events, size):
            k = min(size, n_events - start)
            out.append(orjson.dumps({"events": [self.event(now) for _ in range(k)]}))
        return out

    def hot_lead_event(self, account: Account, now: float) -> dict[str, Any]:
        """A demo request from a new VP at a tier-1 ICP account: fit 50, hot with 30 points."""
        eid = self.next_id("hot")
        return {
            "event_id": eid,
            "type": "demo_request",
            "occurred_at": iso(now),
            "source": "website",
            "lead": {"email": f"vp.{eid.lower()}@{account.domain}", "title": "VP Sales"},
            "account": account.event_fields(),
            "properties": {"url": "/demo"},
        }
