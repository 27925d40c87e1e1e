"""Phase R: the replay rate (issue 14). A replay of a 1-million-event window must finish
"in minutes" on this machine, in a process of its own, and reproduce the decisions made.

A fresh service (its own SQLite database) imports a few hundred ABM accounts and ingests
a history of ``--replay-events`` events (1,000,000) from ``--replay-leads`` leads (80,000),
the realistic mix of ``bench.workload`` (site visits, email opens and clicks, pricing and
careers pages, downloads, demo requests; stitched and anonymous leads, enrichment), as
pre-serialised batches of 1,000 through ``POST /v1/events`` with three in flight — what
phase 1 does. Every batch is recorded (``batches``), as in production; that ingest's
events/s is the ceiling the replay is compared with: the live pipeline's own rate for the
same events on the same machine (phase 1's figure is printed beside it when it ran).

Then ``--replay-runs`` times (2): ``POST /v1/replays {"version": <active>}`` — the whole
history, from the first batch, under the version that was in force — and the job is
polled until done. The service's launcher runs it as ``python -m app.cli replay --job ID``;
that child is what is measured: the job's own start → finish (its events/s), the wall time
from the POST to ``done``, its CPU and its peak RSS (VmHWM, read from /proc while it runs).
A replay of the window under the active version must reproduce the decisions: the diff
must count every pair unchanged and nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import traffic
from bench.procs import cpu_seconds
from bench.session import Bench, service_env, verdict
from bench.stats import header, line
from bench.workload import EventFactory, make_accounts, make_leads

BOUND_SECONDS = 600.0  # issue 14: a 1-million-event window finishes "in minutes"
BOUND_EVENTS = 1_000_000
POLL_SECONDS = 0.25
ACCOUNTS = 300
# The history is ingested as fast as the service takes it: no quota on the bench's key.
UNLIMITED = {"INTENT_RATE_LIMIT_EVENTS_PER_SECOND": "1e9", "INTENT_RATE_LIMIT_BURST": "1000000000"}


QUICK_EVENTS = 100_000  # --quick


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--replay-events", type=int, default=BOUND_EVENTS, help="phase R history")
    p.add_argument("--replay-leads", type=int, default=80_000, help="phase R distinct leads")
    p.add_argument("--replay-runs", type=int, default=2, help="phase R replays of the history")


def history_events(args: argparse.Namespace) -> int:
    return min(args.replay_events, QUICK_EVENTS) if args.quick else int(args.replay_events)


@dataclass
class Replay:
    """One replay job, as measured from outside."""

    job: str
    status: str = ""
    wall: float = 0.0  # POST → done, seen by polling
    job_seconds: float = math.nan  # the job's own started_at → finished_at
    events: int = 0
    batches: int = 0
    pid: int | None = None
    cpu: float = 0.0
    peak_rss_mb: float = math.nan
    view: dict[str, Any] | None = None
    load: tuple[float, float] = (math.nan, math.nan)  # 1-min load average, start and end

    @property
    def rate(self) -> float:
        return self.events / self.job_seconds if self.job_seconds > 0 else math.nan

    @property
    def diff(self) -> dict[str, Any]:
        return (self.view or {}).get("diff") or {}

    @property
    def reproduced(self) -> bool:
        d = self.diff
        counts, made = d.get("counts") or {}, d.get("decisions") or {}
        others = sum(v for k, v in counts.items() if k != "unchanged")
        n = made.get("baseline", -1)
        return (
            self.status == "done"
            and n == made.get("candidate")
            and n == counts.get("unchanged")
            and others == 0
        )


def _parse(ts: str | None) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() if ts else math.nan


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's list, from /proc)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(x) for x in task.read_text().split()]
        except OSError:
            continue
    return out


def find_job_process(service: int, job: str) -> int | None:
    """The replay child the service started for ``job`` (its command line names it)."""
    todo = [service]
    while todo:
        pid = todo.pop()
        for child in _children(pid):
            try:
                argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"replay" in argv and job.encode() in argv:
                return child
            todo.append(child)
    return None


def peak_rss_mb(pid: int) -> float:
    try:
        for raw in Path(f"/proc/{pid}/status").read_text().splitlines():
            if raw.startswith("VmHWM:"):
                return int(raw.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return math.nan


async def replay_once(b: Bench, version: int, n: int) -> Replay:
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    r = await b.http.post("/v1/replays", json={"version": version, "examples": 2})
    body = traffic._expect(r, 202, "POST /v1/replays")
    run = Replay(body["id"])
    printed = t0
    while True:
        if run.pid is None:
            run.pid = find_job_process(b.svc.pid, run.job)
        if run.pid is not None:  # sampled while it runs: gone once it exits
            rss, cpu = peak_rss_mb(run.pid), cpu_seconds(run.pid)
            if not math.isnan(rss):
                run.peak_rss_mb = rss if math.isnan(run.peak_rss_mb) else max(run.peak_rss_mb, rss)
            run.cpu = max(run.cpu, cpu)
        view = traffic._expect(await b.http.get(f"/v1/replays/{run.job}"), 200, "GET replay")
        run.status = view["status"]
        if run.status not in ("queued", "running"):
            run.wall = time.perf_counter() - t0
            run.view = view
            break
        if time.perf_counter() - printed >= 30:
            printed = time.perf_counter()
            p = view.get("progress") or {}
            print(
                f"     run {n}: {p.get('phase')} {p.get('events_done', 0):,} / "
                f"{p.get('events_total', 0):,} events after {printed - t0:.0f} s",
                flush=True,
            )
        b.svc.ensure_alive()
        await asyncio.sleep(POLL_SECONDS)
    run.load = (load0, os.getloadavg()[0])
    progress = run.view.get("progress") or {}
    run.events = int(progress.get("events_done", 0))
    run.batches = int(progress.get("batches_done", 0))
    run.job_seconds = _parse(run.view.get("finished_at")) - _parse(run.view.get("started_at"))
    return run


def report(run: Replay, n: int, ceiling: float) -> None:
    print(f"\n  -- replay {n}: job {run.job}", flush=True)
    if run.status != "done":
        line("status", run.status, str((run.view or {}).get("error"))[:200])
        return
    line("batches / events replayed", f"{run.batches:,} / {run.events:,}")
    line("job started → finished (the child process)", f"{run.job_seconds:.1f} s")
    line("POST → done seen (incl. launch, polling)", f"{run.wall:.1f} s")
    line(
        "replay rate",
        f"{run.rate:,.0f} events/s",
        f"ceiling: live batch ingest {ceiling:,.0f} events/s ({run.rate / ceiling:.0%} of it)",
    )
    per_million = BOUND_EVENTS / run.rate if run.rate > 0 else math.nan
    line(
        "  1,000,000 events at this rate",
        f"{per_million:.0f} s",
        f'bound ≤ {BOUND_SECONDS:.0f} s ("in minutes"): {verdict(per_million <= BOUND_SECONDS)}',
    )
    cpu = 100 * run.cpu / run.job_seconds if run.job_seconds > 0 else math.nan
    line("replay process CPU (100% = one core)", f"{cpu:.0f}%", f"pid {run.pid}")
    line("replay process peak RSS (VmHWM)", f"{run.peak_rss_mb:,.0f} MB")
    line(
        "machine load average (1 min), start / end",
        f"{run.load[0]:.1f} / {run.load[1]:.1f}",
        f"on {os.cpu_count()} cores (other work on the machine shows here)",
    )
    d = run.diff
    made, counts = d.get("decisions") or {}, d.get("counts") or {}
    changed = ", ".join(f"{k} {v}" for k, v in counts.items() if k != "unchanged" and v)
    line(
        "decisions actual / replayed",
        f"{made.get('baseline', 0):,} / {made.get('candidate', 0):,}",
        f"baseline: {d.get('baseline')}",
    )
    line(
        "diff: unchanged / anything else",
        f"{counts.get('unchanged', 0):,} / {changed or '0'}",
        "decisions reproduced: " + ("yes" if run.reproduced else "NO"),
    )


async def build_history(b: Bench) -> tuple[float, int]:
    """A fresh service and the history; the ingest's events/s and the active version."""
    args = b.args
    rng = random.Random(args.seed + 14)
    accounts = make_accounts(ACCOUNTS, rng)
    factory = EventFactory(make_leads(args.replay_leads, accounts, rng), rng, secrets.token_hex(3))
    n, size = history_events(args), args.batch_size
    t0 = time.perf_counter()
    gen = asyncio.create_task(asyncio.to_thread(factory.batches, n, size, time.time()))
    try:
        await b.start_service(
            "service-replay", service_env(b.workdir, "replay.db", **UNLIMITED), fresh=True
        )
        bodies = await asyncio.wait_for(gen, 600)
    finally:
        if not gen.done():
            gen.cancel()
    line("service (fresh SQLite database)", f"pid {b.svc.pid}", b.base)
    line("batch bodies serialised", f"{len(bodies):,}", f"in {time.perf_counter() - t0:.1f} s")
    tiered = sum(a.tier is not None for a in accounts)
    imported = await traffic.import_accounts(b.http, accounts)
    line("ABM accounts imported", f"{imported:,}", f"{tiered} tiered")
    line("distinct leads in the event pool", f"{args.replay_leads:,}")
    sizes = [min(size, n - i) for i in range(0, n, size)]
    cpu0 = cpu_seconds(b.svc.pid)
    run = await traffic.post_batches(b.http, bodies, sizes, concurrency=args.batch_concurrency)
    cpu = cpu_seconds(b.svc.pid) - cpu0
    del bodies
    eps = run.accepted / run.wall if run.wall else 0.0
    line(
        "history ingested (live pipeline, batches)",
        f"{run.accepted:,} events",
        f"in {run.wall:.1f} s, {run.requests:,} requests: " + ("ok" if run.ok else "NOT ok"),
    )
    line(
        "  its rate: the ceiling of a replay",
        f"{eps:,.0f} events/s",
        f"service CPU {100 * cpu / run.wall:.0f}%",
    )
    if not run.ok:
        line("  errors", "", "; ".join(run.errors[:3]))
        b.summary.failed = True
    current = traffic._expect(await b.http.get("/v1/policy"), 200, "GET /v1/policy")
    return eps, int(current["version"])


