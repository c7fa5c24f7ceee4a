"""Every Discord REST call goes through discord.py; this module is where those calls start and where
their errors end.

Clients are plain ``discord.Client``s with discord.py's public options: ``http_trace`` (``AnswerLog``
records each answer) and ``max_ratelimit_timeout`` (``MIKU_UPLOAD_MAX_WAIT_S``). ``MIKU_DISCORD_API``
moves them to another base URL (the tests' emulator). discord.py builds each URL from the class attribute
``discord.http.Route.BASE`` (discord.py 2.7, ``discord/http.py``; its own API-version switch assigns that
attribute for the whole process) and offers no per-client base. So for another base only, ``at_api``
gives the client an ``EmulatorHTTP`` — discord.py's ``HTTPClient`` moving each route onto that base before
discord.py sends it — and ``DiscordWebhooks`` does the same for discord.py's webhook adapter
(``discord/webhook/async_.py``), which carries the interaction answers. One process can then hold a
client for discord.com and one for an emulator. discord.py keeps everything else: the token header,
the rate-limit buckets, the 429 waits (``retry_after``, with Discord's ``Via`` header telling a real
429 from a Cloudflare ban), the retries of 500/502/504.

``discord_errors`` is the one place where discord.py's and aiohttp's exceptions become ours: a
``DiscordError`` whose message says what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import discord
from discord.http import HTTPClient, Route
from discord.webhook.async_ import AsyncWebhookAdapter, async_context

from mikubot.config import Settings
from mikubot.errors import MikubotError

AVATAR_TOO_FAST = "changing your avatar too fast"


class DiscordError(MikubotError):
    """Discord did not do what we asked. ``retryable``: trying again later may work."""

    retryable = False

    def __init__(self, message: str, *, status_code: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.retry_after = retry_after


class Unauthorized(DiscordError):
    pass


class AvatarRateLimited(DiscordError):
    retryable = True


class RateLimited(DiscordError):
    retryable = True


class DiscordUnavailable(DiscordError):
    retryable = True


@contextlib.contextmanager
def discord_errors(api_base: str, what: str) -> Iterator[None]:
    """Turn what discord.py (or the network under it) raises while doing ``what`` into a DiscordError."""
    try:
        yield
    except discord.LoginFailure as exc:
        raise Unauthorized("Discord rejected the bot token (401 Unauthorized); set MIKU_DISCORD_TOKEN to the token "
                           "from the Developer Portal's Bot page", status_code=401) from exc
    except discord.RateLimited as exc:  # a 429 asking for longer than MIKU_UPLOAD_MAX_WAIT_S
        raise RateLimited(f"Discord rate limit: asked to wait {exc.retry_after:.1f} s for {what}, longer than "
                          "MIKU_UPLOAD_MAX_WAIT_S allows", status_code=429, retry_after=exc.retry_after) from exc
    except discord.HTTPException as exc:
        detail = " ".join(exc.text.split()) or "(no message)"
        if exc.status == 401:
            raise Unauthorized("Discord rejected the bot token (401 Unauthorized); set MIKU_DISCORD_TOKEN to the "
                               "bot's token", status_code=401) from exc
        if AVATAR_TOO_FAST in exc.text.lower():
            raise AvatarRateLimited(f"Discord: {detail} Avatar changes are limited to a few per hour",
                                    status_code=exc.status) from exc
        if exc.status == 429:  # a 429 without Discord's Via header: Cloudflare's, or retries ran out
            raise RateLimited(f"Discord rate limit on {what} (429): {detail}", status_code=429) from exc
        kind = DiscordUnavailable if exc.status >= 500 else DiscordError
        raise kind(f"Discord refused {what} ({exc.status}, code {exc.code}): {detail}", status_code=exc.status) from exc
    except discord.DiscordException as exc:  # e.g. an image type discord.py cannot send
        raise DiscordError(f"cannot send {what} to Discord: {exc}") from exc
    except ValueError as exc:  # discord.py's check of the avatar bytes ("Unsupported image type given")
        raise DiscordError(f"cannot send {what} to Discord: {exc}") from exc
    except TimeoutError as exc:
        raise DiscordUnavailable(f"Discord did not answer {what} in time at {api_base}") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise DiscordUnavailable(f"cannot reach Discord at {api_base}: {type(exc).__name__}") from exc


def rebase(url: str, api_base: str) -> str:
    """``url`` (built on discord.py's ``Route.BASE``) moved onto ``api_base``."""
    default = Route.BASE
    if api_base == default or not url.startswith(default):
        return url
    return api_base + url[len(default):]


class AnswerLog:
    """Each answer discord.py got (method, path, status and the rate-limit headers), read from its
    documented ``http_trace`` hook (``discord.Client(http_trace=…)``)."""

    def __init__(self) -> None:
        self.exchanges: list[dict[str, Any]] = []
        self.trace = aiohttp.TraceConfig()
        self.trace.on_request_end.append(self._record)

    async def _record(self, _session: Any, _ctx: Any, params: aiohttp.TraceRequestEndParams) -> None:
        h = params.response.headers
        wait = h.get("X-RateLimit-Reset-After") or h.get("Retry-After")
        self.exchanges.append({
            "method": params.method, "path": params.url.path, "status": params.response.status,
            "retry_after": float(wait) if params.response.status == 429 and wait else None,
            "bucket": h.get("X-RateLimit-Bucket"), "global": h.get("X-RateLimit-Global") == "true",
        })


class DiscordWebhooks(AsyncWebhookAdapter):
    """discord.py's webhook adapter (interaction callbacks, ``@original`` edits) at another base URL."""

    def __init__(self, api_base: str) -> None:
        super().__init__()
        self.api_base = api_base

    async def request(self, route: Route, session: aiohttp.ClientSession, **kwargs: Any) -> Any:
        route.url = rebase(route.url, self.api_base)
        return await super().request(route, session, **kwargs)


class EmulatorHTTP(HTTPClient):
    """discord.py's HTTP client at another base URL than Discord's (the tests' emulator). discord.py 2.7.1
    builds every URL from the process-wide ``Route.BASE`` and has no public per-client base: this subclass,
    and installing it (``at_api``), are the one place that reaches past discord.py's public API, and only
    when ``MIKU_DISCORD_API`` is not Discord's own. It keeps the client's own options (its ``http_trace``,
    its ``max_ratelimit_timeout``)."""

    def __init__(self, like: HTTPClient, *, api_base: str) -> None:
        super().__init__(like.loop, http_trace=like.http_trace, max_ratelimit_timeout=like.max_ratelimit_timeout)
        self.api_base = api_base.rstrip("/")
        self.webhooks = DiscordWebhooks(self.api_base)

    async def request(self, route: Route, **kwargs: Any) -> Any:
        route.url = rebase(route.url, self.api_base)
        return await super().request(route, **kwargs)


def at_api(client: discord.Client, api_base: str) -> None:
    """Send a discord.py client's requests (before it logs in) to ``api_base``: nothing to do for Discord's
    own; for another (the emulator) its HTTP client becomes an ``EmulatorHTTP``. ``ConnectionState`` holds
    its own reference to the HTTP client, so both are set."""
    if api_base.rstrip("/") == Route.BASE:
        return
    http = EmulatorHTTP(client.http, api_base=api_base)
    client.http = http
    client._connection.http = http


def api_base_of(client: discord.Client) -> str:
    """Where a client's requests go (for messages)."""
    return getattr(client.http, "api_base", Route.BASE)


@contextlib.contextmanager
def webhooks_of(client: discord.Client) -> Iterator[None]:
    """Send the interaction answers made inside this block to ``client``'s base URL. discord.py picks its
    webhook adapter from a context variable and has no public way to move it: only a client at another
    base (``EmulatorHTTP``) needs this; Discord's own is left alone."""
    adapter = getattr(client.http, "webhooks", None)
    if adapter is None:
        yield
        return
    token = async_context.set(adapter)
    try:
        yield
    finally:
        async_context.reset(token)


@dataclass
class RestSession:
    """A logged-in discord.py client without a gateway: ``Client.login`` checks the token (``GET
    /users/@me``, ``GET /oauth2/applications/@me``) and every REST call of the client then works.
    ``answers``: what Discord answered each request."""

    client: discord.Client
    answers: AnswerLog
    api_base: str


@contextlib.asynccontextmanager
async def rest_session(settings: Settings, *, max_wait_s: float | None = None,
                       login_timeout_s: float | None = None) -> AsyncIterator[RestSession]:
    if settings.discord_token is None:
        raise Unauthorized("no Discord bot token configured (MIKU_DISCORD_TOKEN)")
    base = settings.discord_api
    answers = AnswerLog()
    client = discord.Client(intents=discord.Intents(guilds=True),  # no gateway: intents ask for nothing
                            http_trace=answers.trace, max_ratelimit_timeout=max_wait_s)
    at_api(client, base)
    try:
        with discord_errors(base, "the login"):
            async with asyncio.timeout(login_timeout_s):
                await client.login(settings.discord_token.get_secret_value())
        yield RestSession(client, answers, base)
    finally:
        await client.close()
