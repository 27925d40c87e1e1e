"""intent-router replay: re-run recorded history against a policy and print the decision
diff (``app.policy.impact``). ``--job ID`` runs a job queued through the API (what the
service's replay launcher starts, in its own process)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.cli.support import fail, load_policy_file, load_settings, on_db, parse_time, progress


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def replay(
    policy: Annotated[
        Path | None, typer.Option(metavar="FILE", help="a candidate policy (YAML, or *.json)")
    ] = None,
    version: Annotated[
        int | None, typer.Option(metavar="N", help="or a stored policy version")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(metavar="DATE", help="window start (UTC; default: the first batch)"),
    ] = None,
    until: Annotated[
        str | None, typer.Option(metavar="DATE", help="window end (default: the newest batch)")
    ] = None,
    start: Annotated[
        str, typer.Option(metavar="FROM", help="history (the state at --since) or empty")
    ] = "history",
    examples: Annotated[
        int, typer.Option(metavar="N", min=0, max=50, help="examples per kind")
    ] = 3,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the job and its diff as JSON")
    ] = False,
    job: Annotated[str | None, typer.Option(hidden=True, metavar="ID")] = None,
) -> None:
    """Replay the recorded batches of a window against a policy; print the decision diff."""
    settings = load_settings(as_json)
    if job is not None:
        status = on_db(settings, lambda engine: _execute(engine, job), as_json)
        raise typer.Exit(0 if status != "failed" else 1)
    if (policy is None) == (version is None):
        fail(
            "give one of --policy FILE or --version N",
            code="invalid_option",
            exit_code=2,
            as_json=as_json,
        )
    if start not in ("history", "empty"):
        fail("--start: history or empty", code="invalid_option", exit_code=2, as_json=as_json)
    document = None
    if policy is not None:
        from app.policy.schema import parse_policy
        from app.policy.store import storable

        _, raw = load_policy_file(policy)
        doc, errors = parse_policy(raw)
        if doc is None:
            fail(f"{policy}: {errors[0]}", code="invalid_policy", as_json=as_json)
        document, _ = storable(doc, 0)
    window = (
        parse_time(since, "--since", as_json) if since else None,
        parse_time(until, "--until", as_json) if until else None,
    )
    if window[0] is not None and window[1] is not None and window[0] >= window[1]:
        fail("--since must be before --until", code="invalid_option", exit_code=2, as_json=as_json)
    params = {
        "version": version,
        "document": document,
        "window": window,
        "start": start,
        "examples": examples,
        "as_json": as_json,
    }
    view = on_db(settings, lambda engine: _inline(engine, params), as_json)
    if view["status"] == "failed":
        fail(f"replay failed: {view['error']}", code="replay_failed", as_json=as_json)
    typer.echo(orjson.dumps(view).decode() if as_json else render(view))


# A job the service started runs at the lowest priority: it takes what the live path
# leaves (a shadow re-runs every live batch; at normal priority it cost the live p99 more
# than its share of the machine in `make bench`'s phase S).
NICENESS = 19


async def _execute(engine: AsyncEngine, job_id: str) -> str:
    from app.db import make_sessionmaker
    from app.policy.impact.jobs import execute

    os.nice(NICENESS)
    return await execute(make_sessionmaker(engine), job_id, owner=_owner())


async def _inline(engine: AsyncEngine, p: dict[str, Any]) -> dict[str, Any]:
    """A job made and run here, with a progress bar; stored like the API's."""
    from app.db import make_sessionmaker, replays
    from app.db.migrate import upgrade
    from app.policy.impact.jobs import create_job, execute, job_view
    from app.policy.store import stored_size

    await upgrade(engine)
    live = make_sessionmaker(engine)
    async with live() as session, session.begin():
        if p["version"] is not None and await stored_size(session, p["version"]) is None:
            fail(
                f"no policy version {p['version']}",
                code="policy_version_not_found",
                as_json=p["as_json"],
            )
        job_id = await create_job(
            session,
            kind="replay",
            version=p["version"],
            document=p["document"],
            since=p["window"][0],
            until=p["window"][1],
            start=p["start"],
            examples=p["examples"],
            created_by="cli",
            now=time.time(),
            owner=_owner(),  # run here: no service's launcher takes it meanwhile
        )
    with progress(1, "replaying") as show:

        def on_progress(pr: Any) -> None:
            show(
                pr.events_done / max(pr.events_total, 1),
                f"{pr.phase} {pr.events_done}/{pr.events_total} events",
            )

        await execute(live, job_id, owner=_owner(), on_progress=on_progress)
        show(1)
    async with live() as session:
        row = (await session.execute(select(replays).where(replays.c.id == job_id))).one()
    return job_view(row)


def render(view: dict[str, Any]) -> str:
    """The diff as a table: counts, per source and tier, then the examples."""
    d = view["diff"] or {}
    counts = d.get("counts", {})
    lines = [
        f"replay {view['id']}: {view['status']}; baseline: {d.get('baseline')}; decisions "
        f"{d.get('decisions', {}).get('baseline')} → {d.get('decisions', {}).get('candidate')}",
        "",
        f"{'change':<20} {'count':>8}",
        *(f"{k:<20} {n:>8}" for k, n in counts.items()),
    ]
    for title in ("by_source", "by_tier"):
        groups = d.get(title) or {}
        if groups:
            lines += ["", f"{title.replace('_', ' ')}:"]
            lines += [
                f"  {name:<24} " + ", ".join(f"{k} {n}" for k, n in c.items())
                for name, c in groups.items()
            ]
    for kind, items in (d.get("examples") or {}).items():
        lines += ["", f"{kind}:"]
        for ex in items:
            who = ex.get("lead_id") or ex.get("account_domain")
            b, c = ex["baseline"], ex["candidate"]
            was = (
                f"{b['rule']} → {b['team']}/{b['assignee'] or '-'} at {b['created_at']}"
                if b
                else "not routed"
            )
            now = (
                f"{c['rule']} → {c['team']}/{c['assignee'] or '-'} at {c['created_at']}"
                if c
                else "not routed"
            )
            lines.append(f"  {who}: {was}  ⇒  {now}")
    return "\n".join(lines)
