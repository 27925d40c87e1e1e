"""Kafka mode (phases 5-7b): the service with ``INTENT_KAFKA_BOOTSTRAP`` set, still on an
embedded SQLite database, with a topic and consumer group of its own.

5. the ceiling: one raw AIOKafkaConsumer reading a pre-produced backlog;
6. pipeline throughput: a keyed backlog applied by the service's consumer;
7. event → webhook through Kafka: HTTP ingest produces, the consumer applies, the
   dispatcher delivers; then the same mix produced straight onto the topic; a short
   strict run;
7b. the realistic mix again with the roles in two processes (API | consumer+dispatcher).

The broker and its tooling are in ``bench.kafka_tools``."""

from __future__ import annotations

import asyncio
import os
import time

import httpx
import orjson

from bench import kafka_tools
from bench.latency_phases import offer
from bench.procs import Child, free_port, venv_bin, wait_http_ok
from bench.session import Bench, service_env, verdict
from bench.stats import CpuMeter, diff, header, line, scrape
from bench.workload import kafka_key

TARGET_KAFKA_WEBHOOK_P99 = 0.100
TARGET_KAFKA_RATIO = 0.50  # pipeline throughput / raw consume rate


async def run(b: Bench) -> None:
    """Phases 5-7b on a broker found or started (skipped, with the reason, without one)."""
    from aiokafka.errors import KafkaError

    header("Kafka mode: the broker")
    found = await kafka_tools.services_up(b.workdir)
    if isinstance(found, str):
        note = f"Kafka phases skipped: {found}"
        print(f"  {note}", flush=True)
        b.summary.notes.append(note)
        return
    svc = found
    b.broker_pid = svc.broker_pid
    line("Kafka broker", svc.bootstrap, svc.origin)
    if svc.broker_pid:
        line("  broker JVM", f"pid {svc.broker_pid}", "(its CPU is shown per phase)")
    run_id = b.factory.run_id
    topic, group = f"intent-bench-{run_id}.events", f"intent-bench-{run_id}"
    raw_topic = f"intent-bench-{run_id}.raw"
    svc.topics += [raw_topic, topic, f"{topic}.dlq"]
    try:
        messages = keyed_messages(b)
        raw_rate = await raw_ceiling(b, svc, raw_topic, f"{group}.raw", messages)
        env = service_env(
            b.workdir,
            "kafka.db",
            INTENT_KAFKA_BOOTSTRAP=svc.bootstrap,
            INTENT_KAFKA_TOPIC=topic,
            INTENT_KAFKA_GROUP=group,
        )
        drained = await pipeline(b, svc, env, topic, messages, raw_rate)
        del messages
        if not drained:  # a backlog left would queue ahead of the timed events
            await b.stop_service("Kafka-mode service stopped (backlog left)")
            topic = f"{topic}2"
            svc.topics += [topic, f"{topic}.dlq"]
            env.update(INTENT_KAFKA_TOPIC=topic, INTENT_KAFKA_GROUP=f"{group}2")
            await b.start_service("service-kafka-3", env, fresh=False)
            line("restarted on a fresh topic", topic)
        await through_kafka(b, svc.bootstrap, topic)
        if b.args.kafka_split_seconds > 0:
            await roles_split(b, env, b.args.kafka_split_seconds)
    except (KafkaError, TimeoutError) as exc:
        note = f"Kafka phases failed: {type(exc).__name__}: {exc}"
        print(f"  {note}", flush=True)
        b.summary.notes.append(note)
        b.summary.failed = True
    finally:
        await b.stop_service("Kafka-mode service stopped")
        await kafka_tools.delete_topics(svc)


def keyed_messages(b: Bench) -> list[kafka_tools.Message]:
    """Rich pool events (~400 bytes), keyed as the service keys them."""
    n = max(b.args.kafka_raw_events, b.args.kafka_events)
    t0 = time.perf_counter()
    now = time.time()
    out = []
    for _ in range(n):
        ev = b.factory.event(now, "k", rich=True)
        out.append((kafka_key(ev, b.free_mail), orjson.dumps(ev)))
    line(
        "messages generated",
        f"{n:,}",
        f"avg {kafka_tools.summarise_sizes(out):.0f} bytes of event JSON, keyed by account "
        f"domain, in {time.perf_counter() - t0:.1f} s",
    )
    return out


