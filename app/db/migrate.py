"""Run Alembic migrations from inside the service (``intent-router migrate``, start-up)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
# The key of the PostgreSQL advisory lock that serialises migrations (any fixed bigint
# unique to this application: "intent-r" in ASCII).
MIGRATION_LOCK = 0x696E74656E742D72


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


async def upgrade(engine: AsyncEngine) -> None:
    """Bring the database to the newest revision."""

    def run(connection: Connection) -> None:
        command.upgrade(_config(connection), "head")

    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Replicas starting together against a fresh database: one migrates, the others
            # wait here, then find the schema at head (the lock ends with the transaction
            # the whole upgrade runs in). Without it two create alembic_version at once
            # and one exits with a UniqueViolation.
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        await conn.run_sync(run)


async def at_head(engine: AsyncEngine) -> bool:
    """True when the database is at the newest revision."""
    head = ScriptDirectory.from_config(_config()).get_current_head()

    def current(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(current) == head
