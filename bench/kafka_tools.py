"""The Kafka side of the bench: the broker, the raw aiokafka ceiling, a keyed backlog.

The broker comes from, in order: ``INTENT_KAFKA_BOOTSTRAP`` in the caller's environment,
the project's ``.services/env`` (``make services``) when its broker answers, or
``deploy/services.sh up`` on a state directory inside the run's temporary directory.
Only services this module started are stopped again (``cleanup``, also called from the
bench's ``finally``); a broker found running is reused and left running, and only the
topics this run created are deleted from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench.http1 import HttpError, Response
from bench.procs import ROOT
from bench.stats import CpuMeter
from bench.workload import kafka_key

SERVICES_SH = ROOT / "deploy" / "services.sh"
UP_TIMEOUT = 240.0

Message = tuple[bytes, bytes]  # (key, value)


@dataclass
class Services:
    bootstrap: str
    origin: str
    broker_pid: int | None = None
    # Set when this run started them: `services.sh down` on it at the end.
    state_dir: Path | None = None
    topics: list[str] = field(default_factory=list)  # to delete at the end


_started: list[Services] = []


def _read_env(path: Path) -> dict[str, str]:
    out = {}
    for raw in path.read_text().splitlines():
        key, sep, value = raw.strip().removeprefix("export ").partition("=")
        if sep:
            out[key] = value
    return out


def _pid_of(state_dir: Path) -> int | None:
    try:
        pid = int((state_dir / "kafka" / "kafka.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


async def probe(bootstrap: str, within: float = 10.0) -> str | None:
    """None when the broker answers a metadata request, else why not."""
    from aiokafka.admin import AIOKafkaAdminClient

    log = logging.getLogger("aiokafka")
    level = log.level
    log.setLevel(logging.CRITICAL)  # the reason is returned, not logged to stderr
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await asyncio.wait_for(admin.start(), within)
        cluster = await asyncio.wait_for(admin.describe_cluster(), within)
        if not cluster.get("brokers"):
            return f"no brokers in the metadata of {bootstrap}"
        return None
    except Exception as exc:  # any failure means: not usable
        text = str(exc)
        name = type(exc).__name__
        return (
            f"{bootstrap} does not answer ({text if text.startswith(name) else f'{name}: {text}'})"
        )
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
        log.setLevel(level)


async def services_up(workdir: Path) -> Services | str:
    """A usable broker, or the reason there is none."""
    env_boot = os.environ.get("INTENT_KAFKA_BOOTSTRAP", "").strip()
    if env_boot:
        why = await probe(env_boot)
        if why is None:
            return Services(env_boot, "INTENT_KAFKA_BOOTSTRAP from the environment (reused)")
        return f"INTENT_KAFKA_BOOTSTRAP is set but {why}"
    shared = ROOT / ".services"
    if (shared / "env").exists():
        boot = _read_env(shared / "env").get("INTENT_KAFKA_BOOTSTRAP", "")
        if boot and await probe(boot) is None:
            return Services(boot, ".services (already up; reused, left running)", _pid_of(shared))
    state = workdir / "services"
    t0 = time.perf_counter()
    try:
        proc = await asyncio.to_thread(
            subprocess.run,
            ["bash", str(SERVICES_SH), "up", str(state)],
            capture_output=True,
            text=True,
            timeout=UP_TIMEOUT,
            start_new_session=True,  # a Ctrl-C stops the bench, which then runs `down`
            env={**os.environ, "SERVICES_READY_TIMEOUT": "120"},
        )
    except subprocess.TimeoutExpired:
        _started.append(Services("", "", state_dir=state))
        return f"deploy/services.sh up did not finish within {UP_TIMEOUT:.0f} s"
    except OSError as exc:
        return f"cannot run deploy/services.sh: {exc}"
    svc = Services("", "", state_dir=state)
    _started.append(svc)  # `up` stops what it started when it fails; `down` is safe anyway
    if proc.returncode != 0:
        errors = [ln for ln in proc.stderr.splitlines() if "ERROR" in ln]
        tail = errors[-1] if errors else " | ".join(proc.stderr.splitlines()[-3:])
        return f"deploy/services.sh up failed (exit {proc.returncode}): {tail.strip()}"
    lines = (ln.removeprefix("export ") for ln in proc.stdout.splitlines())
    env = dict(ln.split("=", 1) for ln in lines if "=" in ln)
    svc.bootstrap = env.get("INTENT_KAFKA_BOOTSTRAP", "")
    if not svc.bootstrap:
        return f"deploy/services.sh up printed no INTENT_KAFKA_BOOTSTRAP: {proc.stdout[-300:]!r}"
    svc.origin = f"started by the bench in {time.perf_counter() - t0:.0f} s (stopped at the end)"
    svc.broker_pid = _pid_of(state)
    return svc


async def delete_topics(svc: Services) -> None:
    if not svc.topics or not svc.bootstrap:
        return
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=svc.bootstrap, request_timeout_ms=10000)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(admin.start(), 10)
        existing = set(await admin.list_topics())
        mine = [t for t in svc.topics if t in existing]
        if mine:
            await asyncio.wait_for(admin.delete_topics(mine), 20)
        svc.topics.clear()
    with contextlib.suppress(Exception):
        await admin.close()


def cleanup() -> list[str]:
    """Stop the services this run started (a broker found running is left alone)."""
    notes = []
    while _started:
        svc = _started.pop()
        if svc.state_dir is None:
            continue
        pg = svc.state_dir / "pg"
        # services.sh keeps the cluster under /tmp when the state dir is not usable by the
        # postgres user (our temporary directory is 0700): remove that copy too.
        alt = pg.resolve() if pg.is_symlink() else None
        try:
            proc = subprocess.run(
                ["bash", str(SERVICES_SH), "down", str(svc.state_dir)],
                capture_output=True,
                text=True,
                timeout=120,
                start_new_session=True,
            )
            if proc.returncode != 0:
                notes.append(f"deploy/services.sh down failed: {proc.stderr.strip()[-300:]}")
            elif svc.bootstrap:  # a failed `up` already stopped what it had started
                notes.append(f"Kafka and PostgreSQL started by the bench ({svc.state_dir}): down")
        except (OSError, subprocess.TimeoutExpired) as exc:
            notes.append(f"deploy/services.sh down failed: {exc}")
        if alt is not None and alt.name.startswith("intent-services-pg."):
            subprocess.run(["rm", "-rf", "--", str(alt)], check=False)
    return notes


# -- the raw ceiling ------------------------------------------------------------------------
async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, messages: list[Message]) -> float:
    """Send every message (acks=all, idempotent, 20 ms linger, 1 MiB batches); the
    seconds it took until the last acknowledgement."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        max_batch_size=1 << 20,
        request_timeout_ms=30000,
    )
    await producer.start()
    try:
        t0 = time.perf_counter()
        futures = [await producer.send(topic, value, key=key) for key, value in messages]
        await asyncio.gather(*futures)
        return time.perf_counter() - t0
    finally:
        await producer.stop()


