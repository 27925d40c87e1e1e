"""Admin API: the ABM account list (JSON or CSV upsert)."""

from __future__ import annotations

import csv
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from app.api.body import parse_json, read_body
from app.api.deps import RuntimeDep, SessionDep
from app.api.read import ERRORS
from app.auth import AdminKey
from app.errors import InvalidInput, MalformedBody, error_responses
from app.matching.abm import parse_csv, upsert_accounts, validate_rows

router = APIRouter()
MAX_ADMIN_BODY = 32 * 1024 * 1024
# Routes that read a body also answer 400 (not JSON/YAML) and 413 (too large).
BODY_ERRORS = {**ERRORS, **error_responses(400, 413)}


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
    n = await upsert_accounts(session, rows, runtime.clock.now())
    return AccountsImported(upserted=n)


# -- policy ---------------------------------------------------------------------------
