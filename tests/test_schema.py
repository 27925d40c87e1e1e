"""The migrations build exactly the schema the code declares (``app.db.tables``): on an
empty database migrated to head, alembic's comparison with the metadata finds nothing, on
SQLite and PostgreSQL. A column added to a table without its migration (or the reverse)
fails here, not on an adopter's upgrade."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from app.config import Settings
from app.db import make_engine, metadata
from app.db.migrate import upgrade


async def test_migrations_build_the_declared_schema(settings: Settings) -> None:
    engine = make_engine(settings)
    try:
        await upgrade(engine)
        async with engine.connect() as conn:

            def differences(sync_conn: Any) -> list[Any]:
                return list(compare_metadata(MigrationContext.configure(sync_conn), metadata))

            assert await conn.run_sync(differences) == []
            tables = await conn.run_sync(
                lambda c: set(c.dialect.get_table_names(c)) - {"alembic_version"}
            )
            assert tables == set(metadata.tables)
    finally:
        await engine.dispose()
