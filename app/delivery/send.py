"""Sending one webhook: prepare (the SSRF guard's pinned address, the destination's body
format, Standard Webhooks signatures) → send (the lean transport, a connection pool per
destination, no redirects) → what came back (``Sent``).

The dispatcher sends every delivery through a ``Sender``; so does a destination's test
send, so a test reaches the endpoint exactly as a webhook would.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from app.clock import Clock
from app.crypto import SecretBox, SecretKeyError
from app.delivery import formats, retry, signing
from app.delivery.destinations import Destination
from app.delivery.ssrf import SsrfGuard, SsrfRefused
from app.delivery.transition import Job, Outcome, Sent
from app.delivery.transport import LeanTransport

USER_AGENT = b"intent-router/0.1"
RESPONSE_BODY_CAP = 4096  # characters of a response body kept with its attempt
MAX_URLS = 10_000  # parsed URLs kept; past that the cache starts again
MAX_OPENED = 1_000  # opened secrets kept; past that the cache starts again


@dataclass(frozen=True, slots=True)
class Prepared:
    """A signed request, ready to go to the first of ``urls`` that takes a connection."""

    urls: tuple[httpx.URL, ...]  # the pinned address, then the host's other ones
    headers: list[tuple[bytes, bytes]]
    body: bytes
    sni: str | None  # the host name TLS presents and verifies, when ``urls`` name an IP


class Sender:
    def __init__(
        self, guard: SsrfGuard, clock: Clock, *, timeout: float, box: SecretBox | None = None
    ) -> None:
        self._guard = guard
        self._clock = clock
        self._timeout = timeout
        # Opens the destinations' secrets (stored encrypted); without one only plaintext
        # secrets sign. Each stored value is opened once, not on every webhook.
        self._box = box
        self._opened: dict[str, str] = {}
        # One small pool per destination: a slow endpoint never holds another's sockets.
        self._transports: dict[str, LeanTransport] = {}
        self._urls: dict[str, httpx.URL] = {}

    async def attempt(self, job: Job, dest: Destination | None) -> Outcome:
        """Deliver ``job`` to ``dest`` (None: deleted), unless it is off or gone."""
        if dest is None:
            return Outcome(job, skipped="deleted")
        if not dest.enabled:
            return Outcome(job, skipped="parked")
        return Outcome(job, await self.send(dest, job.body, msg_id=job.decision_id))

    async def send(self, dest: Destination, body: bytes, *, msg_id: str) -> Sent:
        """Sign ``body`` as message ``msg_id`` and POST it to ``dest``; a URL the SSRF
        guard refuses now is a failed attempt (``ssrf_refused: …``)."""
        started = self._clock.now()
        t0 = time.perf_counter()
        try:
            prepared = await self.prepare(dest, body, msg_id=msg_id)
        except SsrfRefused as exc:
            return Sent(started, _ms(t0), None, f"ssrf_refused: {exc.message}")
        return await self.post(dest.id, prepared)

    async def prepare(self, dest: Destination, body: bytes, *, msg_id: str) -> Prepared:
        """The request for ``dest``: raises ``SsrfRefused`` if its URL may not be reached."""
        target = await self._guard.resolve(dest.url)
        now = self._clock.now()
        content = formats.render(dest.format, body)
        signed = signing.headers(
            [self._open(s) for s in dest.secrets(now)], msg_id, int(now), content
        )
        urls = tuple(self._url(u) for u in (target.url, *target.fallbacks))
        # The original host, not the pinned address, for virtual hosting (and TLS below).
        host = target.headers.get("host") or urls[0].netloc.decode()
        headers = [
            (b"host", host.encode()),
            (b"user-agent", USER_AGENT),
            (b"content-length", str(len(content)).encode()),
            *((k.encode(), v.encode()) for k, v in signed.items()),
        ]
        return Prepared(urls, headers, content, target.extensions.get("sni_hostname"))

    def _open(self, stored: str) -> str:
        plain = self._opened.get(stored)
        if plain is None:
            if self._box is None:
                if SecretBox.is_encrypted(stored):
                    raise SecretKeyError("an encrypted secret and no key to open it")
                return stored
            if len(self._opened) >= MAX_OPENED:
                self._opened.clear()
            plain = self._opened[stored] = self._box.decrypt(stored)
        return plain

    async def post(self, dest_id: str, p: Prepared) -> Sent:
        """Send a prepared request on the destination's pool; what came back, timed."""
        started = self._clock.now()
        t0 = time.perf_counter()
        transport = self._transports.get(dest_id)
        if transport is None:
            transport = self._transports[dest_id] = LeanTransport()
        for i, url in enumerate(p.urls, 1):
            try:
                reply = await transport.send(
                    "POST", url, p.headers, p.body, time_limit=self._timeout, sni=p.sni
                )
                break
            except httpx.ConnectError as exc:
                if i < len(p.urls):
                    continue  # nothing was sent: the host's next address may answer
                return Sent(started, _ms(t0), None, f"{type(exc).__name__}: {exc}"[:500])
            except httpx.TimeoutException:
                return Sent(started, _ms(t0), None, "timeout")
            except httpx.HTTPError as exc:
                return Sent(started, _ms(t0), None, f"{type(exc).__name__}: {exc}"[:500])
        text = reply.body[: 4 * RESPONSE_BODY_CAP].decode("utf-8", "replace")[:RESPONSE_BODY_CAP]
        status = reply.status
        if 200 <= status < 300:
            return Sent(started, _ms(t0), status, None, text)
        retry_after = None
        if status in (429, 503):
            value = reply.header(b"retry-after")
            if value is not None:
                retry_after = retry.parse_retry_after(value.decode("latin-1"), self._clock.now())
        return Sent(started, _ms(t0), status, f"http_{status}", text, retry_after)

    def _url(self, url: str) -> httpx.URL:
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) >= MAX_URLS:
                self._urls.clear()
            parsed = self._urls[url] = httpx.URL(url)
        return parsed

    async def aclose(self) -> None:
        for transport in self._transports.values():
            await transport.aclose()
        self._transports.clear()


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000
