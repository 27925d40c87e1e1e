"""intent-router serve | migrate | apikey | policy | accounts | calibrate | listen.

Conventions: what a command produces (a key, a report, a summary line) goes to stdout;
progress bars, warnings and errors go to stderr; a failure exits non-zero with one line
that says what is wrong (as JSON on stderr when the command was given ``--json``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
import yaml
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.cli.support import (
    db,
    describe_db,
    fail,
    load_policy_file,
    load_settings,
    on_db,
    parse_time,
    progress,
    read,
    revision,
)
from app.config import Settings

# Plain help (rich_markup_mode=None): typer's rich help prints a type column that shows
# "<bool>" beside every flag, --help included. Tracebacks stay plain and never show locals
# (an API key or a DSN's password can be one).
_TYPER: dict[str, Any] = {
    "no_args_is_help": True,
    "rich_markup_mode": None,
    "pretty_exceptions_enable": False,
}
cli = typer.Typer(help="Real-time intent scoring and lead routing.", **_TYPER)
apikey_cli = typer.Typer(help="API keys.", **_TYPER)
policy_cli = typer.Typer(help="The scoring and routing policy.", **_TYPER)
accounts_cli = typer.Typer(help="ABM account lists.", **_TYPER)
cli.add_typer(apikey_cli, name="apikey")
cli.add_typer(policy_cli, name="policy")
cli.add_typer(accounts_cli, name="accounts")

PolicyFile = Annotated[
    Path, typer.Argument(metavar="FILE", help="a policy document: YAML, or JSON (*.json)")
]
CsvFile = Annotated[Path, typer.Argument(metavar="FILE", help="CSV with a header row")]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"intent-router {version('intent-router')}")
        raise typer.Exit()


@cli.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Real-time intent scoring and lead routing."""


@cli.command()
def serve(
    host: Annotated[
        str | None, typer.Option(metavar="HOST", help="default INTENT_HOST or 127.0.0.1")
    ] = None,
    port: Annotated[
        int | None, typer.Option(metavar="PORT", help="default INTENT_PORT or 8000")
    ] = None,
    roles: Annotated[
        str | None,
        typer.Option(
            metavar="ROLES", help="api,consumer,dispatcher (default INTENT_ROLES or all three)"
        ),
    ] = None,
) -> None:
    """Run the service: HTTP API, Kafka consumer (when Kafka is on) and webhook dispatcher."""
    import os

    import uvicorn

    from app.main import serve_app

    if roles is not None:
        os.environ["INTENT_ROLES"] = roles
    settings = load_settings()
    from app.cli.secrets import check_secret_key

    check_secret_key(settings)  # missing or wrong INTENT_SECRET_KEY: one line, exit 2
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
def migrate() -> None:
    """Bring the database schema to the newest version and say what that took."""
    from app.db.migrate import upgrade

    settings = load_settings()

    async def work(engine: AsyncEngine) -> tuple[str | None, str | None]:
        before = await revision(engine)
        await upgrade(engine)
        return before, await revision(engine)

    before, after = on_db(settings, work, as_json=False)
    where = describe_db(settings)
    if before is None:
        typer.echo(f"migrated an empty database ({where}) to revision {after}")
    elif before == after:
        typer.echo(f"{where} is already at revision {after}, the newest")
    else:
        typer.echo(f"migrated {where} from revision {before} to {after}")


@apikey_cli.command("create")
def apikey_create(
    name: Annotated[str, typer.Option(metavar="NAME", help="who or what uses the key")],
    scopes: Annotated[
        str, typer.Option(metavar="SCOPES", help="comma-separated: ingest,read,admin,feedback")
    ],
) -> None:
    """Create a key and print it alone on stdout (only its hash is stored)."""
    import time

    from app.auth import create_key, parse_scopes
    from app.errors import AppError

    try:
        scope_list = parse_scopes(scopes)
    except AppError as exc:
        fail(exc.message, code=exc.code, exit_code=2)

    async def run(session: AsyncSession) -> str:
        _, key = await create_key(session, name=name, scopes=scope_list, now=time.time())
        return key

    key = db(run)
    typer.echo(key)
    # Which database matters: a key made in another database than the service's is a 401.
    typer.echo(f"key {name!r} stored in {describe_db(load_settings())}", err=True)


@policy_cli.command("validate")
def policy_validate(file: PolicyFile) -> None:
    """Check a policy file; each error names its exact path."""
    from app.policy.schema import parse_policy

    _, raw = load_policy_file(file)
    doc, errors = parse_policy(raw)
    if doc is None:
        for err in errors:
            typer.echo(str(err), err=True)
        raise typer.Exit(1)
    typer.echo(f"{file}: valid")


