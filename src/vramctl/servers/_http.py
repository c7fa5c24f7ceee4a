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