class TopicSender:
    """Events straight onto the service's topic, as a source producing to Kafka sends
    them: ``post`` has ``Http1Pool``'s shape, so ``phases.offer_events`` drives it, and
    answers 202 once the broker has acknowledged (acks=all, idempotent, 1 ms linger: the
    settings of the service's own HTTP → Kafka producer)."""

    def __init__(self, bootstrap: str, topic: str, free_mail: frozenset[str]) -> None:
        from aiokafka import AIOKafkaProducer

        self.topic = topic
        self.free_mail = free_mail
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=1
        )

    async def start(self) -> None:
        await self.producer.start()

    async def post(self, path: str, body: bytes) -> Response:
        from aiokafka.errors import KafkaError

        key = kafka_key(orjson.loads(body), self.free_mail)
        try:
            await self.producer.send_and_wait(self.topic, body, key=key)
        except KafkaError as exc:
            raise HttpError(f"produce failed: {exc}") from exc
        return Response(202, ACCEPTED_ONE)

    async def close(self) -> None:
        await self.producer.stop()


ACCEPTED_ONE = orjson.dumps({"accepted": 1, "duplicates": 0})


@dataclass
class RawRun:
    messages: int = 0
    consumed: int = 0
    produce_seconds: float = 0.0
    consume_seconds: float = 0.0  # from the first batch in hand to the last
    first_batch: int = 0  # records of the first batch (not in the rate)
    polls: int = 0
    join_seconds: float = 0.0  # consumer start → first batch

    @property
    def rate(self) -> float:
        n = self.consumed - self.first_batch
        return n / self.consume_seconds if self.consume_seconds > 0 else 0.0


async def raw_consume(
    bootstrap: str,
    topic: str,
    group: str,
    messages: list[Message],
    *,
    cpu: CpuMeter | None = None,
    within: float = 120.0,
) -> RawRun:
    """Produce ``messages`` to a fresh 4-partition topic, then consume them with one
    AIOKafkaConsumer the way the service does (getmany of up to 5,000, commit each)."""
    from aiokafka import AIOKafkaConsumer

    run = RawRun(messages=len(messages))
    await create_topic(bootstrap, topic, 4)
    run.produce_seconds = await produce(bootstrap, topic, messages)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=5000,
    )
    t_start = time.perf_counter()
    await consumer.start()
    try:
        deadline = time.perf_counter() + within
        t_first = 0.0
        while run.consumed < run.messages and time.perf_counter() < deadline:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            if not batches:
                continue
            n = sum(len(records) for records in batches.values())
            if not run.consumed:
                t_first = time.perf_counter()
                if cpu is not None:
                    cpu.start()
                run.join_seconds = t_first - t_start
                run.first_batch = n
            run.consumed += n
            run.polls += 1
            await consumer.commit({tp: records[-1].offset + 1 for tp, records in batches.items()})
        run.consume_seconds = time.perf_counter() - t_first if t_first else 0.0
        if cpu is not None and t_first:
            cpu.stop()
    finally:
        await consumer.stop()
    return run


def summarise_sizes(messages: list[Message]) -> float:
    return sum(len(v) for _, v in messages) / len(messages) if messages else 0.0
