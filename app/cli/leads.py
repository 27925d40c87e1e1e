"""intent-router lead erase | export: a person's data from the command line.

Both name the person by any identifier (email, ``anon:<id>``, ``user:<id>`` or the lead
id) and work on the database directly, as ``DELETE /v1/leads/{id}`` and
``GET /v1/leads/{id}/export`` do. A suppression made here reaches running services
within their reload interval (10 s).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, NoReturn

import orjson
import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from app.cli.support import fail, load_settings, on_db
from app.clock import Clock

# Added to the root command by app.cli (this module imports nothing of it: no circle).
lead_cli = typer.Typer(
    help="A person's data: erasure and export.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)

LeadArg = Annotated[
    str,
    typer.Argument(metavar="ID", help="email, anon:<anonymous_id>, user:<user_id> or lead id"),
]


async def _privacy(engine: AsyncEngine, *, hashing: bool) -> Any:
    from app.config import Settings
    from app.crypto import SecretKeyError, load_box
    from app.db import make_sessionmaker
    from app.privacy import Privacy
    from app.runtime.secrets import load_hash_key

    settings: Settings = load_settings()
    hasher = None
    if hashing:
        try:
            box = load_box(settings)
            await load_hash_key(make_sessionmaker(engine), box)  # the service's own
        except SecretKeyError as exc:
            fail(str(exc), code="secret_key", exit_code=2)
        hasher = box.keyed_hash

    def no_hashing(value: str) -> str:
        raise AssertionError("suppression hashes need the secret key")

    return Privacy(make_sessionmaker(engine), Clock(), settings, hasher=hasher or no_hashing)


def _not_found(identifier: str) -> NoReturn:
    # Said once, to the person who typed it; nothing is logged.
    fail(f"no lead has the identifier {identifier!r}", code="lead_not_found")


@lead_cli.command("erase")
def lead_erase(
    identifier: LeadArg,
    suppress: Annotated[
        bool, typer.Option("--suppress", help="drop later events for this person's identifiers")
    ] = False,
) -> None:
    """Erase a person; print what was erased per table (JSON)."""
    from app.db.migrate import upgrade

    async def work(engine: AsyncEngine) -> Any:
        await upgrade(engine)
        privacy = await _privacy(engine, hashing=suppress)
        return await privacy.erase(identifier, suppress=suppress)

    done = on_db(load_settings(), work, as_json=False)
    if done is None:
        _not_found(identifier)
    typer.echo(orjson.dumps({"erased": done.erased, "suppressed": suppress}).decode())


@lead_cli.command("export")
def lead_export(identifier: LeadArg) -> None:
    """Print everything held about a person as one JSON document."""
    from app.db.migrate import upgrade

    async def work(engine: AsyncEngine) -> Any:
        await upgrade(engine)
        return await (await _privacy(engine, hashing=False)).export(identifier)

    started = time.monotonic()
    doc = on_db(load_settings(), work, as_json=False)
    if doc is None:
        _not_found(identifier)
    typer.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    typer.echo(
        f"{len(doc['events'])} events, {len(doc['decisions'])} decisions "
        f"({time.monotonic() - started:.1f} s)",
        err=True,
    )
