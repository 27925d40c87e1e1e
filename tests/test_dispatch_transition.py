"""The dispatcher's outcome handling as pure functions: ``transition(outcome)`` (the
delivery's new state) and ``health(outcomes)`` (its destination's), with no database and
no network: every branch, against the documented schedule."""

from __future__ import annotations

import random

import pytest

from app.delivery.dispatcher.record import rows
from app.delivery.retry import MAX_RETRY_AFTER
from app.delivery.transition import (
    Health,
    Job,
    Outcome,
    Retry,
    Sent,
    State,
    health,
    transition,
)

NOW = 1_800_000_000.0
STARTED = NOW - 0.25  # when the attempt began; it ended at NOW
# The documented schedule, stated here so that a change to it has to change this test.
SCHEDULE = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
EXACT = Retry(schedule=SCHEDULE, jitter=0.0, lease=60.0)


def job(attempts: int = 0, *, dest: str = "dst_a", lane: str | None = "dana@acme.com") -> Job:
    return Job("dlv_1", "dec_1", dest, b"{}", NOW - 1, attempts, lane, NOW + 60)


def sent(status: int | None, error: str | None = None, retry_after: float | None = None) -> Sent:
    return Sent(STARTED, 250.0, status, error, retry_after=retry_after)


def failed(
    attempts: int, status: int | None, error: str, retry_after: float | None = None
) -> State:
    outcome = Outcome(job(attempts), sent(status, error, retry_after))
    return transition(outcome, now=NOW, policy=EXACT)


def test_delivered() -> None:
    st = transition(Outcome(job(2), sent(200)), now=NOW, policy=EXACT)
    assert st == State("delivered", 3, STARTED, NOW, None, 200, None)
    assert not st.resend_now


@pytest.mark.parametrize("attempts_made", range(1, len(SCHEDULE)))
def test_a_retryable_failure_waits_its_scheduled_delay(attempts_made: int) -> None:
    st = failed(attempts_made - 1, 500, "http_500")
    assert st == State(
        "pending", attempts_made, NOW + SCHEDULE[attempts_made], None, None, 500, "http_500"
    )
    assert not st.resend_now


def test_the_first_retry_is_at_once_under_a_fresh_claim() -> None:
    """A zero delay: this process keeps the delivery (locked a lease ahead) and resends."""
    retry_now = Retry(schedule=(0, 0, 5), jitter=0.0, lease=60.0)
    st = transition(Outcome(job(0), sent(None, "timeout")), now=NOW, policy=retry_now)
    assert st == State("pending", 1, NOW, None, NOW + 60.0, None, "timeout")
    assert st.resend_now


def test_the_delay_is_jittered_within_bounds() -> None:
    jittered = Retry(schedule=SCHEDULE, jitter=0.2, lease=60.0, rng=random.Random(7))
    gaps = {
        transition(Outcome(job(2), sent(503, "http_503")), now=NOW, policy=jittered).next_attempt_at
        - NOW
        for _ in range(200)
    }
    assert len(gaps) > 100  # not one fixed delay
    assert all(1800 * 0.8 <= g <= 1800 * 1.2 for g in gaps)


def test_a_longer_retry_after_wins_a_shorter_one_does_not() -> None:
    assert failed(1, 429, "http_429", retry_after=900.0).next_attempt_at == NOW + 900.0
    assert failed(1, 429, "http_429", retry_after=1.0).next_attempt_at == NOW + 300.0
    capped = failed(1, 503, "http_503", retry_after=10 * MAX_RETRY_AFTER)
    assert capped.next_attempt_at == NOW + MAX_RETRY_AFTER


def test_the_schedule_exhausted_is_dead() -> None:
    st = failed(len(SCHEDULE) - 1, 500, "http_500")
    assert st == State("dead", len(SCHEDULE), NOW, None, None, 500, "http_500")


def test_410_gone_is_dead_at_once() -> None:
    st = failed(0, 410, "http_410")
    assert st == State("dead", 1, NOW, None, None, 410, "http_410")


