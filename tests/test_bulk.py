"""Driver-level bulk statements on a real SQLite file: the pipeline thread's one-step
forms (JSON reads, multi-row writes) return and store exactly what the plain forms do."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text

from app.db import bulk
from app.db.bulk import Bulk

metadata = MetaData()
things = Table(
    "things",
    metadata,
    Column("key", String(40), primary_key=True),
    Column("x", Float),
    Column("n", Integer),
    Column("s", Text),
)
COLUMNS = ("key", "x", "n", "s")
TRICKY_TEXT = ['a"b\\c', "é☃ \u2028", '{"json": [1, 2]}', "", "0.1", "null"]


def _rows(n: int, seed: int) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    out: list[tuple[Any, ...]] = []
    for i in range(n):
        x = rng.choice(
            [
                rng.random() * 10 ** rng.randint(-8, 15),
                rng.uniform(1.7e9, 1.8e9),  # a timestamp
                None,
                5e-324,
                2.2250738585072014e-308,
                float(rng.randint(-5, 5)),
            ]
        )
        s = rng.choice([*TRICKY_TEXT, None])
        out.append((f"k{i:05d}", x, rng.choice([None, 0, -3, 2**62]), s))
    return out


@pytest.fixture
def direct() -> Iterator[None]:
    """Run as the pipeline thread does (the thread-local is per thread: reset after)."""
    bulk.call_sqlite_directly()
    yield
    bulk._thread.direct = False


@pytest.fixture
async def opened(tmp_path: Path) -> AsyncIterator[tuple[Path, aiosqlite.Connection]]:
    """A fresh database file with the table, and an aiosqlite connection to it."""
    path = tmp_path / "b.db"
    conn = await aiosqlite.connect(path, check_same_thread=False)
    await conn.execute("CREATE TABLE things (key TEXT PRIMARY KEY, x REAL, n INTEGER, s TEXT)")
    yield path, conn
    await conn.close()


def _plain(path: Path) -> dict[str, tuple[Any, ...]]:
    with sqlite3.connect(path) as c:
        return {r[0]: tuple(r) for r in c.execute("SELECT key, x, n, s FROM things")}


async def test_one_step_reads_and_writes_match_the_plain_forms(
    opened: tuple[Path, aiosqlite.Connection], direct: None
) -> None:
    path, conn = opened
    b = Bulk(conn, "sqlite")
    assert b.direct is not None  # the one-step forms are under test
    rows = _rows(3000, seed=1)
    await b.upsert(things, COLUMNS, ("key",), rows)
    await conn.commit()
    stored = _plain(path)
    assert stored == {r[0]: r for r in rows}  # multi-row VALUES wrote every value exactly
    keys = [r[0] for r in rows[::3]] + ["missing"]
    got = await b.select_in(things, COLUMNS, "key", keys)
    assert sorted(tuple(r) for r in got) == sorted(stored[k] for k in keys if k in stored)
    # Every float came back as the same double, not the 15 digits JSON prints.
    assert all(isinstance(r[1], float) or r[1] is None for r in got), (
        "REAL columns come back as floats"
    )
    # An upsert changes what it names and leaves the rest.
    changed = [(r[0], 0.1, 7, "changed") for r in rows[:10]]
    await b.upsert(things, COLUMNS, ("key",), changed)
    await b.update_rows(things, "key", [{"key": rows[10][0], "x": 1.5, "s": None}])
    await conn.commit()
    stored = _plain(path)
    assert all(stored[r[0]] == r for r in changed)
    assert stored[rows[10][0]] == (rows[10][0], 1.5, rows[10][2], None)
    assert stored[rows[11][0]] == rows[11]


async def test_a_real_that_does_not_survive_17_digits_falls_back_to_the_plain_read(
    opened: tuple[Path, aiosqlite.Connection], direct: None
) -> None:
    _, conn = opened
    b = Bulk(conn, "sqlite")
    biggest = 1.7976931348623157e308  # SQLite prints it as ...156e+308
    await b.insert_rows(things, [{"key": "max", "x": biggest, "n": 1, "s": "x"}])
    where = "WHERE key IN (?)"
    assert b._select_json(things, COLUMNS, where, ["max"]) is None
    [row] = await b.select_in(things, COLUMNS, "key", ["max"])
    assert tuple(row) == ("max", biggest, 1, "x")


async def test_without_the_pipeline_thread_the_driver_worker_is_used(
    opened: tuple[Path, aiosqlite.Connection],
) -> None:
    _, conn = opened
    b = Bulk(conn, "sqlite")
    assert b.direct is None
    rows = _rows(50, seed=2)
    await b.upsert(things, COLUMNS, ("key",), rows)
    got = await b.select_in(things, COLUMNS, "key", [r[0] for r in rows])
    assert sorted(tuple(r) for r in got) == sorted(rows)


async def test_insert_new_reports_only_the_keys_it_inserted(
    opened: tuple[Path, aiosqlite.Connection], direct: None
) -> None:
    path, conn = opened
    b = Bulk(conn, "sqlite")
    first = await b.insert_new(things, COLUMNS, "key", (), [("a", 1.0, 1, "x"), ("b", 2.0, 2, "y")])
    assert first == {"a", "b"}
    again = await b.insert_new(
        things, COLUMNS, "key", (), [("b", 9.0, 9, "changed"), ("c", 3.0, 3, "z")]
    )
    assert again == {"c"}
    await conn.commit()
    stored = _plain(path)
    assert stored["b"] == ("b", 2.0, 2, "y")  # an existing row is left as it was
    assert set(stored) == {"a", "b", "c"}


async def test_insert_new_holds_the_write_lock_from_its_first_statement(
    opened: tuple[Path, aiosqlite.Connection], direct: None
) -> None:
    """The look-up runs under the write lock: even when every key exists already (nothing
    to insert), no other connection can write until the transaction ends."""
    path, conn = opened
    b = Bulk(conn, "sqlite")
    await b.insert_new(things, COLUMNS, "key", (), [("a", 1.0, 1, "x")])
    await conn.commit()
    assert await b.insert_new(things, COLUMNS, "key", (), [("a", 1.0, 1, "x")]) == set()
    other = sqlite3.connect(path, timeout=0.05)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        other.execute("INSERT INTO things (key) VALUES ('z')")
    await conn.rollback()
    other.execute("INSERT INTO things (key) VALUES ('z')")  # free once it ends
    other.commit()
    other.close()
