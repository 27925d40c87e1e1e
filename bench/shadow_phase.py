"""Phase S: the live path's cost of a shadow policy (issue 14). "Shadow evaluation must not
slow the live path by more than its own share."

Phase 4's measurement (event → webhook, open loop, ``--rate`` events/s, 1 in
``--mix-every`` making a new lead hot) four times on the same service: without a shadow,
with one, with it again, and without once more (A S S A, so a drift of the service over
the runs does not read as the shadow's cost). The shadow is a candidate — the active
policy with ``pricing_page_view`` at +25 points — started with ``PUT /v1/policy?mode=shadow``
(the service's replay launcher runs it in a process of its own) and discarded with
``DELETE /v1/policy/shadow``. It warms up on the history (phases 1-4) first; the runs with
it start once it follows the live batches. Its process's CPU over each run is its share:
the live p99 may grow by at most that fraction of the machine (its CPU over the machine's
cores). When the two runs without it differ by more than the difference the shadow makes,
the machine's noise is larger than the effect and the verdict says so.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench import traffic
from bench.latency_phases import TARGET_WEBHOOK_P99, offer
from bench.procs import cpu_seconds
from bench.replay_phase import find_job_process
from bench.session import Bench, verdict
from bench.stats import header, line, ms, pct

CANDIDATE_SIGNAL, CANDIDATE_POINTS = "pricing_page_view", 25.0
WARMUP_TIMEOUT = 600.0


@dataclass
class Mix:
    name: str
    p50: float
    p99: float
    complete: bool
    shadow_cpu: float = math.nan  # the shadow process's CPU over the run, % of one core
    service_cpu: float = math.nan


class Shadow:
    """The candidate running beside the active policy (``PUT /v1/policy?mode=shadow``)."""

    def __init__(self, b: Bench) -> None:
        self.b = b
        self.job = ""
        self.pid: int | None = None

    async def start(self) -> None:
        b = self.b
        current = traffic._expect(await b.http.get("/v1/policy"), 200, "GET /v1/policy")
        doc = current["policy"]
        doc["signals"][CANDIDATE_SIGNAL]["points"] = CANDIDATE_POINTS
        r = await b.http.put(
            "/v1/policy",
            params={"mode": "shadow", "comment": "bench: shadow candidate"},
            content=orjson.dumps(doc),
            headers=traffic.JSON,
        )
        self.job = str(traffic._expect(r, 202, "PUT /v1/policy?mode=shadow")["id"])
        line(f"shadow: {CANDIDATE_SIGNAL} = {CANDIDATE_POINTS:g} points", self.job)

    async def view(self) -> dict[str, Any]:
        r = await self.b.http.get("/v1/policy/shadow")
        return dict(traffic._expect(r, 200, "GET /v1/policy/shadow"))

    async def wait_following(self) -> float:
        """Until its warm-up is over and it follows the live batches; seconds waited."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < WARMUP_TIMEOUT:
            if self.pid is None:
                self.pid = find_job_process(self.b.svc.pid, self.job)
            v = await self.view()
            if v["status"] not in ("queued", "running"):
                raise traffic.BenchError(f"shadow {self.job} is {v['status']}: {v.get('error')}")
            if (v.get("progress") or {}).get("phase") == "follow":
                return time.perf_counter() - t0
            await asyncio.sleep(0.5)
        raise traffic.BenchError(f"shadow {self.job} still warming up after {WARMUP_TIMEOUT} s")

    async def stop(self) -> None:
        """Discard it (``DELETE /v1/policy/shadow``) and wait for its process to end."""
        traffic._expect(await self.b.http.delete("/v1/policy/shadow"), 200, "DELETE shadow")
        t0 = time.perf_counter()
        while self.pid is not None and running(self.pid):
            if time.perf_counter() - t0 > 30:
                raise traffic.BenchError(f"the shadow process {self.pid} did not stop")
            await asyncio.sleep(0.2)