async def raw_ceiling(
    b: Bench,
    svc: kafka_tools.Services,
    topic: str,
    group: str,
    messages: list[kafka_tools.Message],
) -> float:
    """Phase 5; the raw consume rate, messages/s."""
    n = b.args.kafka_raw_events
    header(f"5. Kafka ceiling: one raw AIOKafkaConsumer, {n:,} messages, same broker")
    cpu = CpuMeter(os.getpid(), b.receiver.pid, svc.broker_pid)
    raw = await kafka_tools.raw_consume(svc.bootstrap, topic, group, messages[:n], cpu=cpu)
    line(
        "produced to a fresh 4-partition topic",
        f"in {raw.produce_seconds:.1f} s",
        f"{n / raw.produce_seconds:,.0f} msg/s (acks=all, idempotent, linger 20 ms)",
    )
    line("consumer start → first batch", f"{raw.join_seconds:.2f} s", "(group join; not timed)")
    line(
        "consumed",
        f"{raw.consumed:,}",
        f"in {raw.consume_seconds:.2f} s after the first batch, {raw.polls} getmany + commit",
    )
    line("raw consume rate", f"{raw.rate:,.0f} msg/s", "(the ceiling for the service)")
    broker = f", Kafka broker {cpu.share('broker'):.0f}%" if svc.broker_pid else ""
    line("CPU (100% = one core)", "", f"this consumer {cpu.share('client'):.0f}%{broker}")
    b.summary.add(
        "Kafka raw consume (1 aiokafka consumer, ceiling)",
        f"{raw.rate:,.0f} msg/s",
        "",
        "OK" if raw.consumed >= n else "INCOMPLETE",
    )
    b.summary.failed |= raw.consumed < n
    return raw.rate


