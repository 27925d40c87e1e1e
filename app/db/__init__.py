"""Database infrastructure: tables, engine and sessions, driver-level bulk statements
(``app.db.bulk``), the SQLite WAL checkpointer (``app.db.wal``) and migrations
(``app.db.migrate``). The tables and the engine helpers are re-exported here."""

from app.db.engine import Transaction, dialect_of, make_engine, make_sessionmaker, upsert
from app.db.tables import (
    accounts,
    api_keys,
    decisions,
    deliveries,
    delivery_attempts,
    destinations,
    dispositions,
    dumps,
    events,
    identities,
    keyring,
    leads,
    loads,
    metadata,
    policies,
    routing_counters,
    sources,
    suppressions,
)

__all__ = [
    "Transaction",
    "accounts",
    "api_keys",
    "decisions",
    "deliveries",
    "delivery_attempts",
    "destinations",
    "dialect_of",
    "dispositions",
    "dumps",
    "events",
    "identities",
    "keyring",
    "leads",
    "loads",
    "make_engine",
    "make_sessionmaker",
    "metadata",
    "policies",
    "routing_counters",
    "sources",
    "suppressions",
    "upsert",
]
