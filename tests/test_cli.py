"""The command line, run as a user runs it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import orjson
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
    # which database got it, on stderr: a key made in another database than the service's
    # is a 401 for every call
    assert f"stored in SQLite {tmp_path}/cli.db" in r.stderr
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
    # the service has never started on this database (it stores the shipped default as
    # version 1 then): the file is the first version
    assert r.stdout == "policy version 1 is active\n"
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
    assert r.stdout == "2 accounts upserted\n"
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
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr


COMMANDS = [
    (),
    ("serve",),
    ("migrate",),
    ("listen",),
    ("calibrate",),
    ("openapi",),
    ("apikey",),
    ("apikey", "create"),
    ("policy",),
    ("policy", "validate"),
    ("policy", "apply"),
    ("accounts",),
    ("accounts", "import"),
]


def test_every_help_is_plain_and_names_its_values(tmp_path: Path) -> None:
    for command in COMMANDS:
        r = run(tmp_path, *command, "--help")
        assert r.returncode == 0 and r.stdout.startswith("Usage: intent-router"), command
        assert "<bool>" not in r.stdout and "<str>" not in r.stdout, (command, r.stdout)
    root = run(tmp_path, "--help").stdout
    assert "--version" in root and "--install-completion" in root
    assert "--since DATE" in run(tmp_path, "calibrate", "--help").stdout


def test_version_and_shell_completion(tmp_path: Path) -> None:
    from importlib.metadata import version

    r = run(tmp_path, "--version")
    assert r.returncode == 0 and r.stdout == f"intent-router {version('intent-router')}\n"
    # typer finds the user's shell from the parent process: run it from bash, as a user
    # would (under make or CI the parent is sh, which typer has no completion for).
    script = subprocess.run(
        ["bash", "-c", f"{CLI} --show-completion; exit $?"],  # not exec'd: bash stays the parent
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert script.returncode == 0 and "_INTENT_ROUTER_COMPLETE" in script.stdout, script.stderr
    # what that script asks the program when <TAB> is pressed after "intent-router policy "
    env = {
        **os.environ,
        "_INTENT_ROUTER_COMPLETE": "complete_bash",
        "COMP_WORDS": "intent-router policy ",
        "COMP_CWORD": "2",
    }
    r = subprocess.run([CLI], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert r.stdout.split() == ["validate", "apply"]


def test_a_missing_file_is_one_line_and_a_failure(tmp_path: Path) -> None:
    for command in (("policy", "validate"), ("policy", "apply"), ("accounts", "import")):
        r = run(tmp_path, *command, str(tmp_path / "nope.yaml"))
        assert r.returncode == 2, command
        assert r.stdout == "" and "Traceback" not in r.stderr
        assert (
            r.stderr
            == f"intent-router: cannot read {tmp_path}/nope.yaml: No such file or directory\n"
        )
    broken = tmp_path / "broken.yaml"
    broken.write_text("signals: [unclosed\n")
    r = run(tmp_path, "policy", "validate", str(broken))
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and "not valid YAML" in r.stderr


def test_migrate_says_what_it_did(tmp_path: Path) -> None:
    from alembic.script import ScriptDirectory

    from app.db.migrate import _config

    head = ScriptDirectory.from_config(_config()).get_current_head()
    db = f"SQLite {tmp_path}/cli.db"
    first = run(tmp_path, "migrate")
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"migrated an empty database ({db}) to revision {head}\n"
    again = run(tmp_path, "migrate")
    assert again.stdout == f"{db} is already at revision {head}, the newest\n"


def test_an_unreachable_database_is_one_line_without_its_password(tmp_path: Path) -> None:
    from tests.support.harness import free_port

    env = {
        **os.environ,
        "INTENT_DATABASE_URL": f"postgresql+asyncpg://intent:s3cret@127.0.0.1:{free_port()}/x",
    }
    for command in (("migrate",), ("apikey", "create", "--name", "x", "--scopes", "read")):
        r = subprocess.run(
            [CLI, *command], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert r.returncode == 1 and r.stdout == "", command
        assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
        assert "intent:***@127.0.0.1" in r.stderr and "s3cret" not in r.stderr


def test_calibrate_json_errors_are_json_on_stderr(tmp_path: Path) -> None:
    r = run(tmp_path, "calibrate", "--since", "last tuesday", "--json")
    assert r.returncode == 2 and r.stdout == ""
    assert orjson.loads(r.stderr) == {
        "code": "invalid_option",
        "message": "--since: 'last tuesday' is not a date or time (e.g. 2026-10-01)",
    }
    assert run(tmp_path, "migrate").returncode == 0  # a database without a policy yet
    r = run(tmp_path, "calibrate", "--since", "2026-01-01", "--json")
    assert r.returncode == 1 and r.stdout == ""
    error = orjson.loads(r.stderr)
    assert error["code"] == "calibration" and "no active policy" in error["message"]
    plain = run(tmp_path, "calibrate", "--since", "2026-01-01")
    assert plain.returncode == 1 and plain.stderr.startswith("intent-router: calibrate: ")


def on_a_terminal(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal (where progress bars are drawn)."""
    import pty

    env = {**os.environ, "INTENT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    leader, follower = pty.openpty()
    try:
        r = subprocess.run(
            [CLI, *args], env=env, stdout=subprocess.PIPE, stderr=follower, timeout=60, text=True
        )
        os.close(follower)
        drawn = b""
        with contextlib.suppress(OSError):  # EIO: the terminal's other end is closed
            while chunk := os.read(leader, 65536):
                drawn += chunk
    finally:
        os.close(leader)
    return r.returncode, r.stdout, drawn.decode(errors="replace")


def test_long_work_shows_a_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    csv = tmp_path / "abm.csv"
    csv.write_text("domain,tier\n" + "".join(f"d{i}.com,tier_2\n" for i in range(2500)))
    code, out, drawn = on_a_terminal(tmp_path, "accounts", "import", str(csv))
    assert code == 0 and out == "2500 accounts upserted\n"
    assert "importing abm.csv" in drawn and "2500/2500" in drawn
    piped = run(tmp_path, "accounts", "import", str(csv))  # stderr not a terminal: no bar
    assert piped.returncode == 0 and piped.stderr == ""

    default = Path(__file__).parents[1] / "app" / "policy" / "default_policy.yaml"
    assert run(tmp_path, "policy", "apply", str(default)).returncode == 0
    code, out, drawn = on_a_terminal(tmp_path, "calibrate", "--since", "2026-01-01")
    assert code == 1 and out == ""
    assert "reading routed leads" in drawn and "calibration needs at least 30" in drawn


def test_a_dotenv_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTENT_")}
    (tmp_path / ".env").write_text(
        "# settings for this directory\n"
        f"INTENT_DATABASE_URL=sqlite+aiosqlite:///{tmp_path}/from-dotenv.db\n"
        "COMPOSE_PROJECT_NAME=not-ours  # other tools' lines are left alone\n"
    )

    def migrate(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CLI, "migrate"],
            env={**env, **extra},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    r = migrate()
    assert r.returncode == 0, r.stderr
    assert f"{tmp_path}/from-dotenv.db" in r.stdout and (tmp_path / "from-dotenv.db").exists()
    r = migrate(INTENT_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/from-env.db")
    assert r.returncode == 0, r.stderr
    assert f"{tmp_path}/from-env.db" in r.stdout and (tmp_path / "from-env.db").exists()

    (tmp_path / ".env").write_text("INTENT_DATABSE_URL=sqlite+aiosqlite:///typo.db\n")
    r = migrate()
    assert r.returncode == 2
    assert r.stderr == (
        "intent-router: configuration error: INTENT_DATABSE_URL (in .env) is not a setting\n"
    )


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


def test_the_env_example_names_only_settings(tmp_path: Path) -> None:
    """.env.example, every line uncommented (the last of a repeated name wins), is a valid
    .env."""
    example = Path(__file__).parents[1] / ".env.example"
    lines = [ln.removeprefix("# ") for ln in example.read_text().splitlines()]
    (tmp_path / ".env").write_text("\n".join(ln for ln in lines if ln.startswith("INTENT_")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTENT_")}
    code = "from app.config import Settings; print(Settings().kafka_bootstrap)"
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "127.0.0.1:9092\n"
