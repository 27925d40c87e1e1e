"""The command line's plumbing: one-line failures, settings and database errors as
messages, the database each command works on, progress bars."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import orjson
import typer
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.config import Settings

T = TypeVar("T")


def fail(
    message: str, *, code: str = "error", exit_code: int = 1, as_json: bool = False
) -> NoReturn:
    """One line on stderr (JSON ``{"code", "message"}`` with ``--json``), then exit."""
    if as_json:
        typer.echo(orjson.dumps({"code": code, "message": message}).decode(), err=True)
    else:
        typer.echo(f"intent-router: {message}", err=True)
    raise typer.Exit(exit_code)


def load_settings(as_json: bool = False) -> Settings:
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:  # each error names its variable (and .env for a typo)
        reasons = []
        for err in exc.errors():
            name = "INTENT_" + "__".join(str(part) for part in err["loc"]).upper()
            if err["type"] == "extra_forbidden":
                reasons.append(f"{name} (in .env) is not a setting")
            else:
                msg = err["msg"].removeprefix("Value error, ")
                reasons.append(msg if msg.startswith(name) else f"{name}: {msg}")
        fail(
            "configuration error: " + "; ".join(reasons),
            code="config",
            exit_code=2,
            as_json=as_json,
        )


def describe_db(settings: Settings) -> str:
    """The database as people name it: the SQLite file, or the DSN without its password."""
    from sqlalchemy.engine import make_url

    path = settings.sqlite_path()
    if settings.is_sqlite:
        return f"SQLite {path}" if path else "SQLite in memory"
    return make_url(settings.database_url).render_as_string(hide_password=True)


def on_db(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]], as_json: bool) -> T:
    """Run ``work(engine)``; an unreachable or refusing database is one line, no traceback."""
    from sqlalchemy.exc import SQLAlchemyError

    from app.db import make_engine

    async def run() -> T:
        engine = make_engine(settings)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except (OSError, SQLAlchemyError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        fail(f"database {describe_db(settings)}: {reason}", code="database", as_json=as_json)


def db(fn: Callable[[AsyncSession], Awaitable[T]], *, as_json: bool = False) -> T:
    """Migrate, then run ``fn(session)`` in one transaction."""
    from app.db import make_sessionmaker
    from app.db.migrate import upgrade

    async def work(engine: AsyncEngine) -> T:
        await upgrade(engine)
        async with make_sessionmaker(engine)() as session, session.begin():
            return await fn(session)

    return on_db(load_settings(as_json), work, as_json)


async def revision(engine: AsyncEngine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    def current(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(current)


@contextmanager
def progress(total: float, description: str) -> Iterator[Callable[..., None]]:
    """A progress bar on stderr, drawn only on a terminal; yields ``show(completed,
    description=None)``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(
        *columns,
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task(description, total=total)

        def show(completed: float, description: str | None = None) -> None:
            bar.update(
                task, completed=completed, description=description or bar.tasks[0].description
            )

        yield show


def read(path: Path) -> str:
    try:
        return path.read_text("utf-8-sig")
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}", code="file", exit_code=2)


def load_policy_file(path: Path) -> tuple[str, Any]:
    """The file's text and document, held to the bounds of an upload (app.policy.bounded):
    1 MiB, YAML aliases, nesting."""
    from app.errors import AppError, MalformedBody
    from app.policy.bounded import MAX_DOCUMENT_BYTES, load_json, load_yaml

    text = read(path)
    if len(text.encode()) > MAX_DOCUMENT_BYTES:
        fail(f"{path}: over {MAX_DOCUMENT_BYTES} bytes", code="document_too_large")
    try:
        return text, (load_json(text) if path.suffix == ".json" else load_yaml(text))
    except MalformedBody as exc:
        detail = exc.message.split(": ", 1)[-1]
        fail(f"{path}: not valid YAML/JSON: {' '.join(detail.split())}", code="invalid_file")
    except AppError as exc:
        fail(f"{path}: {exc.message}", code=exc.code)


def parse_time(value: str, option: str, as_json: bool) -> float:
    from datetime import UTC, datetime

    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        fail(
            f"{option}: {value!r} is not a date or time (e.g. 2026-10-01)",
            code="invalid_option",
            exit_code=2,
            as_json=as_json,
        )
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
