"""The webhook receiver, run as its own process: ``python -m bench.receiver``.

It lives outside the load generator on purpose: the generator's event loop is busy
creating and sending hundreds of requests a second, and a receiver sharing that loop
would stamp arrivals late by however long the loop was busy, adding the generator's
own stalls to the event → webhook figure. Here the hot path only takes ``time.time()``,
keeps the body and answers 204; bodies are parsed when the bench asks for ``/stats``.

Routes: ``POST /hook`` (any path but the ones below), ``GET /count``, ``GET /stats``
(``[[type, trigger_event_id, event_received_at, received_at], ...]``), ``POST /reset``.
The chosen port is printed as ``PORT <n>`` on stdout.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import uvicorn

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

records: list[tuple[float, bytes]] = []


async def _reply(send: Send, status: int, body: bytes = b"") -> None:
    headers = [(b"content-type", b"application/json")] if body else []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        msg = await receive()
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body", False):
            return b"".join(chunks)


def _summary(at: float, body: bytes) -> list[Any]:
    try:
        doc = orjson.loads(body)
        data = doc.get("data") or {}
        return [doc.get("type"), data.get("trigger_event_id"), data.get("event_received_at"), at]
    except (orjson.JSONDecodeError, AttributeError):
        return ["unparseable", None, None, at]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    at = time.time()
    method, path = scope["method"], scope["path"]
    if method == "GET" and path == "/count":
        await _reply(send, 200, orjson.dumps({"count": len(records)}))
    elif method == "GET" and path == "/stats":
        await _reply(send, 200, orjson.dumps([_summary(t, b) for t, b in records]))
    elif method == "POST" and path == "/reset":
        records.clear()
        await _reply(send, 204)
    elif method == "POST":
        records.append((at, await _body(receive)))
        await _reply(send, 204)
    else:
        await _reply(send, 404)


def main() -> None:
    # IPPROTO_TCP: asyncio turns Nagle off only on accepted sockets whose protocol says so.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
