"""The tables (SQLAlchemy Core), with a naming convention, and their JSON columns.

Timestamps are POSIX seconds in double-precision columns: the scoring math works in
seconds, and the hot path then converts nothing. JSON columns are text written with
orjson, identical on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("prefix", String(20), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("scopes", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
    Column("expires_at", Float),
    Column("last_used_at", Float),
    # Per-key quota (events per second and burst); None: the INTENT_RATE_LIMIT_* defaults.
    Column("rate_limit", Float),
    Column("rate_burst", Integer),
)

# Keys the service makes for itself, encrypted with INTENT_SECRET_KEY like every secret:
# "suppression", the key of the suppression list's hashes, which must outlive a rotation
# of INTENT_SECRET_KEY (a hash cannot be recomputed: the identifier is gone).
keyring = Table(
    "keyring",
    metadata,
    Column("name", String(40), primary_key=True),
    Column("value", String(500), nullable=False),
    Column("created_at", Float, nullable=False),
)

# Erased people who asked not to be processed again: a keyed hash of each identifier
# (never the identifier itself); events for them are dropped and counted.
suppressions = Table(
    "suppressions",
    metadata,
    Column("identifier_hash", String(64), primary_key=True),
    Column("created_at", Float, nullable=False),
)

# Where events come from: a Segment-compatible SDK (a write key, public by design, kept
# as a hash) or a platform's webhook (its secret, used to verify each request).
sources = Table(
    "sources",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("kind", String(40), nullable=False),
    Column("write_key_hash", String(64), unique=True),
    Column("write_key_prefix", String(20)),
    Column("secret", String(500)),
    Column("allowed_origins", Text, nullable=False, default="[]"),
    Column("signal", String(64)),
    Column("config", Text, nullable=False, default="{}"),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("rate_limit", Float),
    Column("rate_burst", Integer),
)

policies = Table(
    "policies",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("document", Text, nullable=False),
    Column("source_text", Text),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(200)),
    Column("comment", Text),
    # "active" versions are applied in order (the newest is in force); a "proposed" one
    # (from calibration) waits for a human to apply it. Its report says what it changes.
    Column("status", String(20), nullable=False, default="active"),
    Column("report", Text),
)

# One row per pipeline transaction that stored a fresh event (the service clock it ran at
# and the policy version in force) or per account import. Events and decisions name their
# batch and position, so a replay runs the same batches in the same order at the same clock.
batches = Table(
    "batches",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("at", Float, nullable=False),
    Column("policy_version", Integer),
    # An ABM import (PUT /v1/accounts) is recorded in the same order: its rows, as given.
    Column("accounts", Text),
    Index("ix_batches_at", "at"),
    sqlite_autoincrement=True,  # never reuses an id (the order is the processing order)
)

events = Table(
    "events",
    metadata,
    Column("event_id", String(200), primary_key=True),
    Column("received_at", Float, nullable=False),
    Column("occurred_at", Float, nullable=False),
    Column("type", String(100), nullable=False),
    Column("source", String(200), nullable=False),
    Column("transport", String(20), nullable=False),
    Column("lead_id", String(320)),
    Column("account_domain", String(255)),
    Column("policy_version", Integer, nullable=False),
    Column("payload", Text, nullable=False),
    Column("batch_id", BigInteger),
    Column("batch_pos", Integer),
    Index("ix_events_lead_id", "lead_id"),
    Index("ix_events_batch", "batch_id", "batch_pos"),
    Index("ix_events_source_received", "source", "received_at"),
)

leads = Table(
    "leads",
    metadata,
    Column("lead_id", String(320), primary_key=True),
    Column("email", String(320)),
    Column("account_domain", String(255)),
    Column("attributes", Text, nullable=False, default="{}"),
    Column("signals", Text, nullable=False, default="{}"),
    Column("fit", Float, nullable=False, default=0.0),
    Column("intent", Float, nullable=False, default=0.0),
    Column("band", String(40), nullable=False),
    Column("band_at", Float, nullable=False),
    Column("policy_version", Integer, nullable=False),
    Column("source", String(200)),
    Column("first_seen_at", Float, nullable=False),
    Column("last_event_at", Float, nullable=False),
    Column("last_decision_at", Float),
    Column("last_decision_band", String(40)),
    Column("last_decision_tier", String(20)),
    Column("merged_into", String(320)),
    Column("updated_at", Float, nullable=False),
    Index("ix_leads_account_domain", "account_domain"),
    Index("ix_leads_band", "band"),
)

identities = Table(
    "identities",
    metadata,
    Column("identifier", String(400), primary_key=True),
    Column("lead_id", String(320), nullable=False),
    Index("ix_identities_lead_id", "lead_id"),
)

accounts = Table(
    "accounts",
    metadata,
    Column("domain", String(255), primary_key=True),
    Column("name", String(300)),
    Column("tier", String(20)),
    Column("owner", String(320)),
    Column("territory", String(100)),
    Column("industry", String(100)),
    Column("employees", Integer),
    Column("country", String(2)),
    Column("annual_revenue", Float),
    Column("attributes", Text, nullable=False, default="{}"),
    Column("signals", Text, nullable=False, default="{}"),
    Column("active_leads", Integer, nullable=False, default=0),
    Column("last_event_at", Float),
    Column("last_decision_at", Float),
    Column("last_decision_tier", String(20)),
    Column("updated_at", Float, nullable=False),
    Index("ix_accounts_tier", "tier"),
)

decisions = Table(
    "decisions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("type", String(40), nullable=False),
    Column("lead_id", String(320)),
    Column("account_domain", String(255)),
    Column("rule", String(200), nullable=False),
    Column("team", String(200), nullable=False),
    Column("assignee", String(320)),
    Column("band", String(40)),
    Column("tier", String(20)),
    Column("reason", Text, nullable=False),
    Column("policy_version", Integer, nullable=False),
    Column("trigger_event_id", String(200)),
    Column("event_received_at", Float),
    Column("created_at", Float, nullable=False),
    Column("payload", Text, nullable=False),
    # Where the lead came from (first touch), for the scorecard.
    Column("source", String(200)),
    Column("campaign", String(200)),
    # The record the CRM made for this decision, once it says so in feedback.
    Column("crm_id", String(200)),
    # The latest disposition (accepted | rejected | opportunity | won | lost) and when
    # sales first accepted; the full history is in ``dispositions``.
    Column("disposition", String(20)),
    Column("accepted_at", Float),
    # SLA of the routing rule: accept by ``sla_due_at``; pending | met | missed.
    Column("sla_due_at", Float),
    Column("sla_status", String(20)),
    # The batch that made it and its place among that batch's decisions (replay order).
    Column("batch_id", BigInteger),
    Column("batch_pos", Integer),
    Index("ix_decisions_lead_id", "lead_id"),
    Index("ix_decisions_crm_id", "crm_id"),
    Index("ix_decisions_sla", "sla_status", "sla_due_at"),
    Index("ix_decisions_account_domain", "account_domain"),
    Index("ix_decisions_created_at", "created_at"),
)

destinations = Table(
    "destinations",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("url", Text, nullable=False),
    Column("secret", String(500), nullable=False),  # encrypted at rest
    Column("enabled", Boolean, nullable=False, default=True),
    Column("format", String(20), nullable=False, default="json"),
    Column("filter", Text, nullable=False, default="{}"),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # Why and when it was switched off (410 Gone, an admin); cleared when re-enabled.
    Column("disabled_reason", String(200)),
    Column("disabled_at", Float),
    # The secret before the last rotation, still signed with until it expires.
    Column("previous_secret", String(500)),
    Column("previous_secret_expires_at", Float),
    # Start of the current run of failed attempts (no success since); None when healthy.
    Column("failing_since", Float),
)

dispositions = Table(
    "dispositions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("decision_id", String(40), nullable=False),
    Column("lead_id", String(320)),
    Column("status", String(20), nullable=False),  # accepted|rejected|opportunity|won|lost
    Column("reason", String(100)),  # rejected: one of the policy's rejection reasons
    Column("note", Text),
    Column("value", Float),  # opportunity / won: its value
    Column("crm_id", String(200)),
    # The client's idempotency key (header Idempotency-Key), else a digest of the body.
    Column("idempotency_key", String(200), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(200)),
    Index("ix_dispositions_decision_id", "decision_id"),
    Index("ix_dispositions_lead_id", "lead_id"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("decision_id", String(40), nullable=False),
    Column("destination_id", String(40), nullable=False),
    # pending | delivered | dead | parked (its destination is disabled; resumes on enable)
    Column("status", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False),
    Column("locked_until", Float),
    Column("last_status_code", Integer),
    Column("last_error", Text),
    Column("event_received_at", Float),
    Column("created_at", Float, nullable=False),
    Column("delivered_at", Float),
    # Deliveries of one lead (or account) to one destination go out in ``seq`` order:
    # a delivery waits while an earlier one of its lane is still pending.
    Column("order_key", String(320)),
    Column("seq", BigInteger),
    Index("ix_deliveries_status_next", "status", "next_attempt_at"),
    Index("ix_deliveries_decision_id", "decision_id"),
    Index("ix_deliveries_lane", "destination_id", "order_key", "seq"),
    Index("ix_deliveries_destination_due", "destination_id", "status", "next_attempt_at"),
)

delivery_attempts = Table(
    "delivery_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("delivery_id", String(40), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("status_code", Integer),
    Column("latency_ms", Float, nullable=False),
    Column("error", Text),
    Column("response_body", Text),
    Index("ix_delivery_attempts_delivery_id", "delivery_id"),
)

routing_counters = Table(
    "routing_counters",
    metadata,
    # key is "rr:<team>" for a round-robin cursor or "cap:<team>:<member>:<day>"
    Column("key", String(600), primary_key=True),
    Column("value", Integer, nullable=False),
)


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def loads(text: str | bytes | None) -> Any:
    return orjson.loads(text) if text else {}


# Replays and shadow policies (app.policy.impact.replay): one row per job, its progress
# and, when done, its decision diff; the decisions it made are in ``replay_decisions``.
replays = Table(
    "replays",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("kind", String(20), nullable=False),  # replay | shadow | dry_run
    Column("status", String(20), nullable=False),  # queued | running | done | failed | …
    Column("policy_version", Integer),  # a stored version replayed, or
    Column("policy_text", Text),  # a candidate document (JSON)
    Column("since", Float),
    Column("until", Float),
    Column("start", String(20), nullable=False),  # history | empty
    Column("examples", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(200)),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("progress", Text),
    Column("result", Text),
    Column("error", Text),
    Column("owner", String(100)),
    Column("lease_until", Float),
    Column("cursor", BigInteger),  # the last batch applied (a shadow follows new ones)
    Index("ix_replays_status", "status"),
)

replay_decisions = Table(
    "replay_decisions",
    metadata,
    Column("replay_id", String(40), primary_key=True),
    Column("lane", String(20), primary_key=True),  # candidate | baseline
    Column("pos", Integer, primary_key=True, autoincrement=False),
    Column("batch_id", BigInteger),
    Column("type", String(40), nullable=False),
    Column("lead_id", String(320)),
    Column("account_domain", String(255)),
    Column("rule", String(200), nullable=False),
    Column("team", String(200), nullable=False),
    Column("assignee", String(320)),
    Column("band", String(40)),
    Column("tier", String(20)),
    Column("source", String(200)),
    Column("created_at", Float, nullable=False),
    Column("trigger_event_id", String(200)),
    Column("payload", Text, nullable=False),
)
