"""SSRF guard: webhooks may only reach public addresses unless the operator allows a host.

Checked when a destination is created and again on every send, against the addresses
the host resolves to at that moment.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from app.errors import InvalidInput

METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "instance-data"})
CGNAT = ipaddress.ip_network("100.64.0.0/10")


class SsrfRefused(InvalidInput):
    code = "destination_refused"


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return _is_public(ip.ipv4_mapped)
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


class SsrfGuard:
    def __init__(self, allowed: list[str]) -> None:
        self.allowed_hosts = frozenset(a for a in allowed if "/" not in a)
        self.allowed_nets = [ipaddress.ip_network(a, strict=False) for a in allowed if "/" in a]

    def _allowed_ip(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return str(ip) in self.allowed_hosts or any(ip in n for n in self.allowed_nets)

    async def check_url(self, url: str) -> None:
        """Raise ``SsrfRefused`` unless every address ``url``'s host resolves to may be reached."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise SsrfRefused(f"the url is malformed: {exc}", field="url") from None
        if parts.scheme not in ("http", "https"):
            raise SsrfRefused("the url must be http or https", field="url")
        host = (parts.hostname or "").lower()
        if not host:
            raise SsrfRefused("the url has no host", field="url")
        if host in self.allowed_hosts:
            return
        if host in METADATA_HOSTS:
            raise SsrfRefused(f'"{host}" is a cloud metadata host', field="url")
        try:
            ips = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host,
                    port or (443 if parts.scheme == "https" else 80),
                    type=socket.SOCK_STREAM,
                )
            except OSError as exc:
                raise SsrfRefused(f'"{host}" does not resolve: {exc}', field="url") from exc
            ips = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        for ip in ips:
            if not _is_public(ip) and not self._allowed_ip(ip):
                raise SsrfRefused(
                    f'"{host}" resolves to {ip}, a private, loopback or reserved address; '
                    "list it in INTENT_DELIVERY_ALLOWED_HOSTS to allow it",
                    field="url",
                )
