"""Phases 3 and 4, embedded mode: event → webhook latency, open loop. Phase 3 routes every
event (each makes a new lead hot), after a short 50 events/s baseline that shows an idle
service's floor; phase 4 is a realistic mix where 1 in ``--mix-every`` events routes.

``offer`` is the open-loop measurement itself; the Kafka phases use it too."""

from __future__ import annotations

import math

from bench import kafka_tools, traffic
from bench.http1 import Http1Pool
from bench.session import Bench, statuses, verdict
from bench.stats import header, histogram_quantile, line, ms, pct

TARGET_WEBHOOK_P99 = 0.050
BASELINE_RATE = 50.0


def latency_figures(lat: traffic.LatencyRun) -> tuple[dict[int, float], float, str]:
    p = {q: pct(lat.latencies, q) for q in (50, 95, 99)}
    worst = max(lat.latencies, default=math.nan)
    text = f"p50 {p[50] * 1000:.1f}, p95 {p[95] * 1000:.1f}, p99 {p[99] * 1000:.1f}, "
    return p, worst, text + f"max {worst * 1000:.1f} ms"


async def every_event_routed(b: Bench) -> None:
    args = b.args
    header("3. Event → webhook latency, open loop, every event routed (a new hot lead each)")
    n_hooks, settled = await traffic.wait_quiet(b.hooks, quiet=1.5, within=30)
    line("webhooks of phases 1-2 received", f"{n_hooks:,}", "" if settled else "(NOT settled)")
    await b.ensure_hot_policy()
    if args.baseline_seconds > 0:
        await offer(
            b,
            BASELINE_RATE,
            args.baseline_seconds,
            "baseline",
            b.strict_events(),
            kind="idle baseline",
            label=f"event→webhook @ {BASELINE_RATE:,g}/s, every event routed (baseline)",
        )
    await offer(
        b,
        args.rate,
        args.latency_seconds,
        "webhook",
        b.strict_events(),
        kind="target rate",
        label=f"event→webhook @ {args.rate:,g}/s, every event routed",
        target=TARGET_WEBHOOK_P99,
    )


async def realistic_mix(b: Bench) -> None:
    args = b.args
    if args.mix_seconds <= 0:
        return
    header(
        f"4. Event → webhook latency, open loop, realistic mix: 1 in {args.mix_every} "
        "events makes a new lead hot"
    )
    line("the other events", "", "ordinary pool traffic (no demo requests), not timed")
    await b.ensure_hot_policy()
    await offer(
        b,
        args.rate,
        args.mix_seconds,
        "mix",
        b.mixed_events(),
        kind=f"target rate, 1 in {args.mix_every} routed",
        label=f"event→webhook @ {args.rate:,g}/s, 1 in {args.mix_every} routed",
        target=TARGET_WEBHOOK_P99,
    )


async def offer(
    b: Bench,
    rate: float,
    seconds: float,
    name: str,
    make: traffic.MakeEvent,
    *,
    kind: str,
    label: str,
    target: float | None = None,
    drain: float = 60.0,
    topic: kafka_tools.TopicSender | None = None,
) -> traffic.LatencyRun:
    """Offer events at ``rate``: single-event POSTs, or onto the topic with ``topic``."""
    print(f"\n  -- {rate:,g} events/s for {seconds:g} s ({kind})", flush=True)
    await traffic.wait_quiet(b.hooks, quiet=0.5, within=30)
    (await b.hooks.post("/reset")).raise_for_status()
    sender: traffic.Sender = topic or Http1Pool("127.0.0.1", b.port, b.auth)
    pool = sender if isinstance(sender, Http1Pool) else None  # ours: report and close it
    await b.measure_start(name)
    try:
        lat = await traffic.offer_events(
            sender, b.hooks, make, rate=rate, seconds=seconds, drain_timeout=drain
        )
    finally:
        if pool is not None:
            await pool.close()
    m = await b.measure_stop()
    p, worst, figures = latency_figures(lat)
    routed = lat.routed_offered
    line(
        "events offered",
        f"{lat.offered:,}",
        f"at {lat.offered_rate:,.1f} events/s"
        + (f"; {routed:,} of them make a new lead hot" if routed != lat.offered else ""),
    )
    if lat.skipped:
        line("  NOT sent: over 6,000 requests in flight", f"{lat.skipped:,}")
    line(
        "  sender lag behind schedule p99 / max",
        ms(pct(lat.schedule_lag, 99)),
        f"/ {ms(max(lat.schedule_lag, default=math.nan))}",
    )
    if pool is not None:
        line("HTTP responses", f"{sum(lat.status.values()):,}", statuses(lat.status))
    if lat.unanswered:
        line("  NO response by the end of the drain", f"{lat.unanswered:,}")
    line("events accepted", f"{lat.accepted:,}", "; ".join(lat.errors[:3]))
    if pool is not None:
        line("  connections opened / retried requests", f"{pool.opened} / {pool.retries}")
    what = "request" if pool is not None else "produce (until the broker's ack)"
    line(f"{what} latency p50", ms(pct(lat.request_latencies, 50)))
    line(f"{what} latency p99", ms(pct(lat.request_latencies, 99)))
    line(
        "lead.routed webhooks received / expected",
        f"{lat.received:,} / {lat.expected:,}",
        f"missing {lat.missing}, duplicates {lat.duplicates}"
        + ("" if lat.settled else ", receiver NOT settled"),
    )
    if lat.other_webhooks:
        others = ", ".join(f"{k} {v}" for k, v in lat.other_webhooks.items())
        line("other webhooks meanwhile (not timed)", "", others)
    line("timed webhooks/s, first send → last one", f"{lat.webhooks_per_second:,.0f}")
    ok = p[99] <= target if target is not None else True
    line("event → webhook p50", ms(p[50]))
    line("event → webhook p95", ms(p[95]))
    line(
        "event → webhook p99",
        ms(p[99]),
        f"target ≤ {target * 1000:.0f} ms: {verdict(ok)}" if target is not None else "",
    )
    line("event → webhook max", ms(worst))
    line("  p99 client send → service receipt", ms(pct(lat.to_service, 99)), "(ms precision)")
    line("  p99 service receipt → receiver", ms(pct(lat.in_service, 99)))
    svc_p99 = histogram_quantile(m, "intent_event_to_webhook_seconds", 0.99)
    line(
        "  service's event_to_webhook p99 bucket",
        "beyond the last bucket" if math.isinf(svc_p99) else f"≤ {ms(svc_p99)}",
        f"({m.get('intent_event_to_webhook_seconds_count', 0):,.0f} observations, all webhooks)",
    )
    b.service_lines(m, b.cpu.wall)
    if target is not None:
        b.summary.add(label, figures, f"p99 ≤ {target * 1000:.0f} ms", verdict(ok))
    else:
        b.summary.add(label, figures)
    b.summary.add(
        "  events sent / accepted; webhooks received / expected",
        f"{lat.offered:,} / {lat.accepted:,}; {lat.received:,} / {lat.routed_offered:,}",
        "all, once",
        "OK" if lat.complete else "INCOMPLETE",
    )
    b.summary.failed |= not lat.complete
    return lat
