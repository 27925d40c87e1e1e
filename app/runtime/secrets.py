"""The stored secrets (destinations' signing secrets, sources' platform secrets) checked
against the secret key at start-up: legacy plaintext ones encrypted in place, every
encrypted one opened once, so a wrong ``INTENT_SECRET_KEY`` stops start-up instead of
failing each webhook. ``intent-router secrets rotate`` re-encrypts them all with the
first key."""

from __future__ import annotations

import base64
import logging
import os
import time
from dataclasses import dataclass

from sqlalchemy import Column, Table, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.crypto import SecretBox, SecretKeyError
from app.db import destinations, keyring, sources

log = logging.getLogger(__name__)

# (table, its key column, the secret columns)
SECRET_COLUMNS: tuple[tuple[Table, str, tuple[str, ...]], ...] = (
    (destinations, "id", ("secret", "previous_secret")),
    (sources, "name", ("secret",)),
    (keyring, "name", ("value",)),
)
HASH_KEY = "suppression"


@dataclass
class Sealed:
    checked: int = 0  # already encrypted and opened with the key
    encrypted: int = 0  # legacy plaintext, now encrypted
    reencrypted: int = 0  # encrypted again with the first key (rotate)


async def seal_secrets(
    sessionmaker: async_sessionmaker[AsyncSession], box: SecretBox, *, rotate: bool = False
) -> Sealed:
    """Open every stored secret (``SecretKeyError`` when one cannot be), encrypt the
    plaintext ones and, with ``rotate``, re-encrypt the rest with the first key. Each
    update applies only if the value is still the one read (a concurrent start or
    rotation wins), so it is safe to run from several processes at once."""
    out = Sealed()
    async with sessionmaker() as session, session.begin():
        for table, key, names in SECRET_COLUMNS:
            for name in names:
                await _seal_column(session, box, table, table.c[key], table.c[name], rotate, out)
    if out.encrypted:
        log.info(
            "encrypted %d stored secret(s) that were kept in plain text",
            out.encrypted,
            extra={"encrypted": out.encrypted},
        )
    return out


async def _seal_column(
    session: AsyncSession,
    box: SecretBox,
    table: Table,
    key: Column[str],
    column: Column[str],
    rotate: bool,
    out: Sealed,
) -> None:
    rows = (await session.execute(select(key, column).where(column.is_not(None)))).all()
    for ident, stored in rows:
        try:
            plain = box.decrypt(stored)
        except SecretKeyError as exc:
            what = f"{table.name}.{column.name} of {ident!r}"
            raise SecretKeyError(f"{what}: {exc}") from None
        if not SecretBox.is_encrypted(stored):
            out.encrypted += 1
        elif rotate:
            out.reencrypted += 1
        else:
            out.checked += 1
            continue
        await session.execute(
            update(table)
            .where(key == ident, column == stored)
            .values({column.name: box.encrypt(plain)})
        )


async def load_hash_key(sessionmaker: async_sessionmaker[AsyncSession], box: SecretBox) -> None:
    """Give ``box`` the service's own hash key, made on first use and kept encrypted in
    the keyring: suppression hashes then survive a rotation of INTENT_SECRET_KEY. Safe
    when several processes start at once (the first insert wins; the others read it)."""
    for _ in (1, 2):
        async with sessionmaker() as session, session.begin():
            stored = await session.scalar(select(keyring.c.value).where(keyring.c.name == HASH_KEY))
            if stored is None:
                fresh = base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")
                try:
                    async with session.begin_nested():
                        await session.execute(
                            keyring.insert().values(
                                name=HASH_KEY, value=box.encrypt(fresh), created_at=time.time()
                            )
                        )
                except IntegrityError:
                    continue  # another process made it first: read theirs
                stored = box.encrypt(fresh)
        box.use_hash_key(base64.urlsafe_b64decode(box.decrypt(stored)))
        return
    raise RuntimeError("the keyring's hash key could not be read or made")
