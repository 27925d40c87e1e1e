"""Back-pressure and graceful shutdown, never accept-then-lose.

The database stops mid-load (a private PostgreSQL server this module starts and stops
itself) and comes back; the ingest queue fills; the process gets SIGTERM under load, with
and without Kafka. In every case each event answered 202 is stored and counted exactly
once, and each event refused is not stored at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.config import Settings
from app.db import events, leads
from tests.support.harness import (
    Spawned,
    event,
    eventually,
    free_port,
    require_service,
    serve,
    service,
)
from tests.support.scenarios import hot_events

SITE_VISIT = 5.0  # a single site_visit's intent points (decay over a test's minute: < 0.01)
CLIENT_TIMEOUT = 10.0


def lead_of(event_id: str) -> str:
    """Each load event is its lead's only event; leads spread over domains (partitions)."""
    return f"{event_id}@load{sum(map(ord, event_id)) % 8}.io"


def load_event(event_id: str) -> dict[str, Any]:
    return event(event_id, "site_visit", time.time(), email=lead_of(event_id))


# -- a load generator that remembers what the service answered for every event ------------


@dataclass
class Refusal:
    status: int
    retry_after: str | None
    code: str | None


@dataclass
class Load:
    """Clients posting single events and small batches, each event for a lead of its own."""

    url: str
    key: str
    prefix: str
    pause: float = 0.05
    batch: int = 5
    accepted: dict[str, float] = field(default_factory=dict)  # event id → when answered
    refused: dict[str, Refusal] = field(default_factory=dict)
    # Sent, but the answer never came (timeout, connection reset): neither side is known.
    unknown: set[str] = field(default_factory=set)
    timeouts: int = 0
    not_sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    anomalies: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _n: int = 0

    def start(self, workers: int) -> None:
        self._tasks = [asyncio.create_task(self._worker(w)) for w in range(workers)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def accepted_since(self, t: float) -> int:
        return sum(1 for at in self.accepted.values() if at >= t)

    def refused_with(self, status: int) -> list[Refusal]:
        return [r for r in self.refused.values() if r.status == status]

    def events(self, n: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            self._n += 1
            eid = f"{self.prefix}-{self._n}"
            out.append(load_event(eid))
        return out

    async def _worker(self, w: int) -> None:
        headers = {"authorization": f"Bearer {self.key}"}
        async with httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=CLIENT_TIMEOUT
        ) as client:
            i = 0
            while not self._stop.is_set():
                i += 1
                evs = self.events(1 if (i + w) % 2 else self.batch)
                await self.post(client, evs, single=len(evs) == 1)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.pause)

    async def post(
        self, client: httpx.AsyncClient, evs: list[dict[str, Any]], *, single: bool = False
    ) -> None:
        ids = [e["event_id"] for e in evs]
        try:
            r = await client.post("/v1/events", json=evs[0] if single else {"events": evs})
        except httpx.ConnectError:
            self.not_sent += 1  # nothing reached the service
            return
        except httpx.TimeoutException:
            self.timeouts += 1
            self.unknown.update(ids)
            return
        except httpx.TransportError:
            self.unknown.update(ids)
            return
        self.statuses[r.status_code] += 1
        if r.status_code == 202:
            results = r.json()["results"]
            got = [(x["event_id"], x["status"]) for x in results]
            if got != [(i, "accepted") for i in ids]:
                self.anomalies.append(f"202 with {got}")
            now = time.monotonic()
            for eid, status in got:
                if status == "accepted":
                    self.accepted[eid] = now
            return
        try:
            code = r.json().get("code")
        except ValueError:
            code = None
        refusal = Refusal(r.status_code, r.headers.get("retry-after"), code)
        for eid in ids:
            self.refused[eid] = refusal


@contextlib.asynccontextmanager
async def load(url: str, key: str, prefix: str, workers: int = 3) -> AsyncIterator[Load]:
    lo = Load(url, key, prefix)
    lo.start(workers)
    try:
        yield lo
    finally:
        await lo.stop()


