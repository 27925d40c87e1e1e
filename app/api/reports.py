"""``GET /v1/reports/sources``: the window and format parsed here, the scorecard computed
in ``app.reports`` (see there for what each population and figure means)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from app.api.deps import PolicyDep, RuntimeDep, SessionDep
from app.auth import ReadKey
from app.clock import iso
from app.errors import InvalidInput, error_responses
from app.reports import GroupBy, SourceGroup, SourceReport, build_report

router = APIRouter()

DEFAULT_WINDOW = 30 * 86400.0
# Accepted bounds for since/until: events before 2000 are refused anyway, and far dates
# would overflow the conversion to timestamps.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def _timestamp(value: datetime | None, name: str) -> float | None:
    if value is None:
        return None
    value = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if not EARLIEST <= value < LATEST:
        raise InvalidInput(
            f"{name}: must be between 2000-01-01 and 9000-01-01", field=name, code="out_of_range"
        )
    return value.timestamp()


def window(since: datetime | None, until: datetime | None, now: float) -> tuple[float, float]:
    """``[since, until)`` in seconds; defaults: until now, since 30 days before until."""
    until_ts = _timestamp(until, "until")
    since_ts = _timestamp(since, "since")
    end = until_ts if until_ts is not None else now
    start = since_ts if since_ts is not None else end - DEFAULT_WINDOW
    if end <= start:
        raise InvalidInput(
            f"until: must be after since ({iso(start)})", field="until", code="invalid_window"
        )
    return start, end


CSV_COLUMNS = [name for name in SourceGroup.model_fields if name != "rejection_reasons"]
# A text cell starting with one of these is a formula to Excel, LibreOffice and Sheets
# (``=HYPERLINK(…)`` in a source name): prefixed with ``'``, as OWASP's CSV injection
# guidance says, so it is shown as text. Numbers are written as numbers.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def cell(value: object) -> object:
    """A CSV cell that a spreadsheet shows as written, never evaluates."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def to_csv(report: SourceReport, reasons: Sequence[str]) -> str:
    """One row per group; each rejection reason a ``reason_<name>`` column."""
    seen = {r for g in report.groups for r in g.rejection_reasons}
    all_reasons = [*reasons, *sorted(seen - set(reasons))]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow([cell(c) for c in (*CSV_COLUMNS, *(f"reason_{r}" for r in all_reasons))])
    for g in report.groups:
        values = g.model_dump()
        writer.writerow(
            [
                *("" if values[c] is None else cell(values[c]) for c in CSV_COLUMNS),
                *(g.rejection_reasons.get(r, 0) for r in all_reasons),
            ]
        )
    return buf.getvalue()


@router.get(
    "/v1/reports/sources",
    operation_id="getSourceReport",
    summary="Per-source quality scorecard: volume, fit, acceptance, opportunities, wins",
    response_model=SourceReport,
    responses={
        200: {
            "content": {"text/csv": {"schema": {"type": "string"}}},
            "description": "JSON, or CSV (one row per group) with format=csv",
        },
        **error_responses(401, 403, 422, 503),
    },
)
async def get_source_report(
    key: ReadKey,
    session: SessionDep,
    runtime: RuntimeDep,
    policy: PolicyDep,
    since: Annotated[
        datetime | None,
        Query(description="ISO 8601; default: 30 days before until. Inclusive."),
    ] = None,
    until: Annotated[
        datetime | None, Query(description="ISO 8601; default: now. Exclusive.")
    ] = None,
    group_by: Annotated[GroupBy, Query(description="source, campaign or tier")] = "source",
    format: Annotated[Literal["json", "csv"], Query(description="json or csv")] = "json",
) -> SourceReport | Response:
    """Leads first seen in the window (volume, ICP fit, hot) and lead.routed decisions made
    in it (acceptance, SLA, opportunities, wins, rejections, times), grouped by the lead's
    first-touch source or campaign or its account's tier. See the README for definitions."""
    now = runtime.clock.now()
    start, end = window(since, until, now)
    report = await build_report(session, policy, since=start, until=end, group_by=group_by, now=now)
    if format == "csv":
        return Response(
            to_csv(report, policy.doc.feedback.rejection_reasons),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="sources-by-{group_by}.csv"'},
        )
    return report
