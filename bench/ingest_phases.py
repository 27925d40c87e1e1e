"""Phases 1 and 2, embedded mode: batch ingest through the full pipeline (events/s) and
single-event ingest, one event per POST, closed loop (requests/s and latency)."""

from __future__ import annotations

import math

from bench import traffic
from bench.http1 import Http1Pool
from bench.session import Bench, statuses, verdict
from bench.stats import header, line, ms, pct

TARGET_BATCH_EPS = 20_000


async def batch_ingest(b: Bench, bodies: list[bytes]) -> None:
    args = b.args
    header(
        f"1. Batch ingest (full pipeline): {args.batch_size:,} events per POST, "
        f"{args.batch_concurrency} in flight, httpx"
    )
    n_total = args.warmup_events + args.events
    sizes = [min(args.batch_size, n_total - i) for i in range(0, n_total, args.batch_size)]
    n_warm = math.ceil(args.warmup_events / args.batch_size)
    warm = await traffic.post_batches(
        b.http, bodies[:n_warm], sizes[:n_warm], concurrency=args.batch_concurrency
    )
    line("warm-up", f"{warm.events:,} events", f"{warm.events / warm.wall:,.0f} events/s")
    await b.measure_start("batch")
    run = await traffic.post_batches(
        b.http,
        bodies[n_warm:],
        sizes[n_warm:],
        concurrency=args.batch_concurrency,
        max_seconds=args.batch_max_seconds,
    )
    m = await b.measure_stop()
    eps = run.accepted / run.wall if run.wall else 0.0
    capped = (
        f"(stopped at the {args.batch_max_seconds:g} s cap)" if run.events < args.events else ""
    )
    line("events sent", f"{run.events:,}", capped)
    line("HTTP responses", f"{run.requests:,}", statuses(run.status))
    line(
        "accepted / duplicates / rejected", f"{run.accepted:,} / {run.duplicates} / {run.rejected}"
    )
    line(
        "every response 202, accepted = sent", "yes" if run.ok else "NO", "; ".join(run.errors[:3])
    )
    line("wall time", f"{run.wall:.2f} s")
    line(
        "full-pipeline throughput",
        f"{eps:,.0f} events/s",
        f"target ≥ {TARGET_BATCH_EPS:,}: {verdict(eps >= TARGET_BATCH_EPS)}",
    )
    if run.wall >= 20:
        first, last = run.rate_between(0, 10), run.rate_between(run.wall - 10, run.wall)
        line("  in the first / last 10 s", f"{first:,.0f} / {last:,.0f}", "events/s")
    line("batch request latency p50", ms(pct(run.latencies, 50)))
    line("batch request latency p99", ms(pct(run.latencies, 99)))
    b.service_lines(m, run.wall)
    b.summary.add(
        "batch ingest, full pipeline",
        f"{eps:,.0f} events/s",
        f"≥ {TARGET_BATCH_EPS:,} events/s",
        verdict(eps >= TARGET_BATCH_EPS),
    )
    b.summary.failed |= not run.ok


async def single_ingest(b: Bench) -> None:
    args = b.args
    header(
        f"2. Single-event ingest: 1 event per POST, {args.single_concurrency} in flight, "
        f"{args.single_seconds:g} s, closed loop"
    )
    await traffic.wait_quiet(b.hooks, quiet=1.0, within=20)  # phase 1's webhooks
    pool = Http1Pool("127.0.0.1", b.port, b.auth)
    await b.measure_start("single")
    try:
        s = await traffic.post_single_events(
            pool, b.factory, concurrency=args.single_concurrency, seconds=args.single_seconds
        )
    finally:
        await pool.close()
    m = await b.measure_stop()
    rps = s.requests / s.wall if s.wall else 0.0
    ok = set(s.status) == {202} and s.accepted == s.requests and not s.errors
    line("requests", f"{s.requests:,}", statuses(s.status))
    line("events accepted", f"{s.accepted:,}", "; ".join(s.errors[:3]))
    line("  connections opened / retried requests", f"{pool.opened} / {pool.retries}")
    line("single-event ingest", f"{rps:,.0f} requests/s")
    line("request latency p50", ms(pct(s.latencies, 50)))
    line("request latency p99", ms(pct(s.latencies, 99)))
    b.service_lines(m, s.wall)
    b.summary.add(f"single-event ingest, {args.single_concurrency} in flight", f"{rps:,.0f} req/s")
    b.summary.add(
        "  request latency p50 / p99",
        f"{pct(s.latencies, 50) * 1000:.1f} / {pct(s.latencies, 99) * 1000:.1f} ms",
    )
    b.summary.failed |= not ok
