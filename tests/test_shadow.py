"""Issue 14's shadow policy over HTTP against the real service on SQLite and PostgreSQL.

- A shadow started on a short history follows the live batches under its candidate in its
  own state: a lead the policy in force leaves warm and the candidate makes hot shows as
  newly routed in ``GET /v1/policy/shadow``, while the real receiver gets only the live
  decisions and no delivery row names a shadow decision; promoted, the candidate is the
  next version and the next event scores under it.
- Discarded, its process stops: its progress and decisions no longer move while the live
  service goes on.
- A live decision the candidate does not make shows as no longer routed; a dry run is not
  queued behind a running shadow (the launcher gives shadows a slot of their own).
- One shadow at a time (409), also when six start at once; none to promote or discard
  (409), none ever (404), a bad candidate named by its path (422), admin only (403).
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select

from app.api import policy as policy_api
from app.clock import FakeClock
from app.db import decisions, deliveries, replay_decisions, replays
from tests.support.harness import Receiver, Service, eventually
from tests.support.scenarios import demo, hot, lead, new_key, setup_crm


async def post(svc: Service, evs: list[dict[str, Any]]) -> None:
    r = await svc.client.post("/v1/events", json={"events": evs})
    assert r.status_code == 202, r.text


async def live_routed(svc: Service, lead_id: str) -> list[dict[str, Any]]:
    """The lead once the live service has scored it: its routing decisions."""

    async def scored() -> dict[str, Any] | None:
        r = await svc.client.get(f"/v1/leads/{lead_id}")
        return r.json() if r.status_code == 200 else None

    body = await eventually(scored)
    return [d for d in body["decisions"] if d["type"] == "lead.routed"]


async def candidate_policy(svc: Service) -> dict[str, Any]:
    """The policy in force with demo_request at 40 points: one demo request of a fit-50
    lead makes it hot (90)."""
    policy = copy.deepcopy((await svc.client.get("/v1/policy")).json()["policy"])
    policy["signals"]["demo_request"]["points"] = 40
    return policy


async def start_shadow(svc: Service, policy: dict[str, Any]) -> dict[str, Any]:
    r = await svc.client.put("/v1/policy", params={"mode": "shadow"}, json=policy)
    assert r.status_code == 202, r.text
    job: dict[str, Any] = r.json()
    assert job["kind"] == "shadow" and job["start"] == "history", job
    assert job["status"] in ("queued", "running"), job
    assert job["url"] == f"/v1/replays/{job['id']}"
    return job


async def shadow(svc: Service) -> dict[str, Any]:
    r = await svc.client.get("/v1/policy/shadow")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["status"] != "failed", body
    return body


async def caught_up(svc: Service) -> dict[str, Any]:
    """The shadow once it has replayed the history and written its first live diff."""

    async def check() -> dict[str, Any] | None:
        s = await shadow(svc)
        return s if s["status"] == "running" and s["diff"] is not None else None

    found: dict[str, Any] = await eventually(check, within=60)
    return found


async def stopped(svc: Service) -> dict[str, Any]:
    """The shadow once its process has written its last diff and stopped."""

    async def check() -> dict[str, Any] | None:
        s = await shadow(svc)
        return s if s["finished_at"] is not None else None

    found: dict[str, Any] = await eventually(check, within=30)
    return found


async def shadow_decisions(svc: Service, job_id: str) -> list[dict[str, Any]]:
    r = await svc.client.get(f"/v1/replays/{job_id}/decisions", params={"limit": 1000})
    assert r.status_code == 200, r.text
    assert r.json()["next_cursor"] is None
    found: list[dict[str, Any]] = r.json()["decisions"]
    return found


async def test_shadow_follows_live_batches_delivers_nothing_and_promotes(
    svc: Service, hook: Receiver, clock: FakeClock
) -> None:
    await setup_crm(svc, hook)
    # history before the shadow: a lead routed live (the shadow's warm-up replays it)
    await post(svc, hot("bo", clock.now()))
    assert len(await live_routed(svc, "bo@globex.com")) == 1
    await hook.wait_for(1)

    job = await start_shadow(svc, await candidate_policy(svc))
    first = await caught_up(svc)
    assert first["id"] == job["id"]
    assert first["diff"]["baseline"] == "actual"
    assert first["diff"]["decisions"] == {"baseline": 0, "candidate": 0}  # bo was history

    clock.advance(60)
    await post(svc, [demo("ann", clock.now())])  # live 70 warm; candidate 90 hot
    assert await live_routed(svc, "ann@globex.com") == []
    assert (await lead(svc, "ann@globex.com"))["score"]["band"] == "warm"
    clock.advance(60)
    await post(svc, hot("cy", clock.now()))  # hot under both
    assert len(await live_routed(svc, "cy@globex.com")) == 1

    async def diffed() -> dict[str, Any] | None:
        s = await shadow(svc)
        counts = s["diff"]["counts"] if s["diff"] else {}
        done = counts.get("newly_routed") == 1 and counts.get("unchanged") == 1
        return s if done else None

    seen = await eventually(diffed, within=60)
    diff = seen["diff"]
    assert diff["decisions"] == {"baseline": 1, "candidate": 2}, diff
    assert {k: v for k, v in diff["counts"].items() if v} == {"newly_routed": 1, "unchanged": 1}
    [example] = diff["examples"]["newly_routed"]
    assert example["lead_id"] == "ann@globex.com"
    assert example["baseline"] is None
    assert example["candidate"]["band"] == "hot" and example["candidate"]["rule"] == "hot_inbound"
    assert seen["progress"]["phase"] == "follow"
    made = await shadow_decisions(svc, job["id"])
    assert [(d["lead_id"], d["type"], d["band"]) for d in made] == [
        ("ann@globex.com", "lead.routed", "hot"),
        ("cy@globex.com", "lead.routed", "hot"),
    ]

    # the shadow's decisions exist only as replay decisions: the live tables hold bo's
    # and cy's, each with its one delivery, and the receiver got exactly those two
    async with svc.runtime.sessionmaker() as s:
        live = {
            r.id: r.lead_id for r in await s.execute(select(decisions.c.id, decisions.c.lead_id))
        }
        delivered = [r.decision_id for r in await s.execute(select(deliveries.c.decision_id))]
        shadowed = await s.scalar(
            select(func.count())
            .select_from(replay_decisions)
            .where(replay_decisions.c.replay_id == job["id"])
        )
    assert sorted(live.values()) == ["bo@globex.com", "cy@globex.com"]
    assert sorted(delivered) == sorted(live)
    assert shadowed == 2
    got = await hook.wait_for(2)
    assert sorted(r.json()["data"]["decision_id"] for r in got) == sorted(live)

    # promote: the candidate is version 2, in force at once
    r = await svc.client.post("/v1/policy/shadow/promote")
    assert r.status_code == 200, r.text
    promoted = r.json()
    assert promoted["version"] == 2 and promoted["status"] == "active"
    assert promoted["comment"] == f"promoted from shadow {job['id']}"
    assert promoted["policy"]["signals"]["demo_request"]["points"] == 40
    versions = (await svc.client.get("/v1/policy/versions")).json()["versions"]
    assert [(v["version"], v["status"]) for v in versions] == [(2, "active"), (1, "superseded")]
    ended = await stopped(svc)
    assert ended["id"] == job["id"] and ended["status"] == "promoted"
    assert ended["progress"]["phase"] == "done"
    assert (await svc.client.post("/v1/policy/shadow/promote")).status_code == 409

    clock.advance(60)
    await post(svc, [demo("dee", clock.now())])  # 90 under version 2: hot, routed
    [routed] = await live_routed(svc, "dee@globex.com")
    dee = await lead(svc, "dee@globex.com")
    assert dee["score"]["policy_version"] == 2 and dee["score"]["band"] == "hot"
    got = await hook.wait_for(3)
    assert got[2].json()["data"]["decision_id"] == routed["id"]
    assert got[2].json()["data"]["policy_version"] == 2


async def test_discarded_shadow_stops_following(
    svc: Service, hook: Receiver, clock: FakeClock
) -> None:
    await setup_crm(svc, hook)
    await post(svc, hot("bo", clock.now()))
    await live_routed(svc, "bo@globex.com")
    job = await start_shadow(svc, await candidate_policy(svc))
    await caught_up(svc)
    clock.advance(60)
    await post(svc, [demo("ann", clock.now())])
    await live_routed(svc, "ann@globex.com")

    async def applied() -> dict[str, Any] | None:
        s = await shadow(svc)
        return s if s["diff"] and s["diff"]["decisions"]["candidate"] == 1 else None

    await eventually(applied, within=60)
    r = await svc.client.delete("/v1/policy/shadow")
    assert r.status_code == 200, r.text
    assert r.json()["id"] == job["id"] and r.json()["status"] == "discarded"
    last = await stopped(svc)
    assert last["status"] == "discarded" and last["progress"]["phase"] == "done"
    before = await shadow_decisions(svc, job["id"])
    assert [d["lead_id"] for d in before] == ["ann@globex.com"]

    # the live service goes on; the discarded shadow applies nothing more
    clock.advance(60)
    await post(svc, [demo("cy", clock.now())])
    await post(svc, hot("dee", clock.now()))
    assert len(await live_routed(svc, "dee@globex.com")) == 1
    await live_routed(svc, "cy@globex.com")
    after = await shadow(svc)
    assert after["progress"] == last["progress"]
    assert after["diff"] == last["diff"]
    assert await shadow_decisions(svc, job["id"]) == before
    assert (await svc.client.delete("/v1/policy/shadow")).status_code == 409

    # another shadow can start now, and is the one shown
    second = await start_shadow(svc, await candidate_policy(svc))
    assert (await shadow(svc))["id"] == second["id"]
    r = await svc.client.delete("/v1/policy/shadow")
    assert r.status_code == 200 and r.json()["id"] == second["id"], r.text


async def test_one_shadow_when_several_start_at_once(svc: Service) -> None:
    policy = await candidate_policy(svc)
    for _ in range(3):
        answers = await asyncio.gather(
            *(
                svc.client.put("/v1/policy", params={"mode": "shadow"}, json=policy)
                for _ in range(6)
            )
        )
        codes = sorted(r.status_code for r in answers)
        assert codes == [202] + [409] * 5, [r.text for r in answers]
        async with svc.runtime.sessionmaker() as s:
            n = await s.scalar(
                select(func.count())
                .select_from(replays)
                .where(replays.c.kind == "shadow", replays.c.status.in_(("queued", "running")))
            )
        assert n == 1
        r = await svc.client.delete("/v1/policy/shadow")
        assert r.status_code == 200, r.text


def error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    return body


async def test_shadow_conflicts_and_refusals(svc: Service) -> None:
    error(await svc.client.get("/v1/policy/shadow"), 404, "no_shadow")
    error(await svc.client.post("/v1/policy/shadow/promote"), 409, "no_shadow_running")
    error(await svc.client.delete("/v1/policy/shadow"), 409, "no_shadow_running")

    policy = await candidate_policy(svc)
    bad = copy.deepcopy(policy)
    bad["signals"]["demo_request"]["points"] = "lots"
    body = error(
        await svc.client.put("/v1/policy", params={"mode": "shadow"}, json=bad),
        422,
        "policy_invalid",
    )
    assert body["field"] == "signals.demo_request.points", body
    error(
        await svc.client.put("/v1/policy", params={"mode": "shade"}, json=policy),
        422,
        "invalid_input",
    )
    error(
        await svc.client.put(
            "/v1/policy", params={"mode": "shadow", "dry_run": "true"}, json=policy
        ),
        422,
        "invalid_input",
    )
    reader = svc.as_key(await new_key(svc, "reader", ["read"]))
    async with reader:
        r = await reader.put("/v1/policy", params={"mode": "shadow"}, json=policy)
        assert r.status_code == 403, r.text
        assert (await reader.get("/v1/policy/shadow")).status_code == 404
    error(await svc.client.get("/v1/policy/shadow"), 404, "no_shadow")  # nothing was made

    # YAML, as PUT /v1/policy takes it
    r = await svc.client.put(
        "/v1/policy",
        params={"mode": "shadow"},
        content=yaml.safe_dump(policy),
        headers={"content-type": "application/yaml"},
    )
    assert r.status_code == 202, r.text
    first = r.json()
    body = error(
        await svc.client.put("/v1/policy", params={"mode": "shadow"}, json=policy),
        409,
        "shadow_running",
    )
    assert first["id"] in body["message"]
    async with svc.as_key(await new_key(svc, "reader2", ["read"])) as reader:
        r = await reader.get("/v1/policy/shadow")
        assert r.status_code == 200 and r.json()["id"] == first["id"], r.text
        assert (await reader.delete("/v1/policy/shadow")).status_code == 403
        assert (await reader.post("/v1/policy/shadow/promote")).status_code == 403
    # no version was made by any of this
    versions = (await svc.client.get("/v1/policy/versions")).json()["versions"]
    assert [v["version"] for v in versions] == [1]
    r = await svc.client.delete("/v1/policy/shadow")
    assert r.status_code == 200 and r.json()["status"] == "discarded", r.text
    error(await svc.client.delete("/v1/policy/shadow"), 409, "no_shadow_running")
    assert (await shadow(svc))["status"] == "discarded"  # the latest, when none runs


async def test_shadow_shows_a_lead_no_longer_routed(svc: Service, clock: FakeClock) -> None:
    await post(svc, hot("bo", clock.now()))
    await live_routed(svc, "bo@globex.com")
    policy = await candidate_policy(svc)
    policy["signals"]["demo_request"]["points"] = 0  # cy: 50 + 15 = 65, warm
    await start_shadow(svc, policy)
    await caught_up(svc)
    clock.advance(60)
    await post(svc, hot("cy", clock.now()))
    assert len(await live_routed(svc, "cy@globex.com")) == 1

    async def diffed() -> dict[str, Any] | None:
        s = await shadow(svc)
        return s if s["diff"]["counts"]["no_longer_routed"] == 1 else None

    seen = await eventually(diffed, within=20)
    [example] = seen["diff"]["examples"]["no_longer_routed"]
    assert example["lead_id"] == "cy@globex.com" and example["candidate"] is None


async def test_a_dry_run_beside_a_running_shadow_gets_its_diff(
    svc: Service, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(policy_api, "DRY_RUN_WAIT_SECONDS", 30.0)
    await post(svc, [demo("ann", clock.now())])
    await live_routed(svc, "ann@globex.com")
    candidate = await candidate_policy(svc)
    await start_shadow(svc, candidate)
    await caught_up(svc)
    r = await svc.client.put("/v1/policy", params={"dry_run": "true"}, json=candidate)
    assert r.status_code == 200, r.text
    dry = r.json()
    assert dry["replay"]["status"] == "done", dry["replay"]
    assert dry["decision_diff"]["counts"]["newly_routed"] == 1
