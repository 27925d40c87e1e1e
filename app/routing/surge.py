"""Account surges: how many of an account's leads are actively showing intent."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from app.clock import iso
from app.db import leads
from app.db.bulk import Bulk
from app.events import Candidate
from app.matching.identity import BatchState
from app.routing.rules import cooldown_verdict
from app.scoring.decay import Accumulators, raw_intent
from app.scoring.engine import account_snapshot, signal_breakdown
from app.scoring.state import AccountState, _accs


def evaluation_time(state: BatchState, domain: str) -> float:
    """When an account's active leads are counted: its newest activity, the triggering
    event's own time when that is the newest (as a lead's band, ``engine.evaluation_time``),
    so that three leads each at exactly the threshold at that moment are three active."""
    acct = state.accounts[domain]
    trigger = state.account_trigger.get(domain)
    times = [t for t in (acct.last_event_at, trigger.occurred_at if trigger else None) if t]
    return max(times) if times else state.now


def _count_active(
    members: dict[str, tuple[Accumulators, float]], state: BatchState, t: float
) -> int:
    return sum(1 for signals, last in members.values() if _active(state, signals, last, t))


def _cooling_down(state: BatchState, acct: AccountState) -> bool:
    allowed, _ = cooldown_verdict(
        state.policy,
        now=state.now,
        last_at=acct.last_decision_at,
        last_band=None,
        last_tier=acct.last_decision_tier,
        band=None,
        tier=acct.tier,
    )
    return not allowed


def _active(state: BatchState, signals: Accumulators, last_event_at: float, t: float) -> bool:
    """Active at ``t``: an event within the surge window before ``t`` and intent at ``t``
    at least the threshold."""
    surge = state.policy.doc.routing.surge
    return (
        last_event_at >= t - surge.window
        and raw_intent(signals, t, state.policy.signals) >= surge.active_lead_intent
    )


def _eligible(state: BatchState, touched: set[str]) -> set[str]:
    """The touched accounts whose tier some account rule routes."""
    account_rules = [r for r in state.policy.rules if r.rule.kind == "account"]
    if not account_rules or not touched:
        return set()
    tiers = set().union(*(r.tiers or {"*"} for r in account_rules))
    return {d for d in touched if "*" in tiers or (state.accounts[d].tier or "none") in tiers}


def _rising(state: BatchState, eligible: set[str]) -> set[str]:
    """Accounts where some lead became active in this batch.

    A count can only rise when some lead became active at the account in this batch
    (decay only lowers it), so only those accounts are recounted from the database.
    """
    rising: set[str] = set()
    for lead in state.leads.values():
        d = lead.account_domain
        if d not in eligible or lead.merged_into:
            continue
        t = evaluation_time(state, d)
        if not _active(state, lead.signals, lead.last_event_at, t):
            continue
        base = state.base_signals.get(lead.lead_id)
        if base is None or base[0] != d or not _active(state, base[1], base[2], t):
            rising.add(d)
    return rising


Members = dict[str, dict[str, tuple[Accumulators, float]]]


async def _members(
    session: AsyncSession, state: BatchState, domains: list[str]
) -> tuple[Members, Members]:
    """Each account's recently active leads (signals, last event) before and after the batch."""
    window = state.policy.doc.routing.surge.window
    cutoff = min(evaluation_time(state, d) for d in domains) - window
    before: Members = {d: {} for d in domains}
    bulk = await Bulk.of(session)
    rows = await bulk.select_in(
        leads,
        ("lead_id", "account_domain", "signals", "last_event_at", "merged_into"),
        "account_domain",
        domains,
    )
    for lead_id, domain, signals, last_event_at, merged_into in rows:
        if merged_into is None and last_event_at >= cutoff and lead_id not in state.leads:
            before[domain][lead_id] = (_accs(signals), last_event_at)
    after = {d: dict(m) for d, m in before.items()}
    for lead_id, (domain, signals, last) in state.base_signals.items():
        if domain in before:
            before[domain][lead_id] = (signals, last)
    for lead in state.leads.values():
        if lead.account_domain in after and lead.merged_into is None:
            after[lead.account_domain][lead.lead_id] = (lead.signals, lead.last_event_at)
    return before, after


def _candidate(state: BatchState, domain: str, active_leads: int, t: float) -> Candidate:
    """The account.surge candidate for an account whose active-lead count rose at ``t``."""
    policy = state.policy
    acct = state.accounts[domain]
    trigger = state.account_trigger.get(domain)
    intent = max(0.0, raw_intent(acct.signals, t, policy.signals))
    score = {
        "total": None,
        "fit": None,
        "intent": round(intent, 4),
        "band": None,
        "evaluated_at": iso(t),
        "policy_version": policy.version,
    }
    return Candidate(
        kind="account",
        lead_id=None,
        account_domain=domain,
        band=None,
        previous_band=None,
        tier=acct.tier,
        account_owner=acct.owner,
        active_leads=active_leads,
        ctx={"account": acct.context(), "score": score, "lead": {}, "event": {}},
        lead=None,
        account=account_snapshot(acct),
        score=score,
        signals=signal_breakdown(policy, acct.signals, t),
        fit_breakdown=[],
        trigger_event_id=trigger.event_id if trigger else None,
        event_received_at=trigger.received_at if trigger else None,
    )


async def surge_candidates(
    session: AsyncSession, state: BatchState, touched: set[str]
) -> list[Candidate]:
    """Recount active leads of touched accounts; a Candidate for each whose count rose."""
    # An account in its cooldown whose tier has not risen cannot be routed again, so its
    # leads are not recounted (the read API counts active leads at request time anyway):
    # at a busy account that recount read every lead's signals once per batch.
    domains = sorted(
        d
        for d in _rising(state, _eligible(state, touched))
        if not _cooling_down(state, state.accounts[d])
    )
    if not domains:
        return []
    before, after = await _members(session, state, domains)
    out: list[Candidate] = []
    for domain in domains:
        acct = state.accounts[domain]
        t = evaluation_time(state, domain)
        n_before = _count_active(before[domain], state, t)
        n_after = _count_active(after[domain], state, t)
        if n_after != acct.active_leads:
            acct.active_leads = n_after
            acct.dirty = True
        if n_after > n_before:
            out.append(_candidate(state, domain, n_after, t))
    return out
