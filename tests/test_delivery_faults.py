"""Receivers on loopback that misbehave on command: errors, throttling, a hang, a slow
answer, 410, redirects, nothing listening. Every attempt is read back through the API and
timed against the fake clock; a slow endpoint holds up only itself; private addresses
are refused when a destination is created."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.clock import FakeClock
from app.config import Settings
from app.delivery import signing
from tests.support.harness import Service, eventually, service
from tests.support.scenarios import hot_events

# The documented schedule (delays before attempts 1…8, each jittered by ±20 %): stated
# here, not imported, so a change to it has to change this test too.
SCHEDULE = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
JITTER = 0.2
ATTEMPTS = len(SCHEDULE)
MS = 0.002  # the API's timestamps carry milliseconds
TIMEOUT = 0.5  # the delivery timeout of the service that meets a hanging receiver
SLOW = 10.0  # seconds the slow endpoint takes to answer
METADATA = "http://169.254.169.254/latest/meta-data/"

# One order across every receiver of a test: which request arrived or was answered first.
_sequence = itertools.count()


# -- a receiver that misbehaves on command ---------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """How a receiver answers: a status and headers, after a real delay, or never."""

    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hang: bool = False  # hold the request until the test is over


OK = Answer()


@dataclass
class Hit:
    headers: dict[str, str]
    body: bytes
    arrived: int  # positions in ``_sequence``
    answered: int | None = None  # None while the request is held


@dataclass
class Endpoint:
    """A webhook receiver: answers as ``answer`` says, records every request it gets."""

    answer: Answer = OK
    url: str = ""
    hits: list[Hit] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: Request) -> Response:
        answer = self.answer  # as it was when the request arrived
        hit = Hit(dict(request.headers), await request.body(), next(_sequence))
        self.hits.append(hit)
        if answer.hang:
            await self.released.wait()
        elif answer.delay:
            await asyncio.sleep(answer.delay)
        hit.answered = next(_sequence)
        return Response(status_code=answer.status, headers=answer.headers)


def bound_socket(host: str = "127.0.0.1") -> socket.socket:
    """A loopback port held but not listened on: connecting to it is refused, and no other
    process can take the port before the test serves on it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


@contextlib.asynccontextmanager
async def receivers(
    answers: dict[str, Answer], *, sock: socket.socket | None = None
) -> AsyncIterator[dict[str, Endpoint]]:
    """One uvicorn server on ``sock`` (a fresh 127.0.0.1 port by default) with an endpoint
    per name, at ``/<name>``."""
    eps = {name: Endpoint(answer) for name, answer in answers.items()}

    async def handle(request: Request) -> Response:
        return await eps[request.path_params["name"]].handle(request)

    app = Starlette(routes=[Route("/{name}{path:path}", handle, methods=["POST"])])
    sock = sock or bound_socket()
    sock.listen(512)
    sock.setblocking(False)
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))

    async def started() -> bool:
        if task.done():
            task.result()
        return server.started

    await eventually(started)
    for name, ep in eps.items():
        ep.url = f"http://{host}:{port}/{name}"
    try:
        yield eps
    finally:
        for ep in eps.values():
            ep.released.set()  # a held request would keep uvicorn from shutting down
        server.should_exit = True
        await task
        sock.close()


@contextlib.asynccontextmanager
async def endpoint(
    answer: Answer = OK, *, sock: socket.socket | None = None
) -> AsyncIterator[Endpoint]:
    async with receivers({"hook": answer}, sock=sock) as eps:
        yield eps["hook"]


# -- reading the service back ------------------------------------------------------------------


