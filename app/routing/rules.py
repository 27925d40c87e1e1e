"""Routing rules, cooldown and escalation: pure functions over the compiled policy."""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

from app.policy.conditions import Context, Failure, Tracer, failure, trace_condition
from app.policy.schema import TIER_RANK, CompiledPolicy, CompiledRule

# Each policy's rule conditions as tracers, compiled when the policy first routes.
_TRACERS: WeakKeyDictionary[CompiledPolicy, list[tuple[Tracer, ...]]] = WeakKeyDictionary()


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


def trace_rules(
    policy: CompiledPolicy,
    *,
    kind: str,
    band: str | None,
    tier: str | None,
    active_leads: int,
    ctx: Context,
) -> tuple[CompiledRule | None, list[dict[str, Any]]]:
    """``match_rule`` with the "why not": the same winner (or None), and each rule of
    ``kind`` evaluated before it as ``{"rule", "failed": {field, op, expected, actual}}``,
    naming its first failing condition (band, tier, active leads, then each condition in
    order). Rules of the other kind are skipped, as ``match_rule`` skips them."""
    tracers = _TRACERS.get(policy)
    if tracers is None:
        tracers = _TRACERS[policy] = [
            tuple(trace_condition(c, policy.lists) for c in r.rule.when.conditions)
            for r in policy.rules
        ]
    evaluated: list[dict[str, Any]] = []
    for compiled, conditions in zip(policy.rules, tracers, strict=True):
        if compiled.rule.kind != kind:
            continue
        failed = _first_failure(compiled, conditions, band, tier, active_leads, ctx)
        if failed is None:
            return compiled, evaluated
        evaluated.append({"rule": compiled.rule.name, "failed": failed})
    return None, evaluated


def _first_failure(
    compiled: CompiledRule,
    conditions: tuple[Tracer, ...],
    band: str | None,
    tier: str | None,
    active_leads: int,
    ctx: Context,
) -> Failure | None:
    when = compiled.rule.when
    if compiled.bands is not None and band not in compiled.bands:
        return failure("band", "eq" if isinstance(when.band, str) else "in", when.band, band)
    tier_key = tier or "none"
    if compiled.tiers is not None and tier_key not in compiled.tiers:
        return failure("tier", "eq" if isinstance(when.tier, str) else "in", when.tier, tier_key)
    if when.active_leads_gte is not None and active_leads < when.active_leads_gte:
        return failure("active_leads", "gte", when.active_leads_gte, active_leads)
    for condition in conditions:
        if (failed := condition(ctx)) is not None:
            return failed
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
