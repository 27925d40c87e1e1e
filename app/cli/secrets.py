"""``intent-router secrets key`` (a new Fernet key for INTENT_SECRET_KEY) and
``intent-router secrets rotate`` (every stored secret re-encrypted with the first key)."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from app.cli.support import describe_db, fail, load_settings, on_db
from app.config import Settings

# As the other command groups (app.cli): plain help, no locals in tracebacks.
secrets_cli = typer.Typer(
    help="Webhook and source secrets at rest.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


@secrets_cli.command("key")
def secret_key() -> None:
    """Print a new Fernet key for INTENT_SECRET_KEY (to rotate, put it first:
    INTENT_SECRET_KEY=new,old, then run `intent-router secrets rotate`)."""
    from app.crypto import generate_key

    typer.echo(generate_key())


@secrets_cli.command("rotate")
def secrets_rotate(
    as_json: Annotated[bool, typer.Option("--json", help="the counts as JSON")] = False,
) -> None:
    """Re-encrypt every stored secret with the first key of INTENT_SECRET_KEY (each must
    open with one of its keys); legacy plaintext secrets are encrypted too. Afterwards
    the older keys can be dropped from INTENT_SECRET_KEY."""
    import orjson

    from app.crypto import SecretKeyError, load_box
    from app.db import make_sessionmaker
    from app.db.migrate import upgrade
    from app.runtime.secrets import Sealed, seal_secrets

    settings = load_settings(as_json)
    try:
        box = load_box(settings)
    except SecretKeyError as exc:
        fail(str(exc), code="secret_key", exit_code=2, as_json=as_json)

    async def work(engine: AsyncEngine) -> Sealed:
        await upgrade(engine)
        return await seal_secrets(make_sessionmaker(engine), box, rotate=True)

    try:
        done = on_db(settings, work, as_json)
    except SecretKeyError as exc:
        fail(str(exc), code="secret_key", exit_code=2, as_json=as_json)
    if as_json:
        counts = {"reencrypted": done.reencrypted, "encrypted": done.encrypted}
        typer.echo(orjson.dumps(counts).decode())
    else:
        typer.echo(
            f"re-encrypted {done.reencrypted} secret(s) with the first key"
            + (f", encrypted {done.encrypted} kept in plain text" if done.encrypted else "")
            + f" in {describe_db(settings)}"
        )


def check_secret_key(settings: Settings) -> None:
    """For ``serve``, before anything listens: no INTENT_SECRET_KEY with PostgreSQL, or one
    that cannot open a stored secret, is one line and exit 2 (the service's own start-up
    refuses too, but inside uvicorn's lifespan, as a traceback). A database not reachable
    or not migrated yet is left to the service's start-up."""
    import asyncio

    from sqlalchemy.exc import SQLAlchemyError

    from app.crypto import SecretKeyError, load_box
    from app.db import make_engine, make_sessionmaker
    from app.runtime.secrets import seal_secrets

    async def check() -> None:
        engine = make_engine(settings)
        try:
            await seal_secrets(make_sessionmaker(engine), box)
        except (OSError, SQLAlchemyError):
            pass
        finally:
            await engine.dispose()

    try:
        box = load_box(settings)
        asyncio.run(check())
    except SecretKeyError as exc:
        fail(str(exc), code="secret_key", exit_code=2)
