"""Calibration: propose signal weights fitted to what sales did with routed leads.

``intent-router calibrate`` never changes the policy in force. It writes a *proposed*
version (``status="proposed"``) with a report a human reviews before applying it.

Method (logistic regression, scikit-learn):

- One sample per lead decision (``lead.routed``) created in the window whose latest
  disposition is known: positive = accepted | opportunity | won, negative = rejected | lost.
- Features, from the ``events`` table: for each signal ``s`` of the active policy the
  decayed *unweighted* count at the decision time ``t_d``,
  ``x_s = Σ 2^(-(t_d - t_e)/h_s)`` over the lead's events of type ``s`` with ``t_e ≤ t_d``
  (the lead's merged identities included), and the lead's fit score at the decision, so
  that signal weights are not confounded with fit.
- ``P(positive) = σ(b0 + Σ β_s·x_s + β_fit·fit)``, L2-regularised on standardised features
  (coefficients are reported back on the raw scale: logit per decayed event).
- Points: ``round(k·β_s)`` with signs kept, where ``k`` makes the positive proposed points
  add up to the current positive points of the same signals: calibration moves weight
  between signals; it does not rescale the score against the bands. Signals seen before
  fewer than ``min_signal_decisions`` decisions are left out of the fit and keep their
  points.

The dry run is an approximation, stated in the report: each routing in the window is
re-scored at its decision time from its events and the fit recorded with the decision,
under the current and the proposed weights (no hysteresis, cooldown or account rules);
unrouted leads are re-scored after each of their events in the window with their current
fit; and recent leads are re-scored now exactly as ``PUT /v1/policy?dry_run=true`` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.clock import iso
from app.db import decisions, dumps, events, leads, loads
from app.policy.impact import dry_run
from app.policy.schema import CompiledPolicy, PolicyDoc
from app.policy.store import active_policy, save_version
from app.scoring.decay import apply_event, clamp, decay_factor, value_at

POSITIVE = frozenset({"accepted", "opportunity", "won"})
NEGATIVE = frozenset({"rejected", "lost"})
METHOD = (
    "logistic regression (scikit-learn LogisticRegression, L2, C={C:g}, standardised "
    "features) of the latest disposition (positive: accepted/opportunity/won; negative: "
    "rejected/lost) on each signal's decayed event count at the decision time and the fit "
    "score; points = coefficient × k, rounded, where k keeps the sum of the positive points"
)
APPROXIMATION = (
    "routings are re-scored at their decision time from their events and the fit recorded "
    "with the decision, under the current and the proposed weights, without hysteresis, "
    "cooldown or account rules; unrouted leads are re-scored after each of their events in "
    "the window with their current fit; band changes re-score the most recently active "
    "leads now, as PUT /v1/policy?dry_run=true does"
)
_CHUNK = 1000


class CalibrationError(Exception):
    """Calibration cannot run on this data (too few decisions, one outcome only…)."""


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


@dataclass
class Fitted:
    intercept: float
    coefficients: dict[str, float]  # per signal fitted, and "fit"


@dataclass
class Proposal:
    version: int
    doc: PolicyDoc
    report: dict[str, Any]


# -- pure parts -------------------------------------------------------------------------
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


def fit_logistic(samples: Sequence[Sample], signals: Sequence[str], *, C: float = 1.0) -> Fitted:
    """Logistic regression of the samples' labels on ``signals`` + fit (raw-scale coefs)."""
    from sklearn.linear_model import LogisticRegression

    names = [*signals, "fit"]
    x: npt.NDArray[np.float64] = np.array(
        [[s.features.get(n, 0.0) for n in signals] + [s.fit] for s in samples], dtype=float
    ).reshape(len(samples), len(names))
    y = np.array([bool(s.label) for s in samples])
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0  # a constant column (e.g. every fit equal) gets coefficient ~0
    model = LogisticRegression(C=C, max_iter=1000).fit(x / scale, y)
    coefs = model.coef_[0] / scale
    return Fitted(
        intercept=float(model.intercept_[0]),
        coefficients={n: float(c) for n, c in zip(names, coefs, strict=True)},
    )


def propose_points(
    current: Mapping[str, float], coefficients: Mapping[str, float]
) -> tuple[dict[str, float], float]:
    """Points for the fitted signals (signs kept) and the scale ``k`` used.

    ``k`` makes the proposed positive points add up to the current positive points of
    the same signals, so scores stay comparable with the bands and the fit rules.
    """
    budget = sum(p for s, p in current.items() if s in coefficients and p > 0)
    mass = sum(c for c in coefficients.values() if c > 0)
    if budget <= 0 or mass <= 0:
        raise CalibrationError(
            "no signal has a positive weight (in the policy or in the fit) to scale against"
        )
    k = budget / mass
    return {s: float(round(k * c)) for s, c in coefficients.items()}, k