def niceness(pid: int) -> str:
    """The scheduling priority the service gave its shadow process (0: the service's)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16]
    except (OSError, IndexError):
        return "?"


def running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for its parent's reap does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def measure(b: Bench, name: str, shadow: Shadow | None) -> Mix:
    args = b.args
    pid = shadow.pid if shadow is not None else None
    c0 = cpu_seconds(pid) if pid else 0.0
    t0 = time.perf_counter()
    lat = await offer(
        b,
        args.rate,
        args.mix_seconds,
        f"shadow-{name}",
        b.mixed_events(),
        kind=f"{name}, 1 in {args.mix_every} routed",
        label=f"S. event→webhook @ {args.rate:,g}/s, mix, {name}",
        target=TARGET_WEBHOOK_P99,
    )
    wall = time.perf_counter() - t0
    mix = Mix(name, pct(lat.latencies, 50), pct(lat.latencies, 99), lat.complete)
    mix.service_cpu = b.cpu.share("service")
    line("machine load average (1 min) at the end", f"{os.getloadavg()[0]:.1f}")
    if pid:
        mix.shadow_cpu = 100 * (cpu_seconds(pid) - c0) / wall
        line("shadow process CPU over the run", f"{mix.shadow_cpu:.0f}%", f"pid {pid}")
    return mix


async def run(b: Bench) -> None:
    args = b.args
    if args.mix_seconds <= 0:
        return
    header(
        f"S. Live p99 with and without a shadow policy: phase 4's mix at {args.rate:,g} "
        "events/s, runs A (none), S (shadow), S, A"
    )
    started = time.perf_counter()
    await b.ensure_hot_policy()
    runs = [await measure(b, "no shadow (1)", None)]
    shadow = Shadow(b)
    await shadow.start()
    waited = await shadow.wait_following()
    line(
        "shadow warm-up on the history",
        f"{waited:.1f} s",
        f"process pid {shadow.pid}, nice {niceness(shadow.pid) if shadow.pid else '?'}",
    )
    before = (await shadow.view()).get("progress") or {}
    try:
        runs.append(await measure(b, "shadow (1)", shadow))
        runs.append(await measure(b, "shadow (2)", shadow))
        await asyncio.sleep(2.5)  # its diff is rewritten every 2 s
        after = await shadow.view()
    finally:
        await shadow.stop()
    runs.append(await measure(b, "no shadow (2)", None))
    report(b, runs, before, after)
    line("phase S took", f"{time.perf_counter() - started:.0f} s")


def report(b: Bench, runs: list[Mix], before: dict[str, Any], after: dict[str, Any]) -> None:
    print("\n  -- live event → webhook, without and with the shadow", flush=True)
    for r in runs:
        cpu = "" if math.isnan(r.shadow_cpu) else f", shadow process {r.shadow_cpu:.0f}%"
        line(
            f"{r.name}: p50 / p99",
            f"{ms(r.p50)} / {ms(r.p99)}",
            f"service CPU {r.service_cpu:.0f}%{cpu}",
        )
    plain = [r for r in runs if math.isnan(r.shadow_cpu)]
    shadowed = [r for r in runs if not math.isnan(r.shadow_cpu)]
    p99_a = sum(r.p99 for r in plain) / len(plain)
    p99_s = sum(r.p99 for r in shadowed) / len(shadowed)
    p50_a = sum(r.p50 for r in plain) / len(plain)
    p50_s = sum(r.p50 for r in shadowed) / len(shadowed)
    noise = abs(plain[0].p99 - plain[-1].p99)
    cores = os.cpu_count() or 1
    share = sum(r.shadow_cpu for r in shadowed) / len(shadowed) / (100 * cores)
    growth = p99_s / p99_a - 1 if p99_a > 0 else math.nan
    ok = growth <= share
    conclusive = noise < abs(p99_s - p99_a)
    line("p50 without / with (means)", f"{ms(p50_a)} / {ms(p50_s)}", f"{ms(p50_s - p50_a)}")
    line("p99 without / with (means)", f"{ms(p99_a)} / {ms(p99_s)}", f"{ms(p99_s - p99_a)}")
    line(
        "  p99 noise: the two runs without differ by",
        ms(noise),
        "" if conclusive else "≥ the difference: the machine's noise hides the effect",
    )
    line(
        "p99 growth with the shadow",
        f"{100 * growth:+.1f}%",
        f"rule: ≤ the shadow's own share, {100 * share:.1f}% of {cores} cores: {verdict(ok)}",
    )
    p0, p1 = before, after.get("progress") or {}
    diff = after.get("diff") or {}
    made, counts = diff.get("decisions") or {}, diff.get("counts") or {}
    line(
        "shadow: batches followed during the S runs",
        f"{p1.get('batches_done', 0) - p0.get('batches_done', 0):,}",
        f"{p1.get('events_done', 0) - p0.get('events_done', 0):,} events",
    )
    line(
        "shadow diff: decisions actual / candidate",
        f"{made.get('baseline', 0):,} / {made.get('candidate', 0):,}",
        ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "no counts",
    )
    b.summary.add(
        "S. live p99, mix: without / with a shadow",
        f"{ms(p99_a)} / {ms(p99_s)} ({100 * growth:+.1f}%)",
        f"≤ +{100 * share:.1f}% (the shadow's share)",
        verdict(ok) + ("" if conclusive else " (within noise)"),
    )
    b.summary.add(
        "  runs A / S / S / A, p99",
        " / ".join(f"{r.p99 * 1000:.1f}" for r in runs) + " ms",
    )
    b.summary.failed |= not all(r.complete for r in runs)
