"""Replicas starting together against a fresh PostgreSQL database: every ``migrate``
succeeds (they used to race creating alembic_version: one exited with a UniqueViolation,
2 tries in 3)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from tests.support.harness import require_service

PROCESSES = 4


async def _fresh_database(base: str) -> tuple[str, str]:
    server, _, _ = base.rpartition("/")
    name = f"t_mig_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(base.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return f"{server}/{name}", name


async def _drop(base: str, name: str) -> None:
    admin = await asyncpg.connect(base.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.mark.parametrize("round_", range(3))
async def test_four_processes_migrating_a_fresh_database_at_once_all_succeed(
    round_: int,
) -> None:
    base = require_service("INTENT_TEST_DATABASE_URL")
    url, name = await _fresh_database(base)
    try:
        env = {**os.environ, "INTENT_DATABASE_URL": url, "INTENT_LOG_LEVEL": "warning"}
        cli = str(Path(sys.executable).parent / "intent-router")
        procs = [
            await asyncio.create_subprocess_exec(
                cli, "migrate", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            for _ in range(PROCESSES)
        ]
        outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 120)
        results = [(p.returncode, out.decode()) for p, (out, _) in zip(procs, outputs, strict=True)]
        for code, output in results:
            assert code == 0, output
        assert sum("migrated an empty database" in out for _, out in results) >= 1
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            versions = await conn.fetch("SELECT version_num FROM alembic_version")
        finally:
            await conn.close()
        assert len(versions) == 1
    finally:
        await _drop(base, name)