def routable(policy: CompiledPolicy, fit: float, features: Mapping[str, float]) -> bool:
    """Does fit + intent from these decayed counts reach a band that can route a lead?"""
    intent = sum(spec.points * features.get(name, 0.0) for name, spec in policy.signals.items())
    total = fit + clamp(intent, 0.0, policy.intent_max)
    return policy.band_for(total, None) in policy.routable_bands


# -- reading the data -------------------------------------------------------------------
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


async def _histories(
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
    histories = await _histories(session, {s.lead_id for s in samples}, policy.half_lives, until)
    for s in samples:
        s.features = decayed_counts(histories.get(s.lead_id, []), s.at, policy.half_lives)
    return samples


# -- the dry run ------------------------------------------------------------------------
def _routing_changes(
    old: CompiledPolicy, new: CompiledPolicy, samples: Sequence[Sample]
) -> dict[str, Any]:
    reproduced = [s for s in samples if routable(old, s.fit, s.features)]
    dropped = [s for s in reproduced if not routable(new, s.fit, s.features)]
    return {
        "routings": len(samples),
        "reproduced_with_current_weights": len(reproduced),
        "would_not_route": len(dropped),
        "would_not_route_by_outcome": {
            "positive": sum(1 for s in dropped if s.label is True),
            "negative": sum(1 for s in dropped if s.label is False),
            "none": sum(1 for s in dropped if s.label is None),
        },
    }


async def _new_routings(
    session: AsyncSession,
    old: CompiledPolicy,
    new: CompiledPolicy,
    *,
    since: float,
    until: float,
    routed: set[str],
    limit: int = 5000,
) -> dict[str, int]:
    """Leads active in the window but not routed in it that the proposal would route."""
    rows = (
        await session.execute(
            select(leads.c.lead_id, leads.c.fit)
            .where(
                leads.c.merged_into.is_(None),
                leads.c.last_event_at >= since,
                leads.c.first_seen_at < until,
            )
            .order_by(leads.c.last_event_at.desc())
            .limit(limit)
        )
    ).all()
    candidates = {r.lead_id: float(r.fit) for r in rows if r.lead_id not in routed}
    histories = await _histories(session, candidates, old.half_lives, until)
    would = 0
    for lead_id, fit in candidates.items():
        accs: dict[str, tuple[float, float]] = {}
        before = after = False
        for signal, t_e in histories.get(lead_id, []):
            h = old.half_lives[signal]
            accs[signal] = apply_event(accs.get(signal), t_e, h)
            if t_e < since:
                continue
            x = {s: value_at(a, t_e, old.half_lives[s]) for s, a in accs.items()}
            before = before or routable(old, fit, x)
            after = after or routable(new, fit, x)
        would += after and not before
    return {"unrouted_leads": len(candidates), "would_route": would}


# -- the whole run ----------------------------------------------------------------------
async def calibrate(
    session: AsyncSession,
    *,
    since: float,
    until: float,
    now: float,
    min_decisions: int = 30,
    min_signal_decisions: int = 10,
    C: float = 1.0,
    created_by: str = "calibrate",
) -> Proposal:
    """Fit signal weights to the window's dispositions and store them as a proposed
    version (the caller commits). Raises ``CalibrationError`` and writes nothing when
    the data cannot support a fit."""

    if until <= since:
        raise CalibrationError("--until must be after --since")
    policy = await active_policy(session)
    if policy is None:
        raise CalibrationError("there is no active policy yet: start the service once")
    samples = await load_samples(session, policy, since=since, until=until)
    labelled = [s for s in samples if s.label is not None]
    positive = sum(1 for s in labelled if s.label)
    window = f"between {iso(since)} and {iso(until)}"
    if len(labelled) < min_decisions:
        raise CalibrationError(
            f"calibration needs at least {min_decisions} routed leads with an outcome "
            f"(accepted, opportunity, won, rejected or lost) {window}; found {len(labelled)}"
        )
    if positive in (0, len(labelled)):
        raise CalibrationError(
            f"all {len(labelled)} routed leads with an outcome {window} have the same "
            "outcome: there is nothing to tell the signals apart by"
        )

    seen = {
        name: sum(1 for s in labelled if s.features.get(name, 0.0) > 0) for name in policy.signals
    }
    fitted_signals = [n for n in policy.signals if seen[n] >= min_signal_decisions]
    if not fitted_signals:
        raise CalibrationError(
            f"no signal occurs before at least {min_signal_decisions} of the decisions"
        )
    fitted = fit_logistic(labelled, fitted_signals, C=C)
    current = {n: spec.points for n, spec in policy.signals.items()}
    points, k = propose_points(current, {n: fitted.coefficients[n] for n in fitted_signals})

    doc = policy.doc.model_copy(deep=True)
    for name, p in points.items():
        doc.signals[name] = doc.signals[name].model_copy(update={"points": p})
    proposed = CompiledPolicy(policy.version + 1, doc)

    routings = _routing_changes(policy, proposed, samples)
    new_routes = await _new_routings(
        session,
        policy,
        proposed,
        since=since,
        until=until,
        routed={s.lead_id for s in samples},
    )
    evaluated, band_changes, _ = await dry_run.band_changes(session, policy, proposed, now)

    weights = {
        name: {
            "before": current[name],
            "after": points.get(name, current[name]),
            "coefficient": (
                round(fitted.coefficients[name], 6) if name in fitted.coefficients else None
            ),
            "decisions_with_signal": seen[name],
            "kept": name not in points,
        }
        for name in policy.signals
    }
    kept = [n for n in policy.signals if n not in points]
    report: dict[str, Any] = {
        "method": METHOD.format(C=C),
        "based_on_version": policy.version,
        "window": {"since": iso(since), "until": iso(until)},
        "decisions": {
            "routed": len(samples),
            "labelled": len(labelled),
            "positive": positive,
            "negative": len(labelled) - positive,
        },
        "intercept": round(fitted.intercept, 6),
        "coefficients": {n: round(c, 6) for n, c in fitted.coefficients.items()},
        "scale": round(k, 6),
        "weights": weights,
        "kept_current": {
            "signals": kept,
            "reason": f"seen before fewer than {min_signal_decisions} labelled decisions",
        },
        "dry_run": {
            "approximation": APPROXIMATION,
            **routings,
            **new_routes,
            "leads_evaluated": evaluated,
            "band_changes": band_changes,
        },
    }
    changed = [n for n in points if points[n] != current[n]]
    comment = (
        f"calibration proposal from {len(labelled)} dispositions {window}: "
        + (", ".join(f"{n} {current[n]:+g}→{points[n]:+g}" for n in changed) or "no change")
    )[:500]
    saved = await save_version(
        session,
        doc,
        source_text=None,
        created_by=created_by,
        now=now,
        comment=comment,
        status="proposed",
        report=dumps(report),
    )
    return Proposal(saved.version, doc, report)


def render(proposal: Proposal) -> str:
    """The report for people: weights before/after and the dry run."""
    r = proposal.report
    d, dry = r["decisions"], r["dry_run"]
    lines = [
        f"Proposed policy version {proposal.version} (based on version "
        f"{r['based_on_version']}; NOT applied)",
        f"Window: {r['window']['since']} … {r['window']['until']}",
        f"Routed leads: {d['routed']}; with an outcome: {d['labelled']} "
        f"({d['positive']} positive, {d['negative']} negative)",
        f"Method: {r['method']}",
        f"Intercept {r['intercept']:+.4f}; fit score coefficient "
        f"{r['coefficients']['fit']:+.4f}/point; scale k = {r['scale']:.3f}",
        "",
        f"{'signal':<22}{'before':>8}{'after':>8}{'coefficient':>14}{'decisions':>11}",
    ]
    for name, w in r["weights"].items():
        coef = "kept" if w["coefficient"] is None else f"{w['coefficient']:+.4f}"
        lines.append(
            f"{name:<22}{w['before']:>+8g}{w['after']:>+8g}{coef:>14}"
            f"{w['decisions_with_signal']:>11}"
        )
    if r["kept_current"]["signals"]:
        lines.append(
            f"Kept at their current points ({r['kept_current']['reason']}): "
            + ", ".join(r["kept_current"]["signals"])
        )
    by = dry["would_not_route_by_outcome"]
    bands = ", ".join(f"{k} {v}" for k, v in sorted(dry["band_changes"].items())) or "none"
    lines += [
        "",
        "Dry run (approximate: " + dry["approximation"] + ")",
        f"  routings in the window: {dry['routings']} "
        f"({dry['reproduced_with_current_weights']} reproduced with the current weights); "
        f"would not route with the proposal: {dry['would_not_route']} "
        f"({by['positive']} positive, {by['negative']} negative, {by['none']} no outcome)",
        f"  unrouted leads active in the window: {dry['unrouted_leads']}; "
        f"would route with the proposal: {dry['would_route']}",
        f"  recent leads re-scored now: {dry['leads_evaluated']}; band changes: {bands}",
        "",
        f"Review it: GET /v1/policy?version={proposal.version}. "
        "To apply it, PUT its document to /v1/policy.",
    ]
    return "\n".join(lines)
