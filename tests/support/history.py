"""A realistic, seeded history driven through the real service over HTTP, for the replay
tests: several weeks of irregular traffic from several sources, with the storylines a
replay has to reproduce (merges, late events, cooldowns, escalations, surges, round robin
with daily caps, account owners) and a policy version change in the middle.

``generate`` posts everything through ``POST /v1/events`` with the service's FakeClock
moved between batches, then reads back what the service decided, so a test can assert
that each feature really is in the history (a generator that stopped producing surges
fails its test instead of making the replay test vacuous).
"""

from __future__ import annotations

import copy
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson
from sqlalchemy import func, select

from app.clock import FakeClock
from app.db import decisions, leads
from tests.support.harness import Service, event

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
SOURCES = ("website", "linkedin_ads", "google_ads", "intercom", "g2")
TITLES = ("VP Sales", "Head of Growth", "Director of IT", "Engineer", "Analyst", "CTO")
OVERFLOW = "overflow@ours.example"  # the inbound team's fixed assignee once caps are hit
NURTURE = "nurture@ours.example"

# (domain, tier, owner, industry, employees, country, revenue); tiered ones are imported.
ACCOUNTS: list[tuple[str, str | None, str | None, str, int, str, float]] = [
    ("acme.io", "tier_1", "jo@ours.example", "software", 1200, "US", 5e7),
    ("globex.com", "tier_1", "max@ours.example", "internet", 800, "GB", 3e7),
    ("initech.com", "tier_1", None, "financial_services", 4000, "US", 2e8),
    ("umbrella.io", "tier_2", "ana@ours.example", "healthcare", 600, "DE", 9e7),
    ("hooli.com", "tier_2", None, "software", 9000, "US", 9e8),
    ("soylent.com", "tier_3", "li@ours.example", "retail", 300, "FR", 2e7),
    ("vandelay.com", None, None, "software", 250, "US", 1.5e7),
    ("wonka.io", None, None, "internet", 1500, "CA", 6e7),
    ("stark.dev", None, None, "software", 50, "US", 2e6),
    ("tyrell.ai", None, None, "software", 700, "NL", 4e7),
    ("cyberdyne.net", None, None, "healthcare", 2200, "AU", 1.2e8),
    ("pied.io", None, None, "internet", 350, "IE", 1.1e7),
]
ABM_FIELDS = ("domain", "tier", "owner", "industry", "employees", "country", "annual_revenue")
ACCOUNT_OF = {a[0]: a for a in ACCOUNTS}
# Background traffic's signals, by weight.
# fmt: off
BACKGROUND_TYPES = {
    "site_visit": 30, "pricing_page_view": 14, "content_download": 10, "email_open": 10,
    "email_click": 8, "chat_message": 6, "form_submission": 4, "demo_request": 4,
    "meeting_booked": 2, "careers_page_view": 3,
}
# fmt: on


@dataclass
class Import:
    """An ABM import (PUT /v1/accounts) in the middle of the traffic."""

    rows: list[dict[str, Any]]


# (when, tie-break, the batch's events or an import)
Action = tuple[float, int, Callable[[], "list[Any] | Import"]]


@dataclass
class Person:
    email: str
    title: str
    source: str
    anon: str | None = None  # an anonymous visitor until an event carries both ids
    identified: bool = True
    newest: float = 0.0  # the newest occurred_at sent for this person
    anonymous_events: int = 0  # sent before the person identified
    introduced: bool = False  # the account's attributes were sent


