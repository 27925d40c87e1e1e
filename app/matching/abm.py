"""ABM account lists: bulk upsert of firmographics, tiers, owners and territories."""

from __future__ import annotations

import csv
import io
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import accounts, batches, dumps, upsert
from app.errors import InvalidInput, first_error
from app.events import ACCOUNT_FIELDS, MAX_EMPLOYEES, MAX_REVENUE, Country, Domain, ShortText, Slug

ABM_COLUMNS = ("domain", *ACCOUNT_FIELDS)
MAX_ACCOUNTS = 50_000


class AccountImport(BaseModel):
    """One row of an ABM list; omitted fields keep their stored values."""

    model_config = ConfigDict(extra="forbid")

    domain: Domain
    name: ShortText | None = None
    tier: Literal["tier_1", "tier_2", "tier_3"] | None = None
    owner: ShortText | None = None
    territory: ShortText | None = None
    industry: Slug | None = None
    employees: int | None = Field(default=None, ge=0, le=MAX_EMPLOYEES)
    country: Country | None = None
    annual_revenue: float | None = Field(default=None, ge=0, le=MAX_REVENUE, allow_inf_nan=False)

    @field_validator("tier", mode="before")
    @classmethod
    def _tier(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip().lower().replace(" ", "_").replace("-", "_")
            if v in ("1", "2", "3"):
                v = f"tier_{v}"
            if v in ("", "none"):
                return None
        return v


def parse_csv(text: str) -> list[dict[str, Any]]:
    """CSV with a header row; empty cells mean "not given"."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None:
        raise InvalidInput("the CSV is empty", field="body")
    header = [h.strip().lower() for h in reader.fieldnames]
    unknown = [h for h in header if h not in ABM_COLUMNS]
    if unknown:
        raise InvalidInput(
            f'unknown CSV column "{unknown[0]}" (columns: {", ".join(ABM_COLUMNS)})',
            code="unknown_field",
            field=unknown[0],
        )
    if "domain" not in header:
        raise InvalidInput('the CSV needs a "domain" column', field="domain")
    rows = []
    for raw in reader:
        row = {}
        for key, value in zip(header, raw.values(), strict=False):
            if isinstance(value, str) and value.strip():
                row[key] = value.strip()
        rows.append(row)
    return rows


def validate_rows(items: list[Any]) -> list[AccountImport]:
    if len(items) > MAX_ACCOUNTS:
        raise InvalidInput(f"at most {MAX_ACCOUNTS} accounts per request", field="accounts")
    out, errors = [], []
    for i, item in enumerate(items):
        try:
            out.append(AccountImport.model_validate(item))
        except ValidationError as exc:
            field, code, message = first_error(exc)
            errors.append({"field": f"accounts[{i}].{field}", "code": code, "message": message})
    if errors:
        raise InvalidInput(
            f"{len(errors)} invalid account row(s); first: {errors[0]['field']}: "
            f"{errors[0]['message']}",
            field=errors[0]["field"],
            errors=errors[:100],
        )
    return out


async def upsert_accounts(
    session: AsyncSession, rows: list[AccountImport], now: float, *, recorded: bool = True
) -> int:
    """Insert new accounts and update the given columns of existing ones; the import is
    recorded as a batch (``recorded``; a replay applying it again does not record it)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    latest = {row.domain: row for row in rows}  # one row per domain: the last one wins
    for row in latest.values():
        given = row.model_dump(exclude_unset=True)
        cols = tuple(sorted(k for k in given if k != "domain"))
        record = {
            **given,
            "attributes": "{}",
            "signals": "{}",
            "active_leads": 0,
            "updated_at": now,
        }
        groups.setdefault(cols, []).append(record)
    for cols, records in groups.items():
        await upsert(session, accounts, records, ["domain"], update_cols=[*cols, "updated_at"])
    if recorded and latest:
        # In the batches' order, so that a replay imports them where they happened.
        imported = [r.model_dump(mode="json", exclude_unset=True) for r in latest.values()]
        await session.execute(insert(batches).values(at=now, accounts=dumps(imported)))
    return len(latest)
