"""The per-source scorecard against a generated, realistic data set.

Four sources of clearly different quality send their leads' events through the real
ingest API, over three simulated weeks; sales answers through the real feedback API, at
realistic delays. The test keeps its own record of everything it generated and sent, and
computes every figure of the scorecard from that record alone, with the scoring rules
of PRODUCT.md written out here again (not the app's code, not its tables).
"""

from __future__ import annotations

import copy
import csv
import io
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.auth import create_key
from app.clock import FakeClock
from tests.support.harness import Service, event, ts

DAY = 86400.0
SLA_SECONDS = 15 * 60  # the SLA the test gives the hot_tier_1 rule
TAKEN = {"accepted", "opportunity", "won", "lost"}

# -- the default policy, written out independently (PRODUCT.md) ---------------------------
POINTS = {"site_visit": 5, "content_download": 10, "pricing_page_view": 15, "demo_request": 20}
HALF_LIFE = {"site_visit": 3 * DAY, "content_download": 10 * DAY, "pricing_page_view": 7 * DAY}
HALF_LIFE["demo_request"] = 14 * DAY
DECISION_MAKER = re.compile(r"(?i)\b(vp|vice president|head of|director|chief|ceo|founder)\b")


def expected_fit(title: str, email: str, account: dict[str, Any] | None) -> float:
    a = account or {}
    points = 0.0
    if 200 <= a.get("employees", -1) <= 10_000:
        points += 10
    if a.get("industry") in ("software", "internet", "financial_services", "healthcare"):
        points += 10
    if DECISION_MAKER.search(title):
        points += 15
    if a.get("country") in ("US", "CA", "GB", "IE", "DE", "FR", "NL", "AU"):
        points += 10
    if 10_000_000 <= a.get("annual_revenue", -1) <= 1_000_000_000:
        points += 5
    domain = email.split("@")[1]
    if domain in ("gmail.com", "yahoo.com", "hotmail.com") or domain.endswith(".edu"):
        points -= 20
    return max(0.0, min(50.0, points))


def intent_at(events_: list[tuple[str, float]], t: float) -> float:
    total = sum(POINTS[s] * 2 ** (-(t - te) / HALF_LIFE[s]) for s, te in events_ if te <= t)
    return max(0.0, min(50.0, total))


