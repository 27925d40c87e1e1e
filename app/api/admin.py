"""Admin API: ABM accounts, the policy, destinations and redelivery."""

from __future__ import annotations

import csv
import time
from typing import Annotated, Any, Literal

import httpx
import orjson
import yaml
from fastapi import APIRouter, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import delete, select, update

from app.api.deps import PolicyDep, RuntimeDep, SessionDep
from app.api.read import ERRORS
from app.auth import AdminKey, ReadKey
from app.clock import iso, new_id
from app.db import deliveries, destinations, dumps, leads, policies
from app.delivery import dispatcher as dispatch
from app.delivery import formats, signing
from app.delivery.destinations import FILTER_KEYS, destination_from_row
from app.errors import Conflict, InvalidInput, MalformedBody, NotFound, error_responses, first_error
from app.ingest.http import parse_json, read_body
from app.matching.abm import parse_csv, upsert_accounts, validate_rows
from app.policy.schema import CompiledPolicy, PolicyDoc
from app.policy.store import save_version, validate_or_raise
from app.scoring.engine import evaluate
from app.scoring.state import lead_from_row

router = APIRouter()
MAX_ADMIN_BODY = 32 * 1024 * 1024
# Routes that read a body also answer 400 (not JSON/YAML) and 413 (too large).
BODY_ERRORS = {**ERRORS, **error_responses(400, 413)}


# -- accounts -------------------------------------------------------------------------
class AccountsImported(BaseModel):
    upserted: int


@router.put(
    "/v1/accounts",
    operation_id="importAccounts",
    summary="Bulk upsert ABM accounts (JSON or CSV)",
    response_model=AccountsImported,
    responses=BODY_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "accounts": {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/AccountImport"},
                            }
                        },
                        "required": ["accounts"],
                    }
                },
                "text/csv": {"schema": {"type": "string"}},
            },
        }
    },
)
async def import_accounts(
    request: Request, key: AdminKey, session: SessionDep, runtime: RuntimeDep
) -> AccountsImported:
    """Columns: domain, name, tier, owner, territory, industry, employees, country,
    annual_revenue. Fields left out keep their stored values; all rows or none."""
    body = await read_body(request, MAX_ADMIN_BODY)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in ("text/csv", "application/csv"):
        try:
            items: Any = parse_csv(body.decode("utf-8-sig", errors="replace"))
        except csv.Error as exc:  # a stray carriage return, a field over the size limit
            raise MalformedBody(
                f"the body is not valid CSV: {exc}", code="malformed_csv", field="body"
            ) from None
    else:
        data = parse_json(body)
        items = data.get("accounts") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise InvalidInput(
                'send {"accounts": [...]}, a JSON list, or text/csv', field="accounts"
            )
    rows = validate_rows(items)
    async with session.begin():
        n = await upsert_accounts(session, rows, runtime.clock.now())
    return AccountsImported(upserted=n)


# -- policy ---------------------------------------------------------------------------
class PolicyVersionView(BaseModel):
    version: int
    created_at: str | None
    created_by: str | None
    comment: str | None
    status: str = Field(
        default="active",
        description='"active" (applied; the newest is in force) or "proposed" (from '
        "calibration, waiting for review: apply it with PUT /v1/policy)",
    )


class PolicyView(PolicyVersionView):
    policy: dict[str, Any]
    report: dict[str, Any] | None = Field(
        default=None, description="for a proposed version: what it would change and why"
    )


class PolicyVersions(BaseModel):
    versions: list[PolicyVersionView]


class DryRun(BaseModel):
    valid: bool
    would_be_version: int
    changes: list[str]
    leads_evaluated: int
    band_changes: dict[str, int]
    examples: list[dict[str, Any]]


def _policy_view(r: Any) -> PolicyView:
    return PolicyView(
        version=r.version,
        created_at=iso(r.created_at),
        created_by=r.created_by,
        comment=r.comment,
        status=r.status,
        policy=orjson.loads(r.document),
        report=orjson.loads(r.report) if r.report else None,
    )


