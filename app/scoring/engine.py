"""Apply one event to its lead and account, and evaluate scores at a given time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.clock import iso
from app.events import ATTRIBUTE_ONLY_TYPES, Candidate, Event, email_domain
from app.policy.schema import CompiledPolicy
from app.scoring.decay import Accumulators, apply_event, clamp, raw_intent, signal_scores, value_at
from app.scoring.state import AccountState, LeadState


@dataclass
class Evaluation:
    fit: float
    fit_breakdown: list[tuple[str, float]]
    intent: float
    total: float
    signals: dict[str, float]


def lead_context(lead: LeadState) -> dict[str, Any]:
    ctx = dict(lead.attributes)
    ctx.update(
        lead_id=lead.lead_id,
        email=lead.email,
        email_domain=email_domain(lead.email),
        source=lead.source,
    )
    return ctx


def evaluate(
    policy: CompiledPolicy, lead: LeadState, account: AccountState | None, t: float
) -> Evaluation:
    """Fit (recomputed from current attributes) and intent decayed to ``t``."""
    fit, breakdown = policy.fit(_fit_context(lead, account))
    signals = signal_scores(lead.signals, t, policy.signals)
    intent = clamp(sum(signals.values()), 0.0, policy.intent_max)
    return Evaluation(fit, breakdown, intent, fit + intent, signals)


def signal_breakdown(policy: CompiledPolicy, accs: Accumulators, t: float) -> list[dict[str, Any]]:
    """Every signal the policy knows that ``accs`` holds, with its points, half-life
    (seconds), decayed event count and contribution (``score``) at ``t``, largest
    contribution first: the contributions add up to the unclamped intent."""
    out: list[dict[str, Any]] = []
    for name, acc in accs.items():
        spec = policy.signals.get(name)
        if spec is None:
            continue
        count = value_at(acc, t, spec.half_life)
        out.append(
            {
                "signal": name,
                "score": round(spec.points * count, 4),
                "points": spec.points,
                "half_life": spec.half_life,
                "decayed_count": round(count, 6),
                "last_event_at": iso(acc[1]),
            }
        )
    out.sort(key=lambda item: (-abs(item["score"]), item["signal"]))
    return out


def fit_explanation(policy: CompiledPolicy, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    """Every fit rule in policy order, matched or not (``points``: what it contributed),
    then the clamp when the sum fell outside 0–fit_max: the points add up to the fit."""
    out: list[dict[str, Any]] = [
        {
            "rule": name,
            "points": points if matched else 0.0,
            "rule_points": points,
            "matched": matched,
        }
        for name, points, matched in policy.explain_fit(ctx)
    ]
    total = sum(item["points"] for item in out)
    fit = clamp(total, 0.0, policy.fit_max)
    if fit != total:
        limit = "fit_max" if total > fit else "fit_min"
        out.append(
            {
                "rule": limit,
                "points": round(fit - total, 4),
                "rule_points": None,
                "matched": True,
                "clamp": True,
            }
        )
    return out


def account_snapshot(account: AccountState | None) -> dict[str, Any] | None:
    if account is None:
        return None
    return {
        "domain": account.domain,
        "name": account.name,
        "tier": account.tier,
        "owner": account.owner,
        "territory": account.territory,
        "industry": account.industry,
        "employees": account.employees,
        "country": account.country,
        "annual_revenue": account.annual_revenue,
    }


def _fit_context(lead: LeadState, account: AccountState | None) -> dict[str, Any]:
    return {"lead": lead_context(lead), "account": account.context() if account else {}}


def _stored_fit_current(
    lead: LeadState, account: AccountState | None, policy: CompiledPolicy
) -> bool:
    """The fit stored with the lead still holds: same policy, same account, and the
    account's attributes have not changed since the lead was last scored."""
    return (
        lead.policy_version == policy.version
        and lead.account_domain == lead.stored_account_domain
        and (account is None or (account.rev == 0 and account.updated_at < lead.updated_at))
    )


