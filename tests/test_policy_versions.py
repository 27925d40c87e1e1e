"""Issue 14's policy versions over HTTP against the real service on SQLite and PostgreSQL:
what a new version would decide (the dry run's decision diff, through the replay engine)
and putting a stored version back in force (one call, recorded as a new version).

- A dry run replays the recent history under the candidate and the recorded versions: its
  ``decision_diff`` names the lead the candidate would newly route; the band preview is
  still there; the replay is a job of kind dry_run one can read; nothing is stored.
- Not done in time, the dry run names the job to poll; the window holds at most the cap's
  newest events and nothing older than a week.
- Rollback: version 1 activated after version 2 is version 3 with version 1's document, in
  force at once (the next event scores under it), listed active with the rest superseded;
  unknown versions are 404, unloadable ones 409, a read key 403.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

import orjson
import pytest
from sqlalchemy import insert

from app.api import policy as policy_api
from app.clock import FakeClock
from app.db import policies
from tests.support.harness import Service, eventually
from tests.support.scenarios import demo, hot, lead, new_key

DAY = 86400.0


async def post_and_score(svc: Service, evs: list[dict[str, Any]]) -> dict[str, Any]:
    """Post ``evs`` (one lead's); that lead once the live service has scored them all."""
    r = await svc.client.post("/v1/events", json={"events": evs})
    assert r.status_code == 202, r.text
    lead_id = evs[0]["lead"]["email"]
    signals = {e["type"] for e in evs}

    async def scored() -> dict[str, Any] | None:
        r = await svc.client.get(f"/v1/leads/{lead_id}")
        if r.status_code != 200:
            return None
        body: dict[str, Any] = r.json()
        seen = {s["signal"] for s in body["intent_breakdown"]}
        return body if signals <= seen else None

    found: dict[str, Any] = await eventually(scored)
    return found


async def policy_doc(svc: Service, **points: float) -> dict[str, Any]:
    doc = copy.deepcopy((await svc.client.get("/v1/policy")).json()["policy"])
    for name, p in points.items():
        doc["signals"][name]["points"] = p
    return doc


async def job(svc: Service, url: str) -> dict[str, Any]:
    r = await svc.client.get(url)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["status"] != "failed", body
    return body


async def finished(svc: Service, url: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        body = await job(svc, url)
        return body if body["status"] == "done" else None

    found: dict[str, Any] = await eventually(done, within=60)
    return found


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


async def test_dry_run_decision_diff_names_the_newly_routed_lead(
    svc: Service, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # waiting is the product's 10 s; here long enough that the job is always done in it
    monkeypatch.setattr(policy_api, "DRY_RUN_WAIT_SECONDS", 120.0)
    await post_and_score(svc, hot("bo", clock.now()))  # hot under both
    clock.advance(60)
    ann = await post_and_score(svc, [demo("ann", clock.now())])  # 70 warm; candidate 90 hot
    assert ann["score"]["band"] == "warm"
    clock.advance(60)

    candidate = await policy_doc(svc, demo_request=40)
    r = await svc.client.put("/v1/policy", params={"dry_run": "true"}, json=candidate)
    assert r.status_code == 200, r.text
    dry = r.json()
    assert dry["valid"] is True and dry["would_be_version"] == 2
    assert any("demo_request" in c for c in dry["changes"])
    assert dry["band_changes"] == {"warm→hot": 1}  # the preview it always gave
    assert dry["replay"]["status"] == "done"
    diff = dry["decision_diff"]
    assert diff["baseline"] == "recorded_versions"
    assert diff["decisions"] == {"baseline": 1, "candidate": 2}, diff
    assert nonzero(diff["counts"]) == {"newly_routed": 1, "unchanged": 1}, diff
    [example] = diff["examples"]["newly_routed"]
    assert example["lead_id"] == "ann@globex.com" and example["baseline"] is None
    assert example["candidate"]["band"] == "hot"

    # the replay is a job like any other: kind dry_run, from an empty state, a week back
    replayed = await job(svc, dry["replay"]["url"])
    assert replayed["id"] == dry["replay"]["id"]
    assert replayed["kind"] == "dry_run" and replayed["start"] == "empty"
    assert replayed["diff"] == diff
    assert replayed["since"] is not None
    # a dry run stores no version and changes nothing live
    versions = (await svc.client.get("/v1/policy/versions")).json()["versions"]
    assert [v["version"] for v in versions] == [1]
    assert (await lead(svc, "ann@globex.com"))["decisions"] == []


async def test_dry_run_not_done_in_time_names_its_job(
    svc: Service, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(policy_api, "DRY_RUN_WAIT_SECONDS", 0.0)
    await post_and_score(svc, [demo("ann", clock.now())])
    r = await svc.client.put(
        "/v1/policy", params={"dry_run": "true"}, json=await policy_doc(svc, demo_request=40)
    )
    assert r.status_code == 200, r.text
    dry = r.json()
    assert dry["band_changes"] == {"warm→hot": 1}
    if dry["replay"]["status"] != "done":  # it may be quick enough even with no wait
        assert dry["decision_diff"] is None
        assert dry["replay"]["status"] in ("queued", "running")
    done = await finished(svc, dry["replay"]["url"])
    assert nonzero(done["diff"]["counts"]) == {"newly_routed": 1}


async def test_dry_run_window_is_a_week_and_capped_in_events(
    svc: Service, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(policy_api, "DRY_RUN_WAIT_SECONDS", 120.0)
    candidate = await policy_doc(svc, demo_request=40)
    await post_and_score(svc, [demo("old", clock.now())])  # newly routed, but 8 days back
    clock.advance(8 * DAY)
    ann_at = clock.now()
    await post_and_score(svc, [demo("ann", ann_at)])  # newly routed: in the window
    clock.advance(60)
    bo_at = clock.now()
    await post_and_score(svc, hot("bo", bo_at))  # routed by both
    clock.advance(60)

    r = await svc.client.put("/v1/policy", params={"dry_run": "true"}, json=candidate)
    assert r.status_code == 200, r.text
    diff = r.json()["decision_diff"]
    assert nonzero(diff["counts"]) == {"newly_routed": 1, "unchanged": 1}, diff
    assert [e["lead_id"] for e in diff["examples"]["newly_routed"]] == ["ann@globex.com"]

    # capped at the newest two events: bo's batch only (ann's is the third newest event)
    monkeypatch.setattr(policy_api, "DRY_RUN_MAX_EVENTS", 2)
    r = await svc.client.put("/v1/policy", params={"dry_run": "true"}, json=candidate)
    assert r.status_code == 200, r.text
    dry = r.json()
    assert nonzero(dry["decision_diff"]["counts"]) == {"unchanged": 1}, dry
    assert dry["decision_diff"]["decisions"] == {"baseline": 1, "candidate": 1}, dry
    # the window starts just after ann's batch (ms shown), not after bo's
    since = datetime.fromisoformat((await job(svc, dry["replay"]["url"]))["since"]).timestamp()
    assert ann_at - 0.001 <= since <= bo_at, (since, ann_at, bo_at)


async def test_rollback_activates_a_stored_version_as_a_new_one(
    svc: Service, clock: FakeClock
) -> None:
    v1 = (await svc.client.get("/v1/policy")).json()["policy"]
    r = await svc.client.put(
        "/v1/policy",
        params={"comment": "no demo points"},
        json=await policy_doc(svc, demo_request=0),
    )
    assert r.status_code == 200 and r.json()["version"] == 2, r.text
    bo = await post_and_score(svc, hot("bo", clock.now()))  # 50 + 0 + 15 under version 2
    assert bo["score"]["policy_version"] == 2 and bo["score"]["band"] == "warm"

    r = await svc.client.post("/v1/policy/versions/1/activate")
    assert r.status_code == 200, r.text
    v3 = r.json()
    assert v3["version"] == 3 and v3["status"] == "active"
    assert v3["comment"] == "rollback to version 1"
    assert v3["policy"] == v1
    now = (await svc.client.get("/v1/policy")).json()
    assert now["version"] == 3 and now["policy"] == v1
    versions = (await svc.client.get("/v1/policy/versions")).json()["versions"]
    assert [(v["version"], v["status"]) for v in versions] == [
        (3, "active"),
        (2, "superseded"),
        (1, "superseded"),
    ]
    clock.advance(60)
    cy = await post_and_score(svc, hot("cy", clock.now()))  # 85 under version 3 (= 1)
    assert cy["score"]["policy_version"] == 3 and cy["score"]["band"] == "hot"
    assert [d["type"] for d in cy["decisions"]] == ["lead.routed"]


async def test_activate_refusals_and_a_proposed_version(svc: Service) -> None:
    r = await svc.client.post("/v1/policy/versions/99/activate")
    assert r.status_code == 404 and r.json()["code"] == "policy_version_not_found", r.text
    r = await svc.client.post("/v1/policy/versions/0/activate")
    assert r.status_code == 422, r.text
    v1 = (await svc.client.get("/v1/policy")).json()["policy"]
    proposal = copy.deepcopy(v1)
    proposal["signals"]["site_visit"]["points"] = 7
    async with svc.runtime.sessionmaker() as s, s.begin():
        await s.execute(
            insert(policies),
            [
                # stored by hand: not a policy this release loads
                {
                    "version": 2,
                    "document": '{"signals": 1}',
                    "status": "proposed",
                    "created_at": 0.0,
                },
                {
                    "version": 3,
                    "document": orjson.dumps(proposal).decode(),
                    "status": "proposed",
                    "created_at": 0.0,
                    "created_by": "calibration",
                },
            ],
        )
    r = await svc.client.post("/v1/policy/versions/2/activate")
    assert r.status_code == 409 and r.json()["code"] == "policy_unloadable", r.text
    async with svc.as_key(await new_key(svc, "reader", ["read"])) as reader:
        assert (await reader.post("/v1/policy/versions/1/activate")).status_code == 403
    versions = (await svc.client.get("/v1/policy/versions")).json()["versions"]
    assert [(v["version"], v["status"]) for v in versions] == [
        (3, "proposed"),
        (2, "proposed"),
        (1, "active"),
    ]

    r = await svc.client.post("/v1/policy/versions/3/activate")
    assert r.status_code == 200, r.text
    v4 = r.json()
    assert v4["version"] == 4 and v4["comment"] == "activate proposed version 3"
    assert v4["policy"]["signals"]["site_visit"]["points"] == 7
    assert svc.runtime.current_policy().version == 4
    versions = (await svc.client.get("/v1/policy/versions")).json()["versions"]
    assert [(v["version"], v["status"]) for v in versions] == [
        (4, "active"),
        (3, "proposed"),
        (2, "proposed"),
        (1, "superseded"),
    ]
