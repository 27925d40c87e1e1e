"""Secrets at rest: webhook and source signing secrets are stored encrypted (Fernet).

``INTENT_SECRET_KEY`` holds one or more Fernet keys, comma-separated, newest first
(MultiFernet): the first encrypts, every one decrypts, so a key is rotated by putting the
new one in front and running ``intent-router secrets rotate``. Unset with the embedded
SQLite database, a key is generated once and kept next to the database file
(``secret.key``, mode 0600); unset with PostgreSQL, the service refuses to start.

A stored value is ``enc:v1:`` + the Fernet token; a value without the prefix is a legacy
plaintext secret (from before encryption) and reads as itself until it is encrypted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.config import Settings

log = logging.getLogger(__name__)

PREFIX = "enc:v1:"
KEY_FILE = "secret.key"
MAKE_KEY = (
    "make one with `intent-router secrets key` or "
    "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`"
)
_HASH_INFO = b"intent-router keyed hash"


class SecretKeyError(Exception):
    """INTENT_SECRET_KEY is missing, malformed, or does not open a stored secret."""


class SecretBox:
    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise SecretKeyError("INTENT_SECRET_KEY: no key given; " + MAKE_KEY)
        self._fernet = MultiFernet([Fernet(k) for k in keys])
        self._first = Fernet(keys[0])
        hash_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HASH_INFO).derive(
            base64.urlsafe_b64decode(keys[0])
        )
        self._hash_key = hash_key
        self.key_count = len(keys)

    def encrypt(self, plaintext: str) -> str:
        return PREFIX + self._first.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, stored: str) -> str:
        """The secret; a legacy plaintext value (no prefix) is returned as it is."""
        if not stored.startswith(PREFIX):
            return stored
        try:
            return self._fernet.decrypt(stored[len(PREFIX) :].encode("ascii")).decode()
        except (InvalidToken, ValueError) as exc:
            raise SecretKeyError(
                "a stored secret cannot be decrypted with INTENT_SECRET_KEY: the key is "
                "not the one it was encrypted with (when rotating, list the new key first "
                "and keep the old one after it: INTENT_SECRET_KEY=new,old)"
            ) from exc

    def reencrypt(self, stored: str) -> str:
        """``stored`` encrypted with the first key (plaintext is encrypted)."""
        return self.encrypt(self.decrypt(stored))

    @staticmethod
    def is_encrypted(stored: str) -> bool:
        return stored.startswith(PREFIX)

    def use_hash_key(self, key: bytes) -> None:
        """Hash under ``key`` from now on: the service's own stored hash key
        (``app.runtime.secrets.load_hash_key``), which outlives a rotation of the
        secret key. Until then the key is derived from the first secret key."""
        self._hash_key = key

    def keyed_hash(self, value: str) -> str:
        """Hex HMAC-SHA256 under the hash key: stable across restarts, useless without the
        key (suppression lists keep these, not identifiers)."""
        return hmac.new(self._hash_key, value.encode(), hashlib.sha256).hexdigest()


def generate_key() -> str:
    return Fernet.generate_key().decode("ascii")


def parse_keys(value: str) -> list[bytes]:
    keys = [k.strip() for k in value.split(",") if k.strip()]
    if not keys:
        raise SecretKeyError("INTENT_SECRET_KEY is empty; " + MAKE_KEY)
    for i, key in enumerate(keys, 1):
        try:
            Fernet(key.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as exc:
            raise SecretKeyError(
                f"INTENT_SECRET_KEY: key {i} is not a Fernet key (32 url-safe base64-encoded "
                f"bytes); {MAKE_KEY}"
            ) from exc
    return [k.encode("ascii") for k in keys]


_warned = False


def _key_file(path: Path) -> bytes:
    """The embedded default's key: read, or made once (0600) next to the database."""
    global _warned
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Written whole under another name, then linked: a second process starting at the
        # same moment reads either no file or a complete one, and one key wins.
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(generate_key() + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    if not _warned:
        _warned = True
        log.warning(
            "INTENT_SECRET_KEY is not set: secrets are encrypted with the key kept in %s; "
            "in production set INTENT_SECRET_KEY (%s)",
            path,
            MAKE_KEY,
        )
    try:
        return parse_keys(path.read_text())[0]
    except SecretKeyError as exc:
        raise SecretKeyError(
            f"{path} does not hold a Fernet key; delete it or set INTENT_SECRET_KEY"
        ) from exc


def load_box(settings: Settings) -> SecretBox:
    if settings.secret_key:
        return SecretBox(parse_keys(settings.secret_key))
    if not settings.is_sqlite:
        raise SecretKeyError(
            "INTENT_SECRET_KEY is not set: with PostgreSQL the key that encrypts webhook and "
            "source secrets must be given (comma-separated Fernet keys, newest first); " + MAKE_KEY
        )
    path = settings.sqlite_path()
    if path is None:  # in memory: nothing outlives the process, nor need its key
        return SecretBox([Fernet.generate_key()])
    return SecretBox([_key_file(path.parent / KEY_FILE)])
