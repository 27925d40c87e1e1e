"""Admin API: API keys — list (never the key), create (the key shown once), change the
quota or expiry, revoke.

A revoked or expired key is refused on every replica within a second (the key cache's
lifetime, ``app.auth.CACHE_SECONDS``) and at once on the replica that revoked it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from app.api.body import BODY_ERRORS, RequestBody
from app.api.deps import RuntimeDep, SessionDep, after_commit
from app.api.read import ERRORS
from app.auth import SCOPES, AdminKey, create_key, key_rows, revoke_key, update_key
from app.clock import iso
from app.errors import InvalidInput

router = APIRouter()

# Bounds on a quota: enough for any real sender, and no float that overflows the bucket.
MAX_RATE = 1_000_000.0
MAX_BURST = 10_000_000

Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
Rate = Annotated[
    float | None,
    Field(default=None, gt=0, le=MAX_RATE, description="events per second; null: the default"),
]
Burst = Annotated[
    int | None,
    Field(default=None, ge=1, le=MAX_BURST, description="bucket size in events; null: default"),
]
Expiry = Annotated[
    AwareDatetime | None,
    Field(default=None, description="refused from this time on (401 key_expired)"),
]


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name = Field(description="who or what uses the key")
    scopes: list[str] = Field(min_length=1, max_length=4, description=", ".join(SCOPES))
    expires_at: Expiry = None
    rate_limit: Rate = None
    rate_burst: Burst = None


class KeyPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expires_at: Expiry = None
    rate_limit: Rate = None
    rate_burst: Burst = None


class KeyView(BaseModel):
    id: str
    name: str
    prefix: str = Field(description="the key's first characters, to recognise it")
    scopes: list[str]
    created_at: str | None
    last_used_at: str | None = Field(description="to the minute (written at most once a minute)")
    expires_at: str | None
    revoked_at: str | None
    rate_limit: float | None = Field(description="events per second; null: the default")
    rate_burst: int | None = Field(description="null: the default")


class CreatedKey(KeyView):
    key: str = Field(description="the key itself: shown only now, only its hash is stored")


class KeyList(BaseModel):
    keys: list[KeyView]


def _view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        **row,
        "scopes": row["scopes"].split(","),
        **{f: iso(row[f]) for f in ("created_at", "last_used_at", "expires_at", "revoked_at")},
    }


def _scopes(scopes: list[str]) -> list[str]:
    for i, scope in enumerate(scopes):
        if scope not in SCOPES:
            raise InvalidInput(
                f'scopes[{i}]: "{scope[:50]}" is not one of {", ".join(SCOPES)}',
                code="unknown_scope",
                field=f"scopes[{i}]",
            )
    return list(dict.fromkeys(scopes))


def _future(at: datetime | None, now: float) -> float | None:
    if at is None:
        return None
    if at.timestamp() <= now:
        raise InvalidInput("expires_at: must be in the future", field="expires_at")
    return at.timestamp()


@router.get(
    "/v1/keys",
    operation_id="listKeys",
    summary="API keys (never the keys themselves or their hashes)",
    response_model=KeyList,
    responses=ERRORS,
)
async def list_keys(key: AdminKey, session: SessionDep) -> KeyList:
    return KeyList(keys=[KeyView(**_view(r)) for r in await key_rows(session)])


@router.post(
    "/v1/keys",
    operation_id="createKey",
    status_code=201,
    summary="Create an API key; the key is shown once",
    response_model=CreatedKey,
    responses=BODY_ERRORS,
)
async def create_api_key(
    key: AdminKey,
    session: SessionDep,
    runtime: RuntimeDep,
    body: Annotated[KeyIn, RequestBody(KeyIn)],
) -> CreatedKey:
    now = runtime.clock.now()
    key_id, secret = await create_key(
        session,
        name=body.name,
        scopes=_scopes(body.scopes),
        now=now,
        expires_at=_future(body.expires_at, now),
        rate_limit=body.rate_limit,
        rate_burst=body.rate_burst,
    )
    [row] = await key_rows(session, key_id)
    return CreatedKey(**_view(row), key=secret)


@router.patch(
    "/v1/keys/{key_id}",
    operation_id="updateKey",
    summary="Change a key's quota or expiry (null: back to the default, or no expiry)",
    response_model=KeyView,
    responses=BODY_ERRORS,
)
async def update_api_key(
    key_id: str,
    key: AdminKey,
    session: SessionDep,
    runtime: RuntimeDep,
    body: Annotated[KeyPatch, RequestBody(KeyPatch)],
) -> KeyView:
    values = body.model_dump(exclude_unset=True)
    if "expires_at" in values:
        values["expires_at"] = _future(body.expires_at, runtime.clock.now())
    row = await update_key(session, key_id, values)
    after_commit(session, runtime.keys.invalidate)
    return KeyView(**_view(row))


@router.delete(
    "/v1/keys/{key_id}",
    operation_id="revokeKey",
    status_code=204,
    summary="Revoke a key: refused everywhere within a second (revoking again is a no-op)",
    responses=ERRORS,
)
async def revoke_api_key(
    key_id: str, key: AdminKey, session: SessionDep, runtime: RuntimeDep
) -> Response:
    await revoke_key(session, key_id, now=runtime.clock.now())
    after_commit(session, runtime.keys.invalidate)
    return Response(status_code=204)
