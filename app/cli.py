"""intent-router serve | migrate | apikey | policy | accounts | calibrate | listen."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
import yaml

from app.config import Settings

cli = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Real-time intent scoring and lead routing."
)
apikey_cli = typer.Typer(no_args_is_help=True, help="API keys.")
policy_cli = typer.Typer(no_args_is_help=True, help="The scoring and routing policy.")
accounts_cli = typer.Typer(no_args_is_help=True, help="ABM account lists.")
cli.add_typer(apikey_cli, name="apikey")
cli.add_typer(policy_cli, name="policy")
cli.add_typer(accounts_cli, name="accounts")


def _settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:  # pydantic's message names the variable and the reason
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from None


async def _with_db(fn: Any) -> Any:
    from app.db import make_engine, make_sessionmaker
    from app.db.migrate import upgrade

    settings = _settings()
    engine = make_engine(settings)
    try:
        await upgrade(engine)
        async with make_sessionmaker(engine)() as session, session.begin():
            return await fn(session)
    finally:
        await engine.dispose()


async def _noop(_: Any) -> None:
    return None


async def _prepare(settings: Settings) -> None:
    from app.main import print_bootstrap_key
    from app.runtime.service import Runtime

    runtime = Runtime(settings)
    try:
        await runtime.prepare()
    finally:
        await runtime.engine.dispose()
    print_bootstrap_key(runtime.bootstrap_key)


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="default INTENT_HOST or 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="default INTENT_PORT or 8000")] = None,
    roles: Annotated[
        str | None,
        typer.Option(help="api,consumer,dispatcher (default INTENT_ROLES or all three)"),
    ] = None,
) -> None:
    """Run the service: HTTP API, Kafka consumer (when Kafka is on) and webhook dispatcher."""
    import os

    import uvicorn

    from app.main import serve_app

    if roles is not None:
        os.environ["INTENT_ROLES"] = roles
    settings = _settings()
    options: dict[str, Any] = {
        "host": host or settings.host,
        "port": port or settings.port,
        "log_level": settings.log_level.lower(),
        "log_config": None,  # ours: JSON lines (app.observability.logging)
        "access_log": False,
        "loop": "uvloop",
        "http": "httptools",
    }
    if settings.workers > 1:
        # Each worker process builds its own app (and runtime) from the environment;
        # the schema, the first policy and the bootstrap key are made once, here, first.
        asyncio.run(_prepare(settings))
        uvicorn.run("app.main:serve_app", factory=True, workers=settings.workers, **options)
    else:
        uvicorn.run(serve_app(settings), **options)


@cli.command()
def migrate() -> None:
    """Bring the database schema to the newest version."""

    asyncio.run(_with_db(_noop))
    typer.echo("database is at the newest schema version", err=True)


@apikey_cli.command("create")
def apikey_create(
    name: Annotated[str, typer.Option(help="who or what uses the key")],
    scopes: Annotated[str, typer.Option(help="comma-separated: ingest,read,admin,feedback")],
) -> None:
    """Create a key and print it alone on stdout (only its hash is stored)."""
    from app.auth import create_key, parse_scopes
    from app.errors import AppError

    try:
        scope_list = parse_scopes(scopes)
    except AppError as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(2) from None

    async def run(session: Any) -> str:
        import time

        _, key = await create_key(session, name=name, scopes=scope_list, now=time.time())
        return key

    typer.echo(asyncio.run(_with_db(run)))


def _load_policy_file(path: Path) -> Any:
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        typer.echo(f"cannot read {path}: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        return text, (orjson.loads(text) if path.suffix == ".json" else yaml.safe_load(text))
    except (yaml.YAMLError, orjson.JSONDecodeError) as exc:
        typer.echo(f"{path}: not valid YAML/JSON: {exc}", err=True)
        raise typer.Exit(1) from None


@policy_cli.command("validate")
def policy_validate(file: Path) -> None:
    """Check a policy file; each error names its exact path."""
    from app.policy.schema import parse_policy

    _, raw = _load_policy_file(file)
    doc, errors = parse_policy(raw)
    if doc is None:
        for err in errors:
            typer.echo(str(err), err=True)
        raise typer.Exit(1)
    typer.echo(f"{file}: valid", err=True)


@policy_cli.command("apply")
def policy_apply(file: Path, comment: Annotated[str | None, typer.Option()] = None) -> None:
    """Validate a policy file and store it as the next active version."""
    import time

    from app.errors import AppError
    from app.policy.store import save_version, validate_or_raise

    text, raw = _load_policy_file(file)
    try:
        doc = validate_or_raise(raw)
    except AppError as exc:
        for err in exc.errors or []:
            typer.echo(f"{err['path']}: {err['message']}", err=True)
        raise typer.Exit(1) from None

    async def run(session: Any) -> int:
        compiled = await save_version(
            session, doc, source_text=text, created_by="cli", now=time.time(), comment=comment
        )
        return compiled.version

    version = asyncio.run(_with_db(run))
    typer.echo(f"policy version {version} is active", err=True)


@accounts_cli.command("import")
def accounts_import(file: Path) -> None:
    """Upsert ABM accounts from a CSV file (header: domain,name,tier,owner,…)."""
    import time

    from app.errors import AppError
    from app.matching.abm import parse_csv, upsert_accounts, validate_rows

    try:
        rows = validate_rows(parse_csv(file.read_text("utf-8-sig")))
    except AppError as exc:
        for err in exc.errors or [{"field": exc.field, "message": exc.message}]:
            typer.echo(f"{err['field']}: {err['message']}", err=True)
        raise typer.Exit(1) from None

    async def run(session: Any) -> int:
        return await upsert_accounts(session, rows, time.time())

    n = asyncio.run(_with_db(run))
    typer.echo(f"{n} accounts upserted", err=True)


@cli.command()
def listen(
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 9000,
    secret: Annotated[str | None, typer.Option(help="whsec_… to verify signatures")] = None,
) -> None:
    """A tiny webhook receiver for trying things out: prints each delivery it receives."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from app.delivery.signing import verify

    async def receive(request: Request) -> Response:
        body = await request.body()
        h = request.headers
        verdict = "unsigned"
        if secret:
            ok = verify(
                secret,
                h.get("webhook-id", ""),
                int(h.get("webhook-timestamp", "0")),
                body,
                h.get("webhook-signature", ""),
            )
            verdict = "signature ok" if ok else "BAD SIGNATURE"
        print(f"--- webhook {h.get('webhook-id')} ({verdict})", flush=True)
        print(orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2).decode(), flush=True)
        return Response(status_code=204)

    app = Starlette(routes=[Route("/{path:path}", receive, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def _parse_time(value: str, option: str) -> float:
    from datetime import UTC, datetime

    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        typer.echo(f"{option}: {value!r} is not a date or time (e.g. 2026-10-01)", err=True)
        raise typer.Exit(2) from None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


@cli.command()
def calibrate(
    since: Annotated[str, typer.Option(help="decisions created from this date/time (UTC)")],
    until: Annotated[str | None, typer.Option(help="and before this one (default: now)")] = None,
    min_decisions: Annotated[
        int, typer.Option(min=2, help="routed leads with an outcome needed to fit")
    ] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Fit signal weights to sales outcomes; store them as a proposed version (not applied)."""
    import time

    from app.policy.impact.calibration import CalibrationError, Proposal, render
    from app.policy.impact.calibration import calibrate as run_calibration

    now = time.time()
    start = _parse_time(since, "--since")
    end = _parse_time(until, "--until") if until is not None else now

    async def run(session: Any) -> Proposal:
        return await run_calibration(
            session, since=start, until=end, now=now, min_decisions=min_decisions
        )

    try:
        proposal = asyncio.run(_with_db(run))
    except CalibrationError as exc:
        typer.echo(f"calibrate: {exc}; no policy version was written", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(orjson.dumps({"version": proposal.version, "report": proposal.report}).decode())
    else:
        typer.echo(render(proposal))


def openapi_yaml() -> str:
    """The OpenAPI document of the app, as committed in openapi.yaml."""
    from app.main import create_app

    spec = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:")).openapi()
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=100)


@cli.command()
def openapi() -> None:
    """Print the OpenAPI document (YAML)."""
    typer.echo(openapi_yaml(), nl=False)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
