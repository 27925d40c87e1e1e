"""The hostile-input suite's parts: the real service as a watched OS process (its RSS
sampled all the time, killed before it can take the machine down), the sources its cases
post to, raw sockets for bodies that never arrive, and the payloads of issue 13's
reproductions."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import yaml
from cryptography.fernet import Fernet

from app.policy.defaults import default_policy_text
from tests.support.harness import Spawned

MB = 1024 * 1024
# The bound every case holds: the service's RSS stays below its RSS at start + this.
RSS_BOUND = 300 * MB
# Past this the sampler kills the service: a regression fails its case, not the machine.
RSS_KILL = 1500 * MB
TYPEFORM_SECRET = "hostile-typeform-secret"
BODY_TIMEOUT_SECONDS = 2


def rss_of(pid: int) -> int | None:
    """VmRSS of a process in bytes; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class Watched(Spawned):
    """``intent-router serve`` with its RSS sampled every 20 ms from start to exit."""

    base_rss = 0
    peak_rss = 0
    killed_for_rss: int | None = None

    def start(self) -> None:
        super().start()
        assert self.proc is not None
        self.base_rss = rss_of(self.proc.pid) or 0
        self.peak_rss = self.base_rss
        self.killed_for_rss = None
        threading.Thread(target=self._sample, args=(self.proc,), daemon=True).start()

    def _sample(self, proc: Any) -> None:
        while proc.poll() is None:
            rss = rss_of(proc.pid)
            if rss is None:
                return
            self.peak_rss = max(self.peak_rss, rss)
            if rss > self.base_rss + RSS_KILL:
                self.killed_for_rss = rss
                proc.send_signal(signal.SIGKILL)
                return
            time.sleep(0.02)

    _health: httpx.Client | None = None

    def health(self) -> httpx.Client:
        if self._health is None:
            self._health = httpx.Client(timeout=10)
        return self._health

    def stop(self) -> None:
        super().stop()
        if self._health is not None:
            self._health.close()
            self._health = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def last_error(self) -> str:
        """The end of the last error the service logged (its traceback's last frames)."""
        time.sleep(0.1)  # logged as the answer goes out
        errors = [line for line in self.output if '"level":"error"' in line]
        return errors[-1][-1200:] if errors else "(none logged)"

    def tail(self, n: int = 40) -> str:
        return "".join(self.output[-n:])

    def check(self, what: str = "") -> None:
        """Still up, RSS within its bound at every sample, and answering."""
        assert self.proc is not None
        if self.killed_for_rss is not None:
            raise AssertionError(
                f"{what}: RSS reached {self.killed_for_rss / MB:.0f} MB "
                f"(start {self.base_rss / MB:.0f} MB): killed\n{self.tail()}"
            )
        assert self.alive(), f"{what}: the service exited ({self.proc.returncode})\n{self.tail()}"
        grown = self.peak_rss - self.base_rss
        assert grown < RSS_BOUND, (
            f"{what}: RSS peaked at {self.peak_rss / MB:.0f} MB, "
            f"{grown / MB:.0f} MB above its {self.base_rss / MB:.0f} MB at start"
        )
        r = self.health().get(self.url + "/healthz")
        assert r.status_code == 200, (what, r.status_code, r.text)


def create_database(kind: str, tmp: Path) -> str:
    """A fresh, empty database: a SQLite file, or a new PostgreSQL database (as
    tests/conftest.py makes them). PostgreSQL must be there: its absence fails."""
    if kind == "sqlite":
        path = tmp / f"hostile-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        return f"sqlite+aiosqlite:///{path}/intent.db"
    base = os.environ.get("INTENT_TEST_DATABASE_URL")
    if not base:
        pytest.fail("INTENT_TEST_DATABASE_URL is not set: run `make services`")
    server, _, _ = base.rpartition("/")
    name = f"t_{uuid.uuid4().hex[:16]}"
    asyncio.run(_pg(base, f'CREATE DATABASE "{name}"'))
    return f"{server}/{name}"


