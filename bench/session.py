"""What every phase of ``python -m bench`` shares: the ``Bench`` (its workload, the
service and receiver processes it starts, the measuring helpers and the set-up most
phases need) and the run's ``Summary``."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import profile, traffic
from bench.procs import ROOT, Child, free_port, venv_bin, wait_http_ok
from bench.stats import CpuMeter, diff, header, line, scrape
from bench.workload import EventFactory, make_accounts, make_leads

# Fit 50 + 30 points would total 79.99…, not 80: the points decay from occurred_at to the
# moment the service applies the event. 31 clears the hot threshold with a margin of 1.
HOT_DEMO_POINTS = 31
PORT_RE = re.compile(r"PORT (\d+)")
KEY_RE = re.compile(r"\b(ir_[A-Za-z0-9_\-]{20,})")


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def statuses(status: dict[int, int]) -> str:
    return ", ".join(f"HTTP {k}: {v:,}" for k, v in sorted(status.items()))


def code_version() -> str:
    """The commit of the working tree, and whether app/ has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "app"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted changes in app/' if dirty else ''}"


def service_env(workdir: Path, db: str = "bench.db", **extra: str) -> dict[str, str]:
    """The caller's environment (other INTENT_* settings pass through) plus ours. The
    caller's INTENT_KAFKA_* never reach the embedded-mode service; ``extra`` sets them
    for the Kafka-mode one."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("INTENT_HOST", "INTENT_PORT") and not k.startswith("INTENT_KAFKA_")
    }
    env.update(
        INTENT_DATABASE_URL=f"sqlite+aiosqlite:///{workdir}/{db}",
        INTENT_DELIVERY_ALLOWED_HOSTS="127.0.0.1",
        INTENT_LOG_LEVEL="warning",
        # The per-key quota (1,000 events/s by default) would measure itself: off here.
        INTENT_RATE_LIMIT_EVENTS_PER_SECOND="1e9",
        INTENT_RATE_LIMIT_BURST="1000000000",
    )
    env.update(extra)
    return env


@dataclass
class Summary:
    """The table printed at the end: one row per figure, with its target and verdict."""

    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed: bool = False

    def add(self, figure: str, value: str, target: str = "", result: str = "") -> None:
        self.rows.append((figure, value, target, result))

    def print(self) -> None:
        header("Summary")
        head = ("figure", "measured", "target", "")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(4)]
        for r in [head, *self.rows]:
            print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        for note in self.notes:
            print(f"  {note}")


class Bench:
    """One run: the workload (ABM accounts, leads, events), the processes it started and
    the summary. The phases (bench.*_phases) drive it; it holds no phase's logic."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.rng = random.Random(args.seed)
        self.accounts = make_accounts(args.accounts, self.rng)
        self.leads = make_leads(args.leads, self.accounts, self.rng)
        self.tier1 = [a for a in self.accounts if a.tier == "tier_1"]
        self.factory = EventFactory(self.leads, self.rng, secrets.token_hex(3))
        self.summary = Summary()
        self.version = code_version()
        self.free_mail: frozenset[str] = frozenset()
        self.policy_version: int | None = None  # set once demo_request has HOT_DEMO_POINTS
        self.broker_pid: int | None = None
        # Set by start() / start_service() / measure_start():
        self.service: Child | None = None
        self.receiver: Child
        self.port: int
        self.base: str
        self.rec_port: int
        self.key: str
        self.auth: dict[str, str]
        self.client: httpx.AsyncClient | None = None
        self.rec: httpx.AsyncClient | None = None
        self.prof: profile.Profiler | None = None
        self.metrics0: dict[str, float] = {}
        self.cpu: CpuMeter

    @property
    def svc(self) -> Child:
        assert self.service is not None
        return self.service

    @property
    def http(self) -> httpx.AsyncClient:
        assert self.client is not None
        return self.client

    @property
    def hooks(self) -> httpx.AsyncClient:
        assert self.rec is not None
        return self.rec

    # -- processes -------------------------------------------------------------------------
    async def start(self) -> list[bytes]:
        """Start the receiver and the service; returns the batch bodies for phase 1."""
        args, workdir = self.args, self.workdir
        header("Set-up")
        line("cores on this machine", str(os.cpu_count()))
        line("code under test", self.version)
        ours = ("DATABASE_URL", "DELIVERY_ALLOWED_HOSTS", "LOG_LEVEL", "HOST", "PORT")
        intent = [k for k in os.environ if k.startswith("INTENT_")]
        extra = sorted(k for k in intent if k[7:] not in ours and not k[7:].startswith("KAFKA_"))
        if extra:
            line("INTENT_* settings passed to the service", ", ".join(extra))
        if any(k.startswith("INTENT_KAFKA_") for k in intent):
            line("INTENT_KAFKA_* from the environment", "", "not used by phases 1-4")
        self.spawn_receiver()
        # Serialise the batch bodies while the service migrates and starts.
        n = args.warmup_events + args.events
        t0 = time.perf_counter()
        gen = asyncio.create_task(
            asyncio.to_thread(self.factory.batches, n, args.batch_size, time.time())
        )
        try:
            port_line = await self.receiver.wait_for_stdout(PORT_RE, "its port", 20)
            self.rec_port = int(port_line.group(1))
            await self.start_service("service", service_env(workdir), fresh=True)
            await wait_http_ok(f"http://127.0.0.1:{self.rec_port}/count", self.receiver, 20)
            bodies = await asyncio.wait_for(gen, 120)
        finally:
            if not gen.done():
                gen.cancel()
        self.rec = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.rec_port}", timeout=30)
        line("service (SQLite, HTTP ingest)", f"pid {self.svc.pid}", self.base)
        line("webhook receiver (own process)", f"pid {self.receiver.pid}", f"port {self.rec_port}")
        line("batch bodies serialised", f"{len(bodies)}", f"in {time.perf_counter() - t0:.1f} s")
        return bodies

    def spawn_receiver(self) -> None:
        self.receiver = Child(
            "receiver",
            [sys.executable, "-m", "bench.receiver"],
            env=dict(os.environ),
            workdir=self.workdir,
        )

    async def start_receiver(self) -> None:
        """The receiver alone (``--only``): no service, no batch bodies."""
        header("Set-up")
        line("cores on this machine", str(os.cpu_count()))
        line("code under test", self.version)
        self.spawn_receiver()
        port_line = await self.receiver.wait_for_stdout(PORT_RE, "its port", 20)
        self.rec_port = int(port_line.group(1))
        await wait_http_ok(f"http://127.0.0.1:{self.rec_port}/count", self.receiver, 20)
        self.rec = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.rec_port}", timeout=30)
        line("webhook receiver (own process)", f"pid {self.receiver.pid}", f"port {self.rec_port}")

    async def start_service(self, name: str, env: dict[str, str], *, fresh: bool) -> None:
        """Start ``intent-router serve`` on a free port; ``fresh``: a new database, whose
        bootstrap admin key the service prints (a restart reuses the key it has)."""
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.service = Child(
            name,
            [venv_bin("intent-router"), "serve", "--host", "127.0.0.1", "--port", f"{self.port}"],
            env=env,
            workdir=self.workdir,
        )
        if fresh:
            key_line = await self.service.wait_for_stdout(KEY_RE, "the admin API key", 60)
            self.key = key_line.group(1)
            self.auth = {"authorization": f"Bearer {self.key}"}
        await wait_http_ok(f"{self.base}/readyz", self.service, 60)
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        self.client = httpx.AsyncClient(
            base_url=self.base, headers=self.auth, timeout=60.0, limits=limits
        )

    async def stop_service(self, what: str = "service stopped") -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        if self.service is None:
            return
        service, self.service = self.service, None
        t0 = time.perf_counter()
        rc = await asyncio.to_thread(service.stop, 20.0)
        # uvicorn re-raises the SIGTERM it handled, so a graceful stop reads as -15.
        clean = rc in (0, -signal.SIGTERM)
        line(
            what,
            f"in {time.perf_counter() - t0:.1f} s",
            f"exit code {rc}" + ("" if clean else f"\n{service.stderr_tail(30)}"),
        )
        if not clean:
            self.summary.failed = True

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        if self.rec is not None:
            await self.rec.aclose()

    # -- measuring helpers -----------------------------------------------------------------
    async def measure_start(self, name: str) -> None:
        """Before a phase: the service is alive, py-spy attached, counters read."""
        self.svc.ensure_alive()
        self.prof = None
        if self.args.profile:
            self.prof = profile.Profiler(self.svc.pid, self.workdir, name)
            await asyncio.sleep(0.5)  # let py-spy attach before the load starts
        self.metrics0 = await scrape(self.http)
        self.cpu = CpuMeter(self.svc.pid, self.receiver.pid, self.broker_pid)
        self.cpu.start()

    async def measure_stop(self) -> dict[str, float]:
        """After a phase: CPU and the service's counters over it; prints the profile."""
        self.cpu.stop()
        self.svc.ensure_alive()
        m = diff(await scrape(self.http), self.metrics0)
        if self.prof is not None:
            await self.prof.stop()
            print("  -- py-spy profile of the service during this phase")
            for text in self.prof.report():
                print(f"     {text}")
        return m

    def service_lines(
        self, m: dict[str, float], wall: float, cpu: CpuMeter | None = None, who: str = "service"
    ) -> None:
        """The service's own view: pipeline transactions, their size and busy share."""
        n = m.get("intent_pipeline_batch_seconds_count", 0.0)
        if n:
            busy = m.get("intent_pipeline_batch_seconds_sum", 0.0)
            events = m.get("intent_pipeline_batch_events_sum", 0.0)
            line(
                f"{who} pipeline transactions",
                f"{n:,.0f}",
                f"avg {events / n:,.1f} events, {1000 * busy / n:.1f} ms each",
            )
            line(
                "  wall time with a transaction open",
                f"{100 * busy / wall:.0f}%" if wall else "n/a",
                "(one transaction at a time)",
            )
        line(
            "routing decisions / webhooks ok / failed",
            f"{m.get('intent_decisions_total', 0):,.0f} / "
            f"{m.get('intent_deliveries_total|delivered', 0):,.0f} / "
            f"{m.get('intent_deliveries_total|failed', 0):,.0f}",
            f"({m.get('intent_decisions_suppressed_total', 0):,.0f} suppressed by cooldown)",
        )
        line("CPU (100% = one core)", "", (cpu or self.cpu).summary(who))

    # -- shared set-up -----------------------------------------------------------------------
    async def setup(self) -> None:
        n = await traffic.import_accounts(self.http, self.accounts)
        line("ABM accounts imported", f"{n:,}", f"{len(self.tier1)} tier_1")
        hook = f"http://127.0.0.1:{self.rec_port}/hook"
        await traffic.add_destination(self.http, hook)
        line("webhook destination registered", "bench", hook)
        line("distinct leads in the event pool", f"{len(self.leads):,}")
        self.free_mail = await traffic.free_mail(self.http)
        self.policy_version = None

    async def ensure_hot_policy(self) -> None:
        if self.policy_version is None:
            self.policy_version = await traffic.set_signal_points(
                self.http, "demo_request", HOT_DEMO_POINTS
            )
            line(
                f"policy applied: demo_request = {HOT_DEMO_POINTS} points",
                f"version {self.policy_version}",
            )

    def strict_events(self) -> traffic.MakeEvent:
        def make(i: int, now: float) -> tuple[dict[str, Any], bool]:
            return self.factory.hot_lead_event(self.rng.choice(self.tier1), now), True

        return make

    def mixed_events(self) -> traffic.MakeEvent:
        every = self.args.mix_every

        def make(i: int, now: float) -> tuple[dict[str, Any], bool]:
            return self.factory.mixed(now, i, every, self.tier1)

        return make