async def pipeline(
    b: Bench,
    svc: kafka_tools.Services,
    env: dict[str, str],
    topic: str,
    messages: list[kafka_tools.Message],
    raw_rate: float,
) -> bool:
    """Phase 6; whether the backlog was applied in full."""
    args = b.args
    n = args.kafka_events
    header(
        f"6. Kafka pipeline throughput: a backlog of {n:,} events, applied by the "
        "service's consumer"
    )
    await b.start_service("service-kafka", env, fresh=True)
    line("service (Kafka mode)", f"pid {b.svc.pid}", b.base)
    line("  database", "SQLite", f"embedded, {b.workdir / 'kafka.db'}")
    line("  topic / consumer group", topic, env["INTENT_KAFKA_GROUP"])
    await b.setup()
    await b.stop_service("service stopped to queue the backlog")
    produce_s = await kafka_tools.produce(svc.bootstrap, topic, messages[:n])
    line(
        "backlog produced to the service's topic",
        f"{n:,} events",
        f"in {produce_s:.1f} s ({n / produce_s:,.0f} msg/s), keyed as the service keys",
    )
    t_start = time.perf_counter()
    await b.start_service("service-kafka-2", env, fresh=False)
    line("service restarted (same database)", f"in {time.perf_counter() - t_start:.1f} s")
    await b.measure_start("kafka-pipeline")
    warm = min(10_000, n // 10)
    t0 = c0 = 0.0
    t_end, done, capped = 0.0, 0.0, False
    deadline = time.perf_counter() + args.kafka_max_seconds
    while True:
        m = await scrape(b.http)
        now = time.perf_counter()
        counts = {
            k: m.get(f"intent_events_{k}_total|kafka", 0.0)
            for k in ("ingested", "duplicate", "rejected")
        }
        done = sum(counts.values())
        if not t0 and done >= warm:
            t0, c0 = now, done
        if done >= n:
            t_end = now
            break
        if now > deadline:
            t_end, capped = now, True
            break
        b.svc.ensure_alive()
        await asyncio.sleep(0.1)
    m = await b.measure_stop()
    wall = t_end - t0 if t0 else 0.0
    eps = (done - c0) / wall if wall > 0 else 0.0
    ratio = eps / raw_rate if raw_rate else 0.0
    line(
        "events applied",
        f"{done:,.0f} / {n:,}",
        f"(stopped at the {args.kafka_max_seconds:g} s cap)" if capped else "",
    )
    line(
        "  ingested / duplicate / rejected",
        " / ".join(f"{counts[k]:,.0f}" for k in ("ingested", "duplicate", "rejected")),
    )
    line(
        "Kafka pipeline throughput",
        f"{eps:,.0f} events/s",
        f"after the first {warm:,} (warm-up), over {wall:.1f} s",
    )
    line(
        "  / raw consume rate",
        f"{100 * ratio:.1f}%",
        f"target ≥ {100 * TARGET_KAFKA_RATIO:.0f}%: {verdict(ratio >= TARGET_KAFKA_RATIO)}",
    )
    b.service_lines(m, b.cpu.wall)
    b.summary.add(
        "Kafka pipeline throughput (consumer → SQLite)",
        f"{eps:,.0f} events/s",
        "",
        "" if done >= n else "INCOMPLETE",
    )
    b.summary.add(
        "  pipeline / raw consume",
        f"{100 * ratio:.1f}%",
        f"≥ {100 * TARGET_KAFKA_RATIO:.0f}%",
        verdict(ratio >= TARGET_KAFKA_RATIO),
    )
    return bool(done >= n)


async def through_kafka(b: Bench, bootstrap: str, topic: str) -> None:
    """Phase 7: HTTP ingest → Kafka → consumer → dispatcher, then produced to the topic."""
    args = b.args
    header(
        "7. Event → webhook through Kafka: HTTP ingest produces (202 after the broker's "
        "ack), the consumer applies, the dispatcher delivers"
    )
    await b.ensure_hot_policy()
    every = args.mix_every
    await offer(
        b,
        args.kafka_rate,
        args.kafka_seconds,
        "kafka-mix",
        b.mixed_events(),
        kind=f"1 in {every} routed",
        label=f"event→webhook via Kafka @ {args.kafka_rate:,g}/s, 1 in {every} routed",
        target=TARGET_KAFKA_WEBHOOK_P99,
        drain=30.0,
    )
    # A source producing to the topic itself: the same events, no HTTP in the path.
    sender = kafka_tools.TopicSender(bootstrap, topic, b.free_mail)
    await sender.start()
    try:
        await offer(
            b,
            args.kafka_rate,
            args.kafka_seconds,
            "kafka-direct",
            b.mixed_events(),
            kind=f"1 in {every} routed, produced straight to the topic",
            label=(
                f"event→webhook via Kafka @ {args.kafka_rate:,g}/s, 1 in {every} routed, "
                "produced to the topic (no HTTP)"
            ),
            target=TARGET_KAFKA_WEBHOOK_P99,
            drain=30.0,
            topic=sender,
        )
    finally:
        await sender.close()
    if args.kafka_strict_seconds > 0:
        await offer(
            b,
            args.kafka_strict_rate,
            args.kafka_strict_seconds,
            "kafka-strict",
            b.strict_events(),
            kind="every event routed, short",
            label=(
                f"event→webhook via Kafka @ {args.kafka_strict_rate:,g}/s, every event "
                f"routed ({args.kafka_strict_seconds:g} s)"
            ),
            drain=30.0,
        )


async def roles_split(b: Bench, env: dict[str, str], seconds: float) -> None:
    """Phase 7 again with the roles in two processes, as a 2-core deployment runs them:
    HTTP ingest → Kafka in one, consumer + dispatcher in the other."""
    args = b.args
    header(
        "7b. The same through Kafka with the roles split: one process answers HTTP and "
        "produces (INTENT_ROLES=api), another consumes and delivers "
        "(INTENT_ROLES=consumer,dispatcher)"
    )
    await b.stop_service("single-process Kafka-mode service stopped")
    port = free_port()
    worker = Child(
        "service-kafka-worker",
        [venv_bin("intent-router"), "serve", "--host", "127.0.0.1", "--port", f"{port}"],
        env={**env, "INTENT_ROLES": "consumer,dispatcher"},
        workdir=b.workdir,
    )
    try:
        await wait_http_ok(f"http://127.0.0.1:{port}/readyz", worker, 60)
        await b.start_service("service-kafka-api", {**env, "INTENT_ROLES": "api"}, fresh=False)
        line("API process (INTENT_ROLES=api)", f"pid {b.svc.pid}", b.base)
        line("worker process (consumer,dispatcher)", f"pid {worker.pid}", f"port {port}")
        line("  CPU and pipeline lines below", "the API process, then the worker")
        wclient = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=b.auth, timeout=30)
        m0 = await scrape(wclient)
        wcpu = CpuMeter(worker.pid, b.receiver.pid, b.broker_pid)
        wcpu.start()
        every = args.mix_every
        await offer(
            b,
            args.kafka_rate,
            seconds,
            "kafka-split",
            b.mixed_events(),
            kind=f"1 in {every} routed, roles split",
            label=(
                f"event→webhook via Kafka @ {args.kafka_rate:,g}/s, 1 in {every} routed, "
                "api | consumer+dispatcher processes"
            ),
            target=TARGET_KAFKA_WEBHOOK_P99,
            drain=30.0,
        )
        wcpu.stop()
        m = diff(await scrape(wclient), m0)
        await wclient.aclose()
        b.service_lines(m, wcpu.wall, wcpu, who="worker")
    finally:
        rc = await asyncio.to_thread(worker.stop, 20.0)
        line("worker process stopped", f"exit code {rc}")
