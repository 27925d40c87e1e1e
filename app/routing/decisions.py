"""Routing decisions: what was decided, why, and the webhook body that carries it."""

from __future__ import annotations

from typing import Any

from app.clock import iso, new_id
from app.events import Candidate


def decision_type(kind: str) -> str:
    return "lead.routed" if kind == "lead" else "account.surge"


def explain(
    c: Candidate, rule: str | None, team: str, assignee: str | None, strategy: str, escalation: bool
) -> str:
    s = c.score
    if c.kind == "lead":
        head = (
            f"lead {c.lead_id} rose from {c.previous_band or 'new'} to {c.band} "
            f"(total {s['total']:.1f} = fit {s['fit']:.1f} + intent {s['intent']:.1f})"
        )
    else:
        head = f"account {c.account_domain} surged: {c.active_leads} active leads"
    where = f" at {c.tier} account {c.account_domain}" if c.tier and c.kind == "lead" else ""
    scoring = [x for x in c.signals if x["score"]][:3]  # c.signals holds every signal
    top = ", ".join(f"{x['signal']} {x['score']:.1f}" for x in scoring)
    matched = f'rule "{rule}"' if rule else "no rule matched: default queue"
    who = f"{assignee} ({strategy})" if assignee else f"unassigned ({strategy})"
    esc = "; escalation within cooldown" if escalation else ""
    return f"{head}{where}; top signals: {top or 'none'}; {matched} → team {team}, {who}{esc}"


def build(
    c: Candidate,
    *,
    rule: str | None,
    team: str,
    assignee: str | None,
    strategy: str,
    escalation: bool,
    policy_version: int,
    now: float,
    rules_evaluated: list[dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(decision row, webhook body) for one routed candidate. The body explains it in
    full: every signal's contribution, every fit rule matched or not, and the rules
    evaluated before the one that won with the condition each failed (``rules_evaluated``,
    from ``rules.trace_rules``)."""
    decision_id = new_id("dec", now)
    reason = explain(c, rule, team, assignee, strategy, escalation)
    body = {
        "type": decision_type(c.kind),
        "timestamp": iso(now),
        "data": {
            "decision_id": decision_id,
            "lead": c.lead,
            "account": c.account,
            "score": c.score,
            "rule": rule or "default_queue",
            "team": team,
            "assignee": assignee,
            "assignment": strategy,
            "escalation": escalation,
            "reason": reason,
            "signals": c.signals,
            "fit_breakdown": c.fit_breakdown,
            "rules_evaluated": rules_evaluated or [],
            "active_leads": c.active_leads if c.kind == "account" else None,
            "policy_version": policy_version,
            "trigger_event_id": c.trigger_event_id,
            "event_received_at": iso(c.event_received_at),
        },
    }
    row = {
        "id": decision_id,
        "type": body["type"],
        "lead_id": c.lead_id,
        "account_domain": c.account_domain,
        "rule": rule or "default_queue",
        "team": team,
        "assignee": assignee,
        "band": c.band,
        "tier": c.tier,
        "reason": reason,
        "policy_version": policy_version,
        "trigger_event_id": c.trigger_event_id,
        "event_received_at": c.event_received_at,
        "created_at": now,
    }
    return row, body
