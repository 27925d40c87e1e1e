"""Issue 14's replay, decided over HTTP against the real service on SQLite and PostgreSQL.

- The generated history (tests/support/history.py) really contains each feature a replay
  must reproduce: merges, late events, cooldown suppressions, escalations, surges, round
  robin with daily caps, account owners, several sources, a version change mid-way.
- Replay equals reality: the window from the version change, replayed under the version
  in force, gives the decisions the live service made, field for field and in order, and
  the diff says nothing changed.
- A candidate that raises ``pricing_page_view`` to 25 points newly routes exactly the leads
  an independent computation here (PRODUCT.md's decay math, not the app's code) names.
- ``start: empty`` compares with the recorded versions' own lane; bad requests are 4xx.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from app.clock import FakeClock, iso
from tests.support.harness import Service, event, eventually, ts
from tests.support.history import DAY, HOUR, MINUTE, generate
from tests.support.scenarios import new_key

FIELDS = (
    "type",
    "lead_id",
    "account_domain",
    "rule",
    "team",
    "assignee",
    "band",
    "tier",
    "source",
    "trigger_event_id",
)
KINDS = (
    "newly_routed",
    "no_longer_routed",
    "changed_rule",
    "changed_team",
    "changed_assignee",
    "changed_band",
    "earlier",
    "later",
    "surges_gained",
    "surges_lost",
)
ACTUAL = text(
    "SELECT d.type, d.lead_id, d.account_domain, d.rule, d.team, d.assignee, d.band, d.tier,"
    " d.source, d.trigger_event_id, d.created_at"
    " FROM decisions d JOIN batches b ON b.id = d.batch_id"
    " WHERE b.at >= :since AND b.at < :until ORDER BY d.batch_id, d.batch_pos"
)
NO_END = 1e12


# -- the replay API ----------------------------------------------------------------------


async def replay(svc: Service, body: dict[str, Any]) -> dict[str, Any]:
    """POST /v1/replays, then the job once it is done (failed is a failure)."""
    r = await svc.client.post("/v1/replays", json=body)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.json()["status"] in ("queued", "running", "done"), r.text

    async def finished() -> dict[str, Any] | None:
        got = await svc.client.get(f"/v1/replays/{job_id}")
        assert got.status_code == 200, got.text
        job: dict[str, Any] = got.json()
        assert job["status"] != "failed", f"replay failed: {job['error']}"
        return job if job["status"] == "done" else None

    job: dict[str, Any] = await eventually(finished, within=180)
    assert job["error"] is None, job
    assert job["diff"] is not None, job
    assert job["progress"]["phase"] == "done", job
    return job


def complete(job: dict[str, Any]) -> None:
    """The progress of a finished job: everything it counted, done."""
    progress = job["progress"]
    assert progress["batches_done"] == progress["batches_total"] > 0, progress
    assert progress["events_done"] == progress["events_total"] > 0, progress


async def replayed(svc: Service, job_id: str, lane: str = "candidate") -> list[dict[str, Any]]:
    """Every replayed decision of ``lane``, all pages, in order."""
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"lane": lane, "limit": 100}
        if cursor:
            params["cursor"] = cursor
        r = await svc.client.get(f"/v1/replays/{job_id}/decisions", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        out.extend(page["decisions"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert [d["pos"] for d in out] == sorted(d["pos"] for d in out), "out of order"
    return out


def shape(d: dict[str, Any]) -> tuple[Any, ...]:
    return (*(d[f] for f in FIELDS), d["created_at"])


async def actual(svc: Service, since: float = 0.0, until: float = NO_END) -> list[tuple[Any, ...]]:
    """The live decisions of the batches in [since, until), in (batch_id, batch_pos) order."""
    async with svc.runtime.sessionmaker() as s:
        rows = (await s.execute(ACTUAL, {"since": since, "until": until})).all()
    return [(*row[:-1], iso(row[-1])) for row in rows]


def only_unchanged(diff: dict[str, Any], n: int) -> None:
    """The diff of a replay that reproduced ``n`` decisions exactly."""
    assert diff["decisions"] == {"baseline": n, "candidate": n}, diff["decisions"]
    assert diff["counts"] == {"unchanged": n, **dict.fromkeys(KINDS, 0)}, diff["counts"]
    assert all(not diff["examples"].get(k) for k in KINDS), diff["examples"]
    for breakdown in ("by_source", "by_tier"):  # every part unchanged, adding up to n
        parts = diff[breakdown].values()
        assert all(set(c) == {"unchanged"} for c in parts), diff[breakdown]
        assert sum(c["unchanged"] for c in parts) == n, diff[breakdown]


def first_difference(a: list[Any], b: list[Any]) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"#{i}: actual {x} != replayed {y}"
    return f"lengths: actual {len(a)}, replayed {len(b)}"


# -- a) the history ----------------------------------------------------------------------


async def test_generated_history_contains_every_feature(svc: Service, clock: FakeClock) -> None:
    h = await generate(svc, clock)
    assert h.window.missing() == [], h.window
    assert h.before.missing() == [], h.before
    assert h.merges >= h.before.identified + h.window.identified
    assert h.started_at < h.changed_at < h.ended_at
    assert h.ended_at - h.started_at >= 3 * 7 * DAY
    assert h.versions[-2:] == [h.version_before, h.version_after]
    r = await svc.client.get("/v1/policy/versions")
    stored = {v["version"]: v for v in r.json()["versions"]}
    assert stored[h.version_after]["status"] == "active"
    assert stored[h.version_after]["created_at"] == iso(h.changed_at)
    assert h.window.by_rule["warm_nurture"] > 0 and h.before.by_rule["warm_nurture"] == 0
    for rule in ("hot_tier_1", "hot_inbound", "account_surge"):
        assert h.before.by_rule[rule] > 0 and h.window.by_rule[rule] > 0, (rule, h)
    events = h.before.events + h.window.events
    assert 300 <= events <= 1200, events
    assert h.decisions == sum(h.before.by_rule.values()) + sum(h.window.by_rule.values())


# -- b) replay equals reality ------------------------------------------------------------


async def test_replay_of_the_window_equals_reality(svc: Service, clock: FakeClock) -> None:
    h = await generate(svc, clock)
    job = await replay(
        svc, {"version": h.version_after, "since": ts(h.changed_at), "start": "history"}
    )
    assert job["diff"]["baseline"] == "actual"
    truth = await actual(svc, since=h.changed_at)
    assert len(truth) == sum(h.window.by_rule.values()) > 0
    got = [shape(d) for d in await replayed(svc, job["id"])]
    assert got == truth, first_difference(truth, got)
    only_unchanged(job["diff"], len(truth))
    complete(job)


async def test_replay_of_the_whole_history(svc: Service, clock: FakeClock) -> None:
    """No ``since``: every batch from the first under one version. The batches before the
    version change ran under it, so their decisions are reproduced exactly; after it the
    candidate lacks the warm rule, so the diff shows changes there (and only there)."""
    h = await generate(svc, clock)
    job = await replay(svc, {"version": h.version_before, "start": "history"})
    diff = job["diff"]
    assert diff["baseline"] == "actual"
    truth = await actual(svc)
    before = await actual(svc, until=h.changed_at)
    assert len(truth) == h.decisions and len(before) == sum(h.before.by_rule.values())
    got = [shape(d) for d in await replayed(svc, job["id"])]
    assert got[: len(before)] == before, first_difference(before, got)
    assert all(d[-1] >= iso(h.changed_at) for d in got[len(before) :])
    assert diff["decisions"]["baseline"] == len(truth)
    assert diff["decisions"]["candidate"] == len(got)
    assert diff["counts"]["unchanged"] >= len(before)
    # warm_nurture decisions (and their escalations) are not made without the warm rule.
    assert diff["counts"]["no_longer_routed"] + diff["counts"]["changed_rule"] > 0, diff
    assert not any(d["rule"] == "warm_nurture" for d in await replayed(svc, job["id"]))
    complete(job)


# -- d) start empty ----------------------------------------------------------------------


async def test_start_empty_compares_with_the_recorded_versions(
    svc: Service, clock: FakeClock
) -> None:
    h = await generate(svc, clock)
    job = await replay(
        svc, {"version": h.version_after, "since": ts(h.changed_at), "start": "empty"}
    )
    diff = job["diff"]
    assert diff["baseline"] == "recorded_versions"
    candidate = [shape(d) for d in await replayed(svc, job["id"], "candidate")]
    baseline = [shape(d) for d in await replayed(svc, job["id"], "baseline")]
    assert candidate == baseline, first_difference(baseline, candidate)
    assert len(candidate) > 0
    only_unchanged(diff, len(candidate))
    complete(job)


# -- c) the pricing candidate, against an independent computation ------------------------

# PRODUCT.md's default policy, as RevOps reads it: the two signals this history uses, the
# ICP's fit rules (size 200–10,000 +10, industry +10, decision-maker title +15, service
# area +10, revenue 10 M–1 B +5), bands hot ≥ 80 (left below 70), warm ≥ 50, cool ≥ 25.
HALF_LIFE = {"pricing_page_view": 7 * DAY, "demo_request": 14 * DAY}
ICP_INDUSTRIES = {"software", "internet", "financial_services", "healthcare"}
SERVICE_AREA = {"US", "CA", "GB", "IE", "DE", "FR", "NL", "AU"}
PRICED = [  # domain, industry, employees, country, revenue
    ("alpha.io", "software", 1200, "US", 5e7),
    ("beta.io", "retail", 1200, "US", 5e7),
    ("gamma.io", "software", 50, "US", None),
    ("delta.io", "internet", 500, "BR", 2e7),
    ("eps.io", "healthcare", 300, "GB", 5e6),
]
RANK = {"cold": 0, "cool": 1, "warm": 2, "hot": 3}


def fit(account: tuple[Any, ...], title: str) -> float:
    _, industry, employees, country, revenue = account
    points = 10 * (200 <= employees <= 10_000) + 10 * (industry in ICP_INDUSTRIES)
    points += 15 * (title == "VP Sales") + 10 * (country in SERVICE_AREA)
    points += 5 * (revenue is not None and 1e7 <= revenue <= 1e9)
    return float(max(0, min(50, points)))


def band_for(total: float, previous: str) -> str:
    band = "hot" if total >= 80 else "warm" if total >= 50 else "cool" if total >= 25 else "cold"
    return "hot" if previous == "hot" and total >= 70 else band


def routes(
    fit_: float, events: list[tuple[float, str, float]], pricing: float
) -> tuple[list[float], list[float]]:
    """When the lead is routed (its batches' times) and every total it was evaluated at,
    for ``events`` (occurred_at, type, batch time) in processing order: each transition at
    the lead's newest event, intent = Σ points·2^(-(t - t_e)/h) clamped to 50, a decision
    when the band rises to hot unless one was made within the 24 h cooldown."""
    points = {"pricing_page_view": pricing, "demo_request": 20.0}
    band, newest, last = "cold", -math.inf, -math.inf
    seen: list[tuple[float, str]] = []
    routed, totals = [], []
    for t_e, type_, at in events:
        seen.append((t_e, type_))
        newest = max(newest, t_e)
        raw = sum(points[ty] * 2 ** (-(newest - te) / HALF_LIFE[ty]) for te, ty in seen)
        total = fit_ + min(50.0, max(0.0, raw))
        totals.append(total)
        new = band_for(total, band)
        if RANK[new] > RANK[band] and new == "hot" and at - last >= DAY:
            routed.append(at)
            last = at
        band = new
    return routed, totals


@dataclass
class PricedLead:
    email: str
    account: tuple[Any, ...]
    title: str
    events: list[tuple[float, str]]  # (offset from the history's start, signal)
    processed: list[tuple[float, str, float]] = field(default_factory=list)

    def near_a_threshold(self) -> bool:
        """A total within a hair of 80 or 70 under either policy: left out, so the test
        does not hinge on the last bit of a float."""
        evs = [(t, ty, 0.0) for t, ty in self.events]
        totals = [x for p in (15.0, 25.0) for x in routes(fit(self.account, self.title), evs, p)[1]]
        return any(abs(x - edge) < 0.01 for x in totals for edge in (80.0, 70.0))


def pricing_history(seed: int = 25, n: int = 40) -> tuple[list[PricedLead], list[Any]]:
    """Leads of known fit at accounts of fixed attributes, each with one to four pricing
    views or demo requests within 20 hours, over nine days; and the batches (when each is
    processed, its events in order), one to three events each, in time order."""
    rng = random.Random(seed)
    people: list[PricedLead] = []
    while len(people) < n:
        i = len(people)
        start = (i % 9) * DAY + rng.uniform(8 * HOUR, 12 * HOUR)
        more = sorted(rng.uniform(10 * MINUTE, 20 * HOUR) for _ in range(rng.randint(0, 3)))
        account = rng.choice(PRICED)
        signals = ("pricing_page_view", "pricing_page_view", "demo_request")
        p = PricedLead(
            f"p{i}@{account[0]}",
            account,
            rng.choice(("VP Sales", "Engineer")),
            [(start + o, rng.choice(signals)) for o in (0.0, *more)],
        )
        if not p.near_a_threshold():
            people.append(p)
    timeline = sorted((t, j, ty) for j, p in enumerate(people) for t, ty in p.events)
    batches = []
    k = 0
    while k < len(timeline):
        size = rng.choice((1, 1, 2, 3))
        chunk = timeline[k : k + size]
        k += size
        batches.append(
            (chunk[-1][0] + rng.uniform(1, 30), [(t, people[j], ty) for t, j, ty in chunk])
        )
    return people, batches


def priced_event(n: int, t: float, p: PricedLead, type_: str) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if not p.processed:  # its first event: who it is and its company
        domain, industry, employees, country, revenue = p.account
        acct = {"domain": domain, "industry": industry, "employees": employees}
        acct["country"] = country
        if revenue is not None:
            acct["annual_revenue"] = revenue
        extra = {"title": p.title, "account": acct}
    return event(f"pr{n:04d}", type_, t, email=p.email, source="g2", **extra)


async def test_raising_pricing_page_view_to_25_newly_routes_exactly_the_computed_leads(
    svc: Service, clock: FakeClock
) -> None:
    clock.advance(-clock.now() % 1)
    base = clock.now()
    people, batches = pricing_history()
    n = 0
    for at, chunk in batches:
        clock.advance(base + at - clock.now())
        body = []
        for t, p, type_ in chunk:
            n += 1
            body.append(priced_event(n, base + t, p, type_))
            p.processed.append((base + t, type_, clock.now()))
        r = await svc.client.post("/v1/events", json={"events": body})
        assert r.status_code == 202, r.text
        assert {s["status"] for s in r.json()["results"]} == {"accepted"}, r.text

    computed = {
        p.email: tuple(routes(fit(p.account, p.title), p.processed, pts)[0] for pts in (15.0, 25.0))
        for p in people
    }
    now_routed = {e for e, (b, _) in computed.items() if b}
    then_routed = {e for e, (_, c) in computed.items() if c}
    newly = then_routed - now_routed
    assert now_routed - then_routed == set()  # more points never un-route a lead here
    assert newly and now_routed and set(computed) - then_routed, computed  # all three kinds
    assert all(len(b) <= 1 and len(c) <= 1 for b, c in computed.values()), computed

    # The inputs are as this computation reads them (fit), and so is reality (baseline).
    for p in people:
        got = (await svc.client.get(f"/v1/leads/{p.email}")).json()
        assert got["score"]["fit"] == fit(p.account, p.title), (p.email, got["fit_breakdown"])
    live = await actual(svc)
    assert {d[1] for d in live if d[0] == "lead.routed"} == now_routed, live
    assert sorted(d[1] for d in live) == sorted(now_routed), "one decision per routed lead"

    policy = copy.deepcopy((await svc.client.get("/v1/policy")).json()["policy"])
    policy["signals"]["pricing_page_view"]["points"] = 25
    job = await replay(svc, {"policy": policy, "start": "history", "examples": 50})
    diff = job["diff"]
    assert diff["baseline"] == "actual"
    assert diff["counts"]["newly_routed"] == len(newly), (sorted(newly), diff["counts"])
    examples = {x["lead_id"] for x in diff["examples"].get("newly_routed", [])}
    assert examples == newly, (sorted(examples), sorted(newly))
    for x in diff["examples"]["newly_routed"]:  # the candidate's explanation, none before
        assert x["baseline"] is None and x["seconds"] is None, x
        [at] = computed[x["lead_id"]][1]
        got = x["candidate"]
        assert (got["type"], got["band"], got["created_at"]) == ("lead.routed", "hot", iso(at))
        assert got["score"]["total"] >= 80 and got["signals"], x
    candidate = await replayed(svc, job["id"])
    assert {d["lead_id"] for d in candidate if d["type"] == "lead.routed"} == then_routed
    assert {d["lead_id"] for d in candidate} - now_routed == newly
    for d in candidate:
        [at] = computed[d["lead_id"]][1]
        assert d["created_at"] == iso(at), (d, iso(at))

    # The leads routed under both: earlier when the candidate crossed 80 in an earlier
    # batch, else unchanged (same rule, team, assignee, band, time).
    earlier = {e for e in now_routed if computed[e][1][0] < computed[e][0][0]}
    assert diff["counts"]["earlier"] == len(earlier), (sorted(earlier), diff["counts"])
    assert diff["counts"]["unchanged"] == len(now_routed) - len(earlier), diff["counts"]
    others = ("no_longer_routed", "later", "surges_gained", "surges_lost")
    assert {k: diff["counts"][k] for k in others} == dict.fromkeys(others, 0), diff["counts"]
    changed = [k for k in KINDS if k.startswith("changed_")]
    assert {k: diff["counts"][k] for k in changed} == dict.fromkeys(changed, 0), diff["counts"]
    assert diff["decisions"] == {"baseline": len(now_routed), "candidate": len(then_routed)}
    assert diff["by_source"]["g2"]["newly_routed"] == len(newly), diff["by_source"]
    assert diff["by_tier"]["none"]["newly_routed"] == len(newly), diff["by_tier"]
    complete(job)


# -- e) bad input ------------------------------------------------------------------------


async def test_bad_replay_requests_are_refused_naming_the_field(
    svc: Service, clock: FakeClock
) -> None:
    policy = (await svc.client.get("/v1/policy")).json()["policy"]
    broken = copy.deepcopy(policy)
    broken["signals"]["pricing_page_view"]["points"] = "lots"
    now = clock.now()
    cases: list[tuple[dict[str, Any], int, tuple[str, ...]]] = [
        ({"policy": policy, "version": 1}, 422, ("policy", "version")),
        ({}, 422, ("policy", "version")),
        ({"start": "history"}, 422, ("policy", "version")),
        ({"policy": broken}, 422, ("signals.pricing_page_view.points",)),
        ({"policy": "not a document"}, 422, ("policy",)),
        ({"version": 1, "since": ts(now), "until": ts(now - DAY)}, 422, ("since", "until")),
        ({"version": 1, "since": "yesterday"}, 422, ("since",)),
        ({"version": 1, "start": "sideways"}, 422, ("start",)),
        ({"version": 1, "examples": -1}, 422, ("examples",)),
        ({"version": 999}, 404, ("version",)),
        ({"version": 0}, 422, ("version",)),
    ]
    for body, status, fields in cases:
        r = await svc.client.post("/v1/replays", json=body)
        assert r.status_code == status, (body, r.status_code, r.text)
        got = r.json()
        assert got["code"] and got["message"], (body, got)
        assert any((got.get("field") or "").endswith(f) for f in fields), (body, got)
    for path in ("", "/decisions"):
        r = await svc.client.get(f"/v1/replays/rpl_00000000000000000000000000{path}")
        assert r.status_code == 404 and r.json()["code"].endswith("not_found"), r.text
    async with svc.as_key(await new_key(svc, "reader", ["read"])) as reader:
        r = await reader.post("/v1/replays", json={"version": 1})
        assert r.status_code == 403, r.text
