"""A lean HTTP/1.1 keep-alive transport for httpx, used by the webhook dispatcher.

httpcore's pool does bookkeeping over every pooled connection on every request; measured
here it cost ~2 ms of CPU per webhook POST, which at a few hundred webhooks a second is a
whole core. This transport keeps idle connections per (scheme, host, port) and speaks
just what webhook delivery needs: one request per connection at a time, Content-Length or
chunked responses, TLS with SNI (the ``sni_hostname`` extension the SSRF guard sets when
it pins the address), and httpx's timeout extension and exception types.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence

import httpx

MAX_BODY = 1 << 20  # responses are recorded capped anyway; larger bodies close the socket
MAX_IDLE_PER_HOST = 32


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    async def exchange(self, data: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
        """Send one request; (status, headers, body, whether the connection may be reused)."""
        self.writer.write(data)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise httpx.RemoteProtocolError(f"bad status line {lines[0]!r}")
        status = int(parts[1])
        headers: list[tuple[bytes, bytes]] = []
        length: int | None = None
        chunked, keep = False, parts[0] == b"HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip(), value.strip()
            headers.append((name, value))
            low, lowv = name.lower(), value.lower()
            if low == b"content-length" and value.isdigit():
                length = int(value)
            elif low == b"transfer-encoding" and b"chunked" in lowv:
                chunked = True
            elif low == b"connection":
                keep = lowv == b"keep-alive" or (keep and lowv != b"close")
        if status < 200 or status in (204, 304):
            return status, headers, b"", keep
        if chunked:
            return status, headers, await self._chunked(), keep
        if length is None:  # delimited by the server closing the connection
            return status, headers, await self.reader.read(MAX_BODY), False
        if length > MAX_BODY:
            return status, headers, await self.reader.read(MAX_BODY), False
        return status, headers, await self.reader.readexactly(length), keep

    async def _chunked(self) -> bytes:
        out: list[bytes] = []
        size_total = 0
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await self.reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                return b"".join(out)
            size_total += size
            if size_total > MAX_BODY:
                raise httpx.RemoteProtocolError("response body too large")
            out.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)


class LeanTransport(httpx.AsyncBaseTransport):
    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        # Made on the first https connection, off the event loop: loading the system's
        # CA certificates takes tens of milliseconds, and plain-http endpoints never need it.
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int, str | None], list[_Conn]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        https = url.scheme == "https"
        port = url.port or (443 if https else 80)
        sni = request.extensions.get("sni_hostname")
        key = (url.scheme, url.host, port, sni)
        timeouts = request.extensions.get("timeout") or {}
        timeout = max((t for t in timeouts.values() if t is not None), default=None)
        data = _serialise(request)
        for attempt in (1, 2):
            conn = self._take(key) if attempt == 1 else None
            reused = conn is not None
            try:
                async with asyncio.timeout(timeout):
                    if conn is None:
                        conn = await self._open(url.host, port, https, sni)
                    status, headers, body, keep = await conn.exchange(data)
            except TimeoutError:
                if conn is not None:
                    conn.close()
                raise httpx.ReadTimeout("timed out", request=request) from None
            except (
                OSError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                ValueError,
            ) as exc:
                if conn is not None:
                    conn.close()
                if reused:  # the server closed an idle connection: try a fresh one once
                    continue
                error = httpx.ConnectError if conn is None else httpx.ReadError
                raise error(f"{type(exc).__name__}: {exc}", request=request) from exc
            if keep:
                self._give(key, conn)
            else:
                conn.close()
            return httpx.Response(status, headers=headers, content=body, request=request)
        raise httpx.ReadError("connection failed twice", request=request)

    async def _open(self, host: str, port: int, https: bool, sni: str | None) -> _Conn:
        if https and self._ssl is None:
            self._ssl = await asyncio.to_thread(ssl.create_default_context)
        try:
            reader, writer = await asyncio.open_connection(
                host,
                port,
                ssl=self._ssl if https else None,
                server_hostname=(sni or host) if https else None,
                limit=MAX_BODY,
            )
        except OSError as exc:
            raise ConnectionError(str(exc)) from exc
        return _Conn(reader, writer)

    def _take(self, key: tuple[str, str, int, str | None]) -> _Conn | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    def _give(self, key: tuple[str, str, int, str | None], conn: _Conn) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) < MAX_IDLE_PER_HOST:
            idle.append(conn)
        else:
            conn.close()

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()


def _serialise(request: httpx.Request) -> bytes:
    body = request.read()
    target = request.url.raw_path
    headers: Sequence[tuple[bytes, bytes]] = request.headers.raw
    lines = [request.method.encode() + b" " + target + b" HTTP/1.1"]
    lines.extend(name + b": " + value for name, value in headers)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
