"""Routing rules, cooldown and escalation: pure functions over the compiled policy."""

from __future__ import annotations

from app.policy.conditions import Context
from app.policy.schema import TIER_RANK, CompiledPolicy, CompiledRule


def match_rule(
    policy: CompiledPolicy,
    *,
    kind: str,
    band: str | None,
    tier: str | None,
    active_leads: int,
    ctx: Context,
) -> CompiledRule | None:
    """The first rule of ``kind`` (lead | account) whose conditions hold, in priority order."""
    tier_key = tier or "none"
    for compiled in policy.rules:
        rule = compiled.rule
        if rule.kind != kind:
            continue
        if compiled.bands is not None and band not in compiled.bands:
            continue
        if compiled.tiers is not None and tier_key not in compiled.tiers:
            continue
        if rule.when.active_leads_gte is not None and active_leads < rule.when.active_leads_gte:
            continue
        if all(pred(ctx) for pred in compiled.conditions):
            return compiled
    return None


def tier_rank(tier: str | None) -> int:
    return TIER_RANK.get(tier or "", 0)


def cooldown_verdict(
    policy: CompiledPolicy,
    *,
    now: float,
    last_at: float | None,
    last_band: str | None,
    last_tier: str | None,
    band: str | None,
    tier: str | None,
) -> tuple[bool, bool]:
    """(allowed, escalation): one decision per cooldown window unless band or tier rose."""
    if last_at is None or now - last_at >= policy.doc.routing.cooldown:
        return True, False
    band_up = (
        band is not None
        and last_band is not None
        and policy.band_rank.get(band, 0) > policy.band_rank.get(last_band, 0)
    )
    tier_up = tier_rank(tier) > tier_rank(last_tier)
    escalated = band_up or tier_up
    return escalated, escalated
