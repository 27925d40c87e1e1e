"""The decision diff: what a candidate policy decides differently from a baseline.

Decisions are paired per subject (the lead of a ``lead.routed``, the account of an
``account.surge``): the k-th baseline decision with the k-th candidate one. A subject the
candidate routes and the baseline never does is *newly routed* (for an account: a surge
gained); the reverse is *no longer routed* (a surge lost). A pair counts once in each
``changed_*`` whose field differs, and in ``earlier`` / ``later`` when the candidate
decided before / after the baseline; a pair with none of these is ``unchanged``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from statistics import median
from typing import Any

from app.clock import iso
from app.db import loads
from app.policy.impact.replay import Replayed

KINDS = (
    "unchanged",
    "newly_routed",
    "no_longer_routed",
    "changed_rule",
    "changed_team",
    "changed_assignee",
    "changed_band",
    "earlier",
    "later",
    "surges_gained",
    "surges_lost",
)
CHANGED = ("rule", "team", "assignee", "band")
EXPLANATION = ("reason", "score", "signals", "fit_breakdown", "rules_evaluated", "escalation")


def _subject(d: Replayed) -> tuple[str, str]:
    f = d.fields
    if f["type"] == "account.surge":
        return ("account", f["account_domain"] or "")
    return ("lead", f["lead_id"] or "")


def _group(ds: Sequence[Replayed]) -> dict[tuple[str, str], list[Replayed]]:
    out: dict[tuple[str, str], list[Replayed]] = defaultdict(list)
    for d in ds:
        out[_subject(d)].append(d)
    return out


def shown(d: Replayed | None) -> dict[str, Any] | None:
    """A decision as an example shows it: what was decided and the whole explanation."""
    if d is None:
        return None
    f = d.fields
    data = loads(d.payload).get("data", {})
    return {
        **{k: f[k] for k in ("type", "rule", "team", "assignee", "band", "tier", "source")},
        "created_at": iso(f["created_at"]),
        "trigger_event_id": f["trigger_event_id"],
        **{k: data[k] for k in EXPLANATION if k in data},
    }


def _kinds(b: Replayed | None, c: Replayed | None, account: bool) -> list[str]:
    if b is None:
        return ["surges_gained" if account else "newly_routed"]
    if c is None:
        return ["surges_lost" if account else "no_longer_routed"]
    kinds = [f"changed_{k}" for k in CHANGED if b.fields[k] != c.fields[k]]
    dt = c.fields["created_at"] - b.fields["created_at"]
    if dt < 0:
        kinds.append("earlier")
    elif dt > 0:
        kinds.append("later")
    return kinds or ["unchanged"]


def diff(
    baseline: Sequence[Replayed],
    candidate: Sequence[Replayed],
    *,
    baseline_kind: str,
    examples: int,
) -> dict[str, Any]:
    """The diff of two ordered decision lists (``docs`` shape: see the module)."""
    counts = dict.fromkeys(KINDS, 0)
    by_source: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(KINDS, 0))
    by_tier: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(KINDS, 0))
    shown_examples: dict[str, list[dict[str, Any]]] = defaultdict(list)
    earlier: list[float] = []
    later: list[float] = []
    b_groups, c_groups = _group(baseline), _group(candidate)
    for subject in sorted(set(b_groups) | set(c_groups)):
        bs, cs = b_groups.get(subject, []), c_groups.get(subject, [])
        for k in range(max(len(bs), len(cs))):
            b = bs[k] if k < len(bs) else None
            c = cs[k] if k < len(cs) else None
            either = c if c is not None else b
            assert either is not None
            seconds = (
                c.fields["created_at"] - b.fields["created_at"]
                if b is not None and c is not None
                else None
            )
            for kind in _kinds(b, c, subject[0] == "account"):
                counts[kind] += 1
                by_source[either.fields["source"] or "none"][kind] += 1
                by_tier[either.fields["tier"] or "none"][kind] += 1
                if kind == "earlier" and seconds is not None:
                    earlier.append(-seconds)
                if kind == "later" and seconds is not None:
                    later.append(seconds)
                if kind != "unchanged" and len(shown_examples[kind]) < examples:
                    key = "account_domain" if subject[0] == "account" else "lead_id"
                    shown_examples[kind].append(
                        {
                            key: subject[1],
                            "baseline": shown(b),
                            "candidate": shown(c),
                            "seconds": seconds,
                        }
                    )
    return {
        "baseline": baseline_kind,
        "decisions": {"baseline": len(baseline), "candidate": len(candidate)},
        "counts": counts,
        "timing": {
            "earlier_seconds_median": median(earlier) if earlier else None,
            "later_seconds_median": median(later) if later else None,
        },
        "by_source": {k: _nonzero(v) for k, v in sorted(by_source.items())},
        "by_tier": {k: _nonzero(v) for k, v in sorted(by_tier.items())},
        "examples": dict(shown_examples),
    }


def _nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: n for k, n in counts.items() if n}
