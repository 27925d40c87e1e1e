"""Admin API: the ABM account list (JSON or CSV upsert).

An upload is bounded before it is parsed: ``MAX_ADMIN_BODY`` bytes (16 MiB, also once
gunzipped), at most ``MAX_ACCOUNTS`` rows (413 ``too_many_rows``: a CSV's rows are counted
as they are read, stopping at the first one over; a JSON body's objects and values are
bounded from its brackets and commas before orjson builds them), nesting 64 deep.
"""

from __future__ import annotations

import csv
import io
from itertools import islice
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.api.body import (
    BODY_ERRORS,
    CSV,
    JSON,
    MAX_ADMIN_BODY,
    CsvText,
    Format,
    RequestBody,
    csv_text,
    parse_admin_json,
)
from app.api.deps import RuntimeDep, SessionDep
from app.auth import AdminKey
from app.errors import InvalidInput, MalformedBody, PayloadTooLarge
from app.matching.abm import (
    MAX_ACCOUNTS,
    AccountImport,
    parse_csv,
    upsert_accounts,
    validate_rows,
)

router = APIRouter()
# Values in a JSON upload: a row has at most 9 fields (and 9 commas), with room to spare.
MAX_JSON_VALUES = 20 * MAX_ACCOUNTS


def _too_many_rows(how: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"at most {MAX_ACCOUNTS} accounts per request ({how})",
        code="too_many_rows",
        field="accounts",
    )


def accounts_json(body: bytes) -> Any:
    """JSON whose size in rows is bounded before it is parsed: a row is an object, and an
    upper bound of objects and values is read off the brackets and commas (one inside a
    string only makes the count larger)."""
    containers = body.count(b"{") + body.count(b"[")
    if containers > MAX_ACCOUNTS + 2 or body.count(b",") > MAX_JSON_VALUES:
        raise _too_many_rows("counted from the body's brackets and commas, before parsing")
    return parse_admin_json(body)


def accounts_csv(body: bytes) -> CsvText:
    """CSV text; more rows than allowed are refused as they are read (a row may span
    lines, so the line count only says when to count)."""
    text = csv_text(body)
    if text.text.count("\n") > MAX_ACCOUNTS + 1:
        reader = csv.reader(io.StringIO(text.text, newline=""))
        try:
            rows = sum(1 for _ in islice((r for r in reader if r), MAX_ACCOUNTS + 2))
        except csv.Error:
            return text  # parse_csv reports where it is broken
        if rows > MAX_ACCOUNTS + 1:  # the header and the rows
            raise _too_many_rows(f"the CSV has more than {MAX_ACCOUNTS} rows")
    return text


ACCOUNTS_JSON = Format(JSON.media_type, JSON.matches, accounts_json)
ACCOUNTS_CSV = Format(CSV.media_type, CSV.matches, accounts_csv, as_text=True)


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
    if len(items) > MAX_ACCOUNTS:
        raise _too_many_rows(f"{len(items)} sent")
    return validate_rows(items)


ACCOUNTS_BODY = RequestBody(
    AccountsImport,
    ACCOUNTS_JSON,
    ACCOUNTS_CSV,
    validate=_rows,
    limit=MAX_ADMIN_BODY,
    admin=True,
)


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
