"""Domain objects for the unit tests of the pipeline's stages: a compiled policy (the
shipped default, optionally changed), validated events as the adapters hand them over,
and a lead as the identify stage creates it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from app.events import Event
from app.policy.defaults import default_policy_raw
from app.policy.schema import CompiledPolicy, parse_policy
from app.scoring.state import LeadState

HOUR = 3600.0
DAY = 86400.0
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC).timestamp()

# The default policy's ICP in full (size, industry, country, revenue: fit 10 + 10 + 10 + 5;
# a VP title adds 15 → fit 50, its maximum).
ICP_ACCOUNT: dict[str, Any] = {
    "name": "Acme",
    "industry": "software",
    "employees": 1200,
    "country": "US",
    "annual_revenue": 50_000_000,
}


def policy_with(
    mutate: Callable[[dict[str, Any]], None] | None = None, *, version: int = 1
) -> CompiledPolicy:
    """The shipped default policy, changed by ``mutate``, compiled as ``version``."""
    raw = copy.deepcopy(default_policy_raw())
    if mutate is not None:
        mutate(raw)
    doc, errors = parse_policy(raw)
    assert errors == [], [str(e) for e in errors]
    assert doc is not None
    return CompiledPolicy(version, doc)


def make_event(
    event_id: str,
    type_: str,
    t: float,
    *,
    email: str | None = None,
    anonymous_id: str | None = None,
    user_id: str | None = None,
    account_domain: str | None = None,
    account: dict[str, Any] | None = None,
    source: str = "website",
    received_at: float | None = None,
    **lead_attrs: Any,
) -> Event:
    """A validated, normalised event, as ingest hands it to the pipeline."""
    raw = {"event_id": event_id, "type": type_, "occurred_at": t, "source": source}
    return Event(
        event_id=event_id,
        type=type_,
        occurred_at=t,
        received_at=t if received_at is None else received_at,
        source=source,
        transport="http",
        email=email,
        anonymous_id=anonymous_id,
        user_id=user_id,
        lead_attrs=dict(lead_attrs),
        account_domain=account_domain,
        account_attrs=dict(account or {}),
        raw=raw,
    )


def new_lead(policy: CompiledPolicy, lead_id: str, *, t: float, **attributes: Any) -> LeadState:
    """A lead seen for the first time at ``t``: no signals, in the lowest band."""
    return LeadState(
        lead_id=lead_id,
        email=lead_id if "@" in lead_id and ":" not in lead_id else None,
        account_domain=None,
        attributes=dict(attributes),
        signals={},
        fit=0.0,
        intent=0.0,
        band=policy.bands[-1].name,
        band_at=t,
        policy_version=policy.version,
        source="website",
        first_seen_at=t,
        last_event_at=t,
        updated_at=t,
        dirty=True,
        is_new=True,
    )
