"""The dispatcher's lean HTTP/1.1 transport against raw loopback servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from app.delivery.transport import LeanTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


async def start(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=LeanTransport(), timeout=2) as c:
        yield c


async def test_keep_alive_content_length_and_chunked(client: httpx.AsyncClient) -> None:
    connections = 0
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        for i in range(3):
            seen.append(await read_request(reader))
            if i % 2 == 0:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
            else:
                writer.write(
                    b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n"
                    b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                )
            await writer.drain()
        writer.close()

    server, url = await start(handler)
    async with server:
        r1 = await client.post(url + "/a", content=b"one", headers={"webhook-id": "x"})
        r2 = await client.post(url + "/b", content=b"two")
        r3 = await client.post(url + "/c", content=b"three")
    assert (r1.status_code, r1.text) == (200, "hello")
    assert (r2.status_code, r2.text) == (201, "abcde")
    assert r3.text == "hello"
    assert connections == 1  # one connection reused for all three
    assert seen[0].startswith(b"POST /a HTTP/1.1\r\n")
    assert b"webhook-id: x" in seen[0] and seen[0].endswith(b"\r\n\r\none")


async def test_a_connection_closed_while_idle_is_replaced(client: httpx.AsyncClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()  # closes after each answer although it did not say so

    server, url = await start(handler)
    async with server:
        assert (await client.post(url, content=b"a")).status_code == 204
        await asyncio.sleep(0.05)
        assert (await client.post(url, content=b"b")).status_code == 204


async def test_timeouts_and_refusals_are_httpx_errors() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    server, url = await start(silent)
    async with server, httpx.AsyncClient(transport=LeanTransport(), timeout=0.3) as c:
        with pytest.raises(httpx.TimeoutException):
            await c.post(url, content=b"x")
    with socket_closed() as port:
        async with httpx.AsyncClient(transport=LeanTransport(), timeout=1) as c:
            with pytest.raises(httpx.ConnectError):
                await c.post(f"http://127.0.0.1:{port}/", content=b"x")


def socket_closed() -> Any:
    import contextlib
    import socket

    @contextlib.contextmanager
    def port() -> Any:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        number = s.getsockname()[1]
        s.close()  # nothing listens there any more
        yield number

    return port()


async def test_response_delimited_by_close(client: httpx.AsyncClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.0 500 Internal Server Error\r\n\r\nboom")
        await writer.drain()
        writer.close()

    server, url = await start(handler)
    async with server:
        r = await client.post(url, content=b"x")
    assert (r.status_code, r.text) == (500, "boom")


# -- h11 underneath: framing both ways, and a broken server is an error, not a crash -------


async def answer_with(
    raw: bytes | list[bytes], *, close: bool = True
) -> tuple[asyncio.Server, str, list[int]]:
    """A server answering every request with ``raw`` (a list: written piece by piece, each
    flushed, so the client reads across packet boundaries); the connections it saw."""
    seen: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(len(seen))
        try:
            while True:
                await read_request(reader)
                for piece in raw if isinstance(raw, list) else [raw]:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.005)
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server, url = await start(handler)
    return server, url, seen


async def test_chunked_bodies_split_anyhow_with_extensions_and_trailers(
    client: httpx.AsyncClient,
) -> None:
    pieces = [
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n",
        b"\r\n4;ext=1\r\nwe",
        b"bh\r\n",
        b"3\r\nook\r\n0\r\nx-trailer: t\r\n",
        b"\r\n",
    ]
    server, url, seen = await answer_with(pieces, close=False)
    async with server:
        r1 = await client.post(url, content=b"x")
        r2 = await client.post(url, content=b"y")
    assert (r1.status_code, r1.text, r1.headers["x-a"]) == (200, "webhook", "1")
    assert r2.text == "webhook"
    assert len(seen) == 1  # the chunked response ended cleanly: the connection was reused


async def test_a_server_that_says_close_or_speaks_1_0_gets_a_new_connection_each_time(
    client: httpx.AsyncClient,
) -> None:
    for answer in (
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ):
        server, url, seen = await answer_with(answer, close=False)
        async with server:
            assert [(await client.post(url, content=b"x")).text for _ in range(3)] == ["ok"] * 3
        assert len(seen) == 3, answer


async def test_a_1xx_before_the_answer_is_read_past(client: httpx.AsyncClient) -> None:
    server, url, _ = await answer_with(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n"
    )
    async with server:
        assert (await client.post(url, content=b"x")).status_code == 202


@pytest.mark.parametrize(
    "raw",
    [
        b"HELLO\r\n\r\n",  # no status line
        b"HTTP/1.1 2OO OK\r\ncontent-length: 0\r\n\r\n",  # a status that is not a number
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",  # a header line that is not one
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",  # which?
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nnope\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",  # then the server closes
        b"HTTP/1.1 200 OK\r\n",  # closed inside the headers
        b"",  # closed without a word
        b"HTTP/1.1 200 OK\r\nx: " + b"a" * 300_000 + b"\r\n\r\n",  # headers past the limit
    ],
)
async def test_a_malformed_answer_is_a_protocol_error_and_the_client_carries_on(
    client: httpx.AsyncClient, raw: bytes
) -> None:
    bad, bad_url, _ = await answer_with(raw)
    good, good_url, _ = await answer_with(b"HTTP/1.1 204 No Content\r\n\r\n")
    async with bad, good:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(bad_url, content=b"x")
        assert (await client.post(good_url, content=b"x")).status_code == 204


async def test_a_body_past_the_cap_is_cut_and_its_connection_not_reused() -> None:
    from app.delivery.transport import MAX_BODY

    big = b"x" * (MAX_BODY + 100_000)
    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(big)
    server, url, seen = await answer_with(head + big, close=False)
    transport = LeanTransport()
    async with server:
        for _ in range(2):
            reply = await transport.send(
                "POST",
                httpx.URL(url),
                [(b"host", b"127.0.0.1"), (b"content-length", b"1")],
                b"x",
                time_limit=5,
            )
            assert (reply.status, len(reply.body), reply.keep) == (200, MAX_BODY, False)
    await transport.aclose()
    assert len(seen) == 2


async def test_the_dispatchers_path_sends_headers_as_given_and_refuses_injected_ones() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\ncontent-length: 4\r\n\r\nslow")
        await writer.drain()
        writer.close()

    server, url = await start(handler)
    transport = LeanTransport()
    headers = [(b"host", b"hooks.example"), (b"content-length", b"2"), (b"webhook-id", b"m1")]
    async with server:
        reply = await transport.send("POST", httpx.URL(url + "/in"), headers, b"{}", time_limit=2)
        with pytest.raises(httpx.LocalProtocolError):
            await transport.send(
                "POST",
                httpx.URL(url),
                [*headers[:2], (b"webhook-id", b"m1\r\nx-evil: 1")],
                b"{}",
                time_limit=2,
            )
    await transport.aclose()
    assert (reply.status, reply.header(b"retry-after"), reply.body) == (429, b"7", b"slow")
    [request] = seen  # the injected header never went out
    assert request.startswith(b"POST /in HTTP/1.1\r\nhost: hooks.example\r\n")
    assert request.endswith(b"webhook-id: m1\r\n\r\n{}")
