"""Registered sources: their rows (create, change, rotate, remove) and a cache the
ingest routes read on every request.

The cache holds the whole table (sources are few) and is reloaded when it is older than
``CACHE_SECONDS``, so a removed source or a rotated key stops working on every replica
within that time; on the replica that made the change it stops at once.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
from sqlalchemy import delete, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.crypto import SecretBox
from app.db import sources
from app.errors import Conflict, InvalidInput, NotFound, Unavailable
from app.ingest import hooks
from app.observability import metrics

log = logging.getLogger(__name__)

HOOK_KINDS: tuple[str, ...] = hooks.PRESET_KINDS
KINDS = ("segment", *HOOK_KINDS)
WRITE_KEY_PREFIX = "wk_"
CACHE_SECONDS = 1.0
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
MAX_ORIGINS = 50


def hash_write_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Source:
    name: str
    kind: str
    allowed_origins: tuple[str, ...] = ()
    signal: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    # The platform's secret, opened: only the store (which has the key) fills it in.
    secret: str | None = None
    write_key_prefix: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    # Events per second and burst; None: the INTENT_RATE_LIMIT_* defaults.
    rate_limit: float | None = None
    rate_burst: int | None = None

    def allows_origin(self, origin: str) -> bool:
        """A browser request's ``Origin``; server-side SDKs send none and are not asked."""
        return "*" in self.allowed_origins or normalise_origin(origin) in self.allowed_origins

    def hook(self) -> hooks.HookSource:
        return hooks.HookSource(self.name, self.kind, self.secret, self.signal, self.config)


