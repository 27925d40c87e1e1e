"""intent-router apikey list | revoke (``apikey create`` is in ``app.cli``).

A key revoked here is refused by every running replica within a second (their key
caches live no longer).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
import typer
from sqlalchemy.ext.asyncio import AsyncSession

from app.cli.support import db, fail
from app.clock import iso

_COLUMNS = ("id", "name", "prefix", "scopes", "created_at", "last_used_at", "expires_at")


def _state(row: dict[str, Any], now: float) -> str:
    if row["revoked_at"] is not None:
        return "revoked"
    if row["expires_at"] is not None and row["expires_at"] <= now:
        return "expired"
    return "active"


def apikey_list(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document on stdout")] = False,
) -> None:
    """List the keys (never the keys themselves): id, name, prefix, scopes, dates, state."""
    from app.auth import key_rows

    async def run(session: AsyncSession) -> list[dict[str, Any]]:
        return await key_rows(session)

    rows, now = db(run, as_json=as_json), time.time()
    if as_json:
        keys = [
            {
                **row,
                "scopes": row["scopes"].split(","),
                "state": _state(row, now),
                **{f: iso(row[f]) for f in (*_COLUMNS[4:], "revoked_at")},
            }
            for row in rows
        ]
        typer.echo(orjson.dumps({"keys": keys}).decode())
        return
    table: list[tuple[str, ...]] = [(*_COLUMNS, "state")]
    for row in rows:
        dates = tuple(iso(row[f]) or "-" for f in _COLUMNS[4:])
        table.append((*(str(row[f]) for f in _COLUMNS[:4]), *dates, _state(row, now)))
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def apikey_revoke(
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="the key's id (apikey list)")],
) -> None:
    """Revoke a key: every replica refuses it within a second. Revoking again is a no-op."""
    from app.auth import revoke_key
    from app.errors import AppError

    async def run(session: AsyncSession) -> dict[str, Any]:
        return await revoke_key(session, key_id, now=time.time())

    try:
        row = db(run)
    except AppError as exc:
        fail(exc.message, code=exc.code)
    typer.echo(f"key {row['id']} ({row['name']!r}) revoked at {iso(row['revoked_at'])}")


def register(apikey_cli: typer.Typer) -> None:
    """Add ``list`` and ``revoke`` to the ``apikey`` commands."""
    apikey_cli.command("list")(apikey_list)
    apikey_cli.command("revoke")(apikey_revoke)
