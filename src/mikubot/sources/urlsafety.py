"""Which URLs the bot may fetch on a user's say-so: https to public internet addresses only.

A URL typed into Discord or the panel must not make the bot fetch from its own network (the llama-swap
admin API, the cloud metadata service at 169.254.169.254, a router's page). Checking the host *name* is not
enough ("localhost", "127.0.0.1.nip.io", a name whose DNS points at 10.0.0.5), so every address the name
resolves to is checked with ``ipaddress`` after ``getaddrinfo``; every redirect hop is checked again; and
the address the connection actually reached is checked before the body is read (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field

import httpx

from mikubot.sources.base import SourceError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeUrl(SourceError):
    """The URL points somewhere the bot must not go (not https, a private address, credentials in it)."""

    def __init__(self, message: str):
        super().__init__(message, retryable=False)


@dataclass(frozen=True)
class UrlPolicy:
    """What ``check_url`` lets through. The defaults are the production rules.

    ``allow_private`` and ``allowed_addresses`` exist for tests only: a test serving images from its own
    loopback server flips one of them explicitly, for that server. ``schemes`` stays https in production.
    """

    schemes: frozenset[str] = frozenset({"https"})
    allow_private: bool = False
    allowed_addresses: frozenset[str] = field(default_factory=frozenset)


def address_problem(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public internet address, or ``None`` when it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return address_problem(ip.ipv4_mapped)
    checks = (
        (ip.is_loopback, "a loopback address"),
        (ip.is_unspecified, "the unspecified address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_private, "a private-network address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "not a public internet address"),
    )
    for bad, why in checks:
        if bad:
            return why
    return None


def check_address(address: str, policy: UrlPolicy, *, url: str) -> None:
    """Raise ``UnsafeUrl`` unless ``address`` (an IP literal) may be contacted under ``policy``."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if policy.allow_private or str(ip) in policy.allowed_addresses:
        return
    why = address_problem(ip)
    if why:
        raise UnsafeUrl(f"refusing {url}: it leads to {ip}, {why}; only public internet addresses are fetched")


def check_url_syntax(url: str, policy: UrlPolicy) -> httpx.URL:
    """Scheme, host and userinfo checks that need no network."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise UnsafeUrl(f"{url!r} is not a valid URL ({exc})") from exc
    if parsed.scheme not in policy.schemes:
        allowed = " or ".join(sorted(policy.schemes))
        raise UnsafeUrl(f"refusing {url}: only {allowed} URLs are fetched (got {parsed.scheme or 'no scheme'}://)")
    if not parsed.host:
        raise UnsafeUrl(f"refusing {url}: it names no host")
    if parsed.userinfo:
        raise UnsafeUrl(f"refusing {_redact(parsed)}: URLs with a user name or password are not fetched")
    return parsed


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, as the system resolver (``getaddrinfo``) gives them."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        retryable = exc.errno == socket.EAI_AGAIN
        raise SourceError(f"cannot resolve host {host!r}: {exc.strerror or exc}", retryable=retryable) from exc
    return sorted({str(info[4][0]) for info in infos})


async def check_url(url: str, policy: UrlPolicy = UrlPolicy()) -> httpx.URL:
    """Raise ``UnsafeUrl`` unless ``url`` is allowed and *every* address its host resolves to is public.

    One bad address refuses the URL: a name that resolves to both a public and a private address could be
    connected to either.
    """
    parsed = check_url_syntax(url, policy)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    shown = _redact(parsed)
    addresses = await resolve(parsed.host, port)
    if not addresses:
        raise SourceError(f"cannot resolve host {parsed.host!r}: no addresses")
    for address in addresses:
        check_address(address, policy, url=shown)
    return parsed


def check_peer(response: httpx.Response, policy: UrlPolicy, *, url: str) -> None:
    """Check the address the connection really reached (closes the DNS-rebinding gap after ``check_url``).

    Only possible when the transport exposes its socket (httpx's default transport does); an injected
    transport without one is trusted as configured.
    """
    stream = response.extensions.get("network_stream")
    if stream is None:
        return
    peer = stream.get_extra_info("server_addr")
    if not peer:
        return
    check_address(str(peer[0]), policy, url=url)


def _redact(url: httpx.URL) -> str:
    """The URL without user info or query string: safe to print."""
    return str(url.copy_with(userinfo=b"", query=None, fragment=None)) if url.host else str(url)
