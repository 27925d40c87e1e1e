"""``python -m bench.inprocess``: where a pipeline batch's time goes, in-process.

The service's own pipeline (``Runtime.process``: one transaction per batch on the
pipeline thread, SQLite under a temporary directory) on ``python -m bench``'s workload,
without HTTP and without the dispatcher, so nothing else competes for the GIL. Each
batch's wall time is split into the database statements (reads and writes, at the
driver), the commit, and the rest (Python: identity, scoring, routing, building rows).

The writes and the commit are the floor of this design: one writer stores every event
and the state it changes, durably, before it answers. Their sum per 1,000 events bounds
the events/s any amount of work on the Python side could reach on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSessionTransaction

from app.config import Settings
from app.db.bulk import Bulk
from app.ingest.native import validate_batch
from app.matching.abm import upsert_accounts, validate_rows
from app.runtime.service import Runtime
from bench.workload import EventFactory, make_accounts, make_leads

READS = ("select_in", "select_all", "select_distinct_in")
WRITES = ("upsert", "insert_new", "insert_rows", "update_rows", "update_where")


class Meter:
    """Seconds per category, for the batch being timed."""

    def __init__(self) -> None:
        self.spent: defaultdict[str, float] = defaultdict(float)

    def wrap(self, owner: Any, name: str, category: str) -> None:
        original: Callable[..., Awaitable[Any]] = getattr(owner, name)
        spent = self.spent

        async def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                spent[category] += time.perf_counter() - t0

        setattr(owner, name, timed)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=1_000)
    p.add_argument("--batches", type=int, default=40, help="timed batches")
    p.add_argument("--warmup", type=int, default=20, help="batches applied first, untimed")
    p.add_argument("--accounts", type=int, default=2_000)
    p.add_argument("--leads", type=int, default=20_000)
    return p.parse_args()


async def run(args: argparse.Namespace, workdir: str) -> None:
    rng = random.Random(7)
    accounts = make_accounts(args.accounts, rng)
    factory = EventFactory(make_leads(args.leads, accounts, rng), rng, "inproc")
    n = args.warmup + args.batches
    bodies = factory.batches(n * args.batch_size, args.batch_size, time.time())

    rt = Runtime(Settings(database_url=f"sqlite+aiosqlite:///{workdir}/inprocess.db"))
    await rt.start(dispatcher=False)
    try:
        async with rt.sessionmaker() as session, session.begin():
            await upsert_accounts(session, validate_rows([a.abm_row() for a in accounts]), 0.0)
        meter = Meter()
        for name in READS:
            meter.wrap(Bulk, name, "reads")
        for name in WRITES:
            meter.wrap(Bulk, name, "writes")
        meter.wrap(AsyncSessionTransaction, "__aexit__", "commit")  # the session.begin() block
        gc.collect()
        gc.freeze()  # as the service does at start
        per_batch: list[dict[str, float]] = []
        policy = rt.policy
        assert policy is not None, "the runtime loads the active policy when it opens"
        for i, body in enumerate(bodies):
            events, _ = validate_batch(orjson.loads(body)["events"], policy, rt.clock.now())
            meter.spent.clear()
            t0 = time.perf_counter()
            await rt.process(events)
            wall = time.perf_counter() - t0
            if i >= args.warmup:
                per_batch.append({"wall": wall, **meter.spent})
    finally:
        await rt.stop()

    def median_ms(key: str) -> float:
        return 1000 * statistics.median(b.get(key, 0.0) for b in per_batch)

    wall, reads, writes, commit = (median_ms(k) for k in ("wall", "reads", "writes", "commit"))
    size = args.batch_size
    print(f"pipeline in-process, {args.batches} batches of {size:,} events (median per batch)")
    rows = [
        ("whole batch (Runtime.process)", wall),
        ("  reads (identities, leads, accounts, ...)", reads),
        ("  writes (events, leads, accounts, ...)", writes),
        ("  commit (WAL write and sync)", commit),
        ("  the rest: Python (identity, scoring, routing, rows)", wall - reads - writes - commit),
    ]
    for label, value in rows:
        print(f"  {label:56s} {value:8.1f} ms   {1000 * value / size:6.1f} µs/event")
    print(f"  {'events/s, this pipeline alone':56s} {1000 * size / wall:8,.0f}")
    floor = 1000 * size / (writes + commit)
    print(f"  {'events/s if only the writes and commit cost anything':56s} {floor:8,.0f}")


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="intent-inprocess-") as workdir:
        asyncio.run(run(args, workdir))


if __name__ == "__main__":
    main()
