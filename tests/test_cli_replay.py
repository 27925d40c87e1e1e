"""``intent-router replay``, run as a user runs it, against the database a running service
writes: the diff as a table or JSON, and one-line errors for options that cannot work."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson
import yaml

from app.clock import FakeClock
from app.config import Settings
from app.policy.defaults import default_policy_raw
from tests.support.harness import Service
from tests.support.scenarios import hot_events

CLI = str(Path(sys.executable).parent / "intent-router")


async def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INTENT_DATABASE_URL": settings.database_url}
    return await asyncio.to_thread(
        subprocess.run,
        [CLI, "replay", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_replay_prints_the_diff_as_a_table_and_as_json(
    svc: Service, clock: FakeClock, settings: Settings, tmp_path: Path
) -> None:
    for who in ("dana", "lee"):
        events = hot_events(who, clock.now(), email=f"{who}@acme.com")
        assert (await svc.client.post("/v1/events", json={"events": events})).status_code == 202
        clock.advance(60)

    same = await cli(settings, "--version", "1", "--json")
    assert same.returncode == 0, same.stderr
    view = orjson.loads(same.stdout)
    assert view["status"] == "done" and view["diff"]["baseline"] == "actual"
    assert view["diff"]["counts"]["unchanged"] == 2 == view["diff"]["decisions"]["candidate"]

    # Pricing views worth 5: fit 50 + 5 + 20 = 75, warm: neither lead is routed.
    raw = default_policy_raw()
    raw["signals"]["pricing_page_view"]["points"] = 5
    candidate = tmp_path / "cautious.yaml"
    candidate.write_text(yaml.safe_dump(raw))
    table = await cli(settings, "--policy", str(candidate), "--examples", "1")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].endswith("done; baseline: actual; decisions 2 → 0"), lines[0]
    assert "no_longer_routed            2" in lines
    assert any(
        line.startswith("  dana@acme.com: hot_tier_1")
        or line.startswith("  dana@acme.com: hot_inbound")
        for line in lines
    ), lines
    # The job is stored like the API's.
    job_id = lines[0].split()[1].rstrip(":")
    shown = (await svc.client.get(f"/v1/replays/{job_id}")).json()
    assert shown["diff"]["counts"]["no_longer_routed"] == 2


async def test_options_that_cannot_work_are_one_line_errors(
    svc: Service, settings: Settings, tmp_path: Path
) -> None:
    neither = await cli(settings)
    assert neither.returncode == 2 and "one of --policy FILE or --version N" in neither.stderr
    backwards = await cli(
        settings, "--version", "1", "--since", "2026-02-01", "--until", "2026-01-01"
    )
    assert backwards.returncode == 2 and "--since must be before --until" in backwards.stderr
    unknown = await cli(settings, "--version", "99", "--json")
    assert unknown.returncode == 1
    assert orjson.loads(unknown.stderr)["code"] == "policy_version_not_found"
    bad = tmp_path / "bad.yaml"
    raw = default_policy_raw()
    raw["signals"]["demo_request"]["points"] = "many"
    bad.write_text(yaml.safe_dump(raw))
    invalid = await cli(settings, "--policy", str(bad))
    assert invalid.returncode == 1 and "signals.demo_request.points" in invalid.stderr