async def stored_intent(database_url: str, event_ids: list[str]) -> dict[str, float]:
    """Event id → its lead's stored intent, for the events the database holds."""
    engine = create_async_engine(database_url)
    out: dict[str, float] = {}
    try:
        async with engine.connect() as conn:
            for i in range(0, len(event_ids), 500):
                rows = await conn.execute(
                    select(events.c.event_id, leads.c.intent)
                    .select_from(events.outerjoin(leads, leads.c.lead_id == events.c.lead_id))
                    .where(events.c.event_id.in_(event_ids[i : i + 500]))
                )
                out.update({eid: intent for eid, intent in rows})
    finally:
        await engine.dispose()
    return out


async def count_events(database_url: str) -> int:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            return len((await conn.execute(select(events.c.event_id))).all())
    finally:
        await engine.dispose()


def assert_counted_once(stored: dict[str, float], accepted: list[str]) -> None:
    missing = [e for e in accepted if e not in stored]
    assert not missing, f"{len(missing)} events answered 202 are not stored: {missing[:5]}"
    wrong = {e: stored[e] for e in accepted if abs(stored[e] - SITE_VISIT) > 0.01}
    assert not wrong, f"events not counted exactly once: {list(wrong.items())[:5]}"


async def assert_unanswered_at_most_once(url: str, lo: Load) -> None:
    """A post that raced the server closing its keep-alive connection gets no answer (the
    client retries it: event ids make that safe). Whether or not it was stored, it never
    counts twice."""
    unknown = sorted(lo.unknown)
    assert len(unknown) <= 4 * lo.batch, f"{len(unknown)} posts without an answer"
    stored = await stored_intent(url, unknown)
    assert all(abs(v - SITE_VISIT) < 0.01 for v in stored.values()), stored


async def resend_refused(url: str, key: str, refused: list[str]) -> None:
    """Refused events were not half-stored: sending them again stores each of them."""
    async with httpx.AsyncClient(
        base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=30
    ) as c:
        for i in range(0, len(refused), 500):
            chunk = refused[i : i + 500]
            evs = [load_event(eid) for eid in chunk]
            r = await c.post("/v1/events", json={"events": evs})
            assert r.status_code == 202, r.text
            assert [x["status"] for x in r.json()["results"]] == ["accepted"] * len(chunk)


# -- a private PostgreSQL server this module may stop and start ----------------------------


def pg_bin() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name)
    )
    if not found:
        message = "PostgreSQL binaries not found under /usr/lib/postgresql (deploy/services.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return Path(found[-1]).parent