@router.get(
    "/v1/policy",
    operation_id="getPolicy",
    summary="The active policy",
    response_model=PolicyView,
    responses=ERRORS,
)
async def get_policy(
    key: ReadKey, session: SessionDep, version: Annotated[int | None, Query(ge=1)] = None
) -> PolicyView:
    q = (
        select(policies)
        .where(policies.c.status == "active")
        .order_by(policies.c.version.desc())
        .limit(1)
    )
    if version is not None:
        q = select(policies).where(policies.c.version == version)
    row = (await session.execute(q)).first()
    if row is None:
        raise NotFound(f"no policy version {version}", field="version")
    return _policy_view(row)


@router.get(
    "/v1/policy/versions",
    operation_id="listPolicyVersions",
    summary="Every stored policy version",
    response_model=PolicyVersions,
    responses=ERRORS,
)
async def list_policy_versions(key: ReadKey, session: SessionDep) -> PolicyVersions:
    rows = await session.execute(
        select(
            policies.c.version,
            policies.c.created_at,
            policies.c.created_by,
            policies.c.comment,
            policies.c.status,
        ).order_by(policies.c.version.desc())
    )
    return PolicyVersions(
        versions=[
            PolicyVersionView(
                version=r.version,
                created_at=iso(r.created_at),
                created_by=r.created_by,
                comment=r.comment,
                status=r.status,
            )
            for r in rows
        ]
    )


def parse_policy_body(body: bytes, content_type: str) -> Any:
    if "yaml" in content_type:
        try:
            return yaml.safe_load(body)
        except yaml.YAMLError as exc:
            raise MalformedBody(
                f"the body is not valid YAML: {exc}", code="malformed_yaml", field="body"
            ) from None
    return parse_json(body)


def describe_changes(old: PolicyDoc, new: PolicyDoc) -> list[str]:
    out = []
    for name in sorted(set(old.signals) | set(new.signals)):
        a, b = old.signals.get(name), new.signals.get(name)
        if a is None:
            out.append(f"signal {name} added ({b.points if b else 0:+g} points)")
        elif b is None:
            out.append(f"signal {name} removed")
        elif a != b:
            out.append(
                f"signal {name}: {a.points:+g} → {b.points:+g} points, half-life "
                f"{a.half_life:g}s → {b.half_life:g}s"
            )
    old_fit = {r.name: r for r in old.fit.rules}
    new_fit = {r.name: r for r in new.fit.rules}
    for name in sorted(set(old_fit) | set(new_fit)):
        if old_fit.get(name) != new_fit.get(name):
            out.append(
                f"fit rule {name} "
                + (
                    "added"
                    if name not in old_fit
                    else "removed"
                    if name not in new_fit
                    else "changed"
                )
            )
    if [r.model_dump() for r in old.routing.rules] != [r.model_dump() for r in new.routing.rules]:
        out.append("routing rules changed")
    if old.scoring != new.scoring:
        out.append("bands or score limits changed")
    for section in ("lists", "segment", "teams", "feedback"):
        if getattr(old, section) != getattr(new, section):
            out.append(f"{section} changed")
    if old.routing.cooldown != new.routing.cooldown:
        out.append(f"cooldown {old.routing.cooldown:g}s → {new.routing.cooldown:g}s")
    return out


