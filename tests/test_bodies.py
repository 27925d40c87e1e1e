"""Request bodies against the real service: slow and truncated bodies time out and close,
a client that goes away mid-body leaves one log line, admin uploads are bounded before
they are parsed (bytes, rows, nesting), and ``/metrics`` behind its token."""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from sqlalchemy import func, select

from app.api.body import MAX_ADMIN_BODY, MAX_POLICY_BODY
from app.clock import FakeClock
from app.config import Settings
from app.db import accounts
from app.matching.abm import MAX_ACCOUNTS
from tests.support.harness import Service, event, service
from tests.support.memory import rss_peak

BODY_TIMEOUT = 1.0  # seconds: the tests' INTENT_BODY_TIMEOUT_SECONDS


@pytest.fixture
async def quick(settings: Settings, clock: FakeClock) -> AsyncIterator[Service]:
    """The service with a short body timeout."""
    fast = settings.model_copy(update={"body_timeout_seconds": BODY_TIMEOUT})
    async with service(fast, clock) as s:
        yield s


# -- helpers --------------------------------------------------------------------------------


MB = 1024 * 1024


async def stored_accounts(svc: Service) -> int:
    async with svc.runtime.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(accounts)) or 0)


class Raw:
    """One raw HTTP/1.1 connection to the service."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, svc: Service) -> Raw:
        url = urlsplit(svc.url)
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, within: float = 30) -> tuple[int, bytes]:
        """The status and everything the server sent until it closed the connection."""
        data = await asyncio.wait_for(self.reader.read(-1), within)  # -1: until EOF
        assert data.startswith(b"HTTP/1.1 "), data[:200]
        return int(data.split(b" ", 2)[1]), data

    def close(self) -> None:
        self.writer.close()


def head(svc: Service, path: str, extra: str) -> bytes:
    host = urlsplit(svc.url).netloc
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {svc.admin_key}\r\n"
        f"Content-Type: application/json\r\n{extra}\r\n"
    ).encode()


def one_event(clock: FakeClock, event_id: str = "e-1") -> bytes:
    return orjson.dumps(
        event(event_id, "pricing_page_view", clock.now(), email="dana@acme.com", title="VP Sales")
    )


class Records(logging.Handler):
    """Every record of the app's and uvicorn's loggers while installed."""

    NAMES = ("", "app", "uvicorn", "uvicorn.error", "uvicorn.access")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not any(r is record for r in self.records):  # a record propagates to several
            self.records.append(record)

    def __enter__(self) -> Records:
        for name in self.NAMES:
            logging.getLogger(name).addHandler(self)
        logging.getLogger("app").setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: Any) -> None:
        for name in self.NAMES:
            logging.getLogger(name).removeHandler(self)


# -- slow and truncated bodies ----------------------------------------------------------------


async def test_a_body_shorter_than_its_content_length_is_a_408_and_the_connection_closes(
    quick: Service, clock: FakeClock
) -> None:
    body = one_event(clock)
    conn = await Raw.open(quick)
    await conn.send(head(quick, "/v1/events", f"Content-Length: {len(body) + 100}\r\n") + body)
    status, data = await conn.response()  # returns only once the server closed
    conn.close()
    assert status == 408, data
    assert b'"code":"body_timeout"' in data and b'"field":"body"' in data
    assert b"connection: close" in data.lower()
    # Nothing was ingested from the partial body.
    r = await quick.client.get("/v1/leads/dana@acme.com")
    assert r.status_code == 404, r.text


async def test_a_false_chunk_size_is_a_408_and_the_connection_closes(
    quick: Service, clock: FakeClock
) -> None:
    body = one_event(clock)
    conn = await Raw.open(quick)
    # A chunk announced 0x400 bytes long that never completes.
    await conn.send(head(quick, "/v1/events", "Transfer-Encoding: chunked\r\n") + b"400\r\n" + body)
    status, data = await conn.response()
    conn.close()
    assert status == 408, data
    assert b'"code":"body_timeout"' in data


async def test_an_admin_upload_that_stalls_is_a_408(quick: Service) -> None:
    conn = await Raw.open(quick)
    await conn.send(
        head(quick, "/v1/policy", "Content-Length: 5000\r\n").replace(b"POST", b"PUT", 1)
        + b'{"scoring": '
    )
    status, data = await conn.response()
    conn.close()
    assert status == 408, data
    assert (await quick.client.get("/v1/policy")).json()["version"] == 1


async def test_fifty_held_bodies_do_not_stop_a_normal_request(
    quick: Service, clock: FakeClock
) -> None:
    body = one_event(clock)
    held = []
    for _ in range(50):
        conn = await Raw.open(quick)
        await conn.send(head(quick, "/v1/events", f"Content-Length: {len(body) + 1}\r\n") + body)
        held.append(conn)
    try:
        # While all fifty wait for their last byte, a whole request is served.
        r = await quick.client.post("/v1/events", content=one_event(clock, "ok-1"))
        assert r.status_code == 202, r.text
        assert r.json()["accepted"] == 1
        assert (await quick.client.get("/healthz")).status_code == 200
        # Each held one is answered 408 and closed, none left hanging.
        answers = await asyncio.gather(*(conn.response() for conn in held))
        assert [status for status, _ in answers] == [408] * 50
    finally:
        for conn in held:
            conn.close()
    assert (await quick.client.get("/v1/leads/dana@acme.com")).status_code == 200


@pytest.mark.parametrize("path", ["/v1/events", "/v1/destinations"])
async def test_a_client_that_leaves_mid_body_logs_one_line_and_no_traceback(
    quick: Service, path: str
) -> None:
    """Before: each abort logged a full traceback (ClientDisconnect as an unhandled error)."""
    with Records() as logs:
        conn = await Raw.open(quick)
        await conn.send(head(quick, path, "Content-Length: 1000\r\n") + b'{"event_id": "x"')
        await asyncio.sleep(0.05)  # the server is reading the body
        conn.writer.transport.abort()  # gone, mid-body

        deadline = time.monotonic() + 10
        while not [r for r in logs.records if r.name == "app.access"]:
            assert time.monotonic() < deadline, [r.getMessage() for r in logs.records]
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # anything logged after the access line is seen too
    lines = [r for r in logs.records if r.levelno >= logging.INFO]
    assert [r.getMessage() for r in lines] == [f"POST {path} 499"], [r.getMessage() for r in lines]
    assert not any(r.exc_info for r in logs.records)
    # The service goes on serving.
    assert (await quick.client.get("/healthz")).status_code == 200


# -- admin uploads bounded before they are parsed ------------------------------------------------


async def test_a_policy_over_1_mib_is_refused_before_it_is_read(svc: Service) -> None:
    big = b"# " + b"x" * MAX_POLICY_BODY + b"\n"
    r = await svc.client.put(
        "/v1/policy", content=big, headers={"content-type": "application/yaml"}
    )
    assert r.status_code == 413, r.text
    assert r.json()["code"] == "payload_too_large" and r.json()["field"] == "body"


async def test_a_gzip_policy_is_held_to_1_mib_once_unpacked(svc: Service) -> None:
    """1 MiB as sent must not mean 16 MiB of YAML to parse."""
    packed = gzip.compress(b"# " + b"x" * (4 * MAX_POLICY_BODY) + b"\n")
    assert len(packed) < MAX_POLICY_BODY
    r = await svc.client.put(
        "/v1/policy",
        content=packed,
        headers={"content-type": "application/yaml", "content-encoding": "gzip"},
    )
    assert r.status_code == 413, r.text
    assert str(MAX_POLICY_BODY) in r.json()["message"]


async def test_accounts_over_16_mib_are_refused_by_their_length(svc: Service) -> None:
    """The reproduction's 31 MiB CSV: refused on its Content-Length."""
    rows = b"".join(b"a%07d.example,Acme %d\n" % (i, i) for i in range(1_900_000))
    body = b"domain,name\n" + rows
    assert len(body) > 31 * MB
    with rss_peak() as peak:
        r = await svc.client.put("/v1/accounts", content=body, headers={"content-type": "text/csv"})
    assert r.status_code == 413, r.text
    assert r.json()["code"] == "payload_too_large"
    assert str(MAX_ADMIN_BODY) in r.json()["message"]
    assert peak[0] < 100 * MB, peak[0]


