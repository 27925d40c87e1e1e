"""This process's memory, for tests that bound what a hostile input may cost (the
service under test runs in the test's process)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


def rss() -> int:
    """Resident set size in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@contextmanager
def rss_peak() -> Iterator[list[int]]:
    """Growth of this process's RSS at its peak while the block runs, sampled on a
    thread every 5 ms; yields a one-item list that holds it when the block ends."""
    out = [0]
    start = rss()
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            out[0] = max(out[0], rss() - start)
            done.wait(0.005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield out
    finally:
        done.set()
        t.join()
        out[0] = max(out[0], rss() - start)
