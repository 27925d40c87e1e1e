"""A dry run's impact: re-score recent leads under the active and the candidate policy."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import leads
from app.policy.schema import CompiledPolicy
from app.scoring.engine import evaluate
from app.scoring.state import AccountState, lead_from_row, load_account


async def band_changes(
    session: AsyncSession, old: CompiledPolicy, new: CompiledPolicy, now: float, limit: int = 5000
) -> tuple[int, dict[str, int], list[dict[str, Any]]]:
    """Re-score the most recently active leads under both policies (accounts not joined:
    fit rules on account fields use what the lead row carries)."""
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
    accts: dict[str, AccountState | None] = {}
    for r in rows:
        lead = lead_from_row(r)
        d = lead.account_domain
        if d and d not in accts:
            accts[d] = await load_account(session, d)
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