def phase1_rate(b: Bench) -> str | None:
    return next((r[1] for r in b.summary.rows if r[0] == "batch ingest, full pipeline"), None)


async def run(b: Bench) -> None:
    args = b.args
    header(
        f"R. Replay rate: a {history_events(args):,}-event history replayed whole under the "
        "active version, in the service's replay process"
    )
    started = time.perf_counter()
    try:
        ceiling, version = await build_history(b)
        earlier = phase1_rate(b)
        if earlier:
            line("  phase 1's batch ingest in this run", earlier, "(a smaller database)")
        runs = []
        for i in range(1, args.replay_runs + 1):
            r = await replay_once(b, version, i)
            report(r, i, ceiling)
            runs.append(r)
    finally:
        await b.stop_service("replay-phase service stopped")
    ok = [r for r in runs if r.status == "done"]
    rates = [r.rate for r in ok]
    worst = max((BOUND_EVENTS / r.rate for r in ok), default=math.nan)
    line("phase R took", f"{time.perf_counter() - started:.0f} s")
    b.summary.add(
        f"replay rate, {history_events(args):,} events (runs)",
        " / ".join(f"{x:,.0f}" for x in rates) + " events/s",
        f"ceiling: live ingest {ceiling:,.0f} events/s",
    )
    b.summary.add(
        "  replay of 1,000,000 events, slowest run",
        f"{worst:.0f} s",
        f"≤ {BOUND_SECONDS:.0f} s",
        verdict(worst <= BOUND_SECONDS),
    )
    b.summary.add(
        "  replay process peak RSS (runs)",
        " / ".join(f"{r.peak_rss_mb:,.0f}" for r in ok) + " MB",
    )
    reproduced = bool(runs) and all(r.reproduced for r in runs)
    b.summary.add(
        "  replay reproduces the decisions (diff all unchanged)",
        " / ".join(f"{r.diff.get('counts', {}).get('unchanged', 0):,}" for r in runs),
        "every run",
        "OK" if reproduced else "NO",
    )
    b.summary.failed |= not reproduced or not worst <= BOUND_SECONDS
