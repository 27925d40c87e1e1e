"""Every Prometheus metric the service exposes, in one place.

Every label takes values from a bounded set, never from what a client sends: ``source``
only names registered sources (anything else, such as the API key's name a native event
defaults to, is counted as ``other``); event ``type`` only the policy's signals (an event
of another type is refused before it is counted); codes, outcomes, stages and statuses
are the program's own constants; rules, teams and destinations are what an admin
configured. So ``/metrics`` stays the same size however many distinct values arrive.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Self

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
OTHER_SOURCE = "other"

# Names of the registered sources, as last read by the source store (replaced whole, so
# a reader on another thread always sees one consistent set).
_registered_sources: frozenset[str] = frozenset()


def register_sources(names: Iterable[str]) -> None:
    """The registered sources' names: the only values the ``source`` label takes."""
    global _registered_sources
    _registered_sources = frozenset(names)


def source_label(source: str) -> str:
    return source if source in _registered_sources else OTHER_SOURCE


class _BySource(Counter):
    """A counter whose first label, ``source``, only takes registered names (else
    ``other``): an event's source is whatever the client wrote."""

    def labels(self, *labelvalues: object, **labelkwargs: object) -> Self:
        if labelkwargs:
            labelkwargs["source"] = source_label(str(labelkwargs["source"]))
        elif labelvalues:
            labelvalues = (source_label(str(labelvalues[0])), *labelvalues[1:])
        return super().labels(*labelvalues, **labelkwargs)


EVENTS_INGESTED = _BySource(
    "intent_events_ingested_total",
    'Events accepted and applied; source is a registered source\'s name, else "other"',
    ["source", "type", "transport"],
)
EVENTS_DUPLICATE = Counter(
    "intent_events_duplicate_total", "Events ignored because their event_id was seen", ["transport"]
)
EVENTS_REJECTED = Counter(
    "intent_events_rejected_total", "Events refused, by reason", ["transport", "code"]
)
MESSAGES_NOT_STORED = Counter(
    "intent_source_messages_not_stored_total",
    "Messages from Segment SDKs and platform webhooks that were not stored, by outcome "
    "(ignored, rejected) and reason; each is also in its source's debugger",
    ["transport", "outcome", "code"],
)
EVENTS_SUPPRESSED = Counter(
    "intent_events_suppressed_total",
    "Events dropped before identity resolution because their person was erased and "
    "suppressed (answered as accepted)",
)
POLICY_UNLOADABLE = Gauge(
    "intent_policy_unloadable_versions",
    "Applied policy versions newer than the one in force that cannot be loaded (skipped)",
)
BATCH_SECONDS = Histogram(
    "intent_pipeline_batch_seconds", "Time to apply and commit one batch", buckets=LATENCY_BUCKETS
)
BATCH_SIZE = Histogram(
    "intent_pipeline_batch_events",
    "Events per pipeline batch",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
)
DECISIONS = Counter("intent_decisions_total", "Routing decisions made", ["type", "rule", "team"])
DECISIONS_SUPPRESSED = Counter(
    "intent_decisions_suppressed_total", "Band rises not routed because of the cooldown"
)
DELIVERIES = Counter(
    "intent_deliveries_total", "Webhook delivery attempts by outcome", ["destination", "outcome"]
)
DESTINATIONS_DISABLED = Counter(
    "intent_destinations_disabled_total",
    "Destinations switched off automatically, by reason",
    ["reason"],
)
EVENT_TO_WEBHOOK = Histogram(
    "intent_event_to_webhook_seconds",
    "From the triggering event's arrival to the receiver's 2xx",
    buckets=LATENCY_BUCKETS,
)
DELIVERY_SECONDS = Histogram(
    "intent_delivery_attempt_seconds",
    "Duration of one webhook HTTP attempt",
    buckets=LATENCY_BUCKETS,
)
INGEST_QUEUE = Gauge("intent_ingest_queue_events", "Events waiting for the next batch")
POLICY_VERSION = Gauge("intent_policy_active_version", "Version of the active policy")
STAGE_SECONDS = Histogram(
    "intent_pipeline_stage_seconds",
    "Time per pipeline stage of one batch: ingest (dedupe), load (identities, leads, "
    "accounts), identify (resolve, stitch, attach), score (signals, fit, band), surge "
    "(account surges), route (rules, cooldown, assignment), outbox (deliveries), save "
    "(state written back)",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
DB_ERRORS = Counter(
    "intent_db_errors_total", "Database operations that failed, by operation", ["operation"]
)
OUTBOX_DELIVERIES = Gauge(
    "intent_outbox_deliveries",
    "Deliveries not yet delivered or dead-lettered: pending, or parked (destination off)",
    ["status"],
)
OUTBOX_OLDEST_PENDING = Gauge(
    "intent_outbox_oldest_pending_seconds", "Age of the oldest pending delivery (0 when none)"
)
DESTINATIONS_OFF = Gauge("intent_destinations_off", "Destinations currently disabled")
SQLITE_WAL_PAGES = Gauge(
    "intent_sqlite_wal_pages",
    "Pages in SQLite's write-ahead log at the last background checkpoint (it should not grow)",
)
LEADS_BY_BAND = Gauge("intent_leads", "Leads by current band (as last scored)", ["band"])
KAFKA_LAG = Gauge(
    "intent_kafka_consumer_lag",
    "Records behind the partition's end, per assigned partition",
    ["topic", "partition"],
)


def count_db_error(operation: str, exc: BaseException) -> None:
    """Count ``exc`` against ``operation`` when it came from the database."""
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(exc, SQLAlchemyError | OSError | TimeoutError) or type(exc).__module__.startswith(
        ("asyncpg", "sqlite3", "aiosqlite")
    ):
        DB_ERRORS.labels(operation).inc()


SLA_MET = Counter(
    "intent_sla_met_total", "Decisions accepted by sales within their rule's SLA", ["rule"]
)
SLA_MISSED = Counter(
    "intent_sla_missed_total",
    "Decisions not accepted within their rule's SLA (escalated, or accepted late)",
    ["rule"],
)


def count_sla(status: str, rule: str) -> None:
    """Count a decision's settled SLA (``met`` or ``missed``) against its rule."""
    (SLA_MET if status == "met" else SLA_MISSED).labels(rule).inc()
