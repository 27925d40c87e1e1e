"""Driver-level bulk reads and writes for the hot path.

SQLAlchemy Core costs several microseconds per row in parameter processing and Row
objects; at tens of thousands of events a second that is most of the budget. The
pipeline's set-based statements (load by key, upsert many, insert-or-ignore) therefore
go straight to the driver inside the session's own transaction: aiosqlite with ``?``
placeholders, asyncpg with ``$n`` and arrays. Everything else uses SQLAlchemy.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import cache
from typing import Any

import orjson
from sqlalchemy import Float, Table
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import dialect_of

SQLITE_MAX_VARS = 32_000

INEXACT = "inexact"

_thread = threading.local()


def _exact_real(column: str) -> str:
    """A REAL column as text that parses back to the same double, or ``INEXACT``."""
    text = f"printf('%!.17g', {column})"
    return f"iif({column} IS NULL, NULL, iif(CAST({text} AS REAL) = {column}, {text}, '{INEXACT}'))"


def call_sqlite_directly() -> None:
    """On this thread, run SQLite statements on the calling thread instead of handing each
    one to aiosqlite's worker thread and back. For a thread whose event loop runs nothing
    but pipeline transactions (``LoopThread``): a statement then blocks only that loop,
    SQLite's C code still releases the GIL, and a small batch's dozen statements no longer
    cost two thread hand-offs each (about a third of a routed event's transaction).

    The sqlite3 module also releases the GIL around every step, and while another thread
    is busy each release costs up to a switch interval to win back: so here a read comes
    back as one JSON document (one step) and writes are multi-row statements."""
    _thread.direct = True


class Bulk:
    """Bulk statements on the driver connection underneath an ``AsyncSession``."""

    def __init__(self, driver: Any, dialect: str) -> None:
        self.driver = driver
        self.pg = dialect == "postgresql"
        # The sqlite3 connection under aiosqlite's (opened with check_same_thread=False;
        # the session holds it, so nothing else uses it meanwhile).
        direct = not self.pg and getattr(_thread, "direct", False)
        self.direct: Any = driver._conn if direct else None

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        if self.direct is not None:
            return list(self.direct.execute(sql, params).fetchall())
        return list(await self.driver.execute_fetchall(sql, params))

    async def _execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        if self.direct is not None:
            self.direct.execute(sql, params)
        else:
            await self.driver.execute(sql, params)

    async def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self.direct is not None:
            self.direct.executemany(sql, rows)
        else:
            await self.driver.executemany(sql, rows)

    @classmethod
    async def of(cls, session: AsyncSession) -> Bulk:
        conn = await session.connection()
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        dialect = dialect_of(session)
        if dialect == "postgresql" and not driver.is_in_transaction():
            # SQLAlchemy's asyncpg adapter sends BEGIN lazily, with the first statement
            # *it* executes; a statement sent to the driver before that would commit on
            # its own. One trivial statement through SQLAlchemy opens the transaction.
            await conn.exec_driver_sql("SELECT 1")
        return cls(driver, dialect)

    async def select_in(
        self, table: Table, columns: Sequence[str], key: str, values: Sequence[Any]
    ) -> list[Sequence[Any]]:
        """``SELECT columns FROM table WHERE key IN values`` as plain tuples."""
        if not values:
            return []
        cols = ", ".join(columns)
        if self.pg:
            sql = f"SELECT {cols} FROM {table.name} WHERE {key} = ANY($1::text[])"
            return list(await self.driver.fetch(sql, list(values)))
        out: list[Sequence[Any]] = []
        step = SQLITE_MAX_VARS
        for i in range(0, len(values), step):
            chunk = values[i : i + step]
            where = f"WHERE {key} IN ({','.join('?' * len(chunk))})"
            rows: Sequence[Sequence[Any]] | None = None
            if self.direct is not None:
                # A step per row would be a GIL hand-off per row (see call_sqlite_directly).
                rows = self._select_json(table, columns, where, chunk)
            if rows is None:
                rows = await self._fetchall(f"SELECT {cols} FROM {table.name} {where}", chunk)
            out.extend(rows)
        return out

    def _select_json(
        self, table: Table, columns: Sequence[str], where: str, params: Sequence[Any]
    ) -> list[list[Any]] | None:
        """The rows as one JSON document, built in one step (see ``call_sqlite_directly``).
        JSON prints a REAL with 15 digits, so REAL columns travel as 17-digit text, which
        SQLite checks parses back to the same double; None when any did not (then the
        caller reads the rows the plain way)."""
        reals = [i for i, c in enumerate(columns) if isinstance(table.c[c].type, Float)]
        exprs = ", ".join(_exact_real(c) if i in reals else c for i, c in enumerate(columns))
        sql = f"SELECT json_group_array(json_array({exprs})) FROM {table.name} {where}"
        rows: list[list[Any]] = orjson.loads(self.direct.execute(sql, params).fetchone()[0])
        for r in rows:
            for i in reals:
                v = r[i]
                if v is not None:
                    if v == INEXACT:
                        return None
                    r[i] = float(v)
        return rows

    async def select_all(self, table: Table, columns: Sequence[str]) -> list[Sequence[Any]]:
        """``SELECT columns FROM table`` as plain tuples (small tables only)."""
        sql = f"SELECT {', '.join(columns)} FROM {table.name}"
        if self.pg:
            return list(await self.driver.fetch(sql))
        return await self._fetchall(sql)

    async def select_distinct_in(
        self,
        table: Table,
        columns: Sequence[str],
        match: dict[str, Sequence[Any]],
        equal: dict[str, Any],
    ) -> list[Sequence[Any]]:
        """``SELECT DISTINCT columns FROM table WHERE k IN match[k] … AND k = equal[k] …``
        (each list of values at most a few thousand long)."""
        where: list[str] = []
        params: list[Any] = []
        for k, values in match.items():
            if self.pg:
                params.append(list(values))
                where.append(f"{k} = ANY(${len(params)}::text[])")
            else:
                params.extend(values)
                where.append(f"{k} IN ({','.join('?' * len(values))})")
        for k, value in equal.items():
            params.append(value)
            where.append(f"{k} = ${len(params)}" if self.pg else f"{k} = ?")
        sql = f"SELECT DISTINCT {', '.join(columns)} FROM {table.name} WHERE {' AND '.join(where)}"
        if self.pg:
            return list(await self.driver.fetch(sql, *params))
        return await self._fetchall(sql, params)

    async def upsert(
        self,
        table: Table,
        columns: Sequence[str],
        keys: Sequence[str],
        rows: Sequence[Sequence[Any]],
    ) -> None:
        """``INSERT … ON CONFLICT (keys) DO UPDATE`` every non-key column, for many rows."""
        if not rows:
            return
        if self.pg:
            await self.driver.executemany(
                _upsert_sql(table.name, tuple(columns), tuple(keys)), rows
            )
            return
        await self._values(
            f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES",
            _on_conflict(columns, keys),
            len(columns),
            rows,
        )

    async def insert_rows(self, table: Table, rows: Sequence[dict[str, Any]]) -> None:
        """Plain ``INSERT`` of many rows given as dicts (the first row's keys are the columns)."""
        if not rows:
            return
        columns = tuple(rows[0])
        values = [tuple(r.get(c) for c in columns) for r in rows]
        if self.pg:
            await self.driver.executemany(_insert_sql(table.name, columns), values)
        else:
            prefix = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES"
            await self._values(prefix, "", len(columns), values)

    async def update_rows(self, table: Table, key: str, rows: Sequence[dict[str, Any]]) -> None:
        """``UPDATE table SET … WHERE key = row[key]`` for many rows given as dicts with the
        same keys. SQLite: one ``UPDATE … FROM (VALUES …)`` per chunk (see ``_values``)."""
        if not rows:
            return
        columns = [key, *(c for c in rows[0] if c != key)]
        values = [tuple(r[c] for c in columns) for r in rows]
        if self.pg:
            sets = ", ".join(f"{c} = ${i + 2}" for i, c in enumerate(columns[1:]))
            sql = f"UPDATE {table.name} SET {sets} WHERE {key} = $1"
            await self.driver.executemany(sql, values)
            return
        sets = ", ".join(f"{c} = v.column{i + 2}" for i, c in enumerate(columns[1:]))
        await self._values(
            f"UPDATE {table.name} SET {sets} FROM (VALUES",
            f") AS v WHERE {table.name}.{key} = v.column1",
            len(columns),
            values,
        )

    async def _values(
        self, prefix: str, suffix: str, per_row: int, rows: Sequence[Sequence[Any]]
    ) -> None:
        """SQLite: ``prefix (?, …), (?, …) … suffix`` — as few statements as the variable
        limit allows. Not ``executemany``: the sqlite3 module releases the GIL around every
        step, once per row there, and while another thread is busy each release costs up
        to a switch interval to win back (a 250-row batch took 16 × as long)."""
        step = max(1, SQLITE_MAX_VARS // per_row)
        one = "(" + ",".join("?" * per_row) + ")"
        for i in range(0, len(rows), step):
            chunk = rows[i : i + step]
            sql = f"{prefix} {','.join([one] * len(chunk))} {suffix}"
            await self._execute(sql, [v for row in chunk for v in row])

    async def update_where(
        self, table: Table, column: str, pairs: Sequence[tuple[Any, Any]]
    ) -> None:
        """``UPDATE table SET column = new WHERE column = old`` for each (old, new), in order
        (so a chain a → b, b → c ends at c)."""
        if pairs:
            a, b = ("$1", "$2") if self.pg else ("?", "?")
            sql = f"UPDATE {table.name} SET {column} = {a} WHERE {column} = {b}"
            await self._executemany(sql, [(new, old) for old, new in pairs])

    async def insert_new(
        self,
        table: Table,
        columns: Sequence[str],
        key: str,
        types: Sequence[str],
        rows: Sequence[Sequence[Any]],
    ) -> set[Any]:
        """Insert rows whose ``key`` is new; returns the keys actually inserted."""
        if not rows:
            return set()
        cols = ", ".join(columns)
        if self.pg:
            arrays = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(types))
            sql = (
                f"INSERT INTO {table.name} ({cols}) SELECT * FROM unnest({arrays}) "
                f"ON CONFLICT ({key}) DO NOTHING RETURNING {key}"
            )
            result = await self.driver.fetch(sql, *[list(c) for c in zip(*rows, strict=True)])
            return {r[0] for r in result}
        # Not ``RETURNING``: SQLite hands its rows back a step each (a GIL hand-off each,
        # see ``call_sqlite_directly``). A no-op write first takes the write lock, so no
        # other writer can add one of these keys between the look-up and the insert.
        await self._execute(f"UPDATE {table.name} SET {key} = {key} WHERE 0")
        k = columns.index(key)
        present: set[Any] = set()
        for i in range(0, len(rows), SQLITE_MAX_VARS):
            chunk = [row[k] for row in rows[i : i + SQLITE_MAX_VARS]]
            marks = ",".join("?" * len(chunk))
            found = await self._fetchall(
                f"SELECT json_group_array({key}) FROM {table.name} WHERE {key} IN ({marks})",
                chunk,
            )
            present.update(orjson.loads(found[0][0]))
        new = [row for row in rows if row[k] not in present]
        prefix = f"INSERT INTO {table.name} ({cols}) VALUES"
        await self._values(prefix, f"ON CONFLICT ({key}) DO NOTHING", len(columns), new)
        return {row[k] for row in new}


@cache
def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    marks = ", ".join(f"${i + 1}" for i in range(len(columns)))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"


def _on_conflict(columns: Sequence[str], keys: Sequence[str]) -> str:
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)
    return f"ON CONFLICT ({', '.join(keys)}) " + (
        f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
    )


@cache
def _upsert_sql(table: str, columns: tuple[str, ...], keys: tuple[str, ...]) -> str:
    marks = ", ".join(f"${i + 1}" for i in range(len(columns)))
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) {_on_conflict(columns, keys)}"
    )
