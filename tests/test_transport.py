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