def at(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


async def tier_1_account(svc: Service) -> None:
    r = await svc.client.put(
        "/v1/accounts",
        json={
            "accounts": [
                {"domain": "acme.com", "name": "Acme", "tier": "tier_1", "owner": "jo@ours.example"}
            ]
        },
    )
    assert r.status_code == 200, r.text


async def add_destination(svc: Service, name: str, url: str) -> dict[str, Any]:
    r = await svc.client.post("/v1/destinations", json={"name": name, "url": url})
    assert r.status_code == 201, r.text
    dest: dict[str, Any] = r.json()
    return dest


async def decision_ids(svc: Service, n: int) -> list[str] | None:
    r = await svc.client.get("/v1/decisions")
    assert r.status_code == 200, r.text
    ids = [d["id"] for d in r.json()["decisions"]]
    return ids if len(ids) == n else None


async def deliveries(svc: Service, decision_id: str) -> dict[str, dict[str, Any]]:
    """The decision's deliveries by destination id."""
    r = await svc.client.get(f"/v1/decisions/{decision_id}")
    assert r.status_code == 200, r.text
    return {d["destination_id"]: d for d in r.json()["deliveries"]}


def record(d: dict[str, Any]) -> list[tuple[int | None, str | None]]:
    return [(h["status_code"], h["error"]) for h in d["history"]]


# -- every fault through the whole schedule, then redelivered ----------------------------------


@dataclass
class Fault:
    """A misbehaviour, and what each attempt against it must record."""

    answer: Answer
    status_code: int | None
    error: str  # "ConnectError" also matches "ConnectError: <why>"
    retry_after: float = 0.0  # the Retry-After the answer carries

    def recorded(self, attempt: dict[str, Any]) -> bool:
        error = attempt["error"] or ""
        return attempt["status_code"] == self.status_code and (
            error == self.error or error.startswith(self.error + ": ")
        )

    def retry_window(self, attempts_made: int) -> tuple[float, float]:
        """Bounds of the delay allowed before the next attempt."""
        base = SCHEDULE[attempts_made]
        low, high = base * (1 - JITTER), base * (1 + JITTER)
        # a longer Retry-After wins over the schedule
        return max(low, self.retry_after), max(high, self.retry_after * (1 + JITTER))


async def route_one_lead(
    svc: Service, clock: FakeClock, urls: dict[str, str]
) -> tuple[str, dict[str, dict[str, Any]]]:
    """A destination per url, named by its key; then one hot lead. Its decision id and the
    destinations."""
    await tier_1_account(svc)
    dests = {name: await add_destination(svc, name, url + "/hook") for name, url in urls.items()}
    r = await svc.client.post("/v1/events", json={"events": hot_events("f", clock.now())})
    assert r.status_code == 202, r.text
    [decision_id] = await eventually(lambda: decision_ids(svc, 1))
    return decision_id, dests


async def by_name(
    svc: Service, decision_id: str, dests: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    got = await deliveries(svc, decision_id)
    return {name: got[d["id"]] for name, d in dests.items()}


async def through_the_schedule(
    svc: Service,
    clock: FakeClock,
    decision_id: str,
    dests: dict[str, dict[str, Any]],
    faults: dict[str, Fault],
) -> AsyncIterator[tuple[int, dict[str, dict[str, Any]]]]:
    """Each failed attempt in turn (1…8), checked against the schedule; after each the
    clock moves just past the next due time and the poller is poked."""
    dispatcher = svc.runtime.dispatcher
    assert dispatcher is not None
    due_at: dict[str, float] = {}
    for n in range(1, ATTEMPTS + 1):

        async def made(n: int = n) -> dict[str, dict[str, Any]] | None:
            ds = await by_name(svc, decision_id, dests)
            # ``attempts`` as well as the history: the view reads them one after the other
            done = all(ds[f]["attempts"] >= n and len(ds[f]["history"]) >= n for f in faults)
            return ds if done else None

        ds = await eventually(made, within=30)
        for name, fault in faults.items():
            d = ds[name]
            what = f"{name}, attempt {n}: {d}"
            assert d["attempts"] == n and len(d["history"]) == n, what
            last = d["history"][-1]
            assert fault.recorded(last), what
            assert (d["last_status_code"], d["last_error"]) == (
                last["status_code"],
                last["error"],
            ), what
            started = at(last["started_at"])
            if n > 1:
                assert started >= due_at[name] - MS, what  # not sent before it fell due
            if n < ATTEMPTS:
                assert d["status"] == "pending", what
                low, high = fault.retry_window(n)
                gap = at(d["next_attempt_at"]) - started
                assert low - MS <= gap <= high + MS, f"{what}: next attempt {gap:.3f} s later"
                due_at[name] = at(d["next_attempt_at"])
            else:
                assert d["status"] == "dead", what
        yield n, ds
        if n < ATTEMPTS:
            clock.advance(max(due_at.values()) - clock.now() + 1)
            dispatcher.poke()


async def redeliver_until_delivered(
    svc: Service,
    decision_id: str,
    dests: dict[str, dict[str, Any]],
    faults: dict[str, Fault],
) -> dict[str, dict[str, Any]]:
    """Redeliver each dead delivery; the deliveries once all are delivered."""
    dead = await by_name(svc, decision_id, dests)
    for name in faults:
        assert dead[name]["status"] == "dead", dead[name]
        r = await svc.client.post(f"/v1/deliveries/{dead[name]['id']}/redeliver")
        assert r.status_code == 202, r.text
        assert r.json() == {"id": dead[name]["id"], "status": "pending"}

    async def delivered() -> dict[str, dict[str, Any]] | None:
        ds = await by_name(svc, decision_id, dests)
        return ds if all(ds[name]["status"] == "delivered" for name in faults) else None

    final: dict[str, dict[str, Any]] = await eventually(delivered, within=30)
    for name, fault in faults.items():
        d = final[name]
        what = f"{name}: {d}"
        *failed, last = d["history"]
        assert len(failed) == ATTEMPTS and all(fault.recorded(a) for a in failed), what
        assert (last["status_code"], last["error"]) == (204, None), what
        assert (d["last_status_code"], d["last_error"]) == (204, None), what
        assert d["attempts"] == 1, what  # a redelivery starts the schedule afresh
        assert d["delivered_at"] is not None, what
    return final


def assert_one_message(
    ep: Endpoint, attempts: list[dict[str, Any]], secret: str, decision_id: str
) -> None:
    """The receiver heard each attempt as the same message (webhook-id and body), freshly
    signed when it was sent: what it needs to deduplicate."""
    assert len(ep.hits) == len(attempts), (ep.url, attempts)
    assert {h.headers["webhook-id"] for h in ep.hits} == {decision_id}
    assert len({h.body for h in ep.hits}) == 1
    for hit, attempt in zip(ep.hits, attempts, strict=True):
        stamp = int(hit.headers["webhook-timestamp"])
        assert abs(stamp - at(attempt["started_at"])) <= 1, (hit.headers, attempt)
        assert signing.verify(
            secret, decision_id, stamp, hit.body, hit.headers["webhook-signature"]
        )


async def test_each_fault_is_retried_on_schedule_until_dead_then_redelivered(
    settings: Settings, clock: FakeClock
) -> None:
    """500, 429 with Retry-After, redirects (to a private address, to the metadata service)
    and a refused connection: eight attempts each on the documented schedule, then dead;
    redelivered once the receiver is fixed. A 410 beside them is never retried."""
    async with contextlib.AsyncExitStack() as stack:
        # 127.0.0.2 is loopback, and not an allowed host: a private address
        trap = await stack.enter_async_context(endpoint(sock=bound_socket("127.0.0.2")))
        faults = {
            "error": Fault(Answer(500), 500, "http_500"),
            "throttled": Fault(Answer(429, {"retry-after": "120"}), 429, "http_429", 120.0),
            "redirect-private": Fault(
                Answer(307, {"location": trap.url + "/steal"}), 307, "http_307"
            ),
            "redirect-metadata": Fault(Answer(302, {"location": METADATA}), 302, "http_302"),
        }
        answers = {name: f.answer for name, f in faults.items()} | {"gone": Answer(410)}
        served = await stack.enter_async_context(receivers(answers))
        eps, gone = {name: served[name] for name in faults}, served["gone"]
        nothing_there = bound_socket()
        stack.callback(nothing_there.close)
        faults["refused"] = Fault(OK, None, "ConnectError")
        svc = await stack.enter_async_context(service(settings, clock))

        urls = {name: ep.url for name, ep in eps.items()} | {
            "refused": f"http://127.0.0.1:{nothing_there.getsockname()[1]}",
            "gone": gone.url,
        }
        decision_id, dests = await route_one_lead(svc, clock, urls)

        async def gone_settled() -> bool:
            gone_delivery = (await by_name(svc, decision_id, dests))["gone"]
            return bool(gone_delivery["status"] == "dead")

        await eventually(gone_settled)
        async for _, ds in through_the_schedule(svc, clock, decision_id, dests, faults):
            # 410 is final: it stays at its one attempt while the others go round
            assert (ds["gone"]["attempts"], record(ds["gone"])) == (1, [(410, "http_410")])
            assert ds["gone"]["status"] == "dead"

        for ep in eps.values():
            ep.answer = OK
        eps["refused"] = await stack.enter_async_context(endpoint(sock=nothing_there))
        final = await redeliver_until_delivered(svc, decision_id, dests, faults)
        for name in faults:
            # nothing listened to the refused attempts; every other attempt was heard
            heard = final[name]["history"][-1:] if name == "refused" else final[name]["history"]
            assert_one_message(eps[name], heard, dests[name]["secret"], decision_id)
        assert trap.hits == []  # no redirect was followed, to the private address or anywhere
        assert len(gone.hits) == 1


async def test_a_hanging_receiver_times_out_on_every_attempt(
    settings: Settings, clock: FakeClock
) -> None:
    """A receiver that never answers: each attempt ends at the delivery timeout while the
    receiver still holds the request; the schedule runs as for any failure, and a
    redelivery reaches the receiver once it answers again."""
    fault = Fault(Answer(hang=True), None, "timeout")
    fast = settings.model_copy(update={"delivery_timeout_seconds": TIMEOUT})
    async with endpoint(fault.answer) as ep, service(fast, clock) as svc:
        decision_id, dests = await route_one_lead(svc, clock, {"hang": ep.url})
        async for n, ds in through_the_schedule(svc, clock, decision_id, dests, {"hang": fault}):
            assert len(ep.hits) == n  # each attempt reached the receiver…
            assert [h.answered for h in ep.hits] == [None] * n  # …which answered none of them
            # the latency recorded is the wait for the timeout, not a moment
            assert ds["hang"]["history"][-1]["latency_ms"] >= 0.9 * TIMEOUT * 1000
        ep.answer = OK
        final = await redeliver_until_delivered(svc, decision_id, dests, {"hang": fault})
        assert_one_message(ep, final["hang"]["history"], dests["hang"]["secret"], decision_id)


# -- a slow endpoint holds up only itself ------------------------------------------------------


async def test_a_slow_endpoint_holds_up_only_its_own_deliveries(
    settings: Settings, clock: FakeClock
) -> None:
    """Every lead reaches a healthy receiver while a slow one (10 s an answer) still holds
    its first request; the slow answers then succeed, inside the timeout."""
    patient = settings.model_copy(update={"delivery_timeout_seconds": SLOW + 10})
    emails = [f"lead{i}@acme.com" for i in range(4)]
    async with (
        endpoint(Answer(200, delay=SLOW)) as slow,
        endpoint() as healthy,
        service(patient, clock) as svc,
    ):
        await tier_1_account(svc)
        slow_id = (await add_destination(svc, "slow", slow.url + "/hook"))["id"]
        healthy_id = (await add_destination(svc, "healthy", healthy.url + "/hook"))["id"]

        # the slow receiver is busy with the first lead before the others come in
        first, *rest = emails
        batch = hot_events("s0", clock.now(), first)
        assert (await svc.client.post("/v1/events", json={"events": batch})).status_code == 202
        await eventually(lambda: _hit(slow))
        batch = [e for i, m in enumerate(rest, 1) for e in hot_events(f"s{i}", clock.now(), m)]
        assert (await svc.client.post("/v1/events", json={"events": batch})).status_code == 202

        async def every_lead_routed() -> list[str] | None:
            r = await svc.client.get("/v1/decisions")
            ds = r.json()["decisions"]
            routed = {d["lead_id"] for d in ds if d["type"] == "lead.routed"}
            # the account's surge, when the leads add up to one, is delivered as well
            return [d["id"] for d in ds] if routed == set(emails) else None

        decisions = await eventually(every_lead_routed)

        async def all_delivered(dest_id: str) -> list[dict[str, dict[str, Any]]] | None:
            ds = [await deliveries(svc, i) for i in decisions]
            return ds if all(d[dest_id]["status"] == "delivered" for d in ds) else None

        ds = await eventually(lambda: all_delivered(healthy_id), within=30)
        # an order of events on the receivers, not a time limit: no slow answer yet
        assert slow.hits and [h.answered for h in slow.hits] == [None] * len(slow.hits)
        assert sorted(h.headers["webhook-id"] for h in healthy.hits) == sorted(decisions)
        for d in ds:
            assert record(d[healthy_id]) == [(204, None)]
            assert (d[slow_id]["status"], d[slow_id]["history"]) == ("pending", [])

        ds = await eventually(lambda: all_delivered(slow_id), within=60)
        for d in ds:
            [attempt] = d[slow_id]["history"]
            assert (attempt["status_code"], attempt["error"]) == (200, None)
            assert attempt["latency_ms"] >= 0.99 * SLOW * 1000  # it waited for the answer
        assert sorted(h.headers["webhook-id"] for h in slow.hits) == sorted(decisions)
        answered = [h.answered for h in slow.hits if h.answered is not None]
        assert len(answered) == len(slow.hits)
        # the healthy receiver had every delivery before the slow one answered any
        assert max(h.arrived for h in healthy.hits) < min(answered)


async def test_a_hand_back_polls_only_where_the_queue_has_room_again(
    settings: Settings, clock: FakeClock
) -> None:
    """Claims given back for a full queue (a dead endpoint's) wait for that queue to drain,
    which pokes the poller itself; a poll per hand-back would only run claims for the
    healthy destinations, which have nothing waiting."""
    async with service(settings, clock) as svc:
        dispatcher = svc.runtime.dispatcher
        assert dispatcher is not None
        dispatcher._backlogged = {"dst_full"}
        dispatcher._poll_now.clear()
        dispatcher._release = [("dlv_1", "dst_full")]
        await dispatcher._flush()
        assert dispatcher._release == [] and not dispatcher._poll_now.is_set()
        # its room came back while the hand-back was being written: claim now
        dispatcher._release = [("dlv_2", "dst_drained")]
        await dispatcher._flush()
        assert dispatcher._poll_now.is_set()


async def _hit(ep: Endpoint) -> bool:
    return bool(ep.hits)


# -- private addresses are refused at the door -------------------------------------------------

# https throughout, so that only the address can be the reason (plain http to an address
# not allowed is refused for its scheme as well); test_bad_input covers the http forms.
PRIVATE = [
    "https://10.0.0.1/hook",
    "https://172.16.0.1/hook",
    "https://192.168.1.1/hook",
    "https://100.64.0.1/hook",  # CGNAT
    "https://169.254.169.254/latest/meta-data/",
    "https://127.0.0.1:8443/hook",  # loopback, with no allowed hosts
    "http://127.0.0.1:8443/hook",
    "https://[::1]/hook",
    "https://[fe80::1]/hook",
    "https://[fc00::1]/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://[::ffff:10.0.0.1]/hook",
    "https://[::ffff:a9fe:a9fe]/hook",  # the metadata address, IPv4-mapped, in hex
    "https://localhost/hook",  # a name that resolves to loopback
    "https://localhost:8443/hook",
]


async def test_private_addresses_are_refused_for_a_new_or_changed_destination(
    settings: Settings, clock: FakeClock
) -> None:
    """With no hosts allowed, a literal private, loopback, link-local, CGNAT or metadata
    address (IPv4, IPv6, IPv4-mapped) or a name resolving to loopback is refused with a
    machine-readable code and the field; nothing is stored or changed."""
    closed = settings.model_copy(update={"delivery_allowed_hosts": []})
    async with service(closed, clock) as svc:
        public = await add_destination(svc, "public", "https://93.184.216.34/hook")

        async def refused(url: str) -> None:
            r = await svc.client.post("/v1/destinations", json={"name": url, "url": url})
            assert r.status_code == 422, (url, r.text)
            assert (r.json()["code"], r.json()["field"]) == ("destination_refused", "url"), url
            r = await svc.client.patch(f"/v1/destinations/{public['id']}", json={"url": url})
            assert r.status_code == 422, (url, r.text)
            assert (r.json()["code"], r.json()["field"]) == ("destination_refused", "url"), url

        await asyncio.gather(*(refused(url) for url in PRIVATE))
        r = await svc.client.get("/v1/destinations")
        listed = [(d["name"], d["url"]) for d in r.json()["destinations"]]
        assert listed == [("public", "https://93.184.216.34/hook")]