@dataclass
class Phase:
    """What one part of the history (before / after the version change) contains."""

    events: int = 0
    requests: int = 0
    single_event_requests: int = 0
    late_events: int = 0  # occurred_at earlier than the same person's newest event
    late_by_hours: int = 0  # … by more than an hour
    identified: int = 0  # events with anonymous_id + email after anonymous-only events
    suppressed: int = 0  # band rises not routed because of the cooldown (service metric)
    by_rule: Counter[str] = field(default_factory=Counter)
    escalations: int = 0
    surges: int = 0
    capped: int = 0  # inbound decisions that fell to OVERFLOW: every member at the cap
    owner_assigned: int = 0
    round_robin_assignees: set[str] = field(default_factory=set)
    rerouted_after_cooldown: int = 0  # a lead routed hot again a cooldown after
    imports: int = 0  # ABM imports between events (an account's tier and owner change)
    sources: set[str] = field(default_factory=set)

    def missing(self) -> list[str]:
        """The features this phase lacks."""
        checks = {
            "batches of several events": self.requests > self.single_event_requests,
            "single-event requests": self.single_event_requests > 0,
            "late events": self.late_events > 0,
            "events late by hours": self.late_by_hours > 0,
            "merges": self.identified > 0,
            "cooldown suppressions": self.suppressed > 0,
            "escalations": self.escalations > 0,
            "surges": self.surges > 0,
            "daily caps hit": self.capped > 0,
            "account owners": self.owner_assigned > 0,
            "round robin over 2+ members": len(self.round_robin_assignees) >= 2,
            "re-routed after the cooldown": self.rerouted_after_cooldown > 0,
            "several sources": len(self.sources) >= 3,
            "ABM imports mid-way": self.imports > 0,
        }
        return [name for name, ok in checks.items() if not ok]


@dataclass
class Summary:
    before: Phase
    window: Phase  # from the version change on
    versions: list[int]  # every stored version, oldest first
    version_before: int  # in force before the change
    version_after: int  # in force from ``changed_at`` on (the window's)
    changed_at: float  # when the version change was applied (service clock)
    started_at: float
    ended_at: float
    merges: int  # anonymous leads merged into an email lead (the leads table)
    decisions: int


