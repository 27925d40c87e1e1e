"""Real servers on loopback for tests: the service itself (in this event loop, or as an
OS process), a webhook receiver, and the addresses of the shared services."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.clock import Clock
from app.config import Settings
from app.main import create_app
from app.runtime.service import Runtime


def require_service(var: str) -> str:
    """A real service's address from the environment; in CI its absence is a failure."""
    value = os.environ.get(var)
    if not value:
        message = f"{var} is not set: run `make services` (make test does it for you)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return value


def loopback_socket() -> socket.socket:
    # IPPROTO_TCP, not 0: asyncio turns Nagle off only on accepted sockets whose protocol
    # says TCP; with 0 each response's second write waited for the client's delayed ACK
    # (about 40 ms per request, in every test through this harness).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Run an ASGI app with uvicorn on a free loopback port; yields its base URL."""
    sock = loopback_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = time.monotonic() + 20
    while not server.started:
        if task.done():
            task.result()
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    """A webhook receiver that records every request and answers ``status``."""

    url: str = ""
    status: int = 204
    requests: list[Received] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        self.requests.append(Received(request.url.path, dict(request.headers), body, time.time()))
        self._arrived.set()
        return Response(status_code=self.status)

    async def wait_for(self, n: int, within: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + within
        while len(self.requests) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"expected {n} webhooks, got {len(self.requests)}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        return self.requests


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = Starlette(routes=[Route("/{path:path}", rec.handle, methods=["POST"])])
    async with serve(app) as url:
        rec.url = url
        yield rec


@dataclass
class Service:
    url: str
    runtime: Runtime
    admin_key: str
    client: httpx.AsyncClient

    def as_key(self, key: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers={"authorization": f"Bearer {key}"})


@contextlib.asynccontextmanager
async def service(
    settings: Settings, clock: Clock | None = None, key: str | None = None
) -> AsyncIterator[Service]:
    """The service in this event loop; ``key`` is the admin key of a database reused."""
    app = create_app(settings, clock)
    async with serve(app) as url:
        runtime: Runtime = app.state.runtime
        key = runtime.bootstrap_key or key
        assert key, "a fresh database creates a bootstrap admin key"
        async with httpx.AsyncClient(
            base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=30
        ) as client:
            yield Service(url, runtime, key, client)


def ts(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def event(
    event_id: str,
    type_: str,
    t: float,
    *,
    email: str | None = None,
    anonymous_id: str | None = None,
    source: str = "website",
    account: dict[str, Any] | None = None,
    **lead: Any,
) -> dict[str, Any]:
    """A native event dict."""
    who: dict[str, Any] = dict(lead)
    if email:
        who["email"] = email
    if anonymous_id:
        who["anonymous_id"] = anonymous_id
    out: dict[str, Any] = {
        "event_id": event_id,
        "type": type_,
        "occurred_at": ts(t),
        "source": source,
        "lead": who,
    }
    if account:
        out["account"] = account
    return out


class Spawned:
    """``intent-router serve`` as a separate OS process (so a test can SIGKILL it)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.key: str | None = None

    def start(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "INTENT_LOG_LEVEL": "warning", **self.env, "INTENT_PORT": str(port)}
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "intent-router"), "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # Drain the output (a full pipe would stall the process); keep it for diagnosis.
        self.output: list[str] = []
        self._key_seen = threading.Event()
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "".join(self.output[-50:])
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError("the service did not become ready")

    def _drain(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.output.append(line)
            if line.strip().startswith("ir_") and self.key is None:
                self.key = line.strip()
                self._key_seen.set()

    def read_key(self) -> str:
        """The bootstrap admin key a first start prints."""
        if not self._key_seen.wait(10):
            raise AssertionError("no admin key printed:\n" + "".join(self.output[-50:]))
        assert self.key is not None
        return self.key

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(check: Any, within: float = 20.0) -> Any:
    """Poll an async ``check`` until it returns something truthy; its value."""
    deadline = time.monotonic() + within
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {within}s: {got!r}")
        await asyncio.sleep(0.05)