async def test_a_csv_of_too_many_rows_is_refused_as_it_is_read(svc: Service) -> None:
    """1.9 M rows within the byte limit: counted while reading, refused at the first row
    over, not validated first (none of these rows is a valid domain); nothing stored."""
    body = b"domain\n" + b"".join(b"%d\n" % i for i in range(1_900_000))
    assert len(body) < MAX_ADMIN_BODY
    with rss_peak() as peak:
        r = await svc.client.put("/v1/accounts", content=body, headers={"content-type": "text/csv"})
    assert r.status_code == 413, r.text
    assert (r.json()["code"], r.json()["field"]) == ("too_many_rows", "accounts")
    assert str(MAX_ACCOUNTS) in r.json()["message"]
    assert peak[0] < 100 * MB, peak[0]
    assert await stored_accounts(svc) == 0


@pytest.mark.parametrize("item", [b"{}", b"[]", b'{"domain":[]}'])
async def test_a_json_of_too_many_rows_is_refused_before_it_is_parsed(
    svc: Service, item: bytes
) -> None:
    """16 MiB of empty objects is 5.6 M Python dicts (+400 MB) once parsed: bounded from the
    brackets first."""
    n = (MAX_ADMIN_BODY - 20) // (len(item) + 1)
    body = b'{"accounts": [' + b",".join([item] * n) + b"]}"
    with rss_peak() as peak:
        r = await svc.client.put(
            "/v1/accounts", content=body, headers={"content-type": "application/json"}
        )
    assert r.status_code == 413, r.text
    assert r.json()["code"] == "too_many_rows"
    assert peak[0] < 100 * MB, peak[0]