@pytest.mark.parametrize(
    "error", ["ssrf_refused: 10.0.0.1 is private", "timeout", "ConnectError: refused"]
)
def test_no_answer_is_a_failure_retried_on_schedule(error: str) -> None:
    """Refused by the SSRF guard at send time, timed out, not connected: an attempt made,
    with no status code, retried like any failure."""
    st = failed(1, None, error)
    assert st == State("pending", 2, NOW + 300.0, None, None, None, error)


def test_a_redirect_is_a_failure_not_followed() -> None:
    assert failed(0, 302, "http_302").status == "pending"


def test_a_disabled_destination_parks_the_delivery_unattempted() -> None:
    st = transition(Outcome(job(3), skipped="parked"), now=NOW, policy=EXACT)
    assert st == State("parked", 3, NOW, None, None, None, None)


def test_a_deleted_destination_closes_the_delivery_out() -> None:
    st = transition(Outcome(job(3), skipped="deleted"), now=NOW, policy=EXACT)
    assert st == State("dead", 3, NOW, None, None, None, "destination_deleted")


def test_only_attempts_made_are_recorded() -> None:
    batch = [
        Outcome(job(0), sent(204)),
        Outcome(job(4), skipped="parked"),
    ]
    states = [transition(o, now=NOW, policy=EXACT) for o in batch]
    written = rows(batch, states)
    assert [a["attempt"] for a in written.attempts] == [1]
    assert written.attempts[0] == {
        "delivery_id": "dlv_1",
        "attempt": 1,
        "started_at": STARTED,
        "status_code": 204,
        "latency_ms": 250.0,
        "error": None,
        "response_body": None,
    }
    assert [(u["status"], u["attempts"]) for u in written.updates] == [
        ("delivered", 1),
        ("parked", 4),
    ]


# -- the destination's failure clock -------------------------------------------------------

GRACE = 1000.0


def outcome(dest: str, status: int | None, error: str | None, at: float = STARTED) -> Outcome:
    return Outcome(job(dest=dest), Sent(at, 1.0, status, error))


def test_a_first_failure_starts_the_clock_at_that_attempt() -> None:
    got = health(
        [outcome("a", 500, "http_500", NOW - 5), outcome("a", 500, "http_500", NOW - 1)],
        {"a": None},
        now=NOW,
        disable_after=GRACE,
    )
    assert got == Health(failing={"a": NOW - 5})
    assert got.changed


def test_a_success_heals_and_wins_over_failures_in_the_same_batch() -> None:
    got = health(
        [outcome("a", 500, "http_500"), outcome("a", 204, None), outcome("b", 204, None)],
        {"a": NOW - 10 * GRACE, "b": None},
        now=NOW,
        disable_after=GRACE,
    )
    assert got == Health(healed=["a"])  # b was healthy already: nothing to change


def test_failing_past_the_grace_goes_off_inside_it_does_not() -> None:
    failing = [outcome("late", None, "timeout"), outcome("early", 500, "http_500")]
    got = health(
        failing,
        {"late": NOW - GRACE, "early": NOW - GRACE + 1},
        now=NOW,
        disable_after=GRACE,
    )
    assert got == Health(over=["late"])
    assert not got.changed  # the clocks did not move; the switch-off is separate
    never = health(failing, {"late": NOW - 1e9, "early": None}, now=NOW, disable_after=0)
    assert never == Health(failing={"early": STARTED})  # 0: never switched off


def test_410_marks_the_destination_gone() -> None:
    got = health([outcome("a", 410, "http_410")], {"a": None}, now=NOW, disable_after=GRACE)
    assert got.gone == ["a"]


def test_unattempted_and_unknown_destinations_leave_no_mark() -> None:
    got = health(
        [Outcome(job(dest="a"), skipped="parked"), outcome("gone-from-cache", 500, "http_500")],
        {"a": None},
        now=NOW,
        disable_after=GRACE,
    )
    assert got == Health()