def normalise_origin(origin: str) -> str:
    """``HTTP://Shop.Example:443`` → ``https://shop.example``… as a browser sends it:
    scheme, host and a port only when it is not the scheme's default."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return ""
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if port is not None and (scheme, port) not in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}:{port}"
    return f"{scheme}://{host}"


def check_origins(origins: list[str]) -> tuple[str, ...]:
    if len(origins) > MAX_ORIGINS:
        raise InvalidInput(
            f"allowed_origins: at most {MAX_ORIGINS}", code="too_many", field="allowed_origins"
        )
    out: list[str] = []
    for i, origin in enumerate(origins):
        if origin == "*":
            out.append(origin)
            continue
        parts = urlsplit(origin.strip()) if origin.isprintable() else None
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path not in ("", "/")
            or parts.query
            or parts.username
            or not normalise_origin(origin)
        ):
            raise InvalidInput(
                f'allowed_origins[{i}]: "{origin[:100]}" is not an origin such as '
                '"https://www.example.com" (scheme, host and optional port) or "*"',
                code="invalid_origin",
                field=f"allowed_origins[{i}]",
            )
        out.append(normalise_origin(origin))
    return tuple(dict.fromkeys(out))


@dataclass
class SourceSpec:
    """What a create or change asks for; None leaves a field as it is."""

    allowed_origins: list[str] | None = None
    signal: str | None = None
    config: dict[str, Any] | None = None
    secret: str | None = None
    # rate_limit and/or rate_burst to set (None: back to the default)
    quota: dict[str, Any] = field(default_factory=dict)


def _row_to_source(r: Any, box: SecretBox | None = None) -> Source:
    """The source of a row; its secret (stored encrypted) only when ``box`` opens it."""
    return Source(
        name=r.name,
        kind=r.kind,
        allowed_origins=tuple(orjson.loads(r.allowed_origins)),
        signal=r.signal,
        config=orjson.loads(r.config),
        secret=box.decrypt(r.secret) if box is not None and r.secret is not None else None,
        write_key_prefix=r.write_key_prefix,
        created_at=r.created_at,
        updated_at=r.updated_at,
        rate_limit=r.rate_limit,
        rate_burst=r.rate_burst,
    )


def _checked(
    kind: str,
    spec: SourceSpec,
    signals: Collection[str],
    box: SecretBox,
    current_signal: str | None = None,
) -> dict[str, Any]:
    """The columns a spec sets, validated for the kind (``current_signal``: the stored one,
    when a change leaves it as it is)."""
    values: dict[str, Any] = {
        k: spec.quota[k] for k in ("rate_limit", "rate_burst") if k in spec.quota
    }
    if spec.allowed_origins is not None:
        if kind != "segment" and spec.allowed_origins:
            raise InvalidInput(
                "allowed_origins: only a segment source is called from browsers",
                field="allowed_origins",
            )
        values["allowed_origins"] = orjson.dumps(list(check_origins(spec.allowed_origins))).decode()
    if spec.signal is not None:
        if kind == "segment":
            raise InvalidInput(
                "signal: a segment source maps events with the policy's segment section",
                field="signal",
            )
        if spec.signal not in signals:
            raise InvalidInput(
                f'signal: "{spec.signal}" is not a signal of the active policy '
                f"(it has: {', '.join(sorted(signals))})",
                code="unknown_signal",
                field="signal",
            )
        values["signal"] = spec.signal
    if spec.config is not None:
        try:
            config = (
                hooks.check_config(kind, spec.config, signal=spec.signal or current_signal)
                if kind != "segment"
                else spec.config
            )
        except ValueError as exc:
            path = str(exc).split(":", 1)[0]
            raise InvalidInput(f"config.{exc}", field=f"config.{path}") from None
        if kind == "segment" and config:
            raise InvalidInput("config: a segment source takes no config", field="config")
        values["config"] = orjson.dumps(config).decode()
    if spec.secret is not None:
        if kind == "segment":
            raise InvalidInput("secret: a segment source has a write key instead", field="secret")
        if not (8 <= len(spec.secret) <= 500) or not spec.secret.isprintable():
            raise InvalidInput(
                "secret: 8 to 500 printable characters", code="invalid_secret", field="secret"
            )
        values["secret"] = box.encrypt(spec.secret)
    return values


async def create_source(
    session: AsyncSession,
    name: str,
    kind: str,
    spec: SourceSpec,
    *,
    signals: Collection[str],
    box: SecretBox,
    now: float,
) -> tuple[Source, str | None, str | None]:
    """Store a new source; returns it with its write key or generated secret (shown once)."""
    if not NAME.match(name):
        raise InvalidInput(
            "name: 1–64 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit",
            code="invalid_name",
            field="name",
        )
    if kind not in KINDS:
        raise InvalidInput(
            f'kind: "{kind}" is not one of {", ".join(KINDS)}', code="unknown_kind", field="kind"
        )
    if kind == "generic" and spec.config is None:
        raise InvalidInput("config: a generic source needs a mapping", field="config")
    values = _checked(kind, spec, signals, box)
    write_key = secret = None
    if kind == "segment":
        write_key = WRITE_KEY_PREFIX + secrets.token_urlsafe(24)
        values.update(write_key_hash=hash_write_key(write_key), write_key_prefix=write_key[:10])
    elif "secret" not in values:
        if hooks.needs_secret(kind):
            raise InvalidInput(
                f"secret: a {kind} source verifies with the secret the platform gives you; "
                "pass it as secret",
                code="secret_required",
                field="secret",
            )
        secret = hooks.generate_secret(kind)
        values["secret"] = box.encrypt(secret) if secret is not None else None
    values.setdefault("allowed_origins", "[]")
    values.setdefault("config", "{}")
    try:
        async with session.begin_nested():
            await session.execute(
                sources.insert().values(
                    name=name, kind=kind, created_at=now, updated_at=now, **values
                )
            )
    except IntegrityError:
        raise Conflict(
            f'a source named "{name}" exists', code="source_exists", field="name"
        ) from None
    return await source_row(session, name), write_key, secret


async def source_row(session: AsyncSession, name: str) -> Source:
    row = (await session.execute(select(sources).where(sources.c.name == name))).first()
    if row is None:
        raise NotFound(f'no source named "{name}"', code="unknown_source", field="name")
    return _row_to_source(row)


async def source_rows(session: AsyncSession) -> list[Source]:
    rows = (await session.execute(select(sources).order_by(sources.c.name))).all()
    return [_row_to_source(r) for r in rows]


async def update_source(
    session: AsyncSession,
    name: str,
    spec: SourceSpec,
    *,
    signals: Collection[str],
    box: SecretBox,
    now: float,
) -> Source:
    current = await source_row(session, name)
    if spec.config is None and spec.signal is not None and current.kind == "generic":
        spec.config = current.config  # a mapping without type may depend on the signal
    values = _checked(current.kind, spec, signals, box, current.signal)
    if values:
        await session.execute(
            update(sources).where(sources.c.name == name).values(updated_at=now, **values)
        )
    return await source_row(session, name)


async def rotate_source(
    session: AsyncSession, name: str, *, box: SecretBox, now: float
) -> tuple[Source, str]:
    """A new write key (segment) or generated secret; the old one stops working."""
    current = await source_row(session, name)
    if current.kind == "segment":
        key = WRITE_KEY_PREFIX + secrets.token_urlsafe(24)
        values: dict[str, Any] = {
            "write_key_hash": hash_write_key(key),
            "write_key_prefix": key[:10],
        }
    else:
        generated = hooks.generate_secret(current.kind)
        if generated is None:
            raise InvalidInput(
                f"a {current.kind} source's secret comes from the platform: set the new one "
                'with PATCH {"secret": …}',
                code="secret_from_platform",
                field="secret",
            )
        key, values = generated, {"secret": box.encrypt(generated)}
    await session.execute(
        update(sources).where(sources.c.name == name).values(updated_at=now, **values)
    )
    return await source_row(session, name), key


async def delete_source(session: AsyncSession, name: str) -> None:
    result = await session.execute(delete(sources).where(sources.c.name == name))
    if not result.rowcount:  # type: ignore[attr-defined]
        raise NotFound(f'no source named "{name}"', code="unknown_source", field="name")


class SourceStore:
    """Every registered source, in memory, reloaded at most ``CACHE_SECONDS`` old."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], box: SecretBox) -> None:
        self._sessionmaker = sessionmaker
        self._box = box  # opens the platform secrets the hooks verify with
        self._loaded_at = -1e9
        self._by_name: dict[str, Source] = {}
        self._by_key: dict[str, Source] = {}
        self._origins: frozenset[str] = frozenset()
        self._generation = 0  # bumped by each invalidation

    def invalidate(self) -> None:
        self._generation += 1
        self._loaded_at = -1e9

    async def _fresh(self) -> None:
        if time.monotonic() - self._loaded_at < CACHE_SECONDS:
            return
        generation = self._generation
        try:
            async with self._sessionmaker() as session:
                rows = (await session.execute(select(sources))).all()
        except (OSError, DBAPIError) as exc:
            raise Unavailable(
                f"sources cannot be read ({type(exc).__name__}); retry",
                headers={"Retry-After": "1"},
            ) from exc
        if generation != self._generation:
            # A change committed while this read was under way (the gauge sampler's read
            # overlapping a create): what it read may predate the change, so it is dropped
            # rather than kept for a second.
            return
        by_name = {r.name: _row_to_source(r, self._box) for r in rows}
        self._by_key = {r.write_key_hash: by_name[r.name] for r in rows if r.write_key_hash}
        self._by_name = by_name
        metrics.register_sources(by_name)  # the only values its source label takes
        self._origins = frozenset(o for s in by_name.values() for o in s.allowed_origins)
        self._loaded_at = time.monotonic()

    async def named(self, name: str) -> Source | None:
        await self._fresh()
        return self._by_name.get(name)

    async def by_write_key(self, key: str) -> Source | None:
        await self._fresh()
        return self._by_key.get(hash_write_key(key))

    async def any_allows(self, origin: str) -> bool:
        """Whether some source allows the origin: what a CORS preflight, which carries no
        key, can be answered from. The request itself is checked against its source."""
        await self._fresh()
        return "*" in self._origins or normalise_origin(origin) in self._origins

    async def names(self) -> frozenset[str]:
        await self._fresh()
        return frozenset(self._by_name)
