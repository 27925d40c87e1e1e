"""The command line, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from app.policy.defaults import default_policy_raw

CLI = str(Path(sys.executable).parent / "intent-router")


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INTENT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    return subprocess.run(
        [CLI, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_apikey_create_prints_the_key_alone(tmp_path: Path) -> None:
    r = run(tmp_path, "apikey", "create", "--name", "ops", "--scopes", "read,admin")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ir_") and len(lines[0]) > 40
    bad = run(tmp_path, "apikey", "create", "--name", "x", "--scopes", "read,root")
    assert bad.returncode == 2 and "root" in bad.stderr and bad.stdout == ""


def test_policy_validate_and_apply(tmp_path: Path) -> None:
    raw = default_policy_raw()
    raw["signals"]["demo_request"]["points"] = 25
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(raw))
    r = run(tmp_path, "policy", "validate", str(good))
    assert r.returncode == 0, r.stderr
    raw["routing"]["rules"][1]["when"]["band"] = "hott"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    r = run(tmp_path, "policy", "validate", str(bad))
    assert r.returncode == 1
    assert 'routing.rules[1].when.band: unknown band "hott"' in r.stderr
    r = run(tmp_path, "policy", "apply", str(good))
    assert r.returncode == 0, r.stderr
    # the shipped default is version 1 once the database exists; the file becomes 2
    assert "version" in r.stderr
    r = run(tmp_path, "policy", "apply", str(bad))
    assert r.returncode == 1


def test_accounts_import_csv(tmp_path: Path) -> None:
    csv = tmp_path / "abm.csv"
    csv.write_text(
        "domain,name,tier,owner,employees\nacme.com,Acme,tier_1,jo@x.io,1200\n"
        "https://www.Beta.io/,Beta,2,,\n"
    )
    r = run(tmp_path, "accounts", "import", str(csv))
    assert r.returncode == 0, r.stderr
    assert "2 accounts" in r.stderr
    import sqlite3

    con = sqlite3.connect(tmp_path / "cli.db")
    rows = dict(con.execute("select domain, tier from accounts").fetchall())
    assert rows == {"acme.com": "tier_1", "beta.io": "tier_2"}
    bad = tmp_path / "bad.csv"
    bad.write_text("domain,tier\nacme.com,platinum\n")
    r = run(tmp_path, "accounts", "import", str(bad))
    assert r.returncode == 1 and "accounts[0].tier" in r.stderr


def test_bad_settings_stop_start_up_with_the_variable_named(tmp_path: Path) -> None:
    env = {**os.environ, "INTENT_DATABASE_URL": "mysql://nope"}
    r = subprocess.run(
        [CLI, "migrate"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert r.returncode == 2
    assert "INTENT_DATABASE_URL" in r.stderr


async def test_serve_runs_the_configured_number_of_worker_processes(database_url: str) -> None:
    from tests.support.harness import Spawned, eventually

    proc = Spawned(
        {"INTENT_DATABASE_URL": database_url, "INTENT_WORKERS": "2", "INTENT_LOG_LEVEL": "info"}
    )
    try:
        proc.start()

        async def started() -> set[str]:
            pids = {
                line.split('"process":', 1)[1].split(",", 1)[0]
                for line in proc.output
                if "Application startup complete" in line and '"process":' in line
            }
            return pids if len(pids) == 2 else set()

        assert len(await eventually(started, within=30)) == 2
    finally:
        proc.stop()


async def test_processes_starting_together_on_an_empty_database_agree(database_url: str) -> None:
    """Replicas (or workers) starting at once: one makes the first policy and the key, the
    others read them; nobody fails on the other's insert."""
    import asyncio

    from sqlalchemy import func, select

    from app.config import Settings
    from app.db import api_keys, policies
    from app.db.migrate import upgrade
    from app.runtime.service import Runtime

    runtimes = [Runtime(Settings(database_url=database_url)) for _ in range(4)]
    try:
        await upgrade(runtimes[0].engine)
        await asyncio.gather(*(r.prepare(migrate=False) for r in runtimes))
        assert {r.policy.version for r in runtimes if r.policy} == {1}
        assert sum(1 for r in runtimes if r.bootstrap_key) == 1
        async with runtimes[0].sessionmaker() as session:
            assert await session.scalar(select(func.count()).select_from(policies)) == 1
            assert await session.scalar(select(func.count()).select_from(api_keys)) == 1
    finally:
        for r in runtimes:
            await r.engine.dispose()
