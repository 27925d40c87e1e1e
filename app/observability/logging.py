"""Structured logs: one JSON object per line, correlated by request, event and decision id.

``configure()`` sends every logger (ours, uvicorn's, aiokafka's) through one JSON
formatter on stderr. ``RequestLog`` gives each HTTP request an id (``X-Request-ID`` when
the caller sends a sane one, else a new one), echoes it in the response, and logs one
line per request; anything logged while the request runs carries the same id. Values
that look like credentials (API keys, webhook secrets, Authorization values) are
replaced before a line is written, whatever logged them.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_SECRET = re.compile(
    r"(ir_[A-Za-z0-9_\-]{16,}|whsec_[A-Za-z0-9+/=]{8,}|(?i:bearer|basic)\s+[A-Za-z0-9._~+/=\-]+)"
)
REDACTED = "[redacted]"
# Attributes every LogRecord has; anything else was passed with ``extra=`` and is logged.
# (uvicorn adds a colourised copy of its message: not for JSON.)
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


def redact(text: str) -> str:
    return _SECRET.sub(REDACTED, text)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
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
            "msg": redact(record.getMessage()),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            out["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = _clean(value)
        if record.exc_info:
            out["error"] = redact(self.formatException(record.exc_info))
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


def configure(level: str = "INFO", stream: Any = None) -> None:
    """Route every logger through one JSON handler (replacing earlier handlers)."""
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


access = logging.getLogger("app.access")


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
                if _SAFE_ID.match(text):
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
                access.info(
                    "%s %s %d",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    },
                )
            REQUEST_ID.reset(token)
