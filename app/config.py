"""Settings from ``INTENT_*`` environment variables (and ``./.env``); bad values stop start-up."""

from __future__ import annotations

import ipaddress
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DB = "sqlite+aiosqlite:///./.data/intent-router.db"
# The default retry schedule (app.delivery.retry uses it): delays (s) before attempt 1, 2, …
RETRY_SCHEDULE: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
RETRY_JITTER = 0.2


class Settings(BaseSettings):
    # A .env file in the working directory is read too; real environment variables win.
    # Only its INTENT_ lines are ours (it may hold other tools' settings), and an INTENT_
    # name there that is no setting stops start-up: a typo in a file would go unnoticed.
    model_config = SettingsConfigDict(
        env_prefix="INTENT_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        dotenv_filtering="match_prefix",
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    database_url: str = DEFAULT_DB
    kafka_bootstrap: str | None = None
    kafka_topic: str = "intent.events"
    kafka_group: str = "intent-router"
    kafka_partitions: int = Field(default=4, ge=1)  # when the service creates the topic
    # What this process runs: api (HTTP), consumer (Kafka → pipeline), dispatcher (webhooks).
    roles: Annotated[list[str], NoDecode] = ["api", "consumer", "dispatcher"]
    # Hosts or CIDRs webhooks may reach although they are private or loopback.
    delivery_allowed_hosts: Annotated[list[str], NoDecode] = []
    delivery_timeout_seconds: float = Field(default=15.0, gt=0)
    delivery_concurrency_per_destination: int = Field(default=16, ge=1)
    # A claimed delivery not finished within this (a crashed process) is sent again.
    delivery_lease_seconds: float = Field(default=60.0, gt=0)
    # Delays (s) before attempt 1, 2, …; comma-separated. Each is jittered by ± the ratio.
    delivery_retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list(RETRY_SCHEDULE)
    )
    delivery_retry_jitter: float = Field(default=RETRY_JITTER, ge=0, lt=1)
    # A destination whose every attempt failed for this long is disabled (0: never).
    delivery_disable_after_seconds: float = Field(default=5 * 86400, ge=0)
    # Group commit: single-event posts wait at most this long to share a transaction.
    batch_max_wait_ms: float = Field(default=0.0, ge=0)
    batch_max_events: int = Field(default=5000, ge=1)
    ingest_queue_max_events: int = Field(default=50_000, ge=1)
    # Run pipeline transactions on a loop (and engine) of their own, off the HTTP loop.
    pipeline_thread: bool = True
    # SQLite durability: FULL syncs the WAL on every commit (nothing accepted is lost on
    # power failure); NORMAL is faster and loses nothing on a process crash.
    sqlite_synchronous: str = "FULL"
    log_level: str = "INFO"
    # uvicorn worker processes for `serve` (each runs the roles; dispatchers share work
    # through leases). With SQLite, keep 1: one writer is fastest.
    workers: int = Field(default=1, ge=1, le=64)
    bootstrap_admin_key: bool = True
    # How browsers and platforms reach this service (e.g. https://intent.example.com): the
    # hook URLs shown for sources and the apiHost of the settings Segment's browser SDK
    # loads. Unset: taken from each request's Host header.
    public_url: str | None = Field(default=None, pattern=r"^https?://[^/?#\s]+$")
    # Governance (README, "Security and data protection").
    # Quotas: a token bucket per API key and per source, in events per second, with a burst;
    # a key or source may override both.
    rate_limit_events_per_second: float = Field(default=1000.0, gt=0)
    rate_limit_burst: int = Field(default=5000, ge=1)
    # Raw events are deleted after this many days (scores keep: accumulators need no
    # history); duplicates are then recognised within this window only. 0: keep forever.
    event_retention_days: float = Field(default=365.0, ge=0)
    delivery_response_retention_days: float = Field(default=30.0, ge=0)
    # Fernet key(s) for secrets at rest, comma-separated, newest first (MultiFernet): the
    # first encrypts, all decrypt. Unset: the embedded default keeps one in ./.data/.
    secret_key: str | None = Field(default=None, repr=False)
    # When set, /metrics needs `Authorization: Bearer <token>`.
    metrics_token: str | None = Field(default=None, repr=False)
    # A request body that has not arrived in full by then is refused and the connection closed.
    body_timeout_seconds: float = Field(default=30.0, gt=0)

    @field_validator("database_url")
    @classmethod
    def _check_dsn(cls, v: str) -> str:
        if not v.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://", "postgresql://")):
            raise ValueError(
                "INTENT_DATABASE_URL must be sqlite+aiosqlite:///PATH or "
                f"postgresql+asyncpg://USER:PASS@HOST/DB, got {v.split('://')[0]}://…"
            )
        if v.startswith("postgresql://"):
            v = "postgresql+asyncpg://" + v.removeprefix("postgresql://")
        return v

    @field_validator("kafka_bootstrap", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("roles", mode="before")
    @classmethod
    def _split_roles(cls, v: object) -> object:
        if isinstance(v, str):
            return [r.strip() for r in v.split(",") if r.strip()]
        return v

    @field_validator("roles")
    @classmethod
    def _check_roles(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - {"api", "consumer", "dispatcher"})
        if unknown or not v:
            raise ValueError(
                "INTENT_ROLES: use a comma-separated subset of api,consumer,dispatcher"
                + (f" (unknown: {', '.join(unknown)})" if unknown else "")
            )
        return v

    @field_validator("delivery_retry_schedule", mode="before")
    @classmethod
    def _split_schedule(cls, v: object) -> object:
        if isinstance(v, str):
            return [d.strip() for d in v.split(",") if d.strip()]
        return v

    @field_validator("delivery_retry_schedule")
    @classmethod
    def _check_schedule(cls, v: list[float]) -> list[float]:
        if not v or any(d < 0 for d in v):
            raise ValueError(
                "INTENT_DELIVERY_RETRY_SCHEDULE: one or more delays in seconds, none negative"
            )
        return v

    @field_validator("delivery_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, v: object) -> object:
        if isinstance(v, str):
            v = v.strip()
            if v.startswith("["):
                import json

                return json.loads(v)
            return [h.strip() for h in v.split(",") if h.strip()]
        return v

    @field_validator("delivery_allowed_hosts")
    @classmethod
    def _check_hosts(cls, v: list[str]) -> list[str]:
        for item in v:
            if "/" in item:
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError as exc:
                    raise ValueError(
                        f"INTENT_DELIVERY_ALLOWED_HOSTS: {item!r} is not a valid CIDR"
                    ) from exc
        return [h.lower() for h in v]

    @field_validator("sqlite_synchronous")
    @classmethod
    def _check_sync(cls, v: str) -> str:
        if v.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError("INTENT_SQLITE_SYNCHRONOUS must be OFF, NORMAL, FULL or EXTRA")
        return v.upper()

    @cached_property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def sqlite_path(self) -> Path | None:
        if not self.is_sqlite:
            return None
        path = self.database_url.split(":///", 1)[1]
        return None if path in ("", ":memory:") else Path(path)
