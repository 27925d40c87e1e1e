"""Structured logs: one JSON object per line, correlated by request, event and decision id.

``configure()`` sends every logger (ours, uvicorn's, aiokafka's) through one JSON
formatter on stderr. ``RequestLog`` gives each HTTP request an id (``X-Request-ID`` when
the caller sends a safe one, else a new one), echoes it in the response, and logs one
line per request; anything logged while the request runs carries the same id.

Nothing a client sends is written as sent, whatever logged it (the formatter scrubs the
message, every extra field and tracebacks): values that look like credentials (API and
write keys, webhook secrets, Authorization values) are replaced by ``[redacted]``; a URL
keeps only scheme://host/path (no user:password@, no ?query, where tokens travel); an
email address becomes ``<email:…>``, a short keyed hash (the same address gives the
same hash within a process, or across replicas given one ``email_key``), so lines about
one person still correlate without naming them. A request id is the caller's only when
it is 1–64 characters of ``[A-Za-z0-9._-]`` and not a credential; otherwise a new one
is generated and the one sent is never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import sys
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)

_SAFE_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
_SECRET = re.compile(
    r"(ir_[A-Za-z0-9_\-]{16,}|wk_[A-Za-z0-9_\-]{16,}|whsec_[A-Za-z0-9+/=]{8,}"
    r"|(?i:bearer|basic)\s+[A-Za-z0-9._~+/=\-]+)"
)
REDACTED = "[redacted]"
# scheme://[userinfo@]host[/path][?query][#fragment]: userinfo, query and fragment go.
_URL = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)(?:[^\s/?#@]*@)?([^\s/?#]*)([^\s?#]*)(?:[?#]\S*)?")
# An address as it appears in paths and text (also percent-encoded, as in a raw path).
_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+(?:@|%40)[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")
_email_key = secrets.token_bytes(32)
# Attributes every LogRecord has; anything else was passed with ``extra=`` and is logged.
# (uvicorn adds a colourised copy of its message: not for JSON.)
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


def redact(text: str) -> str:
    """``text`` with anything that looks like a credential replaced."""
    return _SECRET.sub(REDACTED, text)


def _email_hash(match: re.Match[str]) -> str:
    address = match.group().replace("%40", "@").lower().encode()
    return "<email:" + hmac.new(_email_key, address, hashlib.sha256).hexdigest()[:12] + ">"


def scrub(text: str) -> str:
    """What a log line may carry of ``text``: credentials redacted, URLs without userinfo
    or query, email addresses as keyed hashes."""
    text = _SECRET.sub(REDACTED, text)
    if "://" in text:
        text = _URL.sub(r"\1\2\3", text)
    if "@" in text or "%40" in text:
        text = _EMAIL.sub(_email_hash, text)
    return text


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": record.process,
            "msg": scrub(record.getMessage()),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            out["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = _clean(value)
        if record.exc_info:
            out["error"] = scrub(self.formatException(record.exc_info))
        return orjson.dumps(out, default=str).decode()


class RepeatFilter(logging.Filter):
    """One line per state change from a chatty client library, not one per retry.

    With the broker down, aiokafka logs each reconnect, metadata refresh and fetch it
    retries (hundreds of lines in seconds). A message of the same kind (its text with the
    numbers taken out) from the same logger is let through once, then held back for
    ``window`` seconds; the next one that passes says how many were held back."""

    def __init__(self, prefixes: tuple[str, ...] = ("aiokafka",), window: float = 60.0) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.window = window
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefixes):
            return True
        kind = (record.name, record.levelno, _NUMBERS.sub("#", record.getMessage())[:200])
        passed_at, held = self._seen.get(kind, (0.0, 0))
        if record.created - passed_at < self.window:
            self._seen[kind] = (passed_at, held + 1)
            return False
        if len(self._seen) > 1000:  # bounded, whatever the messages
            self._seen.clear()
        self._seen[kind] = (record.created, 0)
        if held:
            record.repeated = held
        return True


_NUMBERS = re.compile(r"\d+")


def configure(level: str = "INFO", stream: Any = None, email_key: bytes | None = None) -> None:
    """Route every logger through one JSON handler (replacing earlier handlers).
    ``email_key``: what email hashes are keyed with (default: random per process)."""
    global _email_key
    if email_key:
        _email_key = email_key
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Chatty at INFO (every group join and metadata refresh); their warnings still show.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
    # The HTTP client logs each request's full URL at INFO (and DEBUG): a webhook's
    # user:password@ and ?token= with it. Their warnings still show (scrubbed).
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


access = logging.getLogger("app.access")
# Also before configure() (an app embedded, or tests): httpx logs full URLs at INFO.
for _name in ("httpx", "httpcore"):
    if logging.getLogger(_name).level < logging.WARNING:
        logging.getLogger(_name).setLevel(logging.WARNING)


class RequestLog:
    """ASGI middleware: a request id per request, and one log line when it is answered."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                text = value.decode("latin-1")
                if _SAFE_ID.fullmatch(text) and not _SECRET.search(text):
                    request_id = text
                break
        request_id = request_id or uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if access.isEnabledFor(logging.INFO):
                # Scrubbed here too, not only by our formatter: /v1/leads/dana@acme.com
                # names a person to whatever handler is attached.
                path = scrub(scope["path"])
                access.info(
                    "%s %s %d",
                    scope["method"],
                    path,
                    status,
                    extra={
                        "method": scope["method"],
                        "path": path,
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    },
                )
            REQUEST_ID.reset(token)