async def _impact(
    session: Any, old: CompiledPolicy, new: CompiledPolicy, now: float, limit: int = 5000
) -> tuple[int, dict[str, int], list[dict[str, Any]]]:
    """Re-score the most recently active leads under both policies (accounts not joined:
    fit rules on account fields use what the lead row carries)."""
    from app.api.read import _account

    rows = (
        await session.execute(
            select(leads)
            .where(leads.c.merged_into.is_(None))
            .order_by(leads.c.last_event_at.desc())
            .limit(limit)
        )
    ).all()
    changes: dict[str, int] = {}
    examples: list[dict[str, Any]] = []
    accts: dict[str, Any] = {}
    for r in rows:
        lead = lead_from_row(r)
        d = lead.account_domain
        if d and d not in accts:
            accts[d] = await _account(session, d)
        acct = accts.get(d) if d else None
        a, b = evaluate(old, lead, acct, now), evaluate(new, lead, acct, now)
        band_a, band_b = old.band_for(a.total, lead.band), new.band_for(b.total, lead.band)
        if band_a != band_b:
            k = f"{band_a}→{band_b}"
            changes[k] = changes.get(k, 0) + 1
            if len(examples) < 20:
                examples.append(
                    {
                        "lead_id": lead.lead_id,
                        "from": band_a,
                        "to": band_b,
                        "total_before": round(a.total, 2),
                        "total_after": round(b.total, 2),
                    }
                )
    return len(rows), changes, examples


@router.put(
    "/v1/policy",
    operation_id="putPolicy",
    summary="Validate and apply a new policy version (or preview it with dry_run=true)",
    response_model=PolicyView | DryRun,
    responses=BODY_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/yaml": {"schema": {"type": "string"}},
            },
        }
    },
)
async def put_policy(
    request: Request,
    key: AdminKey,
    session: SessionDep,
    runtime: RuntimeDep,
    policy: PolicyDep,
    dry_run: bool = False,
    comment: Annotated[str | None, Query(max_length=500)] = None,
) -> PolicyView | DryRun:
    body = await read_body(request, MAX_ADMIN_BODY)
    raw = parse_policy_body(body, request.headers.get("content-type", ""))
    doc = validate_or_raise(raw)
    now = runtime.clock.now()
    if dry_run:
        candidate = CompiledPolicy(policy.version + 1, doc)
        n, changes, examples = await _impact(session, policy, candidate, now)
        return DryRun(
            valid=True,
            would_be_version=policy.version + 1,
            changes=describe_changes(policy.doc, doc),
            leads_evaluated=n,
            band_changes=changes,
            examples=examples,
        )
    async with session.begin():
        compiled = await save_version(
            session,
            doc,
            source_text=body.decode("utf-8", "replace"),
            created_by=key.name,
            now=now,
            comment=comment,
        )
    runtime.set_policy(compiled)
    row = (
        await session.execute(select(policies).where(policies.c.version == compiled.version))
    ).one()
    return _policy_view(row)


# -- destinations ---------------------------------------------------------------------
class DestinationFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    band: list[str] | None = None
    tier: list[str] | None = None
    team: list[str] | None = None
    type: list[str] | None = None


class DestinationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    url: str = Field(min_length=1, max_length=2000)
    enabled: bool = True
    format: Literal["json", "slack"] = "json"
    filter: DestinationFilter = DestinationFilter()


class DestinationPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    url: str | None = Field(default=None, min_length=1, max_length=2000)
    enabled: bool | None = None
    format: Literal["json", "slack"] | None = None
    filter: DestinationFilter | None = None


class DestinationView(BaseModel):
    id: str
    name: str
    url: str
    enabled: bool
    format: str
    filter: dict[str, list[str]]
    created_at: str | None
    disabled_reason: str | None = Field(
        default=None,
        description='why it is off: "http_410" (the endpoint answered 410), "failing" (every '
        'attempt failed for INTENT_DELIVERY_DISABLE_AFTER_SECONDS), "admin"',
    )
    disabled_at: str | None = None
    failing_since: str | None = Field(
        default=None, description="start of the current run of failed attempts; null when healthy"
    )
    previous_secret_expires_at: str | None = Field(
        default=None, description="until then webhooks carry the previous secret's signature too"
    )
    secret: str | None = Field(default=None, description="shown only when created or rotated")


class DestinationList(BaseModel):
    destinations: list[DestinationView]


