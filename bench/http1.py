"""A minimal HTTP/1.1 keep-alive client for the single-event phases.

Why not httpx here: its connection pool re-scans every connection for every queued
request on each state change (a ``poll`` syscall per idle connection), and with
``sniffio`` absent httpcore retries that import several times per request. At 64 requests
in flight that measured ~50 ms of client CPU per request on this machine: 100 requests/s
against ``/healthz`` with one shared ``httpx.AsyncClient``, ~4,000 with this client. On a
2-core box the load generator must stay cheap, or it measures itself and steals the
service's CPU. Batch ingest (phase 1) keeps httpx: 3 large requests in flight cost nothing.

One request per connection at a time; a request takes the most recently used idle
connection or opens a new one (no cap: the open-loop phase must never queue on the client
side). Idle connections the server has already closed are dropped when taken; a request
that still fails on a reused connection before any answer (closed in the meantime) is
retried once on a fresh connection; ingest is idempotent by ``event_id``, so that is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass


class HttpError(RuntimeError):
    pass


@dataclass(slots=True)
class Response:
    status: int
    body: bytes


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def exchange(self, request: bytes) -> tuple[Response, bool]:
        """Send one request; (response, whether the connection may be reused)."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise HttpError(f"bad status line {lines[0]!r}")
        status = int(parts[1])
        length, chunked, keep = 0, False, True
        for header in lines[1:]:
            name, _, value = header.partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value:
                chunked = True
            elif name == "connection" and value == "close":
                keep = False
        if chunked:
            body = await self._chunked()
        else:
            body = await self.reader.readexactly(length) if length else b""
        return Response(status, body), keep

    async def _chunked(self) -> bytes:
        out: list[bytes] = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return b"".join(out)
            out.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class Http1Pool:
    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host = host
        self.port = port
        fixed = {"host": f"{host}:{port}", **(headers or {})}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._idle: list[_Conn] = []
        self.opened = 0
        self.retries = 0

    async def _open(self) -> _Conn:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self.opened += 1
        return _Conn(reader, writer)

    def _take_idle(self) -> _Conn | None:
        """The most recently used idle connection the server has not closed meanwhile."""
        while self._idle:
            conn = self._idle.pop()
            if conn.reader.at_eof() or conn.writer.is_closing():
                conn.close()
                continue
            return conn
        return None

    async def post(
        self, path: str, body: bytes, content_type: str = "application/json"
    ) -> Response:
        request = (
            f"POST {path} HTTP/1.1\r\n{self._fixed}content-type: {content_type}\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode("latin-1") + body
        for attempt in (1, 2):
            # The retry always opens a fresh connection: another idle one may be just as
            # stale (the server closes keep-alive connections idle for 5 s).
            conn = self._take_idle() if attempt == 1 else None
            reused = conn is not None
            if conn is None:
                conn = await self._open()
            try:
                response, keep = await conn.exchange(request)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                conn.close()
                if reused and attempt == 1:
                    self.retries += 1
                    continue
                raise HttpError(f"{type(exc).__name__}: {exc}") from exc
            except BaseException:
                conn.close()
                raise
            if keep:
                self._idle.append(conn)
            else:
                conn.close()
            return response
        raise AssertionError("unreachable")

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        await asyncio.sleep(0)
