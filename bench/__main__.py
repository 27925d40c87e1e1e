"""``python -m bench``: start the real service on loopback and measure it.

Embedded mode first (SQLite in a temporary directory, HTTP ingest): start the receiver
and the service, import ABM accounts, register the receiver as a destination, then

1. batch ingest: pre-serialised batches of 1,000 events, a few requests in flight;
2. single-event ingest: one event per request, 64 in flight, closed loop;
3. event → webhook, every event routed: demo requests, each from a new VP at a tier-1
   ICP account, offered open loop — first a short 50 events/s baseline (the latency
   floor of an idle service), then 500 events/s. With the default policy such a lead has
   fit 50 and a demo request gives 20 intent points (total 70, warm), so this phase first
   applies a policy version with ``demo_request`` at 31 points: each event then makes
   exactly one new lead hot and yields one ``lead.routed`` webhook, matched at the
   receiver by ``data.trigger_event_id`` to the time the event was sent;
4. event → webhook, realistic mix: 500 events/s where 1 in 20 makes a new lead hot and
   the rest are ordinary traffic of the pool's leads (site visits, email opens, …; no
   demo requests), timed for the routed events only;
T. CPU µs per webhook of the dispatcher's HTTP transport (``bench.transport_cpu``), with
   no service running (``--only transport`` runs just this phase).
D. delivery throughput with a dead endpoint (``bench.delivery_phase``): 9 healthy
   destinations, then the same plus one that never answers, each run on a fresh service
   (``--only delivery`` runs just this phase).
S. after phase 4, on its service: phase 4's mix without, with, with and without a shadow
   policy running (``bench.shadow_phase``; ``--only shadow``).
R. the replay rate: a 1,000,000-event history on a fresh service, replayed whole by the
   service's replay process, twice (``bench.replay_phase``; ``--only replay``).

Then, when a Kafka broker is available (see ``bench.kafka_tools``), Kafka mode — the
service with ``INTENT_KAFKA_BOOTSTRAP`` set, still on an embedded SQLite database, with a
topic and consumer group of its own:

5. the ceiling: one raw AIOKafkaConsumer reading a pre-produced backlog (getmany of up to
   5,000, a commit after each), the way the service's consumer reads;
6. pipeline throughput: a keyed backlog produced straight to the service's topic, applied
   by the service's consumer (``intent_events_ingested_total{transport="kafka"}``);
7. event → webhook through Kafka: HTTP ingest produces (202 after the broker's ack), the
   consumer applies, the dispatcher delivers — a realistic mix; the same mix produced by
   this process straight onto the topic, as a source writing to Kafka would
   (``kafka_tools.TopicSender``, no HTTP in the path); and a short strict run;
7b. the realistic mix again with the roles in two processes (API | consumer+dispatcher),
   the way a 2-core machine would run them.

One module per group of phases: ``bench.ingest_phases`` (1-2), ``bench.latency_phases``
(3-4), ``bench.transport_phase`` (T), ``bench.delivery_phase`` (D), ``bench.kafka_phases``
(5-7b); ``bench.session`` holds what they share (the processes, the measuring helpers,
the summary). This module parses the arguments and runs the phases in order.

Subprocesses, services this run started and the temporary directory are removed on
exit, Ctrl-C and errors; a broker found running is reused and left running.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from bench import (
    delivery_phase,
    ingest_phases,
    kafka_phases,
    kafka_tools,
    latency_phases,
    profile,
    replay_phase,
    shadow_phase,
    traffic,
    transport_phase,
)
from bench.procs import ChildError, find_child, stop_all
from bench.session import Bench
from bench.stats import header


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--accounts", type=int, default=2_000, help="ABM accounts (default 2000)")
    p.add_argument("--leads", type=int, default=20_000, help="distinct leads (default 20000)")
    p.add_argument("--events", type=int, default=200_000, help="timed batch events")
    p.add_argument("--warmup-events", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=1_000)
    p.add_argument("--batch-concurrency", type=int, default=3, help="batches in flight")
    p.add_argument("--batch-max-seconds", type=float, default=30.0, help="time cap, phase 1")
    p.add_argument("--single-concurrency", type=int, default=64)
    p.add_argument("--single-seconds", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=500.0, help="phases 3-4 offered events/s")
    p.add_argument("--latency-seconds", type=float, default=20.0)
    p.add_argument("--baseline-seconds", type=float, default=4.0, help="0 skips the baseline")
    p.add_argument("--mix-seconds", type=float, default=15.0, help="phase 4; 0 skips it")
    p.add_argument("--mix-every", type=int, default=20, help="1 in N events routes (4, 7)")
    p.add_argument("--delivery-rate", type=float, default=100.0, help="phase D events/s")
    # Past the service's 60 s delivery lease: a dead endpoint's backlog changes after it.
    p.add_argument("--delivery-seconds", type=float, default=70.0, help="phase D, per run")
    p.add_argument(
        "--only",
        choices=("delivery", "latency", "kafka", "replay", "shadow", "transport"),
        help="run only this phase (latency: phases 3 and 4, event → webhook; kafka: 5-7b; "
        "transport: T, CPU per webhook; replay: R; shadow: S)",
    )
    replay_phase.add_args(p)
    p.add_argument("--no-kafka", action="store_true", help="skip the Kafka phases")
    p.add_argument("--kafka-raw-events", type=int, default=200_000, help="phase 5 messages")
    p.add_argument("--kafka-events", type=int, default=100_000, help="phase 6 backlog")
    p.add_argument("--kafka-max-seconds", type=float, default=45.0, help="time cap, phase 6")
    p.add_argument("--kafka-rate", type=float, default=1_000.0, help="phase 7 events/s")
    p.add_argument("--kafka-seconds", type=float, default=10.0, help="phase 7 duration")
    p.add_argument("--kafka-strict-rate", type=float, default=500.0)
    p.add_argument(
        "--kafka-split-seconds", type=float, default=10.0, help="phase 7b duration; 0 skips it"
    )
    p.add_argument("--kafka-strict-seconds", type=float, default=3.0, help="0 skips it")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--profile", action="store_true", help="sample the service with py-spy")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--quick", action="store_true", help="a short smoke run (~1 min)")
    args = p.parse_args(argv)
    if args.quick:
        args.events, args.warmup_events = 20_000, 2_000
        args.single_seconds, args.latency_seconds, args.baseline_seconds = 3.0, 5.0, 2.0
        args.mix_seconds, args.kafka_raw_events, args.kafka_events = 5.0, 50_000, 20_000
        args.kafka_seconds, args.kafka_strict_seconds = 4.0, 2.0
        args.kafka_split_seconds = 4.0
        args.delivery_seconds = 20.0
    if args.mix_every < 1:
        p.error("--mix-every must be at least 1")
    if args.profile and not profile.available():
        p.error("--profile needs py-spy: .venv/bin/pip install py-spy")
    return args


async def run(b: Bench) -> int:
    """Every phase in order (or the one ``--only`` names); the exit code."""
    only = b.args.only
    try:
        if only in ("replay", "transport"):  # their own service / receiver
            await (replay_phase.run(b) if only == "replay" else transport_phase.run(b))
            b.summary.print()
            return 1 if b.summary.failed else 0
        if only in ("delivery", "kafka"):  # phases with services of their own
            await b.start_receiver()
            await (delivery_phase.run(b) if only == "delivery" else kafka_phases.run(b))
            b.summary.print()
            await asyncio.to_thread(b.receiver.stop, 5.0)
            return 1 if b.summary.failed else 0
        bodies = await b.start()
        await b.setup()
        if only not in ("latency", "shadow"):
            await ingest_phases.batch_ingest(b, bodies)
            del bodies
            await ingest_phases.single_ingest(b)
        if only != "shadow":
            await latency_phases.every_event_routed(b)
            await latency_phases.realistic_mix(b)
        if only in (None, "shadow"):
            await shadow_phase.run(b)
        header("Embedded-mode service: shutdown")
        await b.stop_service()
        if only not in ("latency", "shadow"):
            await transport_phase.run(b)
            await delivery_phase.run(b)
            await replay_phase.run(b)
            if not b.args.no_kafka:
                await kafka_phases.run(b)
        b.summary.print()
        await asyncio.to_thread(b.receiver.stop, 5.0)
    finally:
        await b.close()
    return 1 if b.summary.failed else 0


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _run_loop(coro: Coroutine[Any, Any, int]) -> int:
    """uvloop when present (the service uses it too): a cheaper client, cleaner figures."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, _on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="intent-bench-"))
    started = time.perf_counter()
    code = 2
    try:
        code = _run_loop(run(Bench(args, workdir)))
    except KeyboardInterrupt:
        print("\ninterrupted; stopping what the bench started", file=sys.stderr)
        code = 130
    except ChildError as exc:
        print(f"\nbench: {exc}", file=sys.stderr)
        code = 2
    except (traffic.BenchError, httpx.HTTPError, OSError, TimeoutError) as exc:
        print(f"\nbench: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        service = find_child("service")
        if service is not None:
            state = "running" if service.alive() else f"exit code {service.proc.poll()}"
            print(f"--- {service.name} ({state}) stderr tail ---", file=sys.stderr)
            print(service.stderr_tail(40), file=sys.stderr)
        code = 1
    finally:
        stop_all()
        for note in kafka_tools.cleanup():
            print(note)
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nbench finished in {time.perf_counter() - started:.0f} s (exit code {code})")
    sys.exit(code)


if __name__ == "__main__":
    main()
