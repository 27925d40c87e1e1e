"""Exponential-decay accumulators: the exact scoring math of PRODUCT.md.

A signal with points ``w`` and half-life ``h`` seen at ``t_e`` contributes
``w * 2 ** (-(t - t_e) / h)`` at any ``t >= t_e``. Because decay is linear, the
contributions of any number of events fold into one accumulator ``(acc, t_ref)``:
"acc is the sum of the contributions evaluated at t_ref".

We keep ``acc`` *unweighted* (a decayed event count) and multiply by ``w`` when the
score is read. That is the same sum divided by ``w``, so every formula below is the
one in PRODUCT.md; it also means a policy that changes a signal's points applies to
the history at once, instead of only to events seen after the change.
All times are POSIX seconds (floats).
"""

from __future__ import annotations

from collections.abc import Mapping

from app.policy.schema import SignalSpec

# signal -> (acc, t_ref); a plain tuple keeps it cheap to store as JSON.
Accumulators = dict[str, tuple[float, float]]


def decay_factor(dt: float, half_life: float) -> float:
    """``2 ** (-dt / half_life)``: the share of a contribution left after ``dt`` seconds."""
    return float(2.0 ** (-dt / half_life))


def apply_event(
    acc: tuple[float, float] | None, t_event: float, half_life: float, weight: float = 1.0
) -> tuple[float, float]:
    """Fold one event at ``t_event`` into ``(acc, t_ref)``; O(1), any arrival order.

    - ``t_event >= t_ref``: ``acc = acc * 2^(-(t_event - t_ref)/h) + w``; ``t_ref = t_event``
    - late event:          ``acc = acc + w * 2^(-(t_ref - t_event)/h)``
    """
    if acc is None:
        return (weight, t_event)
    value, t_ref = acc
    if t_event >= t_ref:
        return (value * decay_factor(t_event - t_ref, half_life) + weight, t_event)
    return (value + weight * decay_factor(t_ref - t_event, half_life), t_ref)


def value_at(acc: tuple[float, float], t: float, half_life: float) -> float:
    """The accumulator's sum evaluated at ``t`` (``t`` may precede ``t_ref``)."""
    value, t_ref = acc
    return value * decay_factor(t - t_ref, half_life)


def merge(
    a: tuple[float, float] | None, b: tuple[float, float] | None, half_life: float
) -> tuple[float, float] | None:
    """Add two accumulators after bringing both to the later ``t_ref``."""
    if a is None:
        return b
    if b is None:
        return a
    t_ref = max(a[1], b[1])
    return (value_at(a, t_ref, half_life) + value_at(b, t_ref, half_life), t_ref)


def merge_all(
    a: Mapping[str, tuple[float, float]],
    b: Mapping[str, tuple[float, float]],
    half_lives: Mapping[str, float],
) -> Accumulators:
    """Merge two identities' accumulators signal by signal."""
    out: Accumulators = dict(a)
    for signal, acc in b.items():
        h = half_lives.get(signal)
        if h is None:  # a signal the policy no longer knows: keep the newer reading
            out[signal] = acc if signal not in out or acc[1] > out[signal][1] else out[signal]
            continue
        merged = merge(out.get(signal), acc, h)
        assert merged is not None
        out[signal] = merged
    return out


def signal_scores(
    accs: Mapping[str, tuple[float, float]], t: float, signals: Mapping[str, SignalSpec]
) -> dict[str, float]:
    """Each signal's decayed points at ``t``; signals not in the policy score nothing."""
    out: dict[str, float] = {}
    for name, acc in accs.items():
        spec = signals.get(name)
        if spec is None:
            continue
        out[name] = spec.points * value_at(acc, t, spec.half_life)
    return out


def raw_intent(
    accs: Mapping[str, tuple[float, float]], t: float, signals: Mapping[str, SignalSpec]
) -> float:
    """Unclamped sum of decayed signal points at ``t`` (what account intent adds up)."""
    total = 0.0
    for name, acc in accs.items():
        spec = signals.get(name)
        if spec is not None:
            total += spec.points * value_at(acc, t, spec.half_life)
    return total


def clamp(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x
