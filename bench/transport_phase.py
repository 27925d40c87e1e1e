"""Phase T: CPU µs per webhook of the dispatcher's HTTP transport (``bench.transport_cpu``:
its own receiver process, only its own CPU counted). It runs while no service does, so
that the service's threads do not share the cores with what it measures."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re

from bench import transport_cpu
from bench.session import Bench
from bench.stats import header

MEDIAN_RE = re.compile(r"median ([0-9.]+) µs")
CEILING_RE = re.compile(r"ceiling ([0-9.]+) µs")


def _measure() -> tuple[int, str]:
    """``transport_cpu.main`` with its defaults (it runs an event loop of its own, so it is
    called on a thread of its own); its exit code and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = transport_cpu.main([])
    return code, out.getvalue()


async def run(b: Bench) -> None:
    header("T. Transport CPU per webhook: the dispatcher's HTTP transport, no service running")
    try:
        code, printed = await asyncio.to_thread(_measure)
    except SystemExit as exc:  # it gives up with a message (its receiver did not start)
        note = f"transport CPU phase failed: {exc}"
        print(f"  {note}", flush=True)
        b.summary.notes.append(note)
        b.summary.failed = True
        return
    for text in printed.splitlines():
        print(f"  {text}", flush=True)
    median, ceiling = MEDIAN_RE.search(printed), CEILING_RE.search(printed)
    b.summary.add(
        "transport CPU per webhook (median of the rounds)",
        f"{median.group(1)} µs" if median else "see phase T",
        f"≤ {ceiling.group(1)} µs" if ceiling else "",
        ("MET" if code == 0 else "MISSED") if ceiling else "",
    )
