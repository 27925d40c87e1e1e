"""SQLite's write-ahead log copied back into the database file off the commit path.

Left to itself SQLite checkpoints inside the commit that takes the log past 1,000 pages:
that commit copies every page back and syncs the database file, 35-45 ms instead of
4 ms, and every event waiting on it waits too. The service instead turns the automatic
checkpoint down to a backstop (``BACKSTOP_PAGES``, for a process that runs without this
thread) and checkpoints on a thread of its own every ``interval`` seconds. A ``PASSIVE``
checkpoint takes no lock a writer needs, so commits carry on meanwhile, and a page
written many times within the interval is copied back once.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

from app.observability import metrics

log = logging.getLogger(__name__)

# The automatic checkpoint every connection keeps: 64 MiB of 4 KiB pages.
BACKSTOP_PAGES = 16_384
INTERVAL_SECONDS = 1.0


class Checkpointer:
    def __init__(
        self, path: Path, *, synchronous: str = "FULL", interval: float = INTERVAL_SECONDS
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish the checkpoint in hand (the log is left for the next start otherwise)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            # The checkpoint syncs the log before and the database after, as this says.
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            while not self._stop.wait(self.interval):
                self.checkpoint(conn)
        finally:
            conn.close()

    def checkpoint(self, conn: sqlite3.Connection) -> tuple[int, int]:
        """One passive checkpoint: (pages in the log, pages copied back), or (-1, -1)
        when the database is not in WAL mode; failures are logged, never raised."""
        try:
            _busy, in_log, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            log.warning("WAL checkpoint failed: %s", exc)
            metrics.count_db_error("checkpoint", exc)
            return -1, -1
        metrics.SQLITE_WAL_PAGES.set(max(in_log, 0))
        return in_log, copied
