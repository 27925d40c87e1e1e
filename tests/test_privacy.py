"""Erasure, suppression and export of a person, against the real service (both
databases): a lead stitched from an anonymous visitor, routed and delivered to a
receiver that answers with a body (as a CRM echoes the record), with a disposition
whose note names the person."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.clock import FakeClock
from app.config import Settings
from app.crypto import generate_key
from app.db import accounts, decisions, delivery_attempts, events, metadata
from app.observability.metrics import EVENTS_SUPPRESSED
from app.privacy.erase import redact_decision
from app.privacy.person import Person
from tests.support.harness import Receiver, Service, event, eventually, serve, service, ts
from tests.support.scenarios import ACME, feedback, lead, routed

EMAIL = "dana.quokka@acme.com"
FIRST, LAST = "Danaquill", "Quokkaford"
TITLE = "VP Zephyrine Sales"
ANON = "anon-7f3e9c1d"
USER = "crm-user-5521"
OTHER = "rob.other@acme.com"
# Everything that names the person: none of it may be left anywhere after erasure.
NEEDLES = (EMAIL, FIRST, LAST, TITLE, ANON, USER)


def traces(text: str) -> list[str]:
    """The needles in ``text``, in any case (a path or a payload keeps the sender's)."""
    low = text.lower()
    return [n for n in NEEDLES if n.lower() in low]


@contextlib.asynccontextmanager
async def echo_receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver that answers 200 with the lead it was sent, as a CRM echoes the
    record it made (so the stored response body holds the person too)."""
    rec = Receiver()

    async def handle(request: Request) -> Response:
        await rec.handle(request)
        sent = orjson.loads(rec.requests[-1].body)
        body = {"id": "00Q5e00000Abc", "lead": sent.get("data", {}).get("lead")}
        return Response(orjson.dumps(body), status_code=200, media_type="application/json")

    app = Starlette(routes=[Route("/{path:path}", handle, methods=["POST"])])
    async with serve(app) as url:
        rec.url = url
        yield rec


async def setup(svc: Service, hook: Receiver) -> None:
    r = await svc.client.put(
        "/v1/accounts",
        json={"accounts": [{"domain": "acme.com", "name": "Acme", "tier": "tier_1"}]},
    )
    assert r.status_code == 200, r.text
    r = await svc.client.post("/v1/destinations", json={"name": "crm", "url": hook.url + "/crm"})
    assert r.status_code == 201, r.text


async def make_person(svc: Service, clock: FakeClock) -> str:
    """An anonymous visit, then the same visitor identifies and turns hot: one lead with
    an anonymous id and a user id merged in, routed; the decision's id."""
    t = clock.now()
    visit = event("q-0", "pricing_page_view", t, anonymous_id=ANON)
    r = await svc.client.post("/v1/events", json={"events": [visit]})
    assert r.status_code == 202, r.text
    who = {"anonymous_id": ANON, "user_id": USER, "first_name": FIRST, "last_name": LAST}
    hot = [
        event("q-1", "pricing_page_view", t, email=EMAIL, title=TITLE, account=ACME, **who),
        event("q-2", "demo_request", t, email=EMAIL, **who),
    ]
    r = await svc.client.post("/v1/events", json={"events": hot})
    assert r.status_code == 202, r.text

    async def decision() -> str | None:
        body = (await svc.client.get(f"/v1/leads/{EMAIL}")).json()
        ids = [d["id"] for d in body["decisions"] if d["type"] == "lead.routed"]
        return ids[0] if ids else None

    found: str = await eventually(decision)
    return found


async def delivered(svc: Service, decision_id: str) -> None:
    async def check() -> bool:
        r = await svc.client.get(f"/v1/decisions/{decision_id}")
        return [d["status"] for d in r.json()["deliveries"]] == ["delivered"]

    await eventually(check)


async def scan(svc: Service) -> list[str]:
    """Every table, every column, as text: where any of the needles still is."""
    found = []
    async with svc.runtime.sessionmaker() as s:
        for table in metadata.sorted_tables:
            for row in (await s.execute(select(table))).all():
                for column, value in row._mapping.items():
                    where = f"{table.name}.{column}"
                    found += [f"{where}: {n}" for n in traces(str(value))]
    return found


async def replay_done(svc: Service, body: dict[str, Any]) -> dict[str, Any]:
    r = await svc.client.post("/v1/replays", json=body)
    assert r.status_code == 202, r.text
    url = r.json()["url"]

    async def done() -> dict[str, Any] | None:
        view: dict[str, Any] = (await svc.client.get(url)).json()
        return view if view["status"] in ("done", "failed") else None

    view = await eventually(done, within=60)
    assert view["status"] == "done", view
    return view


async def account_row(svc: Service) -> tuple[Any, ...]:
    async with svc.runtime.sessionmaker() as s:
        row = (
            await s.execute(
                select(accounts.c.signals, accounts.c.active_leads).where(
                    accounts.c.domain == "acme.com"
                )
            )
        ).one()
    return tuple(row)


async def test_erasure_leaves_nothing_of_the_person(
    svc: Service, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with echo_receiver() as hook:
        await setup(svc, hook)
        decision_id = await make_person(svc, clock)
        await delivered(svc, decision_id)
        note = f"spoke to {FIRST} {LAST} ({EMAIL}), {TITLE}"
        r = await feedback(svc, decision_id, {"status": "accepted", "note": note})
        assert r.status_code == 201, r.text
        other_decision = await routed(svc, hook, clock, OTHER)
        await delivered(svc, other_decision)
    # A replay whose candidate sends every lead to another team: its diff's examples and
    # its decisions name the person too.
    candidate = (await svc.client.get("/v1/policy")).json()["policy"]
    for rule in candidate["routing"]["rules"]:
        rule["team"] = "queue"
    replay = await replay_done(svc, {"policy": candidate, "examples": 50})
    assert replay["diff"]["counts"]["changed_team"] >= 1
    assert any(t.startswith("replay_decisions.") for t in await scan(svc))
    assert await scan(svc), "the scenario stores the person (else the scan proves nothing)"
    acct_before = (await svc.client.get("/v1/accounts/acme.com")).json()
    stored_before = await account_row(svc)
    other_before = await lead(svc, OTHER)

    with caplog.at_level(logging.DEBUG):
        r = await svc.client.delete(f"/v1/leads/{EMAIL.upper()}")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "erased": {
            "leads": 2,  # the email lead and the anonymous lead merged into it
            "identities": 2,  # anon: and user:
            "events": 3,
            "decisions": 1,
            "delivery_attempts": 1,
            "dispositions": 1,
            "suppressions": 0,
            "replay_decisions": 1,
            "replays": 1,
        },
        "suppressed": False,
    }
    assert await scan(svc) == []
    # The service's own records (the test's HTTP client and the drivers' debug lines are
    # not the service's log), with every extra field.
    logged = [
        f"{rec.getMessage()} {rec.__dict__}"
        for rec in caplog.records
        if rec.name.split(".")[0] in ("app", "uvicorn")
    ]
    assert logged and not [line for line in logged if traces(line)]

    # Kept for counts: the event rows (not their payloads), the decision (not the lead).
    async with svc.runtime.sessionmaker() as s:
        kept = (await s.execute(select(events.c.type, events.c.payload))).all()
        assert sorted(t for t, p in kept if p == '{"erased":true}') == [
            "demo_request",
            "pricing_page_view",
            "pricing_page_view",
        ]
        row = (await s.execute(select(decisions).where(decisions.c.id == decision_id))).one()
        assert row.lead_id.startswith("erased:") and row.type == "lead.routed"
        assert orjson.loads(row.payload)["data"]["lead"] == {"lead_id": row.lead_id, "erased": True}
        bodies = (await s.execute(select(delivery_attempts.c.response_body))).scalars().all()
        assert len(bodies) == 2 and OTHER in str(bodies)  # the other lead's is untouched
    # The account's aggregate intent and stored active-lead count are unchanged.
    acct_after = (await svc.client.get("/v1/accounts/acme.com")).json()
    assert acct_after["intent"] == acct_before["intent"]
    assert acct_after["intent_breakdown"] == acct_before["intent_breakdown"]
    assert await account_row(svc) == stored_before
    assert await lead(svc, OTHER) == other_before
    # Gone: by any identifier, and a second erasure is a 404.
    for ref in (EMAIL, f"anon:{ANON}", f"user:{USER}"):
        assert (await svc.client.get(f"/v1/leads/{ref}")).status_code == 404
    r = await svc.client.delete(f"/v1/leads/{EMAIL}")
    assert r.status_code == 404 and r.json()["code"] == "lead_not_found"
    assert EMAIL not in r.text


async def test_a_suppressed_person_is_not_processed_again(svc: Service, clock: FakeClock) -> None:
    await make_person(svc, clock)
    r = await svc.client.delete(f"/v1/leads/anon:{ANON}", params={"suppress": "true"})
    assert r.status_code == 200, r.text
    assert r.json()["suppressed"] is True and r.json()["erased"]["suppressions"] == 3
    before = EVENTS_SUPPRESSED._value.get()
    t = clock.now()
    again = [
        event("s-1", "demo_request", t, email=EMAIL.upper()),
        event("s-2", "pricing_page_view", t, anonymous_id=ANON),
        event("s-3", "pricing_page_view", t, user_id=USER),
    ]
    r = await svc.client.post("/v1/events", json={"events": again})
    # Accepted as any event is (the sender cannot tell who is suppressed), then dropped.
    assert r.status_code == 202, r.text
    assert [s["status"] for s in r.json()["results"]] == ["accepted"] * 3
    assert EVENTS_SUPPRESSED._value.get() - before == 3
    for ref in (EMAIL, f"anon:{ANON}", f"user:{USER}"):
        assert (await svc.client.get(f"/v1/leads/{ref}")).status_code == 404
    async with svc.runtime.sessionmaker() as s:
        ids = (await s.execute(select(events.c.event_id))).scalars().all()
    assert not {"s-1", "s-2", "s-3"} & set(ids)
    assert await scan(svc) == []
    # Someone else at the same company is processed as before.
    r = await svc.client.post(
        "/v1/events", json={"events": [event("o-1", "demo_request", t, email=OTHER)]}
    )
    assert r.status_code == 202, r.text
    assert (await lead(svc, OTHER))["email"] == OTHER


async def test_suppression_outlives_a_rotation_of_the_secret_key(
    settings: Settings, clock: FakeClock
) -> None:
    """The suppression hashes' key is the service's own (kept encrypted in the keyring),
    so rotating INTENT_SECRET_KEY (new,old, then `secrets rotate`, then new alone) keeps
    an erased person suppressed: a hash cannot be recomputed, the identifier is gone."""
    old, new = generate_key(), generate_key()
    first = settings.model_copy(update={"secret_key": old})
    async with service(first, clock) as svc:
        await make_person(svc, clock)
        r = await svc.client.delete(f"/v1/leads/{EMAIL}", params={"suppress": "true"})
        assert r.status_code == 200, r.text
        admin = svc.admin_key
    for keys in (f"{new},{old}", new):
        if keys == new:  # what `intent-router secrets rotate` does before the old key goes
            async with service(
                settings.model_copy(update={"secret_key": f"{new},{old}"}), clock, key=admin
            ) as svc:
                from app.runtime.secrets import seal_secrets

                await seal_secrets(svc.runtime.sessionmaker, svc.runtime.box, rotate=True)
        async with service(
            settings.model_copy(update={"secret_key": keys}), clock, key=admin
        ) as svc:
            before = EVENTS_SUPPRESSED._value.get()
            t = clock.now()
            r = await svc.client.post(
                "/v1/events",
                json={"events": [event(f"r-{len(keys)}", "demo_request", t, email=EMAIL)]},
            )
            assert r.status_code == 202, r.text
            assert EVENTS_SUPPRESSED._value.get() - before == 1, keys
            assert (await svc.client.get(f"/v1/leads/{EMAIL}")).status_code == 404


async def test_export_holds_the_person_and_nobody_else(svc: Service, clock: FakeClock) -> None:
    async with echo_receiver() as hook:
        await setup(svc, hook)
        decision_id = await make_person(svc, clock)
        await delivered(svc, decision_id)
        r = await feedback(svc, decision_id, {"status": "accepted", "note": "called"})
        assert r.status_code == 201, r.text
        other_decision = await routed(svc, hook, clock, OTHER)
        await delivered(svc, other_decision)

    r = await svc.client.get(f"/v1/leads/user:{USER}/export")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["lead_id"] == EMAIL and doc["email"] == EMAIL
    assert sorted(row["lead_id"] for row in doc["leads"]) == [f"anon:{ANON}", EMAIL]
    assert sorted(i["identifier"] for i in doc["identities"]) == [f"anon:{ANON}", f"user:{USER}"]
    assert sorted(e["event_id"] for e in doc["events"]) == ["q-0", "q-1", "q-2"]
    q1 = next(e for e in doc["events"] if e["event_id"] == "q-1")
    assert q1["payload"]["lead"]["title"] == TITLE  # the payload as received
    [dec] = doc["decisions"]
    assert dec["id"] == decision_id and dec["payload"]["data"]["lead"]["email"] == EMAIL
    [delivery] = doc["deliveries"]
    [attempt] = delivery["attempts"]
    assert attempt["status_code"] == 200 and EMAIL in attempt["response_body"]
    assert [d["note"] for d in doc["dispositions"]] == ["called"]
    assert OTHER not in r.text and other_decision not in r.text
    # The same document from the command line's code path, and an unknown person is a 404.
    assert await svc.runtime.privacy.export(EMAIL) == doc
    r = await svc.client.get("/v1/leads/nobody@acme.com/export")
    assert r.status_code == 404 and "nobody@acme.com" not in r.text


async def test_erasure_and_export_need_an_admin_key(svc: Service, clock: FakeClock) -> None:
    await make_person(svc, clock)
    from tests.support.scenarios import new_key

    key = await new_key(svc, "reader", ["read", "ingest", "feedback"])
    async with svc.as_key(key) as c:
        assert (await c.delete(f"/v1/leads/{EMAIL}")).status_code == 403
        assert (await c.get(f"/v1/leads/{EMAIL}/export")).status_code == 403
    assert (await lead(svc, EMAIL))["email"] == EMAIL


async def test_erasure_renames_the_delivery_lanes(svc: Service, clock: FakeClock) -> None:
    async with echo_receiver() as hook:
        await setup(svc, hook)
        await delivered(svc, await make_person(svc, clock))
    assert (await svc.client.delete(f"/v1/leads/{EMAIL}")).status_code == 200
    assert await scan(svc) == []


CLI = str(Path(sys.executable).parent / "intent-router")


async def cli(svc: Service, *args: str) -> subprocess.CompletedProcess[str]:
    """``intent-router`` on the service's database, in a process of its own."""
    env = {**os.environ, "INTENT_DATABASE_URL": svc.runtime.settings.database_url}
    return await asyncio.to_thread(
        subprocess.run, [CLI, *args], env=env, capture_output=True, text=True, timeout=60
    )


async def test_lead_export_and_erase_from_the_command_line(svc: Service, clock: FakeClock) -> None:
    decision_id = await make_person(svc, clock)
    r = await cli(svc, "lead", "export", f"anon:{ANON}")
    assert r.returncode == 0, r.stderr
    doc = orjson.loads(r.stdout)
    assert doc["email"] == EMAIL and [d["id"] for d in doc["decisions"]] == [decision_id]
    assert sorted(e["event_id"] for e in doc["events"]) == ["q-0", "q-1", "q-2"]

    r = await cli(svc, "lead", "erase", EMAIL, "--suppress")
    assert r.returncode == 0, r.stderr
    out = orjson.loads(r.stdout)
    assert out["suppressed"] is True
    assert out["erased"]["leads"] == 2 and out["erased"]["suppressions"] == 3
    assert await scan(svc) == []
    # The running service picks the suppression up on its next reload (every 10 s).
    await svc.runtime.privacy.reload()
    again = [event("c-1", "demo_request", clock.now(), email=EMAIL)]
    r = await svc.client.post("/v1/events", json={"events": again})
    assert r.status_code == 202, r.text
    assert (await svc.client.get(f"/v1/leads/{EMAIL}")).status_code == 404
    async with svc.runtime.sessionmaker() as s:
        assert "c-1" not in set((await s.execute(select(events.c.event_id))).scalars())

    r = await cli(svc, "lead", "erase", EMAIL)
    assert r.returncode == 1 and r.stdout == "" and "no lead has the identifier" in r.stderr
    r = await cli(svc, "lead", "export", EMAIL)
    assert r.returncode == 1 and r.stdout == ""


def test_redaction_replaces_identifiers_and_the_leads_values_and_nothing_else() -> None:
    person = Person(
        lead_id=EMAIL,
        email=EMAIL,
        lead_ids=[EMAIL, f"anon:{ANON}"],
        identifiers=[f"anon:{ANON}", f"user:{USER}"],
        attributes={"first_name": FIRST, "title": TITLE, "country": "US"},
    )
    body = {
        "type": "lead.routed",
        "data": {
            "lead": {"email": EMAIL, "first_name": FIRST, "title": TITLE, "country": "US"},
            "account": {"domain": "acme.com", "country": "US"},
            "reason": f"lead {EMAIL} rose from cold to hot",
            "fit_breakdown": [{"rule": "decision_maker_title", "points": 15}],
            "seen_as": [ANON, f"user:{USER}", f"{FIRST} at Acme"],
        },
    }
    out = orjson.loads(
        redact_decision(orjson.dumps(body).decode(), person.scrubber("erased:x1"), "erased:x1")
    )
    assert out["data"]["lead"] == {"lead_id": "erased:x1", "erased": True}
    assert out["data"]["account"] == {"domain": "acme.com", "country": "US"}
    assert out["data"]["reason"] == "lead erased:x1 rose from cold to hot"
    assert out["data"]["fit_breakdown"] == body["data"]["fit_breakdown"]
    assert out["data"]["seen_as"] == ["erased:x1", "erased:x1", "[erased] at Acme"]
    assert person.suppression_keys() == sorted([EMAIL, f"anon:{ANON}", f"user:{USER}"])


async def test_erasure_clears_the_source_debugger_of_the_person(
    svc: Service, clock: FakeClock
) -> None:
    r = await svc.client.post("/v1/sources", json={"name": "website", "kind": "segment"})
    key = r.json()["write_key"]
    for who, mid in ((EMAIL, "m-person"), (OTHER, "m-other")):
        msg = {
            "userId": f"u-{mid}",
            "messageId": mid,
            "traits": {"email": who},
            "timestamp": ts(clock.now()),
        }
        r = await svc.client.post("/v1/identify", json=msg, auth=(key, ""))
        assert r.status_code == 200, r.text
    recent = (await svc.client.get("/v1/sources/website/recent")).json()["messages"]
    assert {m["message_id"] for m in recent} == {"m-person", "m-other"}
    assert (await svc.client.delete(f"/v1/leads/{EMAIL}")).status_code == 200
    recent = (await svc.client.get("/v1/sources/website/recent")).json()["messages"]
    assert [m["message_id"] for m in recent] == ["m-other"]
