"""``python -m bench.validation``: CPU cost of HTTP event validation, in µs per event.

Times ``app.ingest.native.validate_batch`` (pydantic validation, ``to_event`` and the
policy checks) on 1,000-event batches as ``python -m bench`` sends them
(``EventFactory.batches``, decoded with orjson), under the shipped default policy. No
database, no HTTP: just the CPU the ingest route spends per event before the pipeline.

Two mixes: every event valid (the common case), and 1 in 100 events invalid (a bad
email), which makes each batch take the per-event path for its rejections. The figure
is CPU time (``time.process_time``), the median over the runs, so that another process
on the machine moves it less than it would wall-clock time; the collector is tuned as
the service tunes it (``create_app``: the workload frozen, young collections less often).
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
from typing import Any

import orjson

from app.ingest.native import validate_batch
from app.policy.defaults import default_policy_raw
from app.policy.schema import CompiledPolicy
from app.policy.store import validate_or_raise
from bench.workload import EventFactory, make_accounts, make_leads

BATCH = 1000


def workload(n_batches: int, bad_every: int | None) -> list[list[dict[str, Any]]]:
    """Decoded ``{"events": [...]}`` bodies; every ``bad_every``-th event has a bad email."""
    rng = random.Random(7)
    accounts = make_accounts(2000, rng)
    factory = EventFactory(make_leads(20_000, accounts, rng), rng, "val")
    bodies = factory.batches(BATCH * n_batches, BATCH, time.time())
    batches = [orjson.loads(b)["events"] for b in bodies]
    if bad_every:
        for events in batches:
            for ev in events[::bad_every]:
                ev["lead"]["email"] = "not-an-email"
    return batches


def measure(batches: list[list[dict[str, Any]]], runs: int) -> tuple[float, list[float]]:
    """µs of CPU per event: the median over ``runs`` passes, and every pass's figure."""
    policy = CompiledPolicy(1, validate_or_raise(default_policy_raw()))
    validate_batch(batches[0], policy, time.time())  # warm up: caches, lazy imports
    gc.collect()
    gc.freeze()
    gc.set_threshold(7000, 20, 20)
    per_event = []
    for _ in range(runs):
        now = time.time()
        t0 = time.process_time()
        for events in batches:
            validate_batch(events, policy, now)
        per_event.append((time.process_time() - t0) / (len(batches) * BATCH) * 1e6)
    return statistics.median(per_event), per_event


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20, help="1,000-event batches per run")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    for name, bad_every in (("all valid", None), ("1% invalid", 100)):
        median, runs = measure(workload(args.batches, bad_every), args.runs)
        spread = ", ".join(f"{r:.1f}" for r in runs)
        print(f"validate+to_event, {name:10s}: {median:5.1f} µs/event  (runs: {spread})")


if __name__ == "__main__":
    main()