def _dest_view(r: Any, secret: str | None = None) -> DestinationView:
    return DestinationView(
        id=r.id,
        name=r.name,
        url=r.url,
        enabled=r.enabled,
        format=r.format,
        filter=orjson.loads(r.filter),
        created_at=iso(r.created_at),
        disabled_reason=r.disabled_reason,
        disabled_at=iso(r.disabled_at),
        failing_since=iso(r.failing_since),
        previous_secret_expires_at=iso(r.previous_secret_expires_at),
        secret=secret,
    )


def _filter_json(f: DestinationFilter) -> str:
    return dumps({k: v for k, v in f.model_dump().items() if v is not None and k in FILTER_KEYS})


async def _body_model(request: Request, model: type[BaseModel], *, optional: bool = False) -> Any:
    raw = await read_body(request)
    data = {} if optional and not raw.strip() else parse_json(raw)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        field, code, message = first_error(exc)
        raise InvalidInput(message, code=code, field=field) from None


@router.post(
    "/v1/destinations",
    operation_id="createDestination",
    status_code=201,
    summary="Add a webhook destination; its signing secret is shown once",
    response_model=DestinationView,
    responses={**BODY_ERRORS, **error_responses(409)},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/DestinationIn"}}
            },
        }
    },
)
async def create_destination(
    request: Request, key: AdminKey, session: SessionDep, runtime: RuntimeDep
) -> DestinationView:
    body: DestinationIn = await _body_model(request, DestinationIn)
    await runtime.guard.check_url(body.url)
    now = runtime.clock.now()
    secret = signing.new_secret()
    exists = (
        await session.execute(select(destinations.c.id).where(destinations.c.name == body.name))
    ).first()
    if exists:
        raise Conflict(
            f'a destination named "{body.name}" exists', field="name", code="destination_exists"
        )
    dest_id = new_id("dst", now)
    await session.execute(
        destinations.insert().values(
            id=dest_id,
            name=body.name,
            url=body.url,
            secret=secret,
            enabled=body.enabled,
            disabled_reason=None if body.enabled else "admin",
            disabled_at=None if body.enabled else now,
            format=body.format,
            filter=_filter_json(body.filter),
            created_at=now,
            updated_at=now,
        )
    )
    await session.commit()
    runtime.destinations.invalidate()
    row = (await session.execute(select(destinations).where(destinations.c.id == dest_id))).one()
    return _dest_view(row, secret)


@router.get(
    "/v1/destinations",
    operation_id="listDestinations",
    summary="Webhook destinations",
    response_model=DestinationList,
    responses=ERRORS,
)
async def list_destinations(key: AdminKey, session: SessionDep) -> DestinationList:
    rows = await session.execute(select(destinations).order_by(destinations.c.created_at))
    return DestinationList(destinations=[_dest_view(r) for r in rows])


async def _dest_row(session: Any, dest_id: str) -> Any:
    row = (await session.execute(select(destinations).where(destinations.c.id == dest_id))).first()
    if row is None:
        raise NotFound(
            f'no destination "{dest_id}"', field="destination_id", code="destination_not_found"
        )
    return row


@router.get(
    "/v1/destinations/{destination_id}",
    operation_id="getDestination",
    summary="One webhook destination",
    response_model=DestinationView,
    responses=ERRORS,
)
async def get_destination(
    destination_id: str, key: AdminKey, session: SessionDep
) -> DestinationView:
    return _dest_view(await _dest_row(session, destination_id))