async def test_a_json_of_many_scalars_is_refused_before_it_is_parsed(svc: Service) -> None:
    body = b"[" + b",".join([b"0"] * (MAX_ADMIN_BODY // 2 - 2)) + b"]"
    r = await svc.client.put(
        "/v1/accounts", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413, r.text
    assert r.json()["code"] == "too_many_rows"


async def test_one_row_over_the_limit_is_refused_with_413(svc: Service) -> None:
    rows = [{"domain": f"a{i}.io"} for i in range(MAX_ACCOUNTS + 1)]
    r = await svc.client.put("/v1/accounts", json={"accounts": rows})
    assert r.status_code == 413, r.text
    assert r.json()["code"] == "too_many_rows"
    csv = "domain\n" + "".join(f"a{i}.io\n" for i in range(MAX_ACCOUNTS + 1))
    r = await svc.client.put("/v1/accounts", content=csv, headers={"content-type": "text/csv"})
    assert r.status_code == 413, r.text
    assert r.json()["code"] == "too_many_rows"


async def test_a_csv_counts_rows_not_lines(svc: Service) -> None:
    """More lines than the row limit (a blank line after each row), but not more rows."""
    n = MAX_ACCOUNTS // 2 + 1
    rows = "".join(f"a{i}.io,Acme {i}\r\n\r\n" for i in range(n))
    assert rows.count("\n") > MAX_ACCOUNTS + 1
    r = await svc.client.put(
        "/v1/accounts", content="domain,name\n" + rows, headers={"content-type": "text/csv"}
    )
    assert r.status_code == 200, r.text[:500]
    assert r.json()["upserted"] == n


async def test_account_json_nested_deep_is_422_too_deep(svc: Service) -> None:
    body = '{"accounts": [' + "[" * 200 + "]" * 200 + "]}"
    r = await svc.client.put(
        "/v1/accounts", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert (r.json()["code"], r.json()["field"]) == ("too_deep", "body")


# -- /metrics behind a token -------------------------------------------------------------------


async def test_metrics_are_open_without_a_token(svc: Service) -> None:
    async with httpx.AsyncClient(base_url=svc.url) as anonymous:
        r = await anonymous.get("/metrics")
    assert r.status_code == 200
    assert "intent_policy_active_version" in r.text


async def test_metrics_need_the_token_when_one_is_set(settings: Settings) -> None:
    token = "m3trics-t0ken-with-some-length"
    async with service(settings.model_copy(update={"metrics_token": token})) as svc:
        async with httpx.AsyncClient(base_url=svc.url) as c:
            r = await c.get("/metrics")
            assert r.status_code == 401, r.text
            assert r.json()["code"] == "unauthenticated"
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert "intent_" not in r.text
            for wrong in (f"Bearer {token}x", f"Bearer {token[:-1]}", f"Basic {token}", token):
                r = await c.get("/metrics", headers={"authorization": wrong})
                assert r.status_code == 401, wrong
            # An API key, even an admin one, is not the metrics token.
            r = await c.get("/metrics", headers={"authorization": f"Bearer {svc.admin_key}"})
            assert r.status_code == 401
            r = await c.get("/metrics", headers={"authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
            assert "intent_policy_active_version" in r.text
            # The probes stay open.
            assert (await c.get("/healthz")).status_code == 200
            assert (await c.get("/readyz")).status_code == 200
