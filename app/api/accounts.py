"""Admin API: the ABM account list (JSON or CSV upsert)."""

from __future__ import annotations

import csv
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.api.body import BODY_ERRORS, CSV, JSON, MAX_ADMIN_BODY, CsvText, RequestBody
from app.api.deps import RuntimeDep, SessionDep
from app.auth import AdminKey
from app.errors import InvalidInput, MalformedBody
from app.matching.abm import (
    MAX_ACCOUNTS,
    AccountImport,
    parse_csv,
    upsert_accounts,
    validate_rows,
)

router = APIRouter()


class AccountsImport(BaseModel):
    accounts: list[AccountImport] = Field(max_length=MAX_ACCOUNTS)


class AccountsImported(BaseModel):
    upserted: int


def _rows(data: Any, _raw: bytes) -> list[AccountImport]:
    """The rows of a CSV body, of ``{"accounts": [...]}`` or of a bare JSON list; all valid
    or a 422 naming each bad row's field."""
    if isinstance(data, CsvText):
        try:
            items: Any = parse_csv(data.text)
        except csv.Error as exc:  # a stray carriage return, a field over the size limit
            raise MalformedBody(
                f"the body is not valid CSV: {exc}", code="malformed_csv", field="body"
            ) from None
    else:
        items = data.get("accounts") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise InvalidInput(
                'send {"accounts": [...]}, a JSON list, or text/csv', field="accounts"
            )
    return validate_rows(items)


ACCOUNTS_BODY = RequestBody(AccountsImport, JSON, CSV, validate=_rows, limit=MAX_ADMIN_BODY)


@router.put(
    "/v1/accounts",
    operation_id="importAccounts",
    summary="Bulk upsert ABM accounts (JSON or CSV)",
    response_model=AccountsImported,
    responses=BODY_ERRORS,
)
async def import_accounts(
    key: AdminKey,
    rows: Annotated[list[AccountImport], ACCOUNTS_BODY],
    session: SessionDep,
    runtime: RuntimeDep,
) -> AccountsImported:
    """Columns: domain, name, tier, owner, territory, industry, employees, country,
    annual_revenue. Fields left out keep their stored values; all rows or none."""
    n = await upsert_accounts(session, rows, runtime.clock.now())
    return AccountsImported(upserted=n)
