"""A lean HTTP/1.1 keep-alive transport for httpx, used by the webhook dispatcher.

httpcore's pool does bookkeeping over every pooled connection on every request; measured
here it cost ~2 ms of CPU per webhook POST, which at a few hundred webhooks a second is a
whole core. This transport keeps idle connections per (scheme, host, port, SNI name) and
does only what webhook delivery needs: one request per connection at a time, TLS with
SNI (the ``sni_hostname`` extension the SSRF guard sets when it pins the address), and
httpx's timeout extension and exception types.

The HTTP/1.1 itself, both ways, is h11's (the protocol machine httpcore uses): it frames
the request, validates its headers, and parses the response (status line, headers,
Content-Length, chunked or close-delimited bodies, whether the connection may be kept).
A response h11 cannot make sense of is an ``httpx.RemoteProtocolError``.

``send`` is the dispatcher's way in: raw headers in, a ``Reply`` out, without building
httpx's Request and Response (their header, URL and cookie handling cost more CPU per
webhook than the HTTP itself); ``handle_async_request`` serves ``httpx.AsyncClient``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence

import h11
import httpx

# Responses are recorded capped anyway: past this much body the rest is not read and the
# connection is closed instead of reused.
MAX_BODY = 1 << 20
MAX_HEAD = 64 * 1024  # status line and headers, at most
MAX_IDLE_PER_HOST = 32
READ_SIZE = 64 * 1024

_Key = tuple[str, str, int, str | None]


class Reply:
    """A response: status, raw headers (names lower-cased by h11), body."""

    __slots__ = ("body", "headers", "keep", "status")

    def __init__(self, status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.keep = False  # whether the connection may carry the next request

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower case)."""
        return next((v for k, v in self.headers if k == name), None)


class _Conn:
    __slots__ = ("h11", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)

    def usable(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    async def exchange(self, head: h11.Request, body: bytes) -> Reply:
        """Send one request and read its response (raises ``h11.RemoteProtocolError``,
        ``OSError`` or ``_Closed`` when the server closed before answering)."""
        conn = self.h11
        out = conn.send(head) or b""
        if body:
            out += conn.send(h11.Data(data=body)) or b""
        self.writer.write(out + (conn.send(h11.EndOfMessage()) or b""))
        await self.writer.drain()
        reply: Reply | None = None
        chunks: list[bytes] = []
        size = 0
        heard = False  # any byte of the answer
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.reader.read(READ_SIZE)
                if not data and not heard:
                    raise _Closed  # not a byte of an answer: a kept connection it dropped
                heard = True
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                # h11's own header list: copied only where httpx needs a Response
                reply = Reply(event.status_code, event.headers, b"")
            elif isinstance(event, h11.Data):
                size += len(event.data)
                chunks.append(event.data)
                if size > MAX_BODY:  # the rest is not read: the connection cannot be reused
                    assert reply is not None
                    reply.body = b"".join(chunks)[:MAX_BODY]
                    return reply
            elif isinstance(event, h11.EndOfMessage):
                assert reply is not None
                reply.body = b"".join(chunks)
                reply.keep = conn.our_state is h11.DONE and conn.their_state is h11.DONE
                if reply.keep:
                    conn.start_next_cycle()
                return reply
            elif event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                raise h11.RemoteProtocolError("the connection closed before the response ended")
            # an InformationalResponse (1xx) is followed by the real one: read on


class _Closed(Exception):
    """A reused connection was closed by the server before any of the answer arrived."""


class LeanTransport(httpx.AsyncBaseTransport):
    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        # Made on the first https connection, off the event loop: loading the system's
        # CA certificates takes tens of milliseconds, and plain-http endpoints never need it.
        self._ssl = ssl_context
        self._idle: dict[_Key, list[_Conn]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout") or {}
        reply = await self.send(
            request.method,
            request.url,
            request.headers.raw,
            request.read(),
            time_limit=max((t for t in timeouts.values() if t is not None), default=None),
            sni=request.extensions.get("sni_hostname"),
            request=request,
        )
        return httpx.Response(
            reply.status, headers=list(reply.headers), content=reply.body, request=request
        )

    async def send(
        self,
        method: str,
        url: httpx.URL,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        time_limit: float | None,
        sni: str | None = None,
        request: httpx.Request | None = None,
    ) -> Reply:
        """One request, without building httpx's Request and Response (the dispatcher's
        path). ``headers`` are sent as given, so they carry Host and Content-Length;
        ``time_limit`` bounds the whole exchange, connecting included. Errors are httpx's
        (``TimeoutException``, ``ConnectError``, ``RemoteProtocolError`` …)."""
        https = url.scheme == "https"
        port = url.port or (443 if https else 80)
        key = (url.scheme, url.host, port, sni)
        try:
            head = h11.Request(method=method, target=url.raw_path, headers=headers)
        except h11.LocalProtocolError as exc:  # a header h11 will not send (CR/LF in it, …)
            raise httpx.LocalProtocolError(str(exc), request=request) from exc
        for attempt in (1, 2):
            conn = self._take(key) if attempt == 1 else None
            reused = conn is not None
            try:
                async with asyncio.timeout(time_limit):
                    if conn is None:
                        conn = await self._open(url.host, port, https, sni)
                    reply = await conn.exchange(head, body)
            except TimeoutError:
                if conn is not None:
                    conn.close()
                raise httpx.ReadTimeout("timed out", request=request) from None
            except _Closed:
                assert conn is not None  # raised by its exchange
                conn.close()
                if reused:  # the server closed an idle connection: try a fresh one once
                    continue
                raise httpx.RemoteProtocolError(
                    "the server closed the connection without answering", request=request
                ) from None
            except h11.RemoteProtocolError as exc:
                if conn is not None:
                    conn.close()
                raise httpx.RemoteProtocolError(str(exc), request=request) from exc
            except OSError as exc:  # ssl.SSLError among them
                if conn is not None:
                    conn.close()
                if reused:
                    continue
                error = httpx.ConnectError if conn is None else httpx.ReadError
                raise error(f"{type(exc).__name__}: {exc}", request=request) from exc
            if reply.keep:
                self._give(key, conn)
            else:
                conn.close()
            return reply
        raise httpx.ReadError("connection failed twice", request=request)

    async def _open(self, host: str, port: int, https: bool, sni: str | None) -> _Conn:
        if https and self._ssl is None:
            self._ssl = await asyncio.to_thread(ssl.create_default_context)
        reader, writer = await asyncio.open_connection(
            host,
            port,
            ssl=self._ssl if https else None,
            server_hostname=(sni or host) if https else None,
            limit=READ_SIZE,
        )
        return _Conn(reader, writer)

    def _take(self, key: _Key) -> _Conn | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    def _give(self, key: _Key, conn: _Conn) -> None:
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