@router.patch(
    "/v1/destinations/{destination_id}",
    operation_id="updateDestination",
    summary="Change a destination's name, url, format, filter or enabled flag",
    response_model=DestinationView,
    responses=BODY_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/DestinationPatch"}}
            },
        }
    },
)
async def update_destination(
    destination_id: str, request: Request, key: AdminKey, session: SessionDep, runtime: RuntimeDep
) -> DestinationView:
    await _dest_row(session, destination_id)
    body: DestinationPatch = await _body_model(request, DestinationPatch)
    now = runtime.clock.now()
    values: dict[str, Any] = {"updated_at": now}
    if body.url is not None:
        await runtime.guard.check_url(body.url)
        values["url"] = body.url
    if body.name is not None:
        values["name"] = body.name
    if body.format is not None:
        values["format"] = body.format
    if body.filter is not None:
        values["filter"] = _filter_json(body.filter)
    conn = await session.connection()
    await conn.execute(
        update(destinations).where(destinations.c.id == destination_id).values(**values)
    )
    resumed = 0
    if body.enabled is True:
        resumed = await dispatch.enable(conn, destination_id, now=now)
    elif body.enabled is False:
        await dispatch.disable(conn, [destination_id], reason="admin", now=now)
    await session.commit()
    runtime.destinations.invalidate()
    if resumed and runtime.dispatcher is not None:
        runtime.dispatcher.poke()
    return _dest_view(await _dest_row(session, destination_id))


@router.delete(
    "/v1/destinations/{destination_id}",
    operation_id="deleteDestination",
    status_code=204,
    summary="Remove a destination",
    responses=ERRORS,
)
async def delete_destination(
    destination_id: str, key: AdminKey, session: SessionDep, runtime: RuntimeDep
) -> Response:
    await _dest_row(session, destination_id)
    await session.execute(delete(destinations).where(destinations.c.id == destination_id))
    # Nothing will ever send what it still had queued: close it out, visibly.
    await session.execute(
        update(deliveries)
        .where(
            deliveries.c.destination_id == destination_id,
            deliveries.c.status.in_(("pending", "parked")),
        )
        .values(status="dead", last_error="destination_deleted", locked_until=None)
    )
    await session.commit()
    runtime.destinations.invalidate()
    return Response(status_code=204)


class TestSendResult(BaseModel):
    delivered: bool
    status_code: int | None
    latency_ms: float
    error: str | None


@router.post(
    "/v1/destinations/{destination_id}/test",
    operation_id="testDestination",
    summary="Send a signed test.ping webhook now",
    response_model=TestSendResult,
    responses=ERRORS,
)
async def test_destination(
    destination_id: str, key: AdminKey, session: SessionDep, runtime: RuntimeDep
) -> TestSendResult:
    row = await _dest_row(session, destination_id)
    target = await runtime.guard.resolve(row.url)
    now = runtime.clock.now()
    msg_id = new_id("msg", now)
    body = formats.render(
        row.format,
        orjson.dumps(
            {
                "type": "test.ping",
                "timestamp": iso(now),
                "data": {"destination_id": row.id, "name": row.name},
            }
        ),
    )
    headers = signing.headers(destination_from_row(row).secrets(now), msg_id, int(now), body)
    headers.update(target.headers)
    t0 = time.perf_counter()
    try:
        async with httpx.AsyncClient(
            timeout=runtime.settings.delivery_timeout_seconds, follow_redirects=False
        ) as client:
            resp = await client.post(
                target.url, content=body, headers=headers, extensions=target.extensions
            )
    except httpx.HTTPError as exc:
        return TestSendResult(
            delivered=False,
            status_code=None,
            latency_ms=(time.perf_counter() - t0) * 1000,
            error=f"{type(exc).__name__}: {exc}"[:300],
        )
    return TestSendResult(
        delivered=200 <= resp.status_code < 300,
        status_code=resp.status_code,
        latency_ms=(time.perf_counter() - t0) * 1000,
        error=None if resp.is_success else f"http_{resp.status_code}",
    )


class Redelivered(BaseModel):
    id: str
    status: str


