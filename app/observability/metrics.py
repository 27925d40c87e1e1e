"""Every Prometheus metric the service exposes, in one place."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

EVENTS_INGESTED = Counter(
    "intent_events_ingested_total", "Events accepted and applied", ["source", "type", "transport"]
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