class PrivatePostgres:
    """initdb'd into a temporary directory, run by the unprivileged ``postgres`` user when
    the tests run as root; loopback only, trust auth, one fixed port across restarts."""

    def __init__(self) -> None:
        self.bin = pg_bin()
        # Short, under /tmp: the socket path must fit into sun_path, and the postgres user
        # must be able to reach it (pytest's tmp_path is private to root).
        self.root = Path(tempfile.mkdtemp(prefix="ir-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            shutil.chown(self.root, self.user)
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/intent"

    def _run(self, *args: str, timeout: float = 90) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/")
        if done.returncode:
            tail = self.log.read_text()[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {done.stdout}{done.stderr}{tail}")

    def init(self) -> None:
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip
        with (self.data / "postgresql.conf").open("a") as conf:
            # fsync off is harmless here: the server is stopped, never the machine.
            conf.write("\nlisten_addresses = '127.0.0.1'\nfsync = off\nmax_connections = 100\n")

    def start(self) -> None:
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
            "-o", f"-p {self.port} -k {self.root}", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
async def private_pg() -> AsyncIterator[PrivatePostgres]:
    pg = PrivatePostgres()
    try:
        await asyncio.to_thread(pg.init)
        await asyncio.to_thread(pg.start)
        admin = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{pg.port}/postgres")
        try:
            await admin.execute("CREATE DATABASE intent")
        finally:
            await admin.close()
        yield pg
    finally:
        await asyncio.to_thread(pg.cleanup)


@contextlib.contextmanager
def spawned(env: dict[str, str]) -> Iterator[Spawned]:
    proc = Spawned(env)
    try:
        yield proc
    finally:
        proc.stop()


async def until(condition: Callable[[], bool], within: float) -> None:
    async def check() -> bool:
        return condition()

    await eventually(check, within=within)


def diagnose(proc: Spawned) -> str:
    return "".join(proc.output[-60:])


# -- 1. the database stops mid-load and comes back ------------------------------------------


async def test_database_down_mid_load_is_503_then_recovers_and_loses_nothing(
    private_pg: PrivatePostgres,
) -> None:
    with spawned({"INTENT_DATABASE_URL": private_pg.url}) as proc:
        await asyncio.to_thread(proc.start)
        key = proc.read_key()
        async with httpx.AsyncClient(base_url=proc.url, timeout=CLIENT_TIMEOUT) as probe:
            async with load(proc.url, key, "pg") as lo:
                await until(lambda: len(lo.accepted) >= 30, within=30)

                await asyncio.to_thread(private_pg.stop, "fast")
                down_at = time.monotonic()
                await until(lambda: len(lo.refused_with(503)) >= 10, within=30)

                async def not_ready() -> Any:
                    r = await probe.get("/readyz")
                    return r if r.status_code == 503 else None

                r = await eventually(not_ready, within=30)
                assert r.json()["ready"] is False
                assert r.json()["checks"]["database"].startswith("error"), r.json()
                assert (await probe.get("/healthz")).status_code == 200
                # Longer than the service's 10 s API-key cache, so authentication meets
                # the outage too, as it does in a real one.
                await asyncio.sleep(max(0.0, 11 - (time.monotonic() - down_at)))

                await asyncio.to_thread(private_pg.start)
                up_at = time.monotonic()

                async def ready() -> bool:
                    return (await probe.get("/readyz")).status_code == 200

                await eventually(ready, within=30)
                await until(lambda: lo.accepted_since(up_at) >= 30, within=30)
            assert (await probe.get("/healthz")).status_code == 200

        assert not lo.anomalies, lo.anomalies[:3]
        assert lo.timeouts == 0, "a post hung past the client timeout while the DB was down"
        assert set(lo.statuses) == {202, 503}, (lo.statuses, diagnose(proc))
        for refusal in lo.refused.values():
            assert refusal.code == "unavailable"
            assert refusal.retry_after is not None and int(refusal.retry_after) >= 1
        assert not lo.unknown, f"{len(lo.unknown)} posts without an answer"

        accepted = list(lo.accepted)
        refused = list(lo.refused)
        assert_counted_once(await stored_intent(private_pg.url, accepted), accepted)
        half = await stored_intent(private_pg.url, refused)
        assert not half, f"events answered 503 were stored: {list(half)[:5]}"
        await resend_refused(proc.url, key, refused)
        assert_counted_once(await stored_intent(private_pg.url, refused), refused)
        async with httpx.AsyncClient(
            base_url=proc.url, headers={"authorization": f"Bearer {key}"}, timeout=30
        ) as c:
            for eid in accepted[:: max(1, len(accepted) // 10)]:
                r = await c.get(f"/v1/leads/{lead_of(eid)}")
                assert r.status_code == 200, r.text
                assert abs(r.json()["score"]["intent"] - SITE_VISIT) < 0.01


# -- 2. the ingest queue is full ------------------------------------------------------------


async def test_full_ingest_queue_is_429_with_retry_after_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """A 50-event queue and one 40-event request per transaction (synchronous=FULL): while
    a transaction commits, one request waits in the queue and the next is refused."""
    url = f"sqlite+aiosqlite:///{tmp_path}/intent.db"
    settings = Settings(
        database_url=url,
        ingest_queue_max_events=50,
        batch_max_events=40,
        sqlite_synchronous="FULL",
    )
    async with service(settings) as svc:
        lo = Load(svc.url, svc.admin_key, "q", batch=40)
        headers = {"authorization": f"Bearer {svc.admin_key}"}
        async with httpx.AsyncClient(base_url=svc.url, headers=headers, timeout=30) as client:

            async def worker() -> None:
                for _ in range(8):
                    await lo.post(client, lo.events(40))

            await asyncio.gather(*(worker() for _ in range(8)))
        assert not lo.anomalies, lo.anomalies[:3]
        assert not lo.unknown and lo.not_sent == 0
        assert set(lo.statuses) == {202, 429}, lo.statuses
        assert lo.statuses[429] >= 3, lo.statuses
        for refusal in lo.refused.values():
            assert refusal.status == 429
            assert refusal.code == "overloaded"
            assert refusal.retry_after is not None and int(refusal.retry_after) >= 1

        accepted, refused = list(lo.accepted), list(lo.refused)
        assert_counted_once(await stored_intent(url, accepted), accepted)
        assert not await stored_intent(url, refused), "events answered 429 were stored"
        await resend_refused(svc.url, svc.admin_key, refused)
        assert_counted_once(await stored_intent(url, refused), refused)


# -- 3. SIGTERM under load ------------------------------------------------------------------


def exited_after_sigterm(proc: Spawned) -> int:
    """Send SIGTERM and wait (bounded) for the process to end; its exit code."""
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGTERM)
    try:
        code = proc.proc.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError("no exit within 30 s of SIGTERM:\n" + diagnose(proc)) from None
    # uvicorn shuts down gracefully, then re-raises the signal it caught (its documented
    # behaviour), so the process ends "killed by SIGTERM" after a clean shutdown.
    assert code in (0, -signal.SIGTERM), f"exit code {code}:\n{diagnose(proc)}"
    return code


async def test_sigterm_under_load_keeps_every_accepted_event(tmp_path: Path) -> None:
    """Embedded SQLite: after SIGTERM mid-load the process exits by itself, and the file
    holds every event it answered 202 for, each counted once, and none it refused."""
    url = f"sqlite+aiosqlite:///{tmp_path}/intent.db"
    with spawned({"INTENT_DATABASE_URL": url}) as proc:
        await asyncio.to_thread(proc.start)
        key = proc.read_key()
        async with load(proc.url, key, "term", workers=4) as lo:
            await until(lambda: len(lo.accepted) >= 100, within=30)
            await asyncio.to_thread(exited_after_sigterm, proc)
        assert not lo.anomalies, lo.anomalies[:3]
        assert lo.timeouts == 0  # nothing in flight was left hanging
        assert set(lo.statuses) <= {202, 503}, lo.statuses
        for refusal in lo.refused.values():  # refused while shutting down
            assert refusal.code == "unavailable" and refusal.retry_after
        accepted, refused = list(lo.accepted), list(lo.refused)
        # The process is gone: what it answered 202 for is in the file, counted once.
        assert_counted_once(await stored_intent(url, accepted), accepted)
        assert not await stored_intent(url, refused)
        await assert_unanswered_at_most_once(url, lo)


@dataclass
class SlowReceiver:
    """Answers each webhook 204 after ``delay`` seconds; records ids as they arrive."""

    delay: float
    arrived: list[str] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)

    async def handle(self, request: Request) -> Response:
        wid = request.headers["webhook-id"]
        self.arrived.append(wid)
        await asyncio.sleep(self.delay)
        self.answered.append(wid)
        return Response(status_code=204)


async def test_sigterm_lets_the_webhook_in_flight_finish_and_records_it(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/intent.db"
    hook = SlowReceiver(delay=1.5)
    app = Starlette(routes=[Route("/{p:path}", hook.handle, methods=["POST"])])
    env = {"INTENT_DATABASE_URL": url, "INTENT_DELIVERY_ALLOWED_HOSTS": "127.0.0.1"}
    async with serve(app) as hook_url:
        with spawned(env) as proc:
            await asyncio.to_thread(proc.start)
            key = proc.read_key()
            headers = {"authorization": f"Bearer {key}"}
            async with httpx.AsyncClient(base_url=proc.url, headers=headers, timeout=30) as c:
                r = await c.put(
                    "/v1/accounts",
                    json={
                        "accounts": [
                            {"domain": "acme.com", "tier": "tier_1", "owner": "jo@ours.example"}
                        ]
                    },
                )
                assert r.status_code == 200, r.text
                r = await c.post("/v1/destinations", json={"name": "crm", "url": hook_url})
                assert r.status_code == 201, r.text
                r = await c.post("/v1/events", json={"events": hot_events("t", time.time())})
                assert r.status_code == 202, r.text
            await until(lambda: bool(hook.arrived), within=30)
            assert not hook.answered  # the webhook is in flight now
            await asyncio.to_thread(exited_after_sigterm, proc)
            [webhook_id] = hook.arrived
            assert hook.answered == [webhook_id]  # the process waited for the answer

            await asyncio.to_thread(proc.start)
            async with httpx.AsyncClient(base_url=proc.url, headers=headers, timeout=30) as c:
                decision = (await c.get(f"/v1/decisions/{webhook_id}")).json()
                [delivery] = decision["deliveries"]
                assert delivery["status"] == "delivered", delivery
                assert delivery["attempts"] == 1
                assert [a["status_code"] for a in delivery["history"]] == [204]
            assert hook.arrived == [webhook_id]  # recorded as delivered: not sent again


async def committed_and_end_offsets(
    bootstrap: str, topic: str, group: str, partitions: int
) -> tuple[dict[int, int], dict[int, int], str]:
    """The group's committed offsets, the topic's end offsets and the group's state."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        committed = {
            tp.partition: meta.offset
            for tp, meta in (await admin.list_consumer_group_offsets(group)).items()
            if tp.topic == topic
        }
        [described] = await admin.describe_consumer_groups([group])
        state = described.groups[0][2]  # (error_code, group_id, state, …)
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        end = {tp.partition: n for tp, n in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()
    return committed, end, state


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.split()[-1])
    return total


async def test_sigterm_with_kafka_commits_what_it_applied_and_leaves_the_group(
    tmp_path: Path,
) -> None:
    """SIGTERM while the consumer works through a backlog and HTTP posts are produced:
    the offsets committed count exactly the records applied, the member leaves the group,
    and the restarted consumer applies only the rest (none twice, none skipped)."""
    bootstrap = require_service("INTENT_TEST_KAFKA_BOOTSTRAP")
    topic, group, partitions = f"events-{uuid.uuid4().hex[:10]}", f"g-{uuid.uuid4().hex[:8]}", 4
    url = f"sqlite+aiosqlite:///{tmp_path}/intent.db"
    env = {
        "INTENT_DATABASE_URL": url,
        "INTENT_KAFKA_BOOTSTRAP": bootstrap,
        "INTENT_KAFKA_TOPIC": topic,
        "INTENT_KAFKA_GROUP": group,
        "INTENT_KAFKA_PARTITIONS": str(partitions),
        "INTENT_BATCH_MAX_EVENTS": "50",  # many small consumer batches: one is in hand
    }
    backlog = [load_event(f"kb-{i}") for i in range(4000)]
    with spawned(env) as proc:
        await asyncio.to_thread(proc.start)  # creates the topic, joins the group
        key = proc.read_key()
        async with load(proc.url, key, "kt", workers=3) as lo:
            await until(lambda: len(lo.accepted) >= 20, within=30)
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
            await producer.start()
            try:
                for ev in backlog:
                    domain = ev["lead"]["email"].split("@")[1]
                    await producer.send(topic, orjson.dumps(ev), key=domain.encode())
                await producer.flush()
            finally:
                await producer.stop()

            async def applying() -> bool:
                return await count_events(url) >= 400

            await eventually(applying, within=60)
            await asyncio.to_thread(exited_after_sigterm, proc)

        assert not lo.anomalies, lo.anomalies[:3]
        assert lo.timeouts == 0  # nothing in flight was left hanging
        assert set(lo.statuses) <= {202, 503}, lo.statuses
        accepted = list(lo.accepted)
        assert len(accepted) >= 20
        committed, end, state = await committed_and_end_offsets(bootstrap, topic, group, partitions)
        applied = await count_events(url)
        # One record per event, ids unique: the committed offsets count exactly the records
        # the process applied. Fewer would re-apply some after a restart, more would skip.
        assert sum(committed.values()) == applied, (committed, applied, diagnose(proc))
        assert applied < sum(end.values()), "stopped mid-backlog: the rest waits in the log"
        assert sum(end.values()) >= len(backlog) + len(accepted)  # every 202 is in the log
        assert state == "Empty", f"the consumer did not leave the group: {state}"

        await asyncio.to_thread(proc.start)

        async def caught_up() -> bool:
            c, e, _ = await committed_and_end_offsets(bootstrap, topic, group, partitions)
            done = all(c.get(p, 0) == n for p, n in e.items())
            return done and await count_events(url) == sum(e.values())

        await eventually(caught_up, within=90)
        every = accepted + [ev["event_id"] for ev in backlog]
        assert_counted_once(await stored_intent(url, every), every)
        await assert_unanswered_at_most_once(url, lo)
        async with httpx.AsyncClient(base_url=proc.url) as c:
            scraped = (await c.get("/metrics")).text
        # The restarted consumer began where the stopped one committed: it applied exactly
        # the records left, and met none it had applied before.
        assert metric(scraped, "intent_events_duplicate_total", transport="kafka") == 0
        ingested = metric(scraped, "intent_events_ingested_total", transport="kafka")
        assert ingested == sum(end.values()) - applied
