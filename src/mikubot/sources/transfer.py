"""HTTP for the sources: one place for timeouts, retries, 429s and bounded downloads.

Every remote source goes through ``Transfer`` so they all behave the same towards the sites they use:
a descriptive User-Agent, a per-attempt deadline, the repository's one retry policy (``httpretry``:
backoff with jitter on network errors, timeouts and 5xx, ``Retry-After`` honoured on 429 up to a bound,
beyond which the change fails with a retryable error rather than hanging), and downloads streamed and
cut off at the byte limit so a 40 MB original or an endless response never reaches memory. Secrets
travel in headers, never in messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from httpretry import RetryLater, retry_after_of
from mikubot.sources.base import SourceError
from mikubot.sources.options import SourceOptions

SECRET_PARAMS = frozenset({"api_key", "login", "password", "password_hash", "user_id", "token"})
HopCheck = Callable[[str], Awaitable[None]]
ResponseCheck = Callable[[httpx.Response, str], None]


def display_url(url: str | httpx.URL) -> str:
    """``url`` with credentials (user info, api_key=... and friends) masked: safe for messages and logs."""
    u = httpx.URL(str(url))
    if u.userinfo:
        u = u.copy_with(userinfo=b"")
    if u.query:
        params = [(k, "***" if k.lower() in SECRET_PARAMS else v) for k, v in u.params.multi_items()]
        u = u.copy_with(params=params)
    return str(u)


class _MaskSecretsInHttpxLogs(logging.Filter):
    """httpx logs every request URL at INFO; Gelbooru's api_key must travel in the query, so mask it there."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, httpx.URL) for a in record.args):
            record.args = tuple(display_url(a) if isinstance(a, httpx.URL) else a for a in record.args)
        return True


_HTTPX_LOGGER = logging.getLogger("httpx")
if not any(isinstance(f, _MaskSecretsInHttpxLogs) for f in _HTTPX_LOGGER.filters):
    _HTTPX_LOGGER.addFilter(_MaskSecretsInHttpxLogs())


def error_message(response: httpx.Response, body: bytes | None = None) -> str:
    """The site's own words for an error (Danbooru: ``{"message": ...}``), else the status line.

    ``body`` is given for streamed responses, whose content has not been (and need not be) read in full.
    """
    with contextlib.suppress(ValueError, json.JSONDecodeError, UnicodeDecodeError):
        body = json.loads(body if body is not None else response.content)
        if isinstance(body, dict):
            for key in ("message", "reason", "error"):
                if isinstance(body.get(key), str) and body[key]:
                    return body[key]
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()