# -- the generated world -----------------------------------------------------------------
BUNDLES = {
    "browse": ["site_visit", "content_download"],
    "research": ["content_download", "pricing_page_view"],
    "evaluate": ["site_visit", "pricing_page_view", "demo_request"],
    "engage": ["site_visit", "content_download", "pricing_page_view", "demo_request"],
}
TIERS = ["tier_1", "tier_2", "tier_3", None]
ICP_COMPANIES = [
    {
        "domain": f"co{i}.io",
        "industry": ["software", "internet", "financial_services", "healthcare"][i % 4],
        "employees": 300 + 97 * i,
        "country": ["US", "GB", "DE", "CA"][i % 4],
        "annual_revenue": 20_000_000 + 1_000_000 * i,
    }
    for i in range(40)
]
TIER_OF = {c["domain"]: TIERS[(i // 3) % 4] for i, c in enumerate(ICP_COMPANIES)}
SMB_COMPANIES = [
    {"domain": f"shop{i}.store", "industry": "retail", "employees": 8 + i, "country": "US"}
    for i in range(25)
]


@dataclass
class SourceSpec:
    name: str
    leads: int
    profiles: dict[str, float]
    campaigns: list[str | None]
    first_visit: dict[str, float]
    return_rate: float  # share of leads that come back later (via the website)
    no_feedback: float
    reject: float  # of those with feedback
    reasons: dict[str, float]
    opportunity: float  # of the accepted
    won: float  # of the opportunities; as many again are lost, the rest still open
    first_delay: tuple[float, float]  # routed → first feedback, seconds
    fast: float = 0.0  # share of answers within minutes (inside a 15-minute SLA)


SOURCES = [
    # High volume, low quality: students, free-mail, small shops; sales mostly rejects.
    SourceSpec(
        "content_syndication",
        150,
        {"student": 0.3, "freemail": 0.25, "smb": 0.25, "icp_ic": 0.12, "icp_exec": 0.08},
        ["cs_ebook_q3", "cs_webinar_q3"],
        {"browse": 0.85, "research": 0.15},
        0.3,
        no_feedback=0.1,
        reject=0.7,
        reasons={"bad_fit": 3, "no_authority": 2, "unresponsive": 2, "too_early": 1},
        opportunity=0.25,
        won=0.2,
        first_delay=(600, 2 * DAY),
        fast=0.05,
    ),
    # Targeted ads: a fair mix.
    SourceSpec(
        "linkedin_ads",
        60,
        {"icp_exec": 0.35, "icp_ic": 0.35, "smb": 0.3},
        ["li_abm_q3", "li_retargeting"],
        {"browse": 0.3, "research": 0.3, "evaluate": 0.4},
        0.35,
        no_feedback=0.1,
        reject=0.4,
        reasons={"no_budget": 2, "too_early": 2, "wrong_market": 1},
        opportunity=0.45,
        won=0.4,
        first_delay=(120, 6 * 3600),
        fast=0.3,
    ),
    # Low volume, high quality: demo requests from the website; sales takes nearly all.
    SourceSpec(
        "website_demo",
        30,
        {"icp_exec": 0.6, "icp_ic": 0.3, "freemail": 0.1},
        [None, None, "brand_search"],
        {"engage": 1.0},
        0.0,
        no_feedback=0.05,
        reject=0.1,
        reasons={"duplicate": 1},
        opportunity=0.7,
        won=0.55,
        first_delay=(60, 1800),
        fast=0.6,
    ),
    SourceSpec(
        "partner_referral",
        20,
        {"icp_exec": 0.5, "icp_ic": 0.3, "smb": 0.2},
        ["partner_q3"],
        {"evaluate": 1.0},
        0.2,
        no_feedback=0.1,
        reject=0.25,
        reasons={"competitor": 1, "other": 1},
        opportunity=0.5,
        won=0.5,
        first_delay=(300, 4 * 3600),
        fast=0.4,
    ),
]


@dataclass
class Lead:
    email: str
    source: str
    title: str
    account: dict[str, Any] | None
    tier: str | None
    # (time the batch is posted, [(event type, campaign or None)], event source)
    visits: list[tuple[float, list[str], list[str | None], str]] = field(default_factory=list)
    # What actually happened, as the test did it:
    signals: list[tuple[str, float]] = field(default_factory=list)
    first_seen: float | None = None
    first_campaign: tuple[float, str] | None = None
    routed_at: float | None = None
    feedback: list[tuple[float, str, str | None]] = field(default_factory=list)
    planned_feedback: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    @property
    def fit(self) -> float:
        return expected_fit(self.title, self.email, self.account)


def pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def make_lead(rng: random.Random, spec: SourceSpec, i: int, t0: float) -> Lead:
    profile = pick(rng, spec.profiles)
    tag = f"{spec.name[:4]}{i}"
    if profile in ("icp_exec", "icp_ic"):
        company = rng.choice(ICP_COMPANIES)
        title = rng.choice(["VP Marketing", "Head of Sales", "Director of IT", "CEO"])
        if profile == "icp_ic":
            title = rng.choice(["Software Engineer", "Marketing Specialist", "Analyst"])
        lead = Lead(f"{tag}@{company['domain']}", spec.name, title, company, None)
        lead.tier = TIER_OF[company["domain"]]
    elif profile == "smb":
        company = rng.choice(SMB_COMPANIES)
        lead = Lead(f"{tag}@{company['domain']}", spec.name, "Marketing Manager", company, None)
    elif profile == "student":
        lead = Lead(f"{tag}@uni{i % 7}.edu", spec.name, "Student", None, None)
    else:
        lead = Lead(
            f"{tag}@{rng.choice(['gmail.com', 'yahoo.com'])}", spec.name, "Director", None, None
        )
    t1 = t0 + rng.uniform(0.2, 20) * DAY
    campaign = rng.choice(spec.campaigns)
    bundle = BUNDLES[pick(rng, spec.first_visit)]
    # The first event of a visit names no campaign (a plain page view); the rest do.
    lead.visits.append((t1, bundle, [None] + [campaign] * (len(bundle) - 1), spec.name))
    if rng.random() < spec.return_rate:
        t2 = t1 + rng.uniform(1, 6) * DAY
        again = BUNDLES[rng.choice(["engage", "evaluate"])]
        lead.visits.append((t2, again, ["retargeting_q3"] * len(again), "website"))
    return lead


def plan_feedback(rng: random.Random, spec: SourceSpec, lead: Lead, routed_at: float) -> None:
    """What sales will do with a routed lead, and when."""
    if rng.random() < spec.no_feedback:
        return
    fast = rng.random() < spec.fast
    t = routed_at + (rng.uniform(60, 840) if fast else rng.uniform(*spec.first_delay))
    plan = lead.planned_feedback
    if rng.random() < spec.reject:
        plan.append((t, {"status": "rejected", "reason": pick(rng, spec.reasons)}))
        if rng.random() < 0.2:  # a second look: sales takes it after all
            t += rng.uniform(3600, 3 * DAY)
            plan.append((t, {"status": "accepted"}))
        return
    plan.append((t, {"status": "accepted"}))
    if rng.random() < spec.opportunity:
        t += rng.uniform(1, 5) * DAY
        plan.append((t, {"status": "opportunity", "value": rng.randint(5, 80) * 1000}))
        outcome = rng.random()
        t += rng.uniform(3, 20) * DAY
        if outcome < spec.won:
            plan.append((t, {"status": "won", "value": rng.randint(5, 80) * 1000}))
        elif outcome < 2 * spec.won:
            plan.append((t, {"status": "lost"}))
    elif rng.random() < 0.2:
        t += rng.uniform(1, 3) * DAY
        plan.append((t, {"status": "rejected", "reason": "duplicate"}))


# -- the independent computation ---------------------------------------------------------
def median(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    n = len(s)
    mid = (s[(n - 1) // 2] + s[n // 2]) / 2
    return round(mid, 3)


def rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def group_key(lead: Lead, group_by: str) -> str:
    if group_by == "source":
        return lead.source
    if group_by == "tier":
        return lead.tier or "none"
    return lead.first_campaign[1] if lead.first_campaign else "none"


def expected_report(
    world: list[Lead], since: float, until: float, group_by: str, now: float
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    groups: dict[str, tuple[list[Lead], list[Lead]]] = {}
    cohort_all: list[Lead] = []
    routed_all: list[Lead] = []
    for lead in world:
        key = group_key(lead, group_by)
        assert lead.first_seen is not None
        if since <= lead.first_seen < until:
            groups.setdefault(key, ([], []))[0].append(lead)
            cohort_all.append(lead)
        if lead.routed_at is not None and since <= lead.routed_at < until:
            groups.setdefault(key, ([], []))[1].append(lead)
            routed_all.append(lead)

    def figures(name: str, cohort: list[Lead], routed: list[Lead]) -> dict[str, Any]:
        icp = sum(1 for x in cohort if x.fit >= 25)
        hot = sum(1 for x in cohort if x.routed_at is not None)
        dispositioned = [x for x in routed if x.feedback]
        accepted_at = {
            x.email: next((t for t, s, _ in x.feedback if s in TAKEN), None) for x in routed
        }
        accepted = [x for x in routed if accepted_at[x.email] is not None]
        rejected = [x for x in routed if x.feedback and x.feedback[-1][1] == "rejected"]
        reasons = Counter(x.feedback[-1][2] for x in rejected)
        met = missed = open_ = 0
        for x in routed:
            if x.tier != "tier_1":
                continue  # only the hot_tier_1 rule has an SLA
            assert x.routed_at is not None
            due = x.routed_at + SLA_SECONDS
            took = accepted_at[x.email]
            if took is not None and took <= due:
                met += 1
            elif took is not None or due < now:
                missed += 1
            else:
                open_ += 1
        opps = sum(1 for x in routed if any(s in ("opportunity", "won") for _, s, _ in x.feedback))
        won = sum(1 for x in routed if x.feedback and x.feedback[-1][1] == "won")
        lost = sum(1 for x in routed if x.feedback and x.feedback[-1][1] == "lost")
        to_accept = []
        for x in accepted:
            took, at = accepted_at[x.email], x.routed_at
            assert took is not None and at is not None
            to_accept.append(took - at)
        return {
            "group": name,
            "leads": len(cohort),
            "icp_fit": icp,
            "icp_fit_rate": rate(icp, len(cohort)),
            "hot": hot,
            "hot_rate": rate(hot, len(cohort)),
            "routed": len(routed),
            "routed_decisions": len(routed),
            "dispositioned": len(dispositioned),
            "accepted": len(accepted),
            "acceptance_rate": rate(len(accepted), len(dispositioned)),
            "rejected": len(rejected),
            "rejection_reasons": dict(reasons),
            "sla_met": met,
            "sla_missed": missed,
            "sla_open": open_,
            "sla_rate": rate(met, met + missed),
            "opportunities": opps,
            "opportunity_rate": rate(opps, len(routed)),
            "won": won,
            "lost": lost,
            "win_rate": rate(won, won + lost),
            # Events are posted and routed at the same instant of the test clock.
            "median_event_to_routed_seconds": 0.0 if routed else None,
            "median_routed_to_accepted_seconds": median(to_accept),
        }

    expected = {name: figures(name, c, r) for name, (c, r) in groups.items()}
    return expected, figures("total", cohort_all, routed_all)


# -- running it through the API ----------------------------------------------------------
async def build_world(svc: Service, clock: FakeClock) -> list[Lead]:
    rng = random.Random(6)
    t0 = clock.now()
    abm = [
        {"domain": d, "name": d, "tier": tier, "owner": f"owner{i}@ours.example"}
        for i, (d, tier) in enumerate(TIER_OF.items())
        if tier
    ]
    r = await svc.client.put("/v1/accounts", json={"accounts": abm})
    assert r.status_code == 200, r.text
    policy = copy.deepcopy((await svc.client.get("/v1/policy")).json()["policy"])
    for rule in policy["routing"]["rules"]:
        if rule["name"] == "hot_tier_1":
            rule["sla"] = {"accept_within": SLA_SECONDS, "escalate_to": "fallback_queue"}
    r = await svc.client.put("/v1/policy", json=policy)
    assert r.status_code == 200, r.text

    world = [make_lead(rng, spec, i, t0) for spec in SOURCES for i in range(spec.leads)]
    specs = {s.name: s for s in SOURCES}
    # One timeline of actions, run in time order on the test clock.
    queue: list[tuple[float, int, Lead, Any]] = []
    seq = 0
    for lead in world:
        for visit in lead.visits:
            queue.append((visit[0], seq := seq + 1, lead, visit))
    while queue:
        queue.sort(key=lambda a: (a[0], a[1]))
        t, _, lead, action = queue.pop(0)
        clock.advance(max(0.0, t - clock.now()))
        now = clock.now()
        if isinstance(action, tuple):  # a visit: its events, 30 s apart, ending now
            _, bundle, campaigns, source = action
            batch = []
            for k, (signal, campaign) in enumerate(zip(bundle, campaigns, strict=True)):
                at = now - 30 * (len(bundle) - 1 - k)
                ev = event(
                    f"{lead.email}-{len(lead.signals)}",
                    signal,
                    at,
                    email=lead.email,
                    source=source,
                    title=lead.title,
                    account=lead.account,
                )
                if campaign:
                    ev["campaign"] = campaign
                    if lead.first_campaign is None or at < lead.first_campaign[0]:
                        lead.first_campaign = (at, campaign)
                batch.append(ev)
                lead.signals.append((signal, at))
                if lead.first_seen is None:
                    lead.first_seen = at
            r = await svc.client.post("/v1/events", json={"events": batch})
            assert r.status_code == 202 and r.json()["accepted"] == len(batch), r.text
            total = lead.fit + intent_at(lead.signals, now)
            assert abs(total - 80) > 2, "the generator keeps totals clear of the hot line"
            if lead.routed_at is None and total >= 80:
                lead.routed_at = now
                plan_feedback(rng, specs[lead.source], lead, now)
                for tf, body in lead.planned_feedback:
                    queue.append((tf, seq := seq + 1, lead, body))
        else:  # feedback, addressed by the lead's email (its routed decision)
            r = await svc.client.post(f"/v1/decisions/{lead.email}/feedback", json=action)
            assert r.status_code == 201, r.text
            lead.feedback.append((now, action["status"], action.get("reason")))
    return world


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def check(got: dict[str, Any], expected: dict[str, Any]) -> None:
    for name, want in expected.items():
        have = got[name]
        if isinstance(want, float) and isinstance(have, float):
            assert math.isclose(have, want, abs_tol=1e-3), (got["group"], name, have, want)
        else:
            assert have == want, (got["group"], name, have, want)


async def test_scorecard_matches_an_independent_computation(svc: Service, clock: FakeClock) -> None:
    t0 = clock.now()
    world = await build_world(svc, clock)
    now = clock.now()
    assert sum(1 for x in world if x.routed_at) > 60 and sum(len(x.feedback) for x in world) > 80
    # The data set has the cases the definitions are about.
    histories = [tuple(s for _, s, _ in x.feedback) for x in world]
    assert ("rejected", "accepted") in histories and ("accepted", "rejected") in histories
    assert any(h[-1:] == ("won",) for h in histories) and any(
        h[-1:] == ("lost",) for h in histories
    )
    assert any(x.routed_at and not x.feedback for x in world)
    assert len({x.source for x in world if x.first_campaign is None}) >= 1

    windows = [
        (t0 + 4 * DAY, t0 + 14 * DAY),  # leads first seen before it are routed in it
        (t0, now + 1),
    ]
    for since, until in windows:
        for group_by in ("source", "campaign", "tier"):
            params = {"since": ts(since), "until": ts(until), "group_by": group_by}
            r = await svc.client.get("/v1/reports/sources", params=params)
            assert r.status_code == 200, r.text
            body = r.json()
            assert abs(parse_time(body["since"]) - since) < 0.001
            assert abs(parse_time(body["until"]) - until) < 0.001
            expected, totals = expected_report(world, since, until, group_by, now)
            assert body["group_by"] == group_by and body["fit_threshold"] == 25
            got = {g["group"]: g for g in body["groups"]}
            assert set(got) == set(expected), (group_by, sorted(got), sorted(expected))
            for name, want in expected.items():
                check(got[name], want)
            check(body["totals"], totals)
            if since == t0:
                assert totals["sla_met"] > 0 and totals["sla_missed"] > 0, totals

            r = await svc.client.get("/v1/reports/sources", params={**params, "format": "csv"})
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/csv")
            rows = list(csv.DictReader(io.StringIO(r.text)))
            assert [row["group"] for row in rows] == [g["group"] for g in body["groups"]]
            for row in rows:
                want = expected[row["group"]]
                for column, value in want.items():
                    if column == "rejection_reasons":
                        for reason, n in value.items():
                            assert int(row[f"reason_{reason}"]) == n
                        listed = [c for c in row if c.startswith("reason_") and row[c] != "0"]
                        assert len(listed) == len(value)
                    elif value is None:
                        assert row[column] == "", (row["group"], column)
                    elif column != "group":
                        assert math.isclose(float(row[column]), value, abs_tol=1e-3), (
                            row["group"],
                            column,
                        )

    # The point of the report: volume and quality point different ways.
    r = await svc.client.get("/v1/reports/sources", params={"since": ts(t0), "until": ts(now + 1)})
    by_source = {g["group"]: g for g in r.json()["groups"]}
    cs, demo = by_source["content_syndication"], by_source["website_demo"]
    assert cs["leads"] > 3 * demo["leads"]
    assert cs["acceptance_rate"] < 0.5 < demo["acceptance_rate"]
    assert cs["icp_fit_rate"] < demo["icp_fit_rate"]

    # The default window is the last 30 days: every lead of the simulation is in it.
    r = await svc.client.get("/v1/reports/sources")
    assert r.status_code == 200
    assert r.json()["totals"]["leads"] == sum(
        1 for x in world if x.first_seen and x.first_seen >= now - 30 * DAY
    )


async def test_bad_report_requests_are_a_clear_422_and_need_the_read_scope(
    svc: Service, clock: FakeClock
) -> None:
    cases = [
        ({"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "until"),
        ({"since": "2026-01-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "until"),
        ({"group_by": "country"}, "group_by"),
        ({"format": "xml"}, "format"),
        ({"since": "yesterday"}, "since"),
        ({"until": "1999-12-31T00:00:00Z"}, "until"),
    ]
    for params, field_ in cases:
        r = await svc.client.get("/v1/reports/sources", params=params)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["field"] == field_, (params, r.json())
    # an empty window: groups empty, rates null
    r = await svc.client.get(
        "/v1/reports/sources",
        params={"since": "2001-01-01T00:00:00Z", "until": "2001-02-01T00:00:00Z"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["groups"] == [] and body["totals"]["leads"] == 0
    assert body["totals"]["acceptance_rate"] is None and body["totals"]["win_rate"] is None
    for scopes, status in (("ingest", 403), ("read", 200)):
        async with svc.runtime.sessionmaker() as session, session.begin():
            _, key = await create_key(session, name=scopes, scopes=[scopes], now=clock.now())
        async with svc.as_key(key) as c:
            r = await c.get("/v1/reports/sources", params={"format": "csv"})
            assert r.status_code == status, r.text


def test_summarise_medians_sla_and_history_semantics() -> None:
    """The pure aggregation, on hand-made decisions (times the API test cannot vary)."""
    from app.reports import DecisionFact, LeadFact, summarise

    def decision(lead: str, received: float, created: float, **kw: Any) -> DecisionFact:
        base: dict[str, Any] = {
            "accepted_at": None,
            "disposition": None,
            "sla_status": None,
            "sla_due_at": None,
            "history": (),
        }
        return DecisionFact(lead, created, received, **{**base, **kw})

    now = 10_000.0
    facts = [
        # taken after a rejection: accepted, not rejected; met its SLA
        decision(
            "a",
            0,
            4,
            accepted_at=64,
            disposition="accepted",
            sla_status="met",
            sla_due_at=300,
            history=(("rejected", "too_early"), ("accepted", None)),
        ),
        # accepted, then rejected as a duplicate: both, the reason counted
        decision(
            "b",
            0,
            10,
            accepted_at=130,
            disposition="rejected",
            sla_status="missed",
            sla_due_at=100,
            history=(("accepted", None), ("rejected", "duplicate")),
        ),
        # opportunity then lost: an opportunity, and lost
        decision(
            "c",
            0,
            1,
            accepted_at=1001,
            disposition="lost",
            history=(("accepted", None), ("opportunity", None), ("lost", None)),
        ),
        # no feedback, SLA overdue but not yet marked: missed; another not yet due: open
        decision("d", 5, 5, sla_status="pending", sla_due_at=now - 1),
        decision("d", 5, 6, sla_status="pending", sla_due_at=now + 1),
    ]
    leads = [LeadFact("a", 50, True), LeadFact("b", 24.9, False), LeadFact("c", 25, False)]
    g = summarise("x", leads, facts, fit_threshold=25, now=now)
    assert (g.leads, g.icp_fit, g.icp_fit_rate, g.hot) == (3, 2, 0.6667, 1)
    assert (g.routed, g.routed_decisions, g.dispositioned, g.accepted) == (4, 5, 3, 3)
    assert (g.acceptance_rate, g.rejected, g.rejection_reasons) == (1.0, 1, {"duplicate": 1})
    assert (g.sla_met, g.sla_missed, g.sla_open, g.sla_rate) == (1, 2, 1, 0.3333)
    assert (g.opportunities, g.opportunity_rate, g.won, g.lost, g.win_rate) == (1, 0.2, 0, 1, 0.0)
    # event→routed: 4, 10, 1, 0, 1 → 1; routed→accepted: 60, 120, 1000 → 120
    assert g.median_event_to_routed_seconds == 1.0
    assert g.median_routed_to_accepted_seconds == 120.0
    g = summarise("x", leads, facts[:4], fit_threshold=25, now=now)
    assert g.median_event_to_routed_seconds == 2.5  # 4, 10, 1, 0 → (1 + 4) / 2
    empty = summarise("y", [], [], fit_threshold=25, now=now)
    assert empty.icp_fit_rate is None and empty.sla_rate is None and empty.win_rate is None
    assert empty.median_routed_to_accepted_seconds is None