@policy_cli.command("apply")
def policy_apply(
    file: PolicyFile,
    comment: Annotated[
        str | None, typer.Option(metavar="TEXT", help="stored with the version")
    ] = None,
) -> None:
    """Validate a policy file and store it as the next active version."""
    import time

    from app.errors import AppError
    from app.policy.store import save_version, storable, validate_or_raise

    text, raw = load_policy_file(file)
    try:
        doc = validate_or_raise(raw)
        storable(doc, 1)  # stored only if a start-up can load it again
    except AppError as exc:
        for err in exc.errors or [{"path": exc.field or "", "message": exc.message}]:
            typer.echo(f"{err['path']}: {err['message']}", err=True)
        raise typer.Exit(1) from None

    async def run(session: AsyncSession) -> int:
        compiled = await save_version(
            session, doc, source_text=text, created_by="cli", now=time.time(), comment=comment
        )
        return compiled.version

    typer.echo(f"policy version {db(run)} is active")


_IMPORT_CHUNK = 1000  # accounts per upsert statement group (and per step of the bar)


@accounts_cli.command("import")
def accounts_import(file: CsvFile) -> None:
    """Upsert ABM accounts from a CSV file (header: domain,name,tier,owner,…)."""
    import time

    from app.errors import AppError
    from app.matching.abm import parse_csv, upsert_accounts, validate_rows

    try:
        rows = validate_rows(parse_csv(read(file)))
    except AppError as exc:
        for err in exc.errors or [{"field": exc.field, "message": exc.message}]:
            typer.echo(f"{err['field']}: {err['message']}", err=True)
        raise typer.Exit(1) from None
    latest = list({row.domain: row for row in rows}.values())  # the last row of a domain wins

    async def run(session: AsyncSession) -> int:
        n = 0
        with progress(len(latest), f"importing {file.name}") as show:
            for i in range(0, len(latest), _IMPORT_CHUNK):
                n += await upsert_accounts(session, latest[i : i + _IMPORT_CHUNK], time.time())
                show(n)
        return n

    typer.echo(f"{db(run)} accounts upserted")


@cli.command()
def listen(
    port: Annotated[int, typer.Option(metavar="PORT", help="port on 127.0.0.1")] = 9000,
    secret: Annotated[
        str | None, typer.Option(metavar="WHSEC", help="whsec_… to verify signatures")
    ] = None,
) -> None:
    """A tiny webhook receiver for trying things out: prints each delivery it receives.
    With --secret each is verified as the Standard Webhooks libraries verify (signature, and
    a timestamp within ±5 minutes of this clock): 204 when it verifies, else 400 and why."""
    import time

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    from app.delivery.signing import check_request

    async def receive(request: Request) -> Response:
        body = await request.body()
        h = request.headers
        refused = check_request(secret, h, body, time.time()) if secret else None
        verdict = "unsigned" if not secret else f"REFUSED: {refused}" if refused else "signature ok"
        print(f"--- webhook {h.get('webhook-id')} ({verdict})", flush=True)
        try:
            shown = orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2).decode()
        except orjson.JSONDecodeError:
            shown = body.decode("utf-8", "replace")
        print(shown, flush=True)
        if refused:
            return PlainTextResponse(refused + "\n", status_code=400)
        return Response(status_code=204)

    app = Starlette(routes=[Route("/{path:path}", receive, methods=["POST"])])
    try:
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
    except SystemExit as exc:  # uvicorn could not start and has logged why (port taken …)
        if exc.code:
            fail(f"cannot listen on 127.0.0.1:{port}")
        raise


@cli.command()
def calibrate(
    since: Annotated[
        str, typer.Option(metavar="DATE", help="decisions created from this date/time (UTC)")
    ],
    until: Annotated[
        str | None, typer.Option(metavar="DATE", help="and before this one (default: now)")
    ] = None,
    min_decisions: Annotated[
        int, typer.Option(metavar="N", min=2, help="routed leads with an outcome needed to fit")
    ] = 30,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the report (or the error) as JSON")
    ] = False,
) -> None:
    """Fit signal weights to sales outcomes; store them as a proposed version (not applied)."""
    import time

    from app.policy.impact.calibration import STEPS, CalibrationError, Proposal, render
    from app.policy.impact.calibration import calibrate as run_calibration

    now = time.time()
    start = parse_time(since, "--since", as_json)
    end = parse_time(until, "--until", as_json) if until is not None else now

    async def run(session: AsyncSession) -> Proposal:
        with progress(len(STEPS), "calibrating") as show:
            proposal = await run_calibration(
                session,
                since=start,
                until=end,
                now=now,
                min_decisions=min_decisions,
                progress=lambda step: show(STEPS.index(step), step),
            )
            show(len(STEPS))
        return proposal

    try:
        proposal = db(run, as_json=as_json)
    except CalibrationError as exc:
        fail(
            f"calibrate: {exc}; no policy version was written", code="calibration", as_json=as_json
        )
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


# apikey list | revoke (app.cli.keys).
from app.cli.keys import register as _register_keys  # noqa: E402

_register_keys(apikey_cli)

# secrets key | rotate (app.cli.secrets).
from app.cli.secrets import secrets_cli  # noqa: E402

cli.add_typer(secrets_cli, name="secrets")

# lead erase | export (app.cli.leads).
from app.cli.leads import lead_cli  # noqa: E402

cli.add_typer(lead_cli, name="lead")

# replay (app.cli.replay).
from app.cli.replay import replay  # noqa: E402

cli.command()(replay)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