def drop_database(url: str) -> None:
    if url.startswith("postgresql"):
        base = os.environ["INTENT_TEST_DATABASE_URL"]
        name = url.rpartition("/")[2]
        asyncio.run(_pg(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _pg(base: str, statement: str) -> None:
    conn = await asyncpg.connect(base.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


class Hostile:
    """The service under attack, on one database, with a Segment source (its write key)
    and a Typeform source (its secret) to post to."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self.tmp = tmp
        self.databases: list[str] = []
        self.proc: Watched
        self.key = ""
        self.write_key = ""
        self.secret_key = Fernet.generate_key().decode()
        self._http: httpx.Client | None = None
        self._http_url = ""
        self.boot()

    def env(self, url: str) -> dict[str, str]:
        return {
            "INTENT_DATABASE_URL": url,
            "INTENT_DELIVERY_ALLOWED_HOSTS": "127.0.0.1",
            "INTENT_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT_SECONDS),
            "INTENT_SECRET_KEY": self.secret_key,
            # Request lines logged, so a case can look for what it sent in the log.
            "INTENT_LOG_LEVEL": "info",
            # Quotas are not under test here: the generated cases post fast.
            "INTENT_RATE_LIMIT_EVENTS_PER_SECOND": "1000000",
            "INTENT_RATE_LIMIT_BURST": "10000000",
        }

    def boot(self) -> None:
        """A fresh database, the service on it, and its sources."""
        url = create_database(self.kind, self.tmp)
        self.databases.append(url)
        self.proc = Watched(self.env(url))
        self.proc.start()
        self.key = self.proc.read_key()
        with self.client() as c:
            r = c.post("/v1/sources", json={"name": "web", "kind": "segment"})
            assert r.status_code == 201, r.text
            self.write_key = r.json()["write_key"]
            r = c.post(
                "/v1/sources", json={"name": "tf", "kind": "typeform", "secret": TYPEFORM_SECRET}
            )
            assert r.status_code == 201, r.text

    @property
    def url(self) -> str:
        return self.proc.url

    def client(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"authorization": f"Bearer {self.key}"}, timeout=timeout
        )

    def http(self) -> httpx.Client:
        """A client of the running process, without credentials (kept while it runs)."""
        if self._http is None or self._http_url != self.url:
            if self._http is not None:
                self._http.close()
            self._http = httpx.Client(base_url=self.url, timeout=60)
            self._http_url = self.url
        return self._http

    def restart(self) -> None:
        """Stop and start again on the same database: it must become ready (Spawned.start
        waits for /readyz 200 and fails when the process exits first)."""
        self.proc.stop()
        self.proc = Watched(self.proc.env)
        self.proc.start()

    def ensure_up(self) -> None:
        """Before a case: a case before it may have killed the service or left a database
        it cannot start on (that case failed for it); start afresh then."""
        if self.proc.alive() and self.proc.killed_for_rss is None:
            self.proc.peak_rss = max(self.proc.base_rss, rss_of(self.proc.proc.pid) or 0)  # type: ignore[union-attr]
            return
        self.proc.stop()
        try:
            self.restart()
        except (AssertionError, RuntimeError):
            self.proc.stop()
            self.boot()

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        self.proc.stop()
        for url in self.databases:
            drop_database(url)


# -- payloads ---------------------------------------------------------------------------


def typeform_headers(body: bytes) -> dict[str, str]:
    sig = base64.b64encode(
        hmac.new(TYPEFORM_SECRET.encode(), body, hashlib.sha256).digest()
    ).decode()
    return {"typeform-signature": f"sha256={sig}", "content-type": "application/json"}


def basic(write_key: str) -> dict[str, str]:
    token = base64.b64encode(f"{write_key}:".encode()).decode()
    return {"authorization": f"Basic {token}", "content-type": "application/json"}


INDUSTRY_RULE = (
    "when: {field: account.industry, in: [software, internet, financial_services, healthcare]}"
)


def policy_with_industry(condition: str) -> str:
    """The default policy with the industry rule's condition replaced (YAML text)."""
    text = default_policy_text()
    assert INDUSTRY_RULE in text
    return text.replace(INDUSTRY_RULE, f"when: {condition}")


def billion_laughs(depth: int) -> str:
    """The default policy with the industry rule's ``eq:`` a list of aliases ``depth``
    deep, ten of the level below at each: 10**depth strings once expanded."""
    node = "&l0 [" + ", ".join(["lol"] * 10) + "]"
    for k in range(1, depth):
        node = f"&l{k} [{node}" + f", *l{k - 1}" * 9 + "]"
    return policy_with_industry(f"{{field: account.industry, eq: {node}}}")


def nested_any(depth: int) -> str:
    """A fit rule's condition ``any:`` inside ``any:`` ``depth`` levels deep."""
    return policy_with_industry(
        "{any: [" * depth + "{field: account.industry, eq: software}" + "]}" * depth
    )


def nested_list(depth: int) -> str:
    return policy_with_industry(
        "{field: account.industry, eq: " + "[" * depth + "software" + "]" * depth + "}"
    )


def gzip_bomb(size: int = 17 * MB) -> bytes:
    """A small gzip body that expands to ``size`` bytes (a JSON string of spaces)."""
    raw = b'{"a": "' + b" " * (size - 9) + b'"}'
    return gzip.compress(raw, 9)


def accounts_csv(target_bytes: int) -> bytes:
    """An accounts CSV of about ``target_bytes``, made in memory."""
    header = b"domain,name,tier\n"
    row = b"d%07d.example.com,Acme %07d,tier_1\n"
    n = (target_bytes - len(header)) // len(row % (0, 0))
    return header + b"".join(row % (i, i) for i in range(n))


# -- raw HTTP: bodies that never arrive ------------------------------------------------------


def open_stalled(url: str, path: str, key: str, *, chunked: bool) -> socket.socket:
    """A request whose body stops short: 10 bytes of a declared 1,000 (Content-Length or
    a chunk size), then nothing."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        f"Authorization: Bearer {key}",
        "Content-Type: application/json",
    ]
    if chunked:
        head.append("Transfer-Encoding: chunked")
        body = b"3e8\r\n" + b'{"events":'
    else:
        head.append("Content-Length: 1000")
        body = b'{"events":'
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    return sock


def outcome_of(sock: socket.socket, within: float) -> tuple[str, int | None]:
    """What the server does with a stalled request: ("answered", status), ("closed", None)
    or ("reset", None); ("open", None) if nothing within ``within`` seconds."""
    sock.settimeout(within)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        return "open", None
    except ConnectionResetError:
        return "reset", None
    finally:
        sock.close()
    if not data:
        return "closed", None
    status_line = data.split(b"\r\n", 1)[0].split()
    return "answered", int(status_line[1]) if len(status_line) > 1 else None


Check = Callable[[], None]


# -- generated documents: nesting deeper than a serialiser goes ------------------------------


@dataclass(frozen=True)
class Deep:
    """``value`` inside ``depth`` lists (or objects): written as text, since orjson and
    PyYAML refuse to write documents that deep."""

    value: Any
    depth: int
    kind: str  # "list" or "dict"


def dumps(doc: Any, form: str = "json") -> bytes:
    """``doc`` as JSON or YAML (``yaml``, ``yaml-unicode``), with each ``Deep`` nested as
    text; shared references become YAML anchors and aliases."""
    deeps: list[Deep] = []

    def walk(x: Any) -> Any:
        if isinstance(x, Deep):
            deeps.append(x)
            return f"DEEP{len(deeps) - 1}X"
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    plain = walk(doc)
    if form == "json":
        out = orjson.dumps(plain, option=orjson.OPT_NON_STR_KEYS)
    else:
        # Shared references (not copied by walk for scalars; lists are rebuilt) keep their
        # aliases only when no Deep is inside: walk keeps them when given the original.
        out = yaml.safe_dump(
            doc if not deeps else plain, allow_unicode=form == "yaml-unicode", width=2**20
        ).encode("utf-8", "surrogatepass")
    for i, d in enumerate(deeps):
        inner = json.dumps(d.value).encode() if form != "json" else orjson.dumps(d.value)
        opened, closed = (b"[", b"]") if d.kind == "list" else (b'{"k": ', b"}")
        nested = opened * d.depth + inner + closed * d.depth
        marker = f"DEEP{i}X".encode()
        out = out.replace(b'"' + marker + b'"', nested).replace(marker, nested)
    return out
