"""Calibration's data: each lead routing with its decayed signal counts at decision time.

The counts come from the ``events`` table: for each signal ``s`` the decayed *unweighted*
count at the decision time ``t_d``, ``x_s = Σ 2^(-(t_d - t_e)/h_s)`` over the lead's events
of type ``s`` with ``t_e ≤ t_d``, the events of identities merged into the lead included.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import decisions, events, leads, loads
from app.policy.schema import CompiledPolicy
from app.scoring.decay import decay_factor

POSITIVE = frozenset({"accepted", "opportunity", "won"})
NEGATIVE = frozenset({"rejected", "lost"})
_CHUNK = 1000


@dataclass
class Sample:
    decision_id: str
    lead_id: str
    at: float
    fit: float
    disposition: str | None
    features: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> bool | None:
        if self.disposition in POSITIVE:
            return True
        if self.disposition in NEGATIVE:
            return False
        return None


def decayed_counts(
    history: Iterable[tuple[str, float]], t: float, half_lives: Mapping[str, float]
) -> dict[str, float]:
    """``Σ 2^(-(t - t_e)/h_s)`` per signal over the events ``(type, t_e)`` with ``t_e ≤ t``."""
    out = dict.fromkeys(half_lives, 0.0)
    for signal, t_e in history:
        h = half_lives.get(signal)
        if h is not None and t_e <= t:
            out[signal] += decay_factor(t - t_e, h)
    return out


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


async def _identities(session: AsyncSession, lead_ids: Iterable[str]) -> dict[str, str]:
    """Every lead id whose events count for ``lead_ids``: itself and what merged into it."""
    owner = {lid: lid for lid in lead_ids}
    frontier = list(owner)
    while frontier:
        found: list[str] = []
        for chunk in _chunks(frontier):
            rows = await session.execute(
                select(leads.c.lead_id, leads.c.merged_into).where(leads.c.merged_into.in_(chunk))
            )
            for lid, into in rows:
                if lid not in owner:
                    owner[lid] = owner[into]
                    found.append(lid)
        frontier = found
    return owner


async def histories(
    session: AsyncSession, lead_ids: Iterable[str], signals: Iterable[str], until: float
) -> dict[str, list[tuple[str, float]]]:
    """``lead_id -> [(type, occurred_at)]`` sorted by time, merged identities included."""
    owner = await _identities(session, lead_ids)
    out: dict[str, list[tuple[str, float]]] = {}
    for chunk in _chunks(list(owner)):
        rows = await session.execute(
            select(events.c.lead_id, events.c.type, events.c.occurred_at).where(
                events.c.lead_id.in_(chunk),
                events.c.type.in_(list(signals)),
                events.c.occurred_at <= until,
            )
        )
        for lid, type_, at in rows:
            out.setdefault(owner[lid], []).append((type_, at))
    for history in out.values():
        history.sort(key=lambda e: e[1])
    return out


async def load_samples(
    session: AsyncSession, policy: CompiledPolicy, *, since: float, until: float
) -> list[Sample]:
    """Every lead routing in ``[since, until)`` with its features at the decision time
    (with or without an outcome: the dry run needs them all)."""
    rows = (
        await session.execute(
            select(
                decisions.c.id,
                decisions.c.lead_id,
                decisions.c.created_at,
                decisions.c.disposition,
                decisions.c.payload,
                leads.c.fit,
            )
            .select_from(decisions.outerjoin(leads, leads.c.lead_id == decisions.c.lead_id))
            .where(
                decisions.c.type == "lead.routed",
                decisions.c.lead_id.is_not(None),
                decisions.c.created_at >= since,
                decisions.c.created_at < until,
            )
            .order_by(decisions.c.created_at)
        )
    ).all()
    samples = []
    for r in rows:
        score = loads(r.payload).get("data", {}).get("score") or {}
        fit = score.get("fit", r.fit if r.fit is not None else 0.0)
        samples.append(Sample(r.id, r.lead_id, r.created_at, float(fit), r.disposition))
    by_lead = await histories(session, {s.lead_id for s in samples}, policy.half_lives, until)
    for s in samples:
        s.features = decayed_counts(by_lead.get(s.lead_id, []), s.at, policy.half_lives)
    return samples
