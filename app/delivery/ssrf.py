"""SSRF guard: webhooks may only reach public addresses unless the operator allows a host.

Checked when a destination is created (``check_url``) and again on every send
(``resolve``), which also says which address to connect to: the dispatcher connects to
that validated IP itself, so a name that re-resolves to an internal address between the
check and the connection (DNS rebinding) never gets the request. Plain http is refused
unless the operator allows the host (a name, or an IP literal inside an allowed CIDR).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from app.errors import InvalidInput

METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "instance-data"})
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known prefix: the last 32 bits are IPv4
CACHE_SECONDS = 5.0  # short: a validated answer is safe to reuse, a stale one only fails
MAX_ADDRESSES = 4  # of a name's addresses, how many a send tries before it fails

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]


class SsrfRefused(InvalidInput):
    code = "destination_refused"


# Control characters and whitespace: Python's urlsplit drops a tab or newline silently while
# the HTTP client refuses the URL, so such a URL must never be stored, nor sent.
_UNSAFE = re.compile(r"[\x00-\x20\x7f-\x9f]")


def url_problem(url: str) -> str | None:
    """Why ``url`` can never be sent (whatever it resolves to), or None."""
    bad = _UNSAFE.search(url)
    if bad is not None:
        return (
            f"the url contains {'a space' if bad.group() == ' ' else 'a control character'} "
            f"({bad.group()!r} at position {bad.start()}): percent-encode it"
        )
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, as the operating system answers."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _is_public(ip: IP) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv6 forms that carry an IPv4 address: judged by the address they carry.
        if ip.ipv4_mapped is not None:
            return _is_public(ip.ipv4_mapped)
        if ip.sixtofour is not None and not _is_public(ip.sixtofour):
            return False
        if ip.teredo is not None and not all(_is_public(a) for a in ip.teredo):
            return False
        if ip in NAT64 and not _is_public(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)):
            return False
    if isinstance(ip, ipaddress.IPv4Address) and ip in CGNAT:
        return False
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


@dataclass(frozen=True)
class Target:
    """Where to send: ``url`` names the validated IP; ``headers`` and ``extensions`` keep
    the original host for the ``Host`` header and for TLS (SNI and certificate check)."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, str] = field(default_factory=dict)
    # The host's other validated addresses, tried in turn when a connection is refused.
    fallbacks: tuple[str, ...] = ()


class SsrfGuard:
    def __init__(
        self,
        allowed: list[str],
        *,
        resolver: Resolver = system_resolver,
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        self.allowed_hosts = frozenset(a for a in allowed if "/" not in a)
        self.allowed_nets = [ipaddress.ip_network(a, strict=False) for a in allowed if "/" in a]
        self.resolver = resolver
        self.cache_seconds = cache_seconds
        self._cache: dict[tuple[str, int], tuple[float, list[str]]] = {}

    def _allowed_ip(self, ip: IP) -> bool:
        return str(ip) in self.allowed_hosts or any(ip in n for n in self.allowed_nets)

    async def check_url(self, url: str) -> None:
        """Raise ``SsrfRefused`` unless ``url`` may be reached (resolved afresh, not cached)."""
        await self._target(url, cached=False)

    async def resolve(self, url: str) -> Target:
        """Check ``url`` and return where to connect: the validated address of its host."""
        return await self._target(url, cached=True)

    async def _target(self, url: str, *, cached: bool) -> Target:
        problem = url_problem(url)
        if problem is not None:
            raise SsrfRefused(problem, code="invalid_url", field="url")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise SsrfRefused(f"the url is malformed: {exc}", field="url") from None
        if parts.scheme not in ("http", "https"):
            raise SsrfRefused("the url must be https", field="url")
        host = (parts.hostname or "").lower()
        if not host:
            raise SsrfRefused("the url has no host", field="url")
        if host in self.allowed_hosts:
            return Target(url)  # the operator trusts this name: connect as it resolves
        if host in METADATA_HOSTS:
            raise SsrfRefused(f'"{host}" is a cloud metadata host', field="url")
        try:
            literal: IP | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            self._check_ip(host, literal)
            self._check_scheme(parts.scheme, http_allowed=self._allowed_ip(literal))
            return Target(url)
        port = port or (443 if parts.scheme == "https" else 80)
        try:
            answers = await (self._cached(host, port) if cached else self.resolver(host, port))
        except OSError as exc:
            raise SsrfRefused(f'"{host}" does not resolve: {exc}', field="url") from exc
        if not answers:
            raise SsrfRefused(f'"{host}" does not resolve', field="url")
        ips = [ipaddress.ip_address(a.split("%", 1)[0]) for a in answers]
        for ip in ips:
            self._check_ip(host, ip)
        self._check_scheme(parts.scheme, http_allowed=False)
        pinned = httpx.URL(url)
        extensions = {"sni_hostname": pinned.raw_host.decode()} if parts.scheme == "https" else {}
        urls = [str(pinned.copy_with(host=str(ip))) for ip in dict.fromkeys(ips)]
        return Target(
            urls[0],
            headers={"host": pinned.netloc.decode()},
            extensions=extensions,
            fallbacks=tuple(urls[1:MAX_ADDRESSES]),
        )

    @staticmethod
    def _check_scheme(scheme: str, *, http_allowed: bool) -> None:
        if scheme == "http" and not http_allowed:
            raise SsrfRefused(
                "the url must be https; plain http only reaches hosts listed in "
                "INTENT_DELIVERY_ALLOWED_HOSTS",
                field="url",
            )

    def _check_ip(self, host: str, ip: IP) -> None:
        if not _is_public(ip) and not self._allowed_ip(ip):
            raise SsrfRefused(
                f'"{host}" resolves to {ip}, a private, loopback or reserved address; '
                "list it in INTENT_DELIVERY_ALLOWED_HOSTS to allow it",
                field="url",
            )

    async def _cached(self, host: str, port: int) -> list[str]:
        now = time.monotonic()
        hit = self._cache.get((host, port))
        if hit is not None and hit[0] > now:
            return hit[1]
        answers = await self.resolver(host, port)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[(host, port)] = (now + self.cache_seconds, answers)
        return answers
