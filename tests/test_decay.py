"""The decay math of app/scoring/decay.py against an independent reference.

The reference recomputes every score from the full event list, exactly as PRODUCT.md
("Scoring semantics") states it: an event of signal ``s`` at ``t_e`` contributes
``points_s * 2 ** (-(t - t_e) / h_s)`` at ``t >= t_e``; lead intent is the clamped sum.
The code under test instead folds events one by one into O(1) accumulators, in any
arrival order, and merges identities; both must agree to 1e-9 (relative).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from app.scoring.decay import (
    Accumulators,
    SignalSpec,
    apply_event,
    clamp,
    decay_factor,
    merge,
    merge_all,
    raw_intent,
    signal_scores,
    value_at,
)

DAY = 86400.0
T0 = 1.7e9  # a realistic POSIX time: large magnitudes are where float errors show
INTENT_MAX = 50.0
REL = 1e-9

Event = tuple[str, float]  # (signal, t_e)

# --- the independent reference -----------------------------------------------------


def reference(
    events: Sequence[Event], signals: Mapping[str, SignalSpec], t: float
) -> dict[str, tuple[float, float]]:
    """signal -> (score at t, sum of |contributions|), straight from the event list."""
    out: dict[str, tuple[float, float]] = {}
    for signal, t_e in events:
        spec = signals[signal]
        contribution = spec.points * 2.0 ** (-(t - t_e) / spec.half_life)
        score, scale = out.get(signal, (0.0, 0.0))
        out[signal] = (score + contribution, scale + abs(contribution))
    return out


def assert_close(actual: float, expected: float, scale: float) -> None:
    tolerance = REL * max(1.0, scale)
    assert abs(actual - expected) <= tolerance, (actual, expected, tolerance)


def fold(
    events: Sequence[Event], signals: Mapping[str, SignalSpec], acc: Accumulators | None = None
) -> Accumulators:
    """Fold events, in the order given, the way the scoring engine does (unweighted)."""
    accs: Accumulators = dict(acc or {})
    for signal, t_e in events:
        accs[signal] = apply_event(accs.get(signal), t_e, signals[signal].half_life)
    return accs


def check_against_reference(
    accs: Accumulators, events: Sequence[Event], signals: Mapping[str, SignalSpec], t: float
) -> None:
    ref = reference(events, signals, t)
    scores = signal_scores(accs, t, signals)
    assert set(scores) == set(ref)
    for signal, (expected, scale) in ref.items():
        assert_close(scores[signal], expected, scale)

    total_scale = sum(scale for _, scale in ref.values())
    expected_total = sum(score for score, _ in ref.values())
    assert_close(raw_intent(accs, t, signals), expected_total, total_scale)
    lead_intent = clamp(sum(scores.values()), 0.0, INTENT_MAX)
    assert 0.0 <= lead_intent <= INTENT_MAX
    assert_close(lead_intent, clamp(expected_total, 0.0, INTENT_MAX), total_scale)


# --- strategies --------------------------------------------------------------------

SIGNAL_NAMES = ("demo_request", "pricing_page_view", "site_visit", "careers_page_view", "x")

signal_specs = st.dictionaries(
    keys=st.sampled_from(SIGNAL_NAMES),
    values=st.builds(
        SignalSpec,
        points=st.floats(min_value=-25, max_value=25, allow_nan=False),
        half_life=st.floats(min_value=60, max_value=60 * DAY),
    ),
    min_size=1,
    max_size=len(SIGNAL_NAMES),
)

offsets = st.floats(min_value=0, max_value=90 * DAY, allow_nan=False)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[str, SignalSpec], list[Event], float]:
    """Signals, events in a random arrival order (late events included) and a time t."""
    signals = draw(signal_specs)
    events = draw(
        st.lists(
            st.tuples(st.sampled_from(sorted(signals)), offsets.map(lambda o: T0 + o)),
            min_size=1,
            max_size=40,
        )
    )
    arrival = draw(st.permutations(events))
    t = max(t_e for _, t_e in events) + draw(offsets)
    return signals, list(arrival), t


# --- properties --------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_any_arrival_order_matches_the_reference(
    scenario: tuple[dict[str, SignalSpec], list[Event], float],
) -> None:
    signals, events, t = scenario
    check_against_reference(fold(events, signals), events, signals, t)


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_every_event_late_after_the_newest_matches_the_reference(
    scenario: tuple[dict[str, SignalSpec], list[Event], float],
) -> None:
    signals, events, t = scenario
    newest_first = sorted(events, key=lambda e: e[1], reverse=True)
    accs = fold(newest_first, signals)
    # Every event after the first of its signal was late: t_ref never moved back.
    for signal, (_, t_ref) in accs.items():
        assert t_ref == max(t_e for s, t_e in events if s == signal)
    check_against_reference(accs, events, signals, t)


@settings(max_examples=200, deadline=None)
@given(scenarios(), st.data())
def test_merging_two_identities_matches_the_reference_over_the_union(
    scenario: tuple[dict[str, SignalSpec], list[Event], float], data: st.DataObject
) -> None:
    signals, events, t = scenario
    sides = data.draw(st.lists(st.booleans(), min_size=len(events), max_size=len(events)))
    anonymous = [e for e, side in zip(events, sides, strict=True) if side]
    known = [e for e, side in zip(events, sides, strict=True) if not side]
    half_lives = {name: spec.half_life for name, spec in signals.items()}

    merged = merge_all(fold(known, signals), fold(anonymous, signals), half_lives)
    check_against_reference(merged, events, signals, t)

    swapped = merge_all(fold(anonymous, signals), fold(known, signals), half_lives)
    check_against_reference(swapped, events, signals, t)


@settings(max_examples=100, deadline=None)
@given(scenarios(), st.data())
def test_events_after_a_merge_keep_matching_the_reference(
    scenario: tuple[dict[str, SignalSpec], list[Event], float], data: st.DataObject
) -> None:
    signals, events, t = scenario
    cut_a = data.draw(st.integers(min_value=0, max_value=len(events)))
    cut_b = data.draw(st.integers(min_value=cut_a, max_value=len(events)))
    first, second, after = events[:cut_a], events[cut_a:cut_b], events[cut_b:]
    half_lives = {name: spec.half_life for name, spec in signals.items()}

    merged = merge_all(fold(first, signals), fold(second, signals), half_lives)
    check_against_reference(fold(after, signals, merged), events, signals, t)


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_weighted_accumulators_follow_the_product_formula_literally(
    scenario: tuple[dict[str, SignalSpec], list[Event], float],
) -> None:
    """PRODUCT.md folds ``w`` into the accumulator; ``apply_event(weight=w)`` does that."""
    signals, events, t = scenario
    accs: Accumulators = {}
    for signal, t_e in events:
        spec = signals[signal]
        accs[signal] = apply_event(accs.get(signal), t_e, spec.half_life, weight=spec.points)
    for signal, (expected, scale) in reference(events, signals, t).items():
        assert_close(value_at(accs[signal], t, signals[signal].half_life), expected, scale)


@settings(max_examples=100, deadline=None)
@given(scenarios(), st.floats(min_value=-40, max_value=40, allow_nan=False))
def test_changing_points_rescales_the_history(
    scenario: tuple[dict[str, SignalSpec], list[Event], float], new_points: float
) -> None:
    """Accumulators are unweighted, so a new ``points`` applies to past events at once."""
    signals, events, t = scenario
    accs = fold(events, signals)
    changed = {name: SignalSpec(new_points, spec.half_life) for name, spec in signals.items()}
    check_against_reference(accs, events, changed, t)


@settings(max_examples=100, deadline=None)
@given(
    st.floats(min_value=60, max_value=60 * DAY),
    st.lists(st.floats(min_value=0, max_value=30 * DAY), min_size=1, max_size=10),
    st.lists(st.floats(min_value=0, max_value=30 * DAY), min_size=1, max_size=10),
    st.lists(st.floats(min_value=0, max_value=30 * DAY), min_size=1, max_size=10),
)
def test_merge_is_commutative_and_associative(
    h: float, xs: list[float], ys: list[float], zs: list[float]
) -> None:
    spec = {"s": SignalSpec(1.0, h)}
    a, b, c = (fold([("s", T0 + o) for o in os_], spec)["s"] for os_ in (xs, ys, zs))
    t = T0 + 31 * DAY
    ab_c = merge(merge(a, b, h), c, h)
    a_bc = merge(a, merge(b, c, h), h)
    ba = merge(b, a, h)
    ab = merge(a, b, h)
    assert ab_c is not None and a_bc is not None and ab is not None and ba is not None
    scale = len(xs) + len(ys) + len(zs)
    assert_close(value_at(ab_c, t, h), value_at(a_bc, t, h), scale)
    assert_close(value_at(ab, t, h), value_at(ba, t, h), scale)
    assert ab[1] == ba[1] == max(a[1], b[1])


# --- worked examples ---------------------------------------------------------------


def test_decay_factor_halves_every_half_life() -> None:
    assert decay_factor(0, 7 * DAY) == 1.0
    assert decay_factor(7 * DAY, 7 * DAY) == 0.5
    assert decay_factor(14 * DAY, 7 * DAY) == 0.25


def test_first_event_starts_the_accumulator_at_one() -> None:
    assert apply_event(None, T0, 3 * DAY) == (1.0, T0)


def test_in_order_event_decays_then_adds() -> None:
    h = 14 * DAY
    acc = apply_event((1.0, T0), T0 + h, h)
    assert acc == (1.5, T0 + h)


def test_late_event_adds_its_decayed_share_and_keeps_t_ref() -> None:
    h = 7 * DAY
    acc = apply_event((1.0, T0), T0 - h, h)
    assert acc == (1.5, T0)


def test_demo_request_is_worth_half_its_points_after_fourteen_days() -> None:
    signals = {"demo_request": SignalSpec(20, 14 * DAY)}
    accs = fold([("demo_request", T0)], signals)
    assert math.isclose(signal_scores(accs, T0 + 14 * DAY, signals)["demo_request"], 10.0)


def test_merge_with_nothing_is_identity() -> None:
    a = (2.0, T0)
    assert merge(a, None, DAY) == a
    assert merge(None, a, DAY) == a
    assert merge(None, None, DAY) is None


def test_merge_brings_both_to_the_later_t_ref() -> None:
    h = DAY
    merged = merge((4.0, T0), (1.0, T0 + h), h)
    assert merged == (3.0, T0 + h)


def test_merge_all_keeps_signals_present_on_one_side_only() -> None:
    a = {"demo_request": (1.0, T0)}
    b = {"site_visit": (2.0, T0 + 5)}
    merged = merge_all(a, b, {"demo_request": DAY, "site_visit": DAY})
    assert merged == {"demo_request": (1.0, T0), "site_visit": (2.0, T0 + 5)}


def test_merge_all_keeps_the_newer_reading_of_a_signal_the_policy_dropped() -> None:
    older, newer = (5.0, T0), (3.0, T0 + 100)
    assert merge_all({"gone": older}, {"gone": newer}, {}) == {"gone": newer}
    assert merge_all({"gone": newer}, {"gone": older}, {}) == {"gone": newer}


def test_signals_not_in_the_policy_score_nothing() -> None:
    signals = {"demo_request": SignalSpec(20, 14 * DAY)}
    accs: Accumulators = {"demo_request": (1.0, T0), "retired_signal": (7.0, T0)}
    assert signal_scores(accs, T0, signals) == {"demo_request": 20.0}
    assert raw_intent(accs, T0, signals) == 20.0


def test_negative_points_lower_intent_and_lead_intent_is_clamped() -> None:
    signals = {
        "demo_request": SignalSpec(20, 14 * DAY),
        "careers_page_view": SignalSpec(-10, 30 * DAY),
    }
    job_seeker = fold([("careers_page_view", T0)] * 3 + [("demo_request", T0)], signals)
    assert raw_intent(job_seeker, T0, signals) == -10.0
    assert clamp(raw_intent(job_seeker, T0, signals), 0.0, INTENT_MAX) == 0.0

    eager = fold([("demo_request", T0)] * 4, signals)
    assert raw_intent(eager, T0, signals) == 80.0
    assert clamp(raw_intent(eager, T0, signals), 0.0, INTENT_MAX) == INTENT_MAX


def test_clamp() -> None:
    assert clamp(-1.0, 0.0, 50.0) == 0.0
    assert clamp(51.0, 0.0, 50.0) == 50.0
    assert clamp(12.5, 0.0, 50.0) == 12.5