def score(
    policy: CompiledPolicy,
    ev: Event,
    lead: LeadState,
    account: AccountState | None,
    *,
    attrs_changed: bool,
    now: float,
) -> Candidate | None:
    """Fold ``ev``'s signal into its (identified) lead and account, recompute fit when
    attributes changed, and move the band; a Candidate when the band rose."""
    # A type the policy no longer knows (changed since the adapter checked the event):
    # the event is kept, its signal counts for nothing.
    spec = None if ev.type in ATTRIBUTE_ONLY_TYPES else policy.signals.get(ev.type)
    if spec is not None:
        lead.signals[ev.type] = apply_event(
            lead.signals.get(ev.type), ev.occurred_at, spec.half_life
        )
        if account is not None:
            account.signals[ev.type] = apply_event(
                account.signals.get(ev.type), ev.occurred_at, spec.half_life
            )
            account.last_event_at = max(account.last_event_at or 0.0, ev.occurred_at)
            account.dirty = True
        lead.last_event_at = max(lead.last_event_at, ev.occurred_at)

    # Fit depends only on attributes: recompute it when they (or the policy) changed.
    fit_key = (policy.version, lead.account_domain, account.rev if account else -1)
    if lead.fit_key is None and not lead.is_new and _stored_fit_current(lead, account, policy):
        lead.fit_key = fit_key
    if attrs_changed or lead.fit_key != fit_key:
        lead.fit = policy.fit(_fit_context(lead, account))[0]
        lead.fit_key = fit_key
    # The transition is evaluated at the lead's newest activity (see ``evaluation_time``),
    # not at the moment the batch happens to run: points that add up to a threshold reach it.
    t = evaluation_time(ev, lead)
    lead.intent = clamp(raw_intent(lead.signals, t, policy.signals), 0.0, policy.intent_max)
    total = lead.fit + lead.intent
    previous = lead.band  # a new lead starts in the lowest band
    band = policy.band_for(total, previous)
    rose = policy.band_rank[band] > policy.band_rank.get(previous, 0)
    if band != lead.band:
        lead.band, lead.band_at = band, now
    lead.policy_version = policy.version
    lead.updated_at = now
    lead.dirty = True
    if not rose or band not in policy.routable_bands:
        return None  # no rule can route this rise: skip building the decision's snapshot
    return _candidate(policy, ev, lead, account, band=band, previous=previous, t=t)


def evaluation_time(ev: Event, lead: LeadState) -> float:
    """When a lead's band transition is evaluated: the triggering event's own time when it
    is the lead's newest event, else the lead's newest signal's (a late event is added to
    the score as it stood at the lead's latest activity). Between events a score only
    decays, so this is the highest total the lead reached, exactly the arithmetic of the
    policy (fit 45 + events summing to 35 at one moment is 80, hot), and it does not depend
    on how long the event waited in a queue. The time of reading is used only for display
    (the read API decays scores to the request's time)."""
    return max(ev.occurred_at, lead.last_event_at)


def _candidate(
    policy: CompiledPolicy,
    ev: Event,
    lead: LeadState,
    account: AccountState | None,
    *,
    band: str,
    previous: str,
    t: float,
) -> Candidate:
    """The routing candidate of a lead whose band rose: its snapshot and explanation, at
    the transition's evaluation time ``t``."""
    fit_ctx = _fit_context(lead, account)
    fit = policy.fit(fit_ctx)[0]
    intent = clamp(raw_intent(lead.signals, t, policy.signals), 0.0, policy.intent_max)
    tier = account.tier if account else None
    score = {
        "total": round(fit + intent, 4),
        "fit": round(fit, 4),
        "intent": round(intent, 4),
        "band": band,
        "evaluated_at": iso(t),
        "policy_version": policy.version,
    }
    lead_ctx = lead_context(lead)
    acct = account_snapshot(account)
    return Candidate(
        kind="lead",
        lead_id=lead.lead_id,
        account_domain=lead.account_domain,
        band=band,
        previous_band=previous,
        tier=tier,
        account_owner=account.owner if account else None,
        active_leads=account.active_leads if account else 0,
        ctx={
            "lead": lead_ctx,
            "account": account.context() if account else {},
            "score": score,
            "event": {
                "type": ev.type,
                "source": ev.source,
                "campaign": ev.campaign,
                "properties": ev.properties,
            },
        },
        lead={k: v for k, v in lead_ctx.items() if v is not None},
        account=acct,
        score=score,
        signals=signal_breakdown(policy, lead.signals, t),
        fit_breakdown=fit_explanation(policy, fit_ctx),
        trigger_event_id=ev.event_id,
        event_received_at=ev.received_at,
    )
