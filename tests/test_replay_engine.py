"""The replay engine's parts: every transport's stored events parse back, account imports
replay where they happened, the decision diff's pairing and counts, and the jobs' life
(a job whose process died is run again; a job that cannot run fails with a reason).

The end-to-end claims (a replay reproduces reality on a generated history; a candidate's
diff names exactly the leads it would newly route) are in tests/test_replay.py.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson
import pytest
from sqlalchemy import insert, select

from app.clock import FakeClock, iso
from app.db import dumps, replays
from app.ingest.stored import Unreadable, stored_event
from app.policy.impact.diff import diff
from app.policy.impact.replay import Replayed
from tests.support.harness import Service, event, eventually, ts
from tests.support.scenarios import ACME

# -- through the service ----------------------------------------------------------------


async def replay(svc: Service, body: dict[str, Any]) -> dict[str, Any]:
    r = await svc.client.post("/v1/replays", json=body)
    assert r.status_code == 202, r.text
    return await finished(svc, r.json()["id"])


async def finished(svc: Service, job_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        view: dict[str, Any] = (await svc.client.get(f"/v1/replays/{job_id}")).json()
        return view if view["status"] in ("done", "failed") else None

    view: dict[str, Any] = await eventually(done, within=60)
    return view


def only_unchanged(view: dict[str, Any]) -> None:
    assert view["status"] == "done", view
    counts = view["diff"]["counts"]
    assert counts["unchanged"] == view["diff"]["decisions"]["baseline"] > 0, counts
    assert sum(counts.values()) == counts["unchanged"], counts
    assert view["progress"]["events_unreadable"] == 0


async def test_segment_and_native_events_and_imports_replay_as_they_happened(
    svc: Service, clock: FakeClock
) -> None:
    r = await svc.client.post("/v1/sources", json={"name": "website", "kind": "segment"})
    auth = (r.json()["write_key"], "")
    t = clock.now()
    # Before the import: Acme is no ABM account, so this lead goes to hot_inbound.
    for msg, path in (
        ({"userId": "u1", "traits": {"email": "vp@acme.com", "title": "VP Sales"}}, "identify"),
        ({"userId": "u1", "event": "Demo Requested"}, "track"),
        ({"userId": "u1", "properties": {"path": "/pricing"}, "name": "Pricing"}, "page"),
    ):
        body = {**msg, "messageId": f"m-{path}", "timestamp": ts(t)}
        assert (await svc.client.post(f"/v1/{path}", json=body, auth=auth)).status_code == 200
    assert (
        await svc.client.post(
            "/v1/events", json=event("n1", "site_visit", t, email="vp@acme.com", account=ACME)
        )
    ).status_code == 202
    clock.advance(60)
    r = await svc.client.put(
        "/v1/accounts", json=[{"domain": "acme.com", "tier": "tier_1", "owner": "jo@ours.example"}]
    )
    assert r.status_code == 200, r.text
    # After it: a tier-1 lead for the owner.
    t2 = clock.now()
    for i, type_ in enumerate(("demo_request", "pricing_page_view")):
        ev = event(f"n2-{i}", type_, t2, email="cto@acme.com", title="CTO", account=ACME)
        assert (await svc.client.post("/v1/events", json=ev)).status_code == 202
    actual = (await svc.client.get("/v1/decisions")).json()["decisions"]
    assert sorted(d["rule"] for d in actual) == ["hot_inbound", "hot_tier_1"], actual

    view = await replay(svc, {"version": 1})
    only_unchanged(view)  # had the lanes started with today's accounts, the first would differ
    shown = (await svc.client.get(f"/v1/replays/{view['id']}/decisions")).json()["decisions"]
    assert [(d["lead_id"], d["rule"], d["assignee"]) for d in shown] == [
        ("vp@acme.com", "hot_inbound", None),
        ("cto@acme.com", "hot_tier_1", "jo@ours.example"),
    ]
    assert shown[0]["source"] == "website"


# -- stored events -------------------------------------------------------------------------


class Row:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


ROW = Row(
    event_id="ce-1",
    received_at=1_767_000_000.0,
    occurred_at=1_766_999_000.0,
    type="content_download",
    source="/crm",
    transport="kafka",
)


@pytest.mark.parametrize("form", ["data", "data_base64"])
def test_a_stored_cloudevent_parses_back_with_the_rows_type_and_times(form: str) -> None:
    data = {"lead": {"email": "Bo@CE-beta.io", "title": "CTO"}}
    doc: dict[str, Any] = {
        "specversion": "1.0",
        "id": "ce-1",
        "source": "/crm",
        # a type today's policy would not map: the row says what it was mapped to
        "type": "com.acme.whitepaper_downloaded",
    }
    if form == "data":
        doc["data"] = data
    else:
        doc["data_base64"] = base64.b64encode(orjson.dumps(data)).decode()
    ev = stored_event(ROW, orjson.dumps(doc).decode())
    assert (ev.event_id, ev.type, ev.source, ev.transport) == (
        "ce-1",
        "content_download",
        "/crm",
        "kafka",
    )
    assert (ev.occurred_at, ev.received_at) == (ROW.occurred_at, ROW.received_at)
    assert ev.email == "bo@ce-beta.io" and ev.lead_attrs["title"] == "CTO"


def test_an_erased_or_broken_payload_is_unreadable_not_guessed() -> None:
    for payload in ('{"erased":true}', "{oops", '{"specversion": "1.0", "id": "x"}'):
        with pytest.raises(Unreadable):
            stored_event(ROW, payload)


# -- the diff --------------------------------------------------------------------------------


def made(
    lead: str, at: float, *, rule: str = "hot_inbound", team: str = "inbound", **kw: Any
) -> Replayed:
    fields = {
        "type": "lead.routed",
        "lead_id": lead,
        "account_domain": lead.split("@")[-1],
        "rule": rule,
        "team": team,
        "assignee": None,
        "band": "hot",
        "tier": None,
        "source": "ads",
        "created_at": at,
        "trigger_event_id": f"{lead}-e",
        **kw,
    }
    body = {
        "data": {"reason": f"why {lead}", "score": {"total": 80}, "signals": [], "lead": {"x": 1}}
    }
    return Replayed("x", 1, fields, orjson.dumps(body).decode())


def test_the_diff_pairs_decisions_per_subject_in_order_and_counts_each_change() -> None:
    baseline = [
        made("a@x.io", 100),
        made("b@x.io", 100),
        made("c@x.io", 100),
        made("d@x.io", 100),
        made("d@x.io", 200_000),  # d routed twice
        made("acct", 50, type="account.surge", lead_id=None, account_domain="x.io", tier="tier_1"),
    ]
    candidate = [
        made("a@x.io", 100),  # unchanged
        made("b@x.io", 40, team="strategic", rule="hot_tier_1"),  # earlier, rule and team
        made("d@x.io", 100),  # d only once: its second is no longer routed
        made("e@x.io", 500, source="web"),  # newly routed
        made("c@x.io", 160),  # later by 60 s
    ]
    out = diff(baseline, candidate, baseline_kind="actual", examples=1)
    c = out["counts"]
    assert out["decisions"] == {"baseline": 6, "candidate": 5}
    assert (c["unchanged"], c["newly_routed"], c["no_longer_routed"]) == (2, 1, 1)
    assert (c["changed_rule"], c["changed_team"], c["changed_assignee"], c["changed_band"]) == (
        1,
        1,
        0,
        0,
    )
    assert (c["earlier"], c["later"], c["surges_lost"], c["surges_gained"]) == (1, 1, 1, 0)
    assert out["timing"] == {"earlier_seconds_median": 60.0, "later_seconds_median": 60.0}
    assert out["by_source"]["web"] == {"newly_routed": 1}
    assert out["by_tier"]["tier_1"] == {"surges_lost": 1}
    [ex] = out["examples"]["newly_routed"]
    assert ex["lead_id"] == "e@x.io" and ex["baseline"] is None
    assert ex["candidate"]["reason"] == "why e@x.io" and ex["candidate"]["created_at"] == iso(500)
    assert "lead" not in ex["candidate"]  # the explanation, not the lead's snapshot
    [moved] = out["examples"]["earlier"]
    assert (moved["lead_id"], moved["seconds"]) == ("b@x.io", -60.0)
    assert moved["baseline"]["team"] == "inbound" and moved["candidate"]["team"] == "strategic"
    assert len(out["examples"]) == len({k for k, n in c.items() if n and k != "unchanged"})


# -- jobs ----------------------------------------------------------------------------------


async def test_a_job_whose_process_died_is_run_again(svc: Service, clock: FakeClock) -> None:
    t = clock.now()
    for i, type_ in enumerate(("demo_request", "pricing_page_view")):
        ev = event(f"e{i}", type_, t, email="vp@acme.com", title="VP Sales", account=ACME)
        assert (await svc.client.post("/v1/events", json=ev)).status_code == 202
    # A job another process claimed, then stopped renewing (its lease ran out a while ago).
    async with svc.runtime.sessionmaker() as s, s.begin():
        await s.execute(
            insert(replays).values(
                id="rpl_orphan",
                kind="replay",
                status="running",
                policy_version=1,
                start="history",
                examples=3,
                created_at=t,
                owner="gone:1",
                lease_until=time.time() - 5,
                cursor=10**9,
                progress=dumps({"phase": "window"}),
            )
        )
    svc.runtime.replays.poke()
    view = await finished(svc, "rpl_orphan")
    only_unchanged(view)


async def test_a_job_that_cannot_run_fails_with_its_reason(svc: Service) -> None:
    # A stored version whose document no longer loads (what an old release could leave).
    async with svc.runtime.sessionmaker() as s, s.begin():
        from app.db import policies

        await s.execute(
            insert(policies).values(version=2, document="{oops", created_at=1.0, status="active")
        )
    view = await replay(svc, {"version": 2})
    assert view["status"] == "failed", view
    assert "policy version 2 does not load" in view["error"], view
    async with svc.runtime.sessionmaker() as s:
        row = (
            await s.execute(select(replays.c.lease_until).where(replays.c.id == view["id"]))
        ).one()
    assert row.lease_until is None
    assert (await svc.client.get("/readyz")).status_code == 200
