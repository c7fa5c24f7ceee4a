"""Apply an avatar through Discord's REST API: ``PATCH {api_base}/users/@me {"avatar": <data URI>}``.

Rate limits are Discord's normal flow control, not errors: a 429 says how long to wait (``retry_after``
in the JSON body, ``Retry-After`` / ``X-RateLimit-Reset-After`` headers) and we wait and retry, within
a bound on attempts and on the total wait. Two answers are final and get their own errors, because the
person must act: 401 (the token is wrong) and 50035 ``AVATAR_RATE_LIMIT`` ("You are changing your avatar
too fast": Discord allows only a few avatar changes per hour; retrying sooner does not help). In every
failure the avatar file stays where the pipeline wrote it, so ``mikubot pfp restore`` can apply it later.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import dataclass, field
from typing import Any

import httpx

from facedetect import formats

log = logging.getLogger(__name__)



class UploadError(Exception):
    """The avatar was not applied. ``retryable``: trying again later may work."""

    retryable = False

    def __init__(self, message: str, *, status_code: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.retry_after = retry_after


class Unauthorized(UploadError):
    pass


class AvatarRateLimited(UploadError):
    retryable = True


class RateLimited(UploadError):
    retryable = True


class DiscordUnavailable(UploadError):
    retryable = True


@dataclass
class UploadResult:
    user: dict[str, Any]
    attempts: int
    waited_s: float
    rate_limits: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user.get("id"),
            "username": self.user.get("username"),
            "avatar": self.user.get("avatar"),
            "attempts": self.attempts,
            "waited_s": round(self.waited_s, 3),
            "rate_limits": self.rate_limits,
        }


def data_uri(image: bytes) -> str:
    """``data:image/png;base64,...`` — Discord's image data format; the type comes from the bytes."""
    fmt = formats.of_bytes(image)
    if fmt is None or not fmt.discord:
        accepted = formats.names(tuple(f for f in formats.FORMATS if f.discord))
        raise UploadError(f"the avatar is not {accepted}; Discord accepts only those")
    return f"data:{fmt.mime};base64,{base64.b64encode(image).decode('ascii')}"


def retry_after_of(response: httpx.Response) -> float:
    """Seconds a 429 asks us to wait: the body's ``retry_after`` first (it has sub-second precision),
    then ``Retry-After``, then ``X-RateLimit-Reset-After``; 1 s if Discord said nothing usable."""
    candidates: list[Any] = []
    try:
        body = response.json()
        if isinstance(body, dict):
            candidates.append(body.get("retry_after"))
    except ValueError:
        pass
    candidates += [response.headers.get("retry-after"), response.headers.get("x-ratelimit-reset-after")]
    for value in candidates:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            continue
        if seconds >= 0:
            return seconds
    return 1.0


def _avatar_error_codes(body: Any) -> list[tuple[str, str]]:
    """Codes/messages of Discord's nested form errors for the ``avatar`` field."""
    try:
        errs = body["errors"]["avatar"]["_errors"]
        return [(str(e.get("code", "")), str(e.get("message", ""))) for e in errs]
    except (KeyError, TypeError):
        return []


class DiscordUploader:
    def __init__(
        self,
        api_base: str,
        token: str,
        *,
        http: httpx.AsyncClient | None = None,
        max_retries: int = 3,
        max_wait_s: float = 60.0,
        user_agent: str = "DiscordBot (https://github.com/, 0.1) miku-discord",
        timeout_s: float = 30.0,
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self._token = token
        self._http = http
        self.max_retries = max_retries
        self.max_wait_s = max_wait_s
        self.user_agent = user_agent
        self.timeout_s = timeout_s

    @property
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bot {self._token}", "User-Agent": self.user_agent}

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        url = f"{self.api_base}{path}"
        try:
            if self._http is not None:
                return await self._http.request(method, url, headers=self._headers, timeout=self.timeout_s, **kw)
            async with httpx.AsyncClient() as client:
                return await client.request(method, url, headers=self._headers, timeout=self.timeout_s, **kw)
        except httpx.TimeoutException:
            raise DiscordUnavailable(f"Discord did not answer within {self.timeout_s:.0f} s at {self.api_base}") from None
        except httpx.HTTPError as exc:
            raise DiscordUnavailable(f"cannot reach Discord at {self.api_base}: {exc}") from None

    async def me(self) -> dict[str, Any]:
        """The bot user (``GET /users/@me``): the cheapest check that the token works."""
        r = await self._request("GET", "/users/@me")
        if r.status_code == 401:
            raise Unauthorized("Discord rejected the bot token (401); set MIKU_DISCORD_TOKEN to the token from the Developer Portal's Bot page", status_code=401)
        if r.status_code >= 400:
            raise UploadError(f"Discord answered {r.status_code} to GET /users/@me: {r.text[:200]}", status_code=r.status_code)
        return r.json()

    async def set_avatar(self, image: bytes) -> UploadResult:
        payload = {"avatar": data_uri(image)}
        waited = 0.0
        limits: list[dict[str, Any]] = []
        attempt = 0
        while True:
            attempt += 1
            r = await self._request("PATCH", "/users/@me", json=payload)
            if r.status_code == 200:
                return UploadResult(r.json(), attempt, waited, limits)
            body: Any
            try:
                body = r.json()
            except ValueError:
                body = None
            if r.status_code == 429:
                wait = retry_after_of(r)
                limits.append({"retry_after": wait, "bucket": r.headers.get("x-ratelimit-bucket"),
                               "global": bool(isinstance(body, dict) and body.get("global"))})
                if attempt > self.max_retries or waited + wait > self.max_wait_s:
                    raise RateLimited(
                        f"Discord rate limit: asked to wait {wait:.1f} s after {attempt} attempts "
                        f"({waited:.1f} s waited); the avatar is kept — apply it later with `mikubot pfp restore`",
                        status_code=429, retry_after=wait,
                    )
                log.info("Discord 429: waiting %.2f s (attempt %d)", wait, attempt)
                await asyncio.sleep(wait)
                waited += wait
                continue
            if r.status_code == 401:
                raise Unauthorized(
                    "Discord rejected the bot token (401 Unauthorized); set MIKU_DISCORD_TOKEN to the bot's token",
                    status_code=401,
                )
            codes = _avatar_error_codes(body)
            if any(code == "AVATAR_RATE_LIMIT" for code, _ in codes):
                message = next(m for c, m in codes if c == "AVATAR_RATE_LIMIT") or "You are changing your avatar too fast."
                raise AvatarRateLimited(
                    f"Discord: {message} Avatar changes are limited to a few per hour; the avatar is kept — "
                    "apply it later with `mikubot pfp restore`",
                    status_code=r.status_code,
                )
            if r.status_code >= 500 and attempt <= self.max_retries:
                delay = min(2.0 ** (attempt - 1), max(0.0, self.max_wait_s - waited))
                await asyncio.sleep(delay)
                waited += delay
                continue
            detail = "; ".join(f"{c}: {m}" for c, m in codes) or (body.get("message") if isinstance(body, dict) else r.text[:200])
            err = DiscordUnavailable if r.status_code >= 500 else UploadError
            raise err(f"Discord refused the avatar ({r.status_code}): {detail}", status_code=r.status_code)
