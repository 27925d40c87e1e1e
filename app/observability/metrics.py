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