@dataclass
class Transfer:
    options: SourceOptions
    service: str  # "Danbooru", "Safebooru", ... : how messages name the other side
    auth_hint: str = "check MIKU_DANBOORU_LOGIN and MIKU_DANBOORU_API_KEY, or unset both to search anonymously"

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[httpx.AsyncClient]:
        """The injected client (left open: its owner closes it) or a fresh one for this operation."""
        if self.options.http is not None:
            yield self.options.http
            return
        # trust_env=False: a proxy from the environment would defeat the URL source's address checks.
        async with httpx.AsyncClient(timeout=self.options.http_timeout_s, trust_env=False) as client:
            yield client

    def _headers(self) -> dict[str, str]:
        return {"User-Agent": self.options.user_agent, "Accept": "application/json, image/*;q=0.9, */*;q=0.5"}

    async def _attempts(self, what: str, attempt: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``attempt`` under the sources' retry policy (``httpretry``); failures become ``SourceError``."""
        opts = self.options
        policy = opts.retry

        async def timed() -> Any:
            async with asyncio.timeout(opts.http_timeout_s):
                return await attempt()

        unreachable = False
        try:
            return await policy.run(timed)
        except RetryLater as exc:
            last = exc.message
            if policy.too_long(exc):
                raise SourceError(
                    f"{last}; {self.service} asks to wait {exc.retry_after:.0f} s, longer than the "
                    f"{policy.max_retry_after_s:g} s this bot waits - try again later",
                    retryable=True,
                ) from exc
        except (TimeoutError, httpx.TimeoutException):
            last = f"{self.service} did not answer {what} within {opts.http_timeout_s:g} s"
        except httpx.TransportError as exc:
            last = f"cannot reach {self.service} for {what}: {_describe(exc)}"
            unreachable = True
        tries = policy.attempts
        raise SourceError(f"{last} (gave up after {tries} attempt{'s' if tries != 1 else ''})", retryable=True,
                          unreachable=unreachable)

    def _raise_for_status(self, response: httpx.Response, url: str, what: str, body: bytes | None = None) -> None:
        status = response.status_code
        if status < 400:
            return
        shown = display_url(url)
        if status == 429:
            raise RetryLater(f"{self.service} rate-limited {what} (429)", retry_after=retry_after_of(response))
        if status >= 500:
            raise RetryLater(f"{self.service} failed {what} with HTTP {status} ({error_message(response, body)})")
        message = error_message(response, body)
        if status in (401, 403):
            raise SourceError(
                f"{self.service} refused {what} (HTTP {status}: {message}); {self.auth_hint}",
                retryable=False,
            )
        raise SourceError(f"{self.service} rejected {what} at {shown} (HTTP {status}: {message})", retryable=False)

    async def get_json(
        self, url: str, *, params: dict[str, Any] | None = None, auth: tuple[str, str] | None = None, what: str
    ) -> Any:
        """GET ``url`` and decode JSON, with the retry policy. An empty body decodes to ``None``."""

        async def attempt() -> Any:
            async with self.client() as client:
                response = await client.get(
                    url, params=params, headers=self._headers(), auth=auth or httpx.USE_CLIENT_DEFAULT,
                    follow_redirects=True, timeout=self.options.http_timeout_s,
                )
            self._raise_for_status(response, url, what)
            if not response.content.strip():
                return None
            try:
                return response.json()
            except (ValueError, UnicodeDecodeError) as exc:
                # A challenge page or a proxy's error page in place of JSON: usually passes.
                ctype = response.headers.get("content-type", "?")
                raise RetryLater(f"{self.service} answered {what} with {ctype}, not JSON") from exc

        return await self._attempts(what, attempt)

    async def download(
        self,
        url: str,
        *,
        what: str,
        check_hop: HopCheck | None = None,
        check_response: ResponseCheck | None = None,
        content_types: tuple[str, ...] | None = None,
    ) -> tuple[bytes, str, str | None]:
        """Stream ``url`` into memory, at most ``max_download_bytes``; return (data, final URL, content type).

        Redirects are followed here, one hop at a time, so ``check_hop`` can vet every URL before it is
        contacted and ``check_response`` every connection before its body is read.
        """
        limit = self.options.max_download_bytes

        async def attempt() -> tuple[bytes, str, str | None]:
            current = url
            async with self.client() as client:
                for _hop in range(self.options.source_max_redirects + 1):
                    if check_hop is not None:
                        await check_hop(current)
                    async with client.stream(
                        "GET", current, headers=self._headers(), follow_redirects=False,
                        timeout=self.options.http_timeout_s,
                    ) as response:
                        if check_response is not None:
                            check_response(response, display_url(current))
                        if response.is_redirect:
                            location = response.headers.get("location")
                            if not location:
                                raise SourceError(f"{display_url(current)} redirects without a Location")
                            current = str(response.url.join(location))
                            continue
                        if response.status_code >= 400:
                            self._raise_for_status(response, current, what, await _head(response))
                        ctype = response.headers.get("content-type")
                        if content_types is not None:
                            base = (ctype or "").split(";", 1)[0].strip().lower()
                            if base not in content_types:
                                raise SourceError(
                                    f"{display_url(current)} is {base or 'of no stated type'}, not an image "
                                    f"(expected {', '.join(content_types)}); link the image file itself",
                                )
                        declared = response.headers.get("content-length")
                        if declared and declared.isdigit() and int(declared) > limit:
                            raise _too_large(current, int(declared), limit)
                        chunks: list[bytes] = []
                        size = 0
                        async for chunk in response.aiter_bytes():
                            size += len(chunk)
                            if size > limit:
                                raise _too_large(current, None, limit)
                            chunks.append(chunk)
                        return b"".join(chunks), current, ctype
            raise SourceError(
                f"{display_url(url)} redirected more than {self.options.source_max_redirects} times; not followed"
            )

        return await self._attempts(what, attempt)


async def _head(response: httpx.Response, limit: int = 65536) -> bytes:
    """The first ``limit`` bytes of a streamed (error) body: enough for its message, never a flood."""
    data = b""
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= limit:
            break
    return data[:limit]


def _too_large(url: str, size: int | None, limit: int) -> SourceError:
    got = f"is {size / 1e6:.1f} MB" if size is not None else "is larger than that"
    return SourceError(
        f"{display_url(url)} {got}; the download limit is {limit / 1e6:.1f} MB (max_download_bytes)",
        retryable=False,
    )


def _describe(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError) and "refused" in text.lower():
        return "connection refused (is it down?)"
    return text
