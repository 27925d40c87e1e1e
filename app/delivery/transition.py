"""What an attempt's outcome does to its delivery and to its destination: pure functions
of the outcome, the clock and the retry schedule (no database, no network).

A delivery goes prepare → send → outcome; ``transition(outcome)`` is the state it is in
afterwards: delivered, due again later (the schedule as data, a longer Retry-After
winning), due again at once (a zero delay: this process keeps its claim and resends),
dead (410 Gone, the schedule exhausted, its destination deleted) or parked (its
destination is off). ``health`` is the same for destinations: which healed, which
started failing, which have failed for longer than the grace period and go off.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from app.delivery import retry

GONE = 410  # the receiver says the endpoint is gone for good: stop sending to it

Status = Literal["pending", "delivered", "dead", "parked"]
# Not attempted: the destination is off ("parked") or was removed ("deleted").
Skip = Literal["parked", "deleted"]


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed delivery on its way out."""

    id: str
    decision_id: str
    destination_id: str
    body: bytes
    event_received_at: float | None
    attempts: int  # attempts made before this one
    order_key: str | None
    lease_until: float | None  # this process's claim; another may send it after that


@dataclass(frozen=True, slots=True)
class Sent:
    """What one attempt got: an answer (``status_code``), or the error that stopped it."""

    started_at: float
    latency_ms: float
    status_code: int | None
    error: str | None  # None: delivered (a 2xx)
    response_body: str | None = None
    retry_after: float | None = None  # seconds, from a 429's or 503's Retry-After


@dataclass(frozen=True, slots=True)
class Outcome:
    job: Job
    sent: Sent | None = None  # None: not attempted, for the reason in ``skipped``
    skipped: Skip | None = None


@dataclass(frozen=True)
class Retry:
    """How failures are retried: delays before attempt 1, 2, …, their jitter, and how
    long a claim lasts (a zero delay resends at once under a fresh claim)."""

    schedule: tuple[float, ...] = retry.SCHEDULE
    jitter: float = retry.JITTER
    lease: float = 60.0
    rng: random.Random | None = None  # tests pass a seeded one


@dataclass(frozen=True, slots=True)
class State:
    """The delivery after an outcome: the row's new columns, and what follows."""

    status: Status
    attempts: int
    next_attempt_at: float
    delivered_at: float | None
    locked_until: float | None  # set: this process keeps its claim and sends again now
    last_status_code: int | None
    last_error: str | None

    @property
    def resend_now(self) -> bool:
        return self.status == "pending" and self.locked_until is not None


def transition(outcome: Outcome, *, now: float, policy: Retry) -> State:
    """The state a delivery is in after ``outcome``, decided at ``now``."""
    job, sent = outcome.job, outcome.sent
    if sent is None:
        status: Status = "dead" if outcome.skipped == "deleted" else "parked"
        error = "destination_deleted" if outcome.skipped == "deleted" else None
        return State(status, job.attempts, now, None, None, None, error)
    n = job.attempts + 1
    if sent.error is None:
        return State("delivered", n, sent.started_at, now, None, sent.status_code, None)
    if sent.status_code == GONE:
        return State("dead", n, now, None, None, sent.status_code, sent.error)
    delay = retry.next_delay(
        n,
        schedule=policy.schedule,
        jitter=policy.jitter,
        retry_after=sent.retry_after,
        rng=policy.rng,
    )
    if delay is None:  # the schedule is exhausted
        return State("dead", n, now, None, None, sent.status_code, sent.error)
    locked = now + policy.lease if delay == 0 else None
    return State("pending", n, now + delay, None, locked, sent.status_code, sent.error)


@dataclass(frozen=True)
class Health:
    """Destinations whose failure clock changes, and those to switch off."""

    healed: list[str] = field(default_factory=list)  # a success: failing_since cleared
    failing: dict[str, float] = field(default_factory=dict)  # first failure: its time
    over: list[str] = field(default_factory=list)  # failing for longer than the grace
    gone: list[str] = field(default_factory=list)  # answered 410 Gone

    @property
    def changed(self) -> bool:
        """Whether any destination's failure clock moved (its cached copy is stale)."""
        return bool(self.healed or self.failing)


def health(
    outcomes: Iterable[Outcome],
    failing_since: Mapping[str, float | None],
    *,
    now: float,
    disable_after: float,
) -> Health:
    """How a batch of outcomes moves each destination's failure clock.

    ``failing_since`` holds the known destinations and the start of each one's current
    run of failures (None: healthy). A success in the batch heals its destination; a
    destination with failures only starts its clock at the first of them, or, already
    failing for ``disable_after`` seconds or more (0: never), goes off.
    """
    succeeded: set[str] = set()
    failed: dict[str, float] = {}
    gone: set[str] = set()
    for o in outcomes:
        if o.sent is None:
            continue
        dest_id = o.job.destination_id
        if o.sent.error is None:
            succeeded.add(dest_id)
        else:
            failed.setdefault(dest_id, o.sent.started_at)
        if o.sent.status_code == GONE:
            gone.add(dest_id)
    out = Health(gone=sorted(gone))
    for dest_id in sorted(succeeded):
        if failing_since.get(dest_id) is not None:
            out.healed.append(dest_id)
    for dest_id, first in failed.items():
        if dest_id in succeeded or dest_id not in failing_since:
            continue
        since = failing_since[dest_id]
        if since is None:
            out.failing[dest_id] = first
        elif disable_after and now - since >= disable_after:
            out.over.append(dest_id)
    return out
