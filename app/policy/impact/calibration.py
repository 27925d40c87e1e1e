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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.clock import iso
from app.db import dumps, leads
from app.policy.impact import dry_run
from app.policy.impact.samples import Sample, decayed_counts, histories, load_samples
from app.policy.schema import CompiledPolicy, PolicyDoc
from app.policy.store import active_policy, save_version
from app.scoring.decay import apply_event, clamp, value_at

# Calibration's interface; the data it reads (Sample, decayed_counts, load_samples) lives
# in samples.py.
__all__ = [
    "CalibrationError",
    "Proposal",
    "Sample",
    "calibrate",
    "decayed_counts",
    "fit_logistic",
    "fit_weights",
    "load_samples",
    "propose_points",
    "render",
    "routable",
]

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


class CalibrationError(Exception):
    """Calibration cannot run on this data (too few decisions, one outcome only…)."""


@dataclass
class Fitted:
    intercept: float
    coefficients: dict[str, float]  # per signal fitted, and "fit"


@dataclass
class Weights:
    """A fit's outcome: the current points, the fitted signals' proposed points, the
    scale ``k`` and, per signal, how many labelled decisions it occurred before."""

    fitted: Fitted
    current: dict[str, float]
    points: dict[str, float]
    scale: float
    seen: dict[str, int]
    min_signal_decisions: int


@dataclass
class Proposal:
    version: int
    doc: PolicyDoc
    report: dict[str, Any]


# -- pure parts -------------------------------------------------------------------------
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
    by_lead = await histories(session, candidates, old.half_lives, until)
    would = 0
    for lead_id, fit in candidates.items():
        accs: dict[str, tuple[float, float]] = {}
        before = after = False
        for signal, t_e in by_lead.get(lead_id, []):
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
# What ``calibrate`` reports to its ``progress`` callback, in order (the CLI's progress bar).
STEPS = ("reading routed leads", "fitting", "dry run", "saving the proposal")


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
    progress: Callable[[str], None] | None = None,
) -> Proposal:
    """Fit signal weights to the window's dispositions and store them as a proposed
    version (the caller commits). Raises ``CalibrationError`` and writes nothing when
    the data cannot support a fit. ``progress`` is called as each of ``STEPS`` starts."""
    step = progress or (lambda _: None)
    if until <= since:
        raise CalibrationError("--until must be after --since")
    policy = await active_policy(session)
    if policy is None:
        raise CalibrationError("there is no active policy yet: start the service once")
    window = f"between {iso(since)} and {iso(until)}"
    step(STEPS[0])
    samples = await load_samples(session, policy, since=since, until=until)
    labelled = _labelled(samples, min_decisions, window)
    step(STEPS[1])
    weights = fit_weights(policy, labelled, min_signal_decisions=min_signal_decisions, C=C)
    proposed = _proposed(policy, weights.points)
    step(STEPS[2])
    dry = await _dry_run(session, policy, proposed, samples, since=since, until=until, now=now)
    report = _report(policy, weights, samples, labelled, dry, since=since, until=until, C=C)
    step(STEPS[3])
    saved = await save_version(
        session,
        proposed.doc,
        source_text=None,
        created_by=created_by,
        now=now,
        comment=_comment(weights, len(labelled), window),
        status="proposed",
        report=dumps(report),
    )
    return Proposal(saved.version, proposed.doc, report)


def _labelled(samples: Sequence[Sample], min_decisions: int, window: str) -> list[Sample]:
    """The samples with a known outcome, when there are enough, and of both kinds, to fit."""
    labelled = [s for s in samples if s.label is not None]
    positive = sum(1 for s in labelled if s.label)
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
    return labelled


def fit_weights(
    policy: CompiledPolicy, labelled: Sequence[Sample], *, min_signal_decisions: int, C: float
) -> Weights:
    """Fit the signals seen before enough labelled decisions; the others keep their points."""
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
    return Weights(fitted, current, points, k, seen, min_signal_decisions)


def _proposed(policy: CompiledPolicy, points: Mapping[str, float]) -> CompiledPolicy:
    doc = policy.doc.model_copy(deep=True)
    for name, p in points.items():
        doc.signals[name] = doc.signals[name].model_copy(update={"points": p})
    return CompiledPolicy(policy.version + 1, doc)


async def _dry_run(
    session: AsyncSession,
    old: CompiledPolicy,
    new: CompiledPolicy,
    samples: Sequence[Sample],
    *,
    since: float,
    until: float,
    now: float,
) -> dict[str, Any]:
    """What the proposal would change: the window's routings, its unrouted leads, and
    the bands of recent leads now."""
    routed = {s.lead_id for s in samples}
    new_routes = await _new_routings(session, old, new, since=since, until=until, routed=routed)
    evaluated, band_changes, _ = await dry_run.band_changes(session, old, new, now)
    return {
        "approximation": APPROXIMATION,
        **_routing_changes(old, new, samples),
        **new_routes,
        "leads_evaluated": evaluated,
        "band_changes": band_changes,
    }


def _report(
    policy: CompiledPolicy,
    w: Weights,
    samples: Sequence[Sample],
    labelled: Sequence[Sample],
    dry: dict[str, Any],
    *,
    since: float,
    until: float,
    C: float,
) -> dict[str, Any]:
    positive = sum(1 for s in labelled if s.label)
    coefs = w.fitted.coefficients
    weights = {
        name: {
            "before": w.current[name],
            "after": w.points.get(name, w.current[name]),
            "coefficient": round(coefs[name], 6) if name in coefs else None,
            "decisions_with_signal": w.seen[name],
            "kept": name not in w.points,
        }
        for name in policy.signals
    }
    return {
        "method": METHOD.format(C=C),
        "based_on_version": policy.version,
        "window": {"since": iso(since), "until": iso(until)},
        "decisions": {
            "routed": len(samples),
            "labelled": len(labelled),
            "positive": positive,
            "negative": len(labelled) - positive,
        },
        "intercept": round(w.fitted.intercept, 6),
        "coefficients": {n: round(c, 6) for n, c in coefs.items()},
        "scale": round(w.scale, 6),
        "weights": weights,
        "kept_current": {
            "signals": [n for n in policy.signals if n not in w.points],
            "reason": f"seen before fewer than {w.min_signal_decisions} labelled decisions",
        },
        "dry_run": dry,
    }


def _comment(w: Weights, labelled: int, window: str) -> str:
    changed = [n for n in w.points if w.points[n] != w.current[n]]
    moves = ", ".join(f"{n} {w.current[n]:+g}→{w.points[n]:+g}" for n in changed)
    comment = f"calibration proposal from {labelled} dispositions {window}: "
    return (comment + (moves or "no change"))[:500]


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
