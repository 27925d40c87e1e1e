"""The async engine (SQLite's pragmas), the session factory and dialect-neutral upsert."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import Table, event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.config import Settings
from app.db.wal import BACKSTOP_PAGES


def make_engine(settings: Settings) -> AsyncEngine:
    """Create the engine; SQLite gets WAL, a busy timeout and the configured durability."""
    if settings.is_sqlite:
        path = settings.sqlite_path()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        pool = {"pool_size": 5, "max_overflow": 5} if path is not None else {}
        # check_same_thread=False: the pipeline's thread runs its bulk statements on the
        # connection itself (app.db.bulk.call_sqlite_directly), not only aiosqlite's worker.
        engine = create_async_engine(
            settings.database_url,
            connect_args={"timeout": 30, "check_same_thread": False},
            **pool,
        )
        sync_mode = settings.sqlite_synchronous

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={sync_mode}")
            cur.execute("PRAGMA busy_timeout=30000")
            # A bigger page cache than the 2 MB default for the lead and account tables.
            cur.execute("PRAGMA cache_size=-131072")
            cur.execute("PRAGMA temp_store=MEMORY")
            cur.execute("PRAGMA foreign_keys=ON")
            # The service checkpoints on a thread of its own (app.db.wal); this is the backstop.
            cur.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
            cur.close()

        return engine
    return create_async_engine(
        settings.database_url, pool_size=10, max_overflow=10, pool_pre_ping=True
    )


T = TypeVar("T")
# A transaction to run: given the sessionmaker to open it with (``LoopThread.write``).
Transaction = Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]]


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def dialect_of(session: AsyncSession) -> str:
    bind = session.bind
    assert bind is not None
    return bind.dialect.name


def upsert(
    session: AsyncSession,
    table: Table,
    rows: list[dict[str, Any]],
    keys: list[str],
    update_cols: list[str] | None = None,
) -> Any:
    """``INSERT … ON CONFLICT (keys) DO UPDATE`` for SQLite and PostgreSQL alike.

    Updates ``update_cols`` (default: every non-key column given). Returns the awaitable
    execute; rows must all carry the same columns.
    """
    if dialect_of(session) == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt: Any = pg_insert(table)
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(table)
    cols = update_cols if update_cols is not None else [c for c in rows[0] if c not in keys]
    if cols:
        stmt = stmt.on_conflict_do_update(
            index_elements=keys, set_={c: stmt.excluded[c] for c in cols}
        )
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=keys)
    return session.execute(stmt, rows)
