"""One place that turns httpx failures into ServerError with the server's name and URL, and where a busy
server's ``Retry-After`` is honoured (``httpretry.BUSY``, the repository's one retry policy)."""

from __future__ import annotations

from typing import Any

import httpx

from httpretry import BUSY, RetryPolicy

from ..errors import ServerError


async def call(http: httpx.AsyncClient, server: str, base: str, method: str, path: str, *,
               timeout: float | None = None, retry: RetryPolicy = BUSY, **kw: Any) -> httpx.Response:
    """Send a request; connection problems become ServerError. The caller judges the status code."""
    url = f"{base}{path}"
    try:
        return await retry.send(lambda: http.request(method, url, timeout=timeout, **kw))
    except httpx.TimeoutException as exc:
        raise ServerError(server, base, f"{method} {path} timed out ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise ServerError(server, base, f"unreachable ({type(exc).__name__})") from exc


def short(r: httpx.Response) -> str:
    text = r.text.strip().replace("\n", " ")
    return text[:200] + ("…" if len(text) > 200 else "")


def json_object(server: str, base: str, path: str, r: httpx.Response) -> dict[str, Any]:
    """The body of a 200 answer that must be a JSON object; ServerError saying what it was otherwise."""
    try:
        body = r.json()
    except ValueError as exc:
        raise ServerError(server, base, f"{path} is not JSON: {short(r)}") from exc
    if not isinstance(body, dict):
        raise ServerError(server, base, f"{path} is not a JSON object: {short(r)}")
    return body
