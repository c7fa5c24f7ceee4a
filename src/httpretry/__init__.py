"""One retry policy for every HTTP client in this repository, with ``Retry-After`` honoured.

Who uses it: mikubot's image sources (``mikubot.sources.transfer``), the face detector's client
(``facedetect.client``) and vramctl's server clients (``vramctl.servers._http``).

Why a package of its own: dependencies point one way, mikubot -> vramctl and facedetect, and vramctl and
facedetect never import mikubot nor each other (each installs and runs without the others: the detector
image, the ``vramctl`` CLI). A policy all three share therefore cannot live in any of them; it lives here,
below all three, and depends on nothing of ours (only httpx and tenacity).

The policy: try up to ``attempts`` times. A failed attempt is retried when it is a network failure or a
timeout (if ``retry_transport_errors``), a response whose status is retryable (429 and every 5xx unless
``statuses`` narrows it; with ``only_when_asked`` only those that carry ``Retry-After``), or a
``RetryLater`` raised by the caller (e.g. a proxy's HTML page where JSON was due). The wait before the
next try is the server's ``Retry-After`` when it gave one, else exponential backoff with jitter
(``backoff_s``, 2x, 4x ... times a random 0.5-1). A ``Retry-After`` longer than ``max_retry_after_s`` is
not waited out: the failure is returned (or raised) at once, so a caller reports "try again later" instead
of hanging. ``Retry-After`` is parsed here and nowhere else (``retry_after_seconds``).

The same clients share one TLS context (``tls_context``): httpx builds a new one for every client, parsing
the whole CA bundle (about 27 ms of CPU), and the bot makes a client per change, per reservation, per
detector call.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import math
import os
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx
import tenacity

T = TypeVar("T")

__all__ = ["BUSY", "HttpRetryError", "RetryLater", "RetryPolicy", "retry_after_of", "retry_after_seconds",
           "tls_context"]


def tls_context() -> ssl.SSLContext:
    """The process's TLS context for verifying servers, trusting what httpx's default would: the bundle named
    by ``SSL_CERT_FILE`` or the folder ``SSL_CERT_DIR`` when set, else certifi's. Made once per setting."""
    cafile = os.environ.get("SSL_CERT_FILE") or None
    return _tls_context(cafile, None if cafile else os.environ.get("SSL_CERT_DIR") or None)


@functools.lru_cache(maxsize=4)
def _tls_context(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    import certifi  # httpx's own dependency

    if cafile is None and capath is None:
        cafile = certifi.where()
    return ssl.create_default_context(cafile=cafile, capath=capath)


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3); ``None`` if unusable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())
    return max(0.0, seconds) if math.isfinite(seconds) else None  # NaN or inf is not a wait


def retry_after_of(response: httpx.Response) -> float | None:
    """The wait a response asks for, from its ``Retry-After`` header."""
    return retry_after_seconds(response.headers.get("retry-after"))


class HttpRetryError(Exception):
    """Base class of every httpretry error."""


class RetryLater(HttpRetryError):
    """An attempt failed in a way worth repeating. ``retry_after``: the wait the server asked for, if any;
    ``response``: the response that failed (``RetryPolicy.send`` hands the last one back)."""

    def __init__(self, message: str, *, retry_after: float | None = None, response: httpx.Response | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.response = response


TRANSPORT_ERRORS = (httpx.TransportError, TimeoutError)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    backoff_s: float = 0.5
    max_retry_after_s: float = 60.0
    statuses: frozenset[int] | None = None  # None: 429 and every 5xx
    only_when_asked: bool = False  # retry a status only when the response carries Retry-After
    retry_transport_errors: bool = True
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")

    # --- the rules ------------------------------------------------------------------------------------------
    def retryable_status(self, response: httpx.Response) -> bool:
        status = response.status_code
        listed = status in self.statuses if self.statuses is not None else status == 429 or status >= 500
        return listed and (not self.only_when_asked or retry_after_of(response) is not None)

    def too_long(self, exc: BaseException) -> bool:
        """True when the server asked for a wait longer than this policy accepts."""
        hint = getattr(exc, "retry_after", None)
        return hint is not None and hint > self.max_retry_after_s

    def retryable(self, exc: BaseException) -> bool:
        if self.too_long(exc):
            return False
        if isinstance(exc, RetryLater):
            return True
        return isinstance(exc, TRANSPORT_ERRORS) and self.retry_transport_errors

    def wait(self, attempt: int, exc: BaseException | None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        hint = getattr(exc, "retry_after", None)
        if hint is not None:
            return float(hint)
        return self.backoff_s * (2 ** (attempt - 1)) * self.rng.uniform(0.5, 1.0)

    def _tenacity(self) -> dict[str, object]:
        return {
            "stop": tenacity.stop_after_attempt(self.attempts),
            "wait": lambda state: self.wait(state.attempt_number, state.outcome.exception() if state.outcome else None),
            "retry": tenacity.retry_if_exception(self.retryable),
            "reraise": True,
        }

    # --- running ---------------------------------------------------------------------------------------------
    async def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Await ``fn()`` under the policy; the last failure is raised as it was."""
        return await tenacity.AsyncRetrying(sleep=asyncio.sleep, **self._tenacity())(fn)  # type: ignore[arg-type]

    def run_sync(self, fn: Callable[[], T]) -> T:
        """``run`` for blocking code."""
        return tenacity.Retrying(sleep=time.sleep, **self._tenacity())(fn)  # type: ignore[arg-type]

    def _check(self, response: httpx.Response) -> httpx.Response:
        if self.retryable_status(response):
            raise RetryLater(f"HTTP {response.status_code}", retry_after=retry_after_of(response), response=response)
        return response

    async def send(self, request: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
        """Send ``request()`` under the policy and return the last response, good or bad, for the caller to
        judge; network failures are raised once the attempts are spent."""

        async def attempt() -> httpx.Response:
            return self._check(await request())

        try:
            return await self.run(attempt)
        except RetryLater as exc:
            if exc.response is None:
                raise
            return exc.response

    def send_sync(self, request: Callable[[], httpx.Response]) -> httpx.Response:
        try:
            return self.run_sync(lambda: self._check(request()))
        except RetryLater as exc:
            if exc.response is None:
                raise
            return exc.response


# For services on this machine (the detector, llama-swap, Ollama): a busy one (429/503 with Retry-After,
# e.g. the detector's full queue) is waited for, twice at most and 10 s a time; an unreachable one is
# reported at once, so the caller can fall back or say so instead of stalling a change.
BUSY = RetryPolicy(attempts=3, max_retry_after_s=10.0, statuses=frozenset({429, 503}), only_when_asked=True,
                   retry_transport_errors=False)