class Generator:
    def __init__(self, svc: Service, clock: FakeClock, seed: int) -> None:
        self.svc, self.clock, self.rng = svc, clock, random.Random(seed)
        self.n = 0
        self.phase = Phase()
        self.t0 = 0.0

    # -- posting -------------------------------------------------------------------------

    def ev(self, p: Person, type_: str, *, ago: float | None = None, both: bool = False) -> Any:
        """An event of ``p``'s, ``ago`` seconds before now (a few seconds by default)."""
        self.n += 1
        t = self.clock.now() - (ago if ago is not None else self.rng.uniform(1, 90))
        who: dict[str, Any] = {}
        if p.identified or both:
            who["email"] = p.email
        if p.anon and (not p.identified or both):
            who["anonymous_id"] = p.anon
        if not p.identified and not both:
            p.anonymous_events += 1
        if both and not p.identified:
            p.identified = True
            self.phase.identified += p.anonymous_events > 0
        if t < p.newest:
            self.phase.late_events += 1
            self.phase.late_by_hours += t < p.newest - HOUR
        p.newest = max(p.newest, t)
        extra: dict[str, Any] = {}
        if p.identified and not p.introduced:
            p.introduced = True
            extra["title"] = p.title
            row = dict(zip(ABM_FIELDS, ACCOUNT_OF.get(p.email.split("@")[1], ()), strict=False))
            if row and row.pop("tier") is None:  # outside the ABM list: the event says
                row.pop("owner")
                extra["account"] = row
        return event(f"h{self.n:05d}", type_, t, source=p.source, **who, **extra)

    async def post(self, events: list[Any]) -> None:
        body = events[0] if len(events) == 1 else {"events": events}
        r = await self.svc.client.post("/v1/events", json=body)
        assert r.status_code == 202, r.text
        statuses = [s["status"] for s in r.json()["results"]]
        assert statuses == ["accepted"] * len(events), r.text
        self.phase.events += len(events)
        self.phase.requests += 1
        self.phase.single_event_requests += len(events) == 1
        self.phase.sources.update(e["source"] for e in events)

    async def suppressed_total(self) -> float:
        r = await self.svc.client.get("/metrics")
        assert r.status_code == 200, r.text
        for line in r.text.splitlines():
            if line.startswith("intent_decisions_suppressed_total "):
                return float(line.split()[-1])
        return 0.0

    # -- the run -------------------------------------------------------------------------

    async def run(self, days: int) -> Summary:
        # From the next UTC midnight: daily caps count per UTC day, so the history must not
        # depend on the time of day the test runs at.
        self.clock.advance(-self.clock.now() % DAY)
        self.t0 = self.clock.now()
        start_suppressed = mid_suppressed = await self.suppressed_total()
        versions = [await self.setup()]
        timeline = self.timeline(days)
        change_at = self.t0 + days / 2 * DAY + 7 * HOUR
        before = Phase()
        changed_at = 0.0
        for at, _, action in sorted(timeline, key=lambda x: (x[0], x[1])):
            if not changed_at and at >= change_at:
                self.clock.advance(max(0.0, change_at - self.clock.now()))
                before, self.phase = self.phase, Phase()
                before.suppressed = int(await self.suppressed_total() - start_suppressed)
                mid_suppressed = await self.suppressed_total()
                changed_at = self.clock.now()
                versions.append(await self.change_policy())
            self.clock.advance(max(0.001, at - self.clock.now()))
            events = action()
            if isinstance(events, Import):
                r = await self.svc.client.put("/v1/accounts", json={"accounts": events.rows})
                assert r.status_code == 200, r.text
                self.phase.imports += 1
            elif events:
                await self.post(events)
        self.phase.suppressed = int(await self.suppressed_total() - mid_suppressed)
        await self.read_back(before, self.phase, changed_at)
        async with self.svc.runtime.sessionmaker() as s:
            merged = await s.scalar(
                select(func.count()).select_from(leads).where(leads.c.merged_into.is_not(None))
            )
            n_decisions = await s.scalar(select(func.count()).select_from(decisions))
        r = await self.svc.client.get("/v1/policy/versions")
        stored = sorted(v["version"] for v in r.json()["versions"])
        return Summary(
            before=before,
            window=self.phase,
            versions=stored,
            version_before=versions[0],
            version_after=versions[1],
            changed_at=changed_at,
            started_at=self.t0,
            ended_at=self.clock.now(),
            merges=int(merged or 0),
            decisions=int(n_decisions or 0),
        )

    async def setup(self) -> int:
        """The ABM list (tiers, owners, attributes) and the first policy: teams with members,
        a daily cap on the inbound team."""
        rows = [dict(zip(ABM_FIELDS, a, strict=True)) for a in ACCOUNTS if a[1] is not None]
        r = await self.svc.client.put("/v1/accounts", json={"accounts": rows})
        assert r.status_code == 200, r.text

        def edit(doc: dict[str, Any]) -> None:
            doc["teams"]["strategic"] = {
                "members": ["ae.north@ours.example", "ae.south@ours.example"]
            }
            doc["teams"]["inbound"] = {
                "members": ["sdr.a@ours.example", "sdr.b@ours.example", "sdr.c@ours.example"],
                "daily_cap": 2,
                "assignee": OVERFLOW,
            }

        return await self.put_policy(edit)

    async def change_policy(self) -> int:
        """Mid-history: warm leads are routed to nurture (so warm → hot within the cooldown
        escalates), the inbound team gains a member and a larger cap."""

        def edit(doc: dict[str, Any]) -> None:
            doc["routing"]["rules"].insert(
                0,
                {
                    "name": "warm_nurture",
                    "kind": "lead",
                    "when": {"band": "warm"},
                    "team": "nurture",
                    "assignment": "fixed",
                },
            )
            doc["teams"]["nurture"] = {"members": [], "assignee": NURTURE}
            doc["teams"]["inbound"]["members"].append("sdr.d@ours.example")
            doc["teams"]["inbound"]["daily_cap"] = 3

        return await self.put_policy(edit)

    async def put_policy(self, edit: Callable[[dict[str, Any]], None]) -> int:
        doc = copy.deepcopy((await self.svc.client.get("/v1/policy")).json()["policy"])
        edit(doc)
        r = await self.svc.client.put("/v1/policy", json=doc)
        assert r.status_code == 200, r.text
        version: int = r.json()["version"]
        return version

    # -- what happens when ---------------------------------------------------------------

    def timeline(self, days: int) -> list[Action]:
        """Background traffic every day plus the storylines, each in both halves."""
        rng = self.rng
        out: list[Action] = []
        seq = iter(range(1_000_000))

        def at(t: float, make: Callable[[], list[Any]]) -> None:
            out.append((self.t0 + t, next(seq), make))

        pool = self.people(rng)
        for day in range(days):
            quiet = day % 7 in (5, 6)
            for _ in range(rng.randint(0, 2) if quiet else rng.randint(3, 8)):
                when = day * DAY + rng.uniform(7 * HOUR, 20 * HOUR)
                group = rng.sample(pool, rng.choice((1, 1, 1, 2, 3)))
                at(when, self.session(group))
        half = days / 2 * DAY
        for base, tag in ((1 * DAY, "a"), (half + 1 * DAY, "b")):
            self.storylines(at, base, tag, days)
        return out

    def people(self, rng: random.Random) -> list[Person]:
        pool: list[Person] = []
        for domain, *_ in ACCOUNTS:
            for i in range(rng.randint(2, 4)):
                p = Person(f"p{i}@{domain}", rng.choice(TITLES), rng.choice(SOURCES))
                if rng.random() < 0.3:
                    p.anon, p.identified = f"anon-{domain}-{i}", False
                pool.append(p)
        for i in range(4):
            pool.append(Person(f"fan{i}@gmail.com", "Student", "website"))
        return pool

    def session(self, group: list[Person]) -> Callable[[], list[Any]]:
        """One batch: a few events of each person in ``group``; now and then a late one,
        and an anonymous visitor identifies."""

        def make() -> list[Any]:
            rng = self.rng
            out = []
            for p in group:
                types = rng.choices(
                    list(BACKGROUND_TYPES), list(BACKGROUND_TYPES.values()), k=rng.randint(1, 3)
                )
                for type_ in types:
                    both = not p.identified and rng.random() < 0.25
                    late = rng.uniform(2 * HOUR, 20 * HOUR) if rng.random() < 0.1 else None
                    out.append(self.ev(p, type_, ago=late, both=both))
            return out

        return make

    def storylines(self, at: Callable[..., None], base: float, tag: str, days: int) -> None:
        """Each feature, scripted on dedicated people so background traffic cannot blur it."""
        src = SOURCES

        def one(p: Person, *types: str, ago: float | None = None, both: bool = False) -> Any:
            return lambda: [self.ev(p, t, ago=ago, both=both) for t in types]

        # Cooldown: hot, down to warm, hot again within 24 h (suppressed), down, hot again
        # after the cooldown (routed). Fit 50: ICP account, VP title.
        for i, domain in enumerate(("vandelay.com", "acme.io")):
            p = Person(f"cool.{tag}{i}@{domain}", "VP Sales", src[i])
            t = base + 2 * HOUR + i * 3 * HOUR
            at(t, one(p, "pricing_page_view", "demo_request"))
            at(t + 1 * HOUR, one(p, "careers_page_view", "careers_page_view"))
            at(t + 3 * HOUR, one(p, "demo_request"))
            at(t + 26 * HOUR, one(p, "careers_page_view", "careers_page_view"))
            at(t + 27 * HOUR, one(p, "demo_request", "pricing_page_view"))

        # Escalation (under the second version's warm rule): warm, then hot within 24 h.
        p = Person(f"esc.{tag}@wonka.io", "Director of Sales", "google_ads")
        at(base + 4 * HOUR, one(p, "site_visit"))
        at(base + 9 * HOUR, one(p, "pricing_page_view", "demo_request"))

        # A tier rise: hot at an account outside the ABM list, down to warm, the account
        # imported as tier 1 with an owner, hot again within 24 h: an escalation to the
        # owner (under either version).
        domain = "pied.io" if tag == "a" else "cyberdyne.net"
        p = Person(f"tier.{tag}@{domain}", "VP Sales", "linkedin_ads")
        t = base + 3 * DAY + 2 * HOUR
        at(t, one(p, "pricing_page_view", "demo_request"))
        at(t + 1 * HOUR, one(p, "careers_page_view", "careers_page_view"))
        row = {"domain": domain, "tier": "tier_1", "owner": f"kai.{tag}@ours.example"}
        at(t + 2 * HOUR, partial(Import, [row]))
        at(t + 3 * HOUR, one(p, "demo_request"))

        # Merges: an anonymous visitor browses, then identifies on a form, then is hot.
        for i, domain in enumerate(("tyrell.ai", "globex.com")):
            p = Person(f"anon.{tag}{i}@{domain}", "Head of Data", "website", f"v-{tag}{i}", False)
            t = base + 5 * HOUR + i * DAY
            at(t, one(p, "site_visit", "pricing_page_view"))
            at(t + 3 * HOUR, one(p, "pricing_page_view"))
            at(t + 1 * DAY, one(p, "form_submission", both=True))
            at(t + 1 * DAY + 2 * HOUR, one(p, "demo_request"))

        # Late events: an event arrives hours after a newer one of the same lead.
        p = Person(f"late.{tag}@cyberdyne.net", "CTO", "intercom")
        at(base + 6 * HOUR, one(p, "chat_message", "pricing_page_view"))
        at(base + 10 * HOUR, one(p, "demo_request", ago=8 * HOUR))
        at(base + 12 * HOUR, one(p, "content_download", ago=5 * HOUR))

        # Surges: four leads at a tier-1 and a tier-2 account, each active (intent 25, at
        # least 15 for days), a few hours apart.
        for d, domain in enumerate(("initech.com", "umbrella.io")):
            crowd = [Person(f"s{j}.{tag}@{domain}", "Engineer", src[j]) for j in range(4)]
            for j, p in enumerate(crowd):
                t = base + 2 * DAY + d * HOUR + j * 3 * HOUR
                at(t, one(p, "pricing_page_view", "content_download"))

        # Daily caps: 15 hot inbound leads in one day, more than the members' caps allow
        # under either version; the last get the team's fixed (overflow) assignee.
        day = base + 4 * DAY
        for j in range(15):
            domain = ("vandelay.com", "wonka.io", "tyrell.ai")[j % 3]  # never in the ABM list
            p = Person(f"rush{j}.{tag}@{domain}", "VP Marketing", src[j % len(src)])
            at(day + 8 * HOUR + j * 40 * MINUTE, one(p, "pricing_page_view", "demo_request"))

    # -- what the service made of it -----------------------------------------------------

    async def read_back(self, before: Phase, after: Phase, changed_at: float) -> None:
        async with self.svc.runtime.sessionmaker() as s:
            rows = (
                await s.execute(
                    select(
                        decisions.c.type,
                        decisions.c.lead_id,
                        decisions.c.rule,
                        decisions.c.band,
                        decisions.c.created_at,
                        decisions.c.payload,
                    ).order_by(decisions.c.created_at)
                )
            ).all()
        hot_at: dict[str, float] = {}
        for type_, lead_id, rule, band, created_at, payload in rows:
            phase = before if created_at < changed_at else after
            data = orjson.loads(payload)["data"]
            phase.by_rule[rule] += 1
            phase.escalations += bool(data["escalation"])
            phase.surges += type_ == "account.surge"
            phase.capped += data["assignee"] == OVERFLOW
            phase.owner_assigned += data["assignment"] == "account_owner"
            if data["assignment"] == "round_robin":
                phase.round_robin_assignees.add(data["assignee"])
            if type_ == "lead.routed" and band == "hot":
                last = hot_at.get(lead_id)
                if last is not None and created_at - last >= DAY:
                    phase.rerouted_after_cooldown += 1
                hot_at[lead_id] = created_at


async def generate(svc: Service, clock: FakeClock, *, seed: int = 14, days: int = 28) -> Summary:
    """Drive a ``days``-long history through ``svc``; what it contains."""
    return await Generator(svc, clock, seed).run(days)