@router.post(
    "/v1/deliveries/{delivery_id}/redeliver",
    operation_id="redeliver",
    summary="Send a delivery again (dead-lettered or delivered)",
    response_model=Redelivered,
    status_code=202,
    responses=ERRORS,
)
async def redeliver(
    delivery_id: str, key: AdminKey, session: SessionDep, runtime: RuntimeDep
) -> Redelivered:
    async with session.begin():
        result = await session.execute(
            update(deliveries)
            .where(deliveries.c.id == delivery_id)
            .values(
                status="pending", attempts=0, next_attempt_at=runtime.clock.now(), locked_until=None
            )
            .returning(deliveries.c.id)
        )
        if result.first() is None:
            raise NotFound(
                f'no delivery "{delivery_id}"', field="delivery_id", code="delivery_not_found"
            )
    if runtime.dispatcher is not None:
        runtime.dispatcher.poke()
    return Redelivered(id=delivery_id, status="pending")


# -- secret rotation and bulk redrive -------------------------------------------------
DAY = 86400


class RotateSecretIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overlap_seconds: int = Field(
        default=DAY,
        ge=0,
        le=7 * DAY,
        description="how long webhooks keep carrying the old secret's signature too",
    )


@router.post(
    "/v1/destinations/{destination_id}/rotate-secret",
    operation_id="rotateDestinationSecret",
    summary="Replace the signing secret (shown once); the old one keeps signing for a while",
    response_model=DestinationView,
    responses=BODY_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": RotateSecretIn.model_json_schema()}},
        }
    },
)
async def rotate_destination_secret(
    destination_id: str, request: Request, key: AdminKey, session: SessionDep, runtime: RuntimeDep
) -> DestinationView:
    """During the overlap each webhook carries both signatures, so receivers can switch to
    the new secret at their own pace. Rotating again drops the older previous secret."""
    row = await _dest_row(session, destination_id)
    body: RotateSecretIn = await _body_model(request, RotateSecretIn, optional=True)
    now = runtime.clock.now()
    secret = signing.new_secret()
    overlap = body.overlap_seconds
    await session.execute(
        update(destinations)
        .where(destinations.c.id == destination_id)
        .values(
            secret=secret,
            previous_secret=row.secret if overlap else None,
            previous_secret_expires_at=now + overlap if overlap else None,
            updated_at=now,
        )
    )
    await session.commit()
    runtime.destinations.invalidate()
    return _dest_view(await _dest_row(session, destination_id), secret)


class RedriveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: AwareDatetime = Field(description="deliveries created at or after this time")
    until: AwareDatetime | None = Field(default=None, description="and before this time")
    status: list[Literal["dead", "delivered"]] = Field(default=["dead"], min_length=1)


class Redriven(BaseModel):
    redriven: int


@router.post(
    "/v1/destinations/{destination_id}/redrive",
    operation_id="redriveDestination",
    summary="Send a destination's dead-lettered deliveries of a time range again",
    response_model=Redriven,
    status_code=202,
    responses={**BODY_ERRORS, **error_responses(409)},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": RedriveIn.model_json_schema()}},
        }
    },
)
async def redrive_destination(
    destination_id: str, request: Request, key: AdminKey, session: SessionDep, runtime: RuntimeDep
) -> Redriven:
    row = await _dest_row(session, destination_id)
    body: RedriveIn = await _body_model(request, RedriveIn)
    since = body.since.timestamp()
    until = body.until.timestamp() if body.until is not None else None
    if until is not None and until <= since:
        raise InvalidInput("until must be after since", field="until")
    if not row.enabled:
        raise Conflict(
            "the destination is disabled; re-enable it before redriving",
            field="destination_id",
            code="destination_disabled",
        )
    match = [
        deliveries.c.destination_id == destination_id,
        deliveries.c.status.in_(body.status),
        deliveries.c.created_at >= since,
    ]
    if until is not None:
        match.append(deliveries.c.created_at < until)
    result = await session.execute(
        update(deliveries)
        .where(*match)
        .values(
            status="pending", attempts=0, next_attempt_at=runtime.clock.now(), locked_until=None
        )
        .returning(deliveries.c.id)
    )
    n = len(result.all())
    await session.commit()
    if n and runtime.dispatcher is not None:
        runtime.dispatcher.poke()
    return Redriven(redriven=n)
