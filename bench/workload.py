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
# Web-tracking context that real site events carry (the Kafka phases send it: ~400 bytes).
REFERRERS = (
    "https://www.google.com/",
    "https://www.linkedin.com/",
    "https://www.bing.com/",
    "https://news.ycombinator.com/",
    "",
)
USER_AGENTS = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
)
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
        # Ordinary traffic that does not route: leads at accounts outside the ICP (under the
        # default policy their fit is at most 15 — a decision-maker title — so fit + the
        # intent cap of 50 stays below hot at 80), and no demo requests. Leads inside the
        # ICP would route on ordinary events too once the earlier phases have warmed them:
        # measured, ~1 in 12 events, which is no longer a 1-in-20 mix.
        self.plain_leads = [ld for ld in leads if ld.account.industry not in ICP_INDUSTRIES]
        self._plain_types = [name for name, _ in SIGNALS if name != "demo_request"]
        self._plain_w = [w for name, w in SIGNALS if name != "demo_request"]
        self._sources = [name for name, _ in SOURCES]
        self._source_w = [w for _, w in SOURCES]

    def next_id(self, tag: str) -> str:
        self.n += 1
        return f"evt_{self.run_id}_{tag}_{self.n:07d}"

    def event(
        self, now: float, tag: str = "b", *, plain: bool = False, rich: bool = False
    ) -> dict[str, Any]:
        """An event of a lead of the pool. ``plain``: ordinary traffic that does not route
        (see ``plain_leads``); ``rich``: with the referrer and user agent a tracking script
        sends (~400 bytes)."""
        rng = self.rng
        if plain:
            lead = rng.choice(self.plain_leads)
            type_ = rng.choices(self._plain_types, weights=self._plain_w)[0]
        else:
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
        if rich:
            props = ev.setdefault("properties", {})
            if "url" in props:
                props["url"] = f"https://www.vendor.example{props['url']}"
                props["referrer"] = rng.choice(REFERRERS)
            else:
                props["message_id"] = f"<{rng.getrandbits(64):016x}@mail.vendor.example>"
            props["user_agent"] = rng.choice(USER_AGENTS)
        return ev

    def batches(self, n_events: int, size: int, now: float) -> list[bytes]:
        """``n_events`` events as ready-to-send ``{"events": [...]}`` bodies."""
        out = []
        for start in range(0, n_events, size):
            k = min(size, n_events - start)
            out.append(orjson.dumps({"events": [self.event(now) for _ in range(k)]}))
        return out

    def mixed(
        self, now: float, i: int, every: int, accounts: list[Account]
    ) -> tuple[dict[str, Any], bool]:
        """Event ``i`` of a realistic mix: every ``every``-th makes a new lead hot (True),
        the others are ordinary pool traffic (no demo requests)."""
        if i % every == 0:
            return self.hot_lead_event(self.rng.choice(accounts), now), True
        return self.event(now, "m", plain=True), False

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


def kafka_key(ev: dict[str, Any], free_mail: frozenset[str]) -> bytes:
    """The partition key the service uses (``app.ingest.kafka.partition_key``): the email's
    domain unless free-mail, else the account's domain, else the lead's strongest key."""
    lead = ev["lead"]
    email = (lead.get("email") or "").lower()
    domain = email.rsplit("@", 1)[1] if "@" in email else None
    if domain and domain not in free_mail:
        return domain.encode()
    acct = ((ev.get("account") or {}).get("domain") or "").lower() or None
    if acct and acct not in free_mail:
        return acct.encode()
    if email:
        return email.encode()
    if lead.get("user_id"):
        return f"user:{lead['user_id']}".encode()
    return f"anon:{lead['anonymous_id']}".encode()
