"""A Discord REST emulator: the routes the bot calls, spoken like Discord so discord.py itself works
against it (the tests drive it with discord.py 2.7's own HTTP client and webhook adapter).

Written from Discord's API documentation (discord/discord-api-docs: Topics › Rate Limits, Topics ›
OAuth2 "Get Current Bot Application Information", Reference › Image Data, Resources › User "Modify
Current User", Resources › Message, Interactions › Receiving and Responding) and from what discord.py
2.7 reads (``discord/http.py`` ``HTTPClient.request`` and ``static_login``,
``discord/webhook/async_.py`` ``AsyncWebhookAdapter.request``, ``discord/client.py`` ``Client.login``):

- Every answer carries ``Via: 1.1 google`` as Discord's do. discord.py takes a 429 *without* ``Via``
  for a Cloudflare ban and raises instead of waiting, so the header decides whether it retries.
- ``PATCH /users/@me``: ``Authorization: Bot <token>`` or 401 ``{"message": "401: Unauthorized",
  "code": 0}``; the ``avatar`` data URI (JPG, GIF or PNG as Reference › Image Data lists, decodable, at most 10 MiB) or 400 code
  50035 with nested form errors (``IMAGE_INVALID``, ``BINARY_TYPE_MAX_SIZE``, ``AVATAR_RATE_LIMIT``
  "You are changing your avatar too fast"); then the user object. The ``banner`` field (Resources › User
  "Modify Current User": a profile banner, ``null`` removes it) is checked the same way — a data URI of
  JPG, GIF or PNG (the same Image Data list), decodable, at most 10 MiB — in the same form: a bad avatar or banner is one
  50035 naming each bad field, and neither is kept; the user object then carries the banner's hash, as
  discord.py's ``ClientUser.banner`` (``discord/user.py``) reads it. The route's bucket sends
  ``X-RateLimit-Limit/-Remaining/-Reset/-Reset-After/-Bucket``; spent, a 429 with those,
  ``X-RateLimit-Scope: user``, ``Retry-After`` and ``{"message": "You are being rate limited.",
  "retry_after": s, "global": false}``. ``GET /users/@me`` and ``GET /oauth2/applications/@me`` are
  what ``Client.login`` asks; ``PUT /applications/{app}[/guilds/{g}]/commands`` registers the slash
  commands (``CommandTree.sync``).
- ``PATCH /guilds/{guild_id}/members/@me`` (Resources › Guild "Modify Current Member": ``avatar`` and
  ``banner`` data URIs, ``bio``; what discord.py 2.7 sends from ``Member.edit`` through
  ``HTTPClient.edit_my_member``): 401 without the bot token; 404 code 10004 "Unknown Guild" for a
  server Discord does not know, 403 code 50001 "Missing Access" for one the bot is not in; each image
  checked as the profile's above (``IMAGE_INVALID``, ``BINARY_TYPE_MAX_SIZE``; every bad field in one
  50035); a ``bio`` over
  ``max_bio_chars`` (400; the route's documentation gives no number, independent clients such as
  twilight-http enforce 1..400 codepoints) is 50035 ``BASE_TYPE_MAX_LENGTH``. The route has its own
  bucket per server (its major parameter), with the same headers and 429s as the avatar's; the answer is
  the guild member object. Each server's member state (avatar and banner hashes, bio) is in
  ``guild_members`` and on ``/_emulator/state``.
- ``POST /channels/{id}/messages`` (JSON, or multipart ``payload_json`` + ``files[n]`` declared in
  ``attachments``), ``PATCH /guilds/{g}/roles/{r}`` (Resources › Guild "Modify Guild Role": ``colors``
  with ``primary_color``, which discord.py 2.7.1's ``Role.edit`` sends, or the deprecated ``color``; a
  role the server lacks is 404 code 10011), answered with Discord's message and role objects (a role
  carries ``colors`` and ``color``).
- ``GET /guilds/{id}`` (the guild object with its roles: ``known_roles``) and ``GET
  /guilds/{id}/members/{user}`` (the bot's own member; others 404 code 10007), as discord.py's
  ``Client.fetch_guild`` and ``Guild.fetch_member`` read them; a server the bot is not in: 403/404 as
  above. The per-server route also has Discord's avatar limit: ``member_avatar_changes_allowed`` changes
  per ``avatar_window_s``, then 50035 ``AVATAR_RATE_LIMIT``.
- Interactions: ``POST /interactions/{id}/{token}/callback`` once per interaction (a second: 400 code
  40060 "Interaction has already been acknowledged."), 204 or, with ``?with_response=true``, 200 and
  the interaction callback response; ``PATCH /webhooks/{app}/{token}/messages/@original`` (404 code
  10015 "Unknown Webhook" before a callback) and ``POST /webhooks/{app}/{token}`` (a followup). The
  token in the URL is the credential; no bot token is needed. All are kept in ``messages``, ``roles``
  and ``interactions`` for assertions.

The control handle switches misbehaviour on (forced 429s, 5xx, delays, avatar-change limit) and keeps
every accepted avatar for assertions. It is shared with the test in-process, and also reachable over
HTTP under ``/_emulator/`` for a server run in another process.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import itertools
import json
import math
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image

DATA_URI = re.compile(r"^data:(image/[a-z]+);base64,(.*)$", re.S)  # Reference › Image Data
PIL_FORMAT = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/gif": "GIF"}
# Reference › Image Data: "a Data URI scheme that supports JPG, GIF, and PNG formats", for every image field.
IMAGE_DATA_MIMES = frozenset({"image/png", "image/jpeg", "image/jpg", "image/gif"})
VIA = {"Via": "1.1 google"}  # on every Discord answer; discord.py retries a 429 only when it is there
APPLICATION_ID = "777"


@dataclass
class UploadedAvatar:
    data: bytes
    mime: str
    width: int
    height: int
    format: str
    t: float
    avatar_hash: str


@dataclass
class DiscordControl:
    token: str = "test-token"
    user_id: str = "1122334455667788"
    username: str = "Miku"
    # The PATCH /users/@me bucket: ``bucket_limit`` requests per ``bucket_window_s``.
    bucket_limit: int = 2
    bucket_window_s: float = 1.0
    # Discord's separate, stricter avatar limit: after this many changes in ``avatar_window_s`` -> 50035.
    avatar_changes_allowed: int | None = None
    avatar_window_s: float = 600.0
    max_avatar_bytes: int = 10 * 1024 * 1024
    max_banner_bytes: int = 10 * 1024 * 1024
    # Misbehaviour: the next ``force_429`` PATCHes get 429 with ``retry_after_s``; the next
    # ``force_status_count`` requests get ``force_status``; every request waits ``delay_s`` first.
    force_429: int = 0
    retry_after_s: float = 0.25
    global_429: bool = False  # the forced 429s are the global limit (``X-RateLimit-Global``) instead of the route's
    send_via: bool = True  # False: answer without Discord's ``Via`` header, as a Cloudflare edge would
    force_status: int = 500
    force_status_count: int = 0
    delay_s: float = 0.0
    avatar_delay_s: float = 0.0  # the avatar PATCH alone takes this long (Discord resizing the image)
    uploads: list[UploadedAvatar] = field(default_factory=list)
    banners: list[UploadedAvatar] = field(default_factory=list)  # every accepted banner, in order
    banner_removed: bool = False  # the last banner change was ``"banner": null``
    requests: list[dict[str, Any]] = field(default_factory=list)
    # The bot's other calls: channel messages (with their files), role edits, and interaction answers
    # (callbacks and edits of the original response, keyed by interaction token).
    messages: list[dict[str, Any]] = field(default_factory=list)
    roles: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (guild, role) -> edited role
    known_roles: dict[str, set[str]] = field(default_factory=lambda: {"99": {"555"}})  # each server's roles but @everyone
    interactions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    known_channels: set[str] | None = None  # None: every channel exists
    commands: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # registered, by guild id ("" global)
    # Servers: the bot is a member of ``member_guilds``; ``other_guilds`` exist without it (403); any other id
    # is unknown (404). ``guild_members``: the bot's own member state per server, ``guild_uploads`` each image.
    member_guilds: set[str] = field(default_factory=lambda: {"99"})
    other_guilds: set[str] = field(default_factory=set)
    guild_members: dict[str, dict[str, Any]] = field(default_factory=dict)
    guild_uploads: list[tuple[str, str, UploadedAvatar]] = field(default_factory=list)  # (guild, field, image)
    max_bio_chars: int = 400
    # Discord's avatar limit on the per-server route too: after this many changes of one server's avatar in
    # ``avatar_window_s`` -> 50035 AVATAR_RATE_LIMIT (None: no limit).
    member_avatar_changes_allowed: int | None = None
    _member_avatar_times: dict[str, list[float]] = field(default_factory=dict)
    _member_buckets: dict[str, list[float]] = field(default_factory=dict)  # guild -> [window start, used]
    _bucket_start: float = 0.0
    _bucket_used: int = 0
    _avatar_times: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def avatar_hash(self) -> str | None:
        return self.uploads[-1].avatar_hash if self.uploads else None

    @property
    def banner_hash(self) -> str | None:
        return self.banners[-1].avatar_hash if self.banners and not self.banner_removed else None

    def user(self) -> dict[str, Any]:
        return {
            "id": self.user_id, "username": self.username, "global_name": None, "discriminator": "0",
            "avatar": self.avatar_hash, "banner": self.banner_hash, "accent_color": None, "bot": True, "verified": True, "mfa_enabled": False,
            "flags": 0, "public_flags": 0, "locale": "en-US", "email": None,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "uploads": len(self.uploads), "avatar": self.avatar_hash, "banners": len(self.banners),
            "banner": self.banner_hash, "requests": self.requests[-50:],
            "force_429": self.force_429, "force_status_count": self.force_status_count,
            "member_guilds": sorted(self.member_guilds), "guild_members": self.guild_members,
        }

    def role(self, guild_id: str, role_id: str) -> dict[str, Any]:
        """A role object (Resources › Guild › Role Object; ``colors`` since 2025, ``color`` deprecated but
        still sent, equal to ``colors.primary_color``)."""
        edited = self.roles.get((guild_id, role_id), {})
        colour = int(edited.get("color", 0))
        return {
            "id": role_id, "name": "@everyone" if role_id == guild_id else edited.get("name", "miku"),
            "color": colour, "colors": {"primary_color": colour, "secondary_color": None, "tertiary_color": None},
            "hoist": False, "icon": None, "unicode_emoji": None, "position": 0 if role_id == guild_id else 1,
            "permissions": "0", "managed": False, "mentionable": False, "flags": 0,
        }

    def guild(self, guild_id: str) -> dict[str, Any]:
        """The guild object ``GET /guilds/{id}`` answers (Resources › Guild › Guild Object), with its roles."""
        role_ids = [guild_id, *sorted(self.known_roles.get(guild_id, set()))]
        return {
            "id": guild_id, "name": f"server {guild_id}", "icon": None, "splash": None, "discovery_splash": None,
            "owner_id": "1", "afk_channel_id": None, "afk_timeout": 300, "verification_level": 0,
            "default_message_notifications": 0, "explicit_content_filter": 0,
            "roles": [self.role(guild_id, r) for r in role_ids], "emojis": [], "stickers": [], "features": [],
            "mfa_level": 0, "application_id": None, "system_channel_id": None, "system_channel_flags": 0,
            "rules_channel_id": None, "vanity_url_code": None, "description": None, "banner": None,
            "premium_tier": 0, "premium_subscription_count": 0, "preferred_locale": "en-US",
            "public_updates_channel_id": None, "nsfw_level": 0, "premium_progress_bar_enabled": False,
            "approximate_member_count": 2, "approximate_presence_count": 1,
        }

    def member(self, guild_id: str) -> dict[str, Any]:
        """The bot's guild member object in ``guild_id`` (Resources › Guild › Guild Member Object)."""
        state = self.guild_members.get(guild_id, {})
        return {
            "user": self.user(), "nick": None, "avatar": state.get("avatar"), "banner": state.get("banner"),
            "bio": state.get("bio", ""), "roles": [], "joined_at": "2024-01-01T00:00:00.000000+00:00",
            "premium_since": None, "deaf": False, "mute": False, "flags": 0, "pending": False,
            "communication_disabled_until": None,
        }


def _form_error(field_name: str, code: str, message: str) -> JSONResponse:
    return _form_errors({field_name: (code, message)})


def _form_errors(errors: dict[str, tuple[str, str]]) -> JSONResponse:
    """Discord's 400 code 50035 "Invalid Form Body", each bad field with its error code and message."""
    return JSONResponse(
        {"code": 50035, "errors": {name: {"_errors": [{"code": code, "message": message}]}
                                   for name, (code, message) in errors.items()}, "message": "Invalid Form Body"},
        status_code=400,
    )


def decode_image(value: Any, mimes: frozenset[str], max_bytes: int) -> UploadedAvatar | tuple[str, str]:
    """An image field of ``PATCH /users/@me`` (Reference › Image Data): a base64 data URI of one of
    ``mimes`` whose bytes decode as that format, at most ``max_bytes``; else Discord's error code and message."""
    invalid = ("IMAGE_INVALID", "Invalid image data")
    m = DATA_URI.match(value) if isinstance(value, str) else None
    if not m or m.group(1) not in mimes:
        return invalid
    mime, payload = m.group(1), m.group(2)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return invalid
    if len(data) > max_bytes:
        return ("BINARY_TYPE_MAX_SIZE", f"File cannot be larger than {max_bytes // 1024} kb.")
    try:
        with Image.open(io.BytesIO(data), formats=[PIL_FORMAT[mime]]) as im:
            im.load()
            fmt, (w, h) = im.format or "", im.size
    except Exception:  # noqa: BLE001 - any decoder failure is "invalid image" to Discord
        return invalid
    return UploadedAvatar(data, mime, w, h, fmt, time.time(), hashlib.md5(data).hexdigest())


def _is_true(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true")


def create_app(control: DiscordControl | None = None, **options: Any) -> tuple[FastAPI, DiscordControl]:
    """A Discord REST emulator app and its control handle (``options`` set DiscordControl fields)."""
    ctl = control or DiscordControl(**options)
    message_ids = itertools.count(1_000_000_000_000)
    app = FastAPI(title="Discord REST emulator")
    app.state.control = ctl

    @app.middleware("http")
    async def via(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        if ctl.send_via and not request.url.path.startswith("/_emulator/"):
            response.headers.update(VIA)
        return response

    def authorised(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bot {ctl.token}"

    def bucket_headers(remaining: int, reset_after: float, bucket: str = "b3a0f4c1e2d5users@me") -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(ctl.bucket_limit),
            "X-RateLimit-Remaining": str(max(0, remaining)),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": bucket,
        }

    def rate_limited(retry_after: float, headers: dict[str, str], *, is_global: bool = False) -> JSONResponse:
        """Discord's 429 (Topics › Rate Limits): the body's ``retry_after`` in seconds with a fraction,
        ``Retry-After`` whole seconds; a global one has ``X-RateLimit-Global`` and no route bucket."""
        if is_global:
            headers = {"X-RateLimit-Global": "true", "X-RateLimit-Scope": "global"}
        else:
            headers = {**headers, "X-RateLimit-Scope": "user"}
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
        return JSONResponse(
            {"message": "You are being rate limited.", "retry_after": round(retry_after, 3), "global": is_global},
            status_code=429, headers=headers,
        )

    async def misbehave(request: Request) -> JSONResponse | None:
        # The forced error is taken on arrival, before any delay, so a request an earlier slow test left
        # sleeping here cannot consume the errors the next test queues.
        forced = None
        with ctl.lock:
            if ctl.force_status_count > 0:
                ctl.force_status_count -= 1
                forced = ctl.force_status
        if ctl.delay_s:
            await asyncio.sleep(ctl.delay_s)
        if forced is not None:
            return JSONResponse({"message": "Internal Server Error", "code": 0}, status_code=forced)
        return None

    def log(request: Request, status: int) -> None:
        ctl.requests.append({"method": request.method, "path": request.url.path, "status": status, "t": time.time()})

    async def refuse(request: Request) -> JSONResponse | None:
        """What every bot-authenticated route answers first: a forced failure, or 401 without the bot token."""
        bad = await misbehave(request)
        if bad is None and not authorised(request):
            bad = JSONResponse({"message": "401: Unauthorized", "code": 0}, status_code=401)
        if bad is not None:
            log(request, bad.status_code)
        return bad

    def guild_access(request: Request, guild_id: str) -> JSONResponse | None:
        """A server the bot is not in: 403 code 50001 "Missing Access"; one Discord does not know: 404 10004."""
        if guild_id in ctl.member_guilds:
            return None
        known = guild_id in ctl.other_guilds
        log(request, 403 if known else 404)
        return (JSONResponse({"message": "Missing Access", "code": 50001}, status_code=403) if known
                else JSONResponse({"message": "Unknown Guild", "code": 10004}, status_code=404))

    @app.get("/api/v10/users/@me")
    async def get_me(request: Request) -> JSONResponse:
        refused = await refuse(request)
        if refused is not None:
            return refused
        log(request, 200)
        return JSONResponse(ctl.user())

    @app.get("/api/v10/oauth2/applications/@me")
    async def get_application(request: Request) -> JSONResponse:
        refused = await refuse(request)
        if refused is not None:
            return refused
        log(request, 200)
        return JSONResponse({
            "id": APPLICATION_ID, "name": ctl.username, "icon": None, "description": "", "bot_public": False,
            "bot_require_code_grant": False, "verify_key": "0" * 64, "flags": 0, "team": None,
            "owner": {"id": "1", "username": "owner", "discriminator": "0", "avatar": None, "global_name": None},
        })

    async def overwrite_commands(request: Request, application_id: str, guild_id: str | None) -> JSONResponse:
        """Bulk Overwrite (Global|Guild) Application Commands: the list back, each with Discord's ids."""
        refused = await refuse(request)
        if refused is not None:
            return refused
        if application_id != APPLICATION_ID:
            log(request, 403)
            return JSONResponse({"message": "Missing Access", "code": 50001}, status_code=403)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, list) or not all(isinstance(c, dict) and c.get("name") for c in body):
            log(request, 400)
            return JSONResponse({"message": "Invalid Form Body", "code": 50035}, status_code=400)
        ctl.commands[guild_id or ""] = body
        answer = [{**c, "id": str(5_000 + i), "application_id": APPLICATION_ID, "version": "1", "type": c.get("type", 1),
                   **({"guild_id": guild_id} if guild_id else {})} for i, c in enumerate(body)]
        log(request, 200)
        return JSONResponse(answer)

    @app.put("/api/v10/applications/{application_id}/commands")
    async def overwrite_global_commands(application_id: str, request: Request) -> JSONResponse:
        return await overwrite_commands(request, application_id, None)

    @app.put("/api/v10/applications/{application_id}/guilds/{guild_id}/commands")
    async def overwrite_guild_commands(application_id: str, guild_id: str, request: Request) -> JSONResponse:
        return await overwrite_commands(request, application_id, guild_id)

    @app.patch("/api/v10/users/@me")
    async def patch_me(request: Request) -> JSONResponse:
        refused = await refuse(request)
        if refused is not None:
            return refused
        if ctl.avatar_delay_s:
            await asyncio.sleep(ctl.avatar_delay_s)
        now = time.monotonic()
        with ctl.lock:
            if now - ctl._bucket_start >= ctl.bucket_window_s:
                ctl._bucket_start, ctl._bucket_used = now, 0
            reset_after = max(0.0, ctl.bucket_window_s - (now - ctl._bucket_start))
            if ctl.force_429 > 0:
                ctl.force_429 -= 1
                log(request, 429)
                return rate_limited(ctl.retry_after_s, bucket_headers(0, ctl.retry_after_s), is_global=ctl.global_429)
            if ctl._bucket_used >= ctl.bucket_limit:
                log(request, 429)
                return rate_limited(reset_after, bucket_headers(0, reset_after))
            ctl._bucket_used += 1
            headers = bucket_headers(ctl.bucket_limit - ctl._bucket_used, reset_after)
        try:
            body = await request.json()
        except ValueError:
            log(request, 400)
            return JSONResponse({"message": "400: Bad Request", "code": 0}, status_code=400, headers=headers)
        if not isinstance(body, dict):
            log(request, 400)
            return JSONResponse({"message": "400: Bad Request", "code": 0}, status_code=400, headers=headers)
        avatar, banner = body.get("avatar", ...), body.get("banner", ...)
        if avatar is ... and banner is ...:
            log(request, 200)
            return JSONResponse(ctl.user(), headers=headers)
        # The form is checked as a whole: every bad field is named in one 50035, and nothing is kept.
        errors: dict[str, tuple[str, str]] = {}
        new_avatar = new_banner = None
        if avatar is not ...:
            got = decode_image(avatar, IMAGE_DATA_MIMES, ctl.max_avatar_bytes)
            if isinstance(got, UploadedAvatar):
                new_avatar = got
            else:
                errors["avatar"] = got
        if banner is not ... and banner is not None:  # null removes the banner
            got = decode_image(banner, IMAGE_DATA_MIMES, ctl.max_banner_bytes)
            if isinstance(got, UploadedAvatar):
                new_banner = got
            else:
                errors["banner"] = got
        if errors:
            log(request, 400)
            return _form_errors(errors)
        with ctl.lock:
            if new_avatar is not None:
                ctl._avatar_times = [t for t in ctl._avatar_times if now - t < ctl.avatar_window_s]
                if ctl.avatar_changes_allowed is not None and len(ctl._avatar_times) >= ctl.avatar_changes_allowed:
                    log(request, 400)
                    return _form_error("avatar", "AVATAR_RATE_LIMIT", "You are changing your avatar too fast. Try again later.")
                ctl._avatar_times.append(now)
                ctl.uploads.append(new_avatar)
            if new_banner is not None:
                ctl.banners.append(new_banner)
                ctl.banner_removed = False
            elif banner is None:
                ctl.banner_removed = True
        log(request, 200)
        return JSONResponse(ctl.user(), headers=headers)

    @app.patch("/api/v10/guilds/{guild_id}/members/@me")
    async def patch_my_member(guild_id: str, request: Request) -> JSONResponse:
        refused = await refuse(request) or guild_access(request, guild_id)
        if refused is not None:
            return refused
        now = time.monotonic()
        with ctl.lock:  # the route's bucket, one per server (guild_id is its major parameter)
            window = ctl._member_buckets.setdefault(guild_id, [now, 0])
            if now - window[0] >= ctl.bucket_window_s:
                window[:] = [now, 0]
            reset_after = max(0.0, ctl.bucket_window_s - (now - window[0]))
            bucket = f"c4b1e5d2f3a6guild{guild_id}members@me"
            if ctl.force_429 > 0:
                ctl.force_429 -= 1
                log(request, 429)
                return rate_limited(ctl.retry_after_s, bucket_headers(0, ctl.retry_after_s, bucket), is_global=ctl.global_429)
            if window[1] >= ctl.bucket_limit:
                log(request, 429)
                return rate_limited(reset_after, bucket_headers(0, reset_after, bucket))
            window[1] += 1
            headers = bucket_headers(ctl.bucket_limit - int(window[1]), reset_after, bucket)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            log(request, 400)
            return JSONResponse({"message": "400: Bad Request", "code": 0}, status_code=400, headers=headers)
        changes: dict[str, Any] = {}
        images: list[tuple[str, UploadedAvatar]] = []
        errors: dict[str, tuple[str, str]] = {}  # one 50035 names every bad field; nothing is kept then
        for name, mimes, max_bytes in (("avatar", IMAGE_DATA_MIMES, ctl.max_avatar_bytes),
                                       ("banner", IMAGE_DATA_MIMES, ctl.max_banner_bytes)):
            if name not in body:
                continue
            if body[name] is None:  # null removes the server's own image (the global one shows again)
                changes[name] = None
                continue
            got = decode_image(body[name], mimes, max_bytes)
            if isinstance(got, tuple):
                errors[name] = got
                continue
            changes[name] = got.avatar_hash
            images.append((name, got))
        if "bio" in body:
            bio = body["bio"]
            if bio is not None and not isinstance(bio, str):
                errors["bio"] = ("BASE_TYPE_BAD_TYPE", "Must be a string.")
            elif bio is not None and len(bio) > ctl.max_bio_chars:
                errors["bio"] = ("BASE_TYPE_MAX_LENGTH", f"Must be {ctl.max_bio_chars} or fewer in length.")
            else:
                changes["bio"] = bio or ""
        if errors:
            log(request, 400)
            return _form_errors(errors)
        with ctl.lock:
            if changes.get("avatar") is not None and ctl.member_avatar_changes_allowed is not None:
                times = [t for t in ctl._member_avatar_times.get(guild_id, []) if now - t < ctl.avatar_window_s]
                if len(times) >= ctl.member_avatar_changes_allowed:
                    log(request, 400)
                    return _form_error("avatar", "AVATAR_RATE_LIMIT", "You are changing your avatar too fast. Try again later.")
                ctl._member_avatar_times[guild_id] = times + [now]
            ctl.guild_members.setdefault(guild_id, {}).update(changes)
            ctl.guild_uploads.extend((guild_id, name, image) for name, image in images)
        log(request, 200)
        return JSONResponse(ctl.member(guild_id), headers=headers)

    async def message_body(request: Request, *, allow_empty: bool = False
                           ) -> tuple[dict[str, Any], list[dict[str, Any]]] | JSONResponse:
        """A JSON body, or Discord's multipart form (``payload_json`` + ``files[n]``) with its files."""
        ctype = request.headers.get("content-type", "")
        files: list[dict[str, Any]] = []
        if ctype.startswith("multipart/form-data"):
            form = await request.form()
            raw = form.get("payload_json")
            if not isinstance(raw, str):
                return JSONResponse({"message": "Cannot send an empty message", "code": 50006}, status_code=400)
            try:
                payload = json.loads(raw)
            except ValueError:
                return JSONResponse({"message": "400: Bad Request", "code": 0}, status_code=400)
            if not isinstance(payload, dict):
                return JSONResponse({"message": "400: Bad Request", "code": 0}, status_code=400)
            for key, value in form.multi_items():
                if key.startswith("files[") and hasattr(value, "read"):
                    files.append({"field": key, "filename": value.filename, "data": await value.read()})
            inner = payload.get("data") if isinstance(payload.get("data"), dict) else payload  # a callback's message
            declared = {a.get("filename") for a in inner.get("attachments", []) if isinstance(a, dict)}
            if any(f["filename"] not in declared for f in files):
                return _form_error("attachments", "ATTACHMENT_NOT_DECLARED", "Every file needs an entry in attachments")
        else:
            try:
                payload = await request.json()
            except ValueError:
                return JSONResponse({"message": "400: Bad Request", "code": 0}, status_code=400)
        if not isinstance(payload, dict):
            return JSONResponse({"message": "400: Bad Request", "code": 0}, status_code=400)
        content = payload.get("content") or ""
        if len(content) > 2000:
            return _form_error("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
        if not allow_empty and not content and not files and not payload.get("embeds"):
            return JSONResponse({"message": "Cannot send an empty message", "code": 50006}, status_code=400)
        return payload, files

    def message_object(channel_id: str, payload: dict[str, Any], files: list[dict[str, Any]]) -> dict[str, Any]:
        """Discord's message object (Resources › Message), as discord.py's ``Message`` reads it."""
        mid = str(next(message_ids))
        return {
            "id": mid, "channel_id": channel_id, "type": 0, "content": payload.get("content") or "",
            "author": {"id": ctl.user_id, "username": ctl.username, "discriminator": "0", "avatar": ctl.avatar_hash,
                       "global_name": None, "bot": True},
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00", time.gmtime()), "edited_timestamp": None,
            "tts": False, "mention_everyone": False, "mentions": [], "mention_roles": [], "pinned": False,
            "embeds": payload.get("embeds") or [], "flags": int(payload.get("flags") or 0), "components": [],
            "attachments": [{"id": str(i), "filename": f["filename"], "size": len(f["data"]),
                             "url": f"https://cdn.discordapp.com/attachments/{channel_id}/{mid}/{f['filename']}",
                             "proxy_url": f"https://media.discordapp.net/attachments/{channel_id}/{mid}/{f['filename']}"}
                            for i, f in enumerate(files)],
        }

    @app.post("/api/v10/channels/{channel_id}/messages")
    async def create_message(channel_id: str, request: Request) -> JSONResponse:
        refused = await refuse(request)
        if refused is not None:
            return refused
        if ctl.known_channels is not None and channel_id not in ctl.known_channels:
            log(request, 404)
            return JSONResponse({"message": "Unknown Channel", "code": 10003}, status_code=404)
        parsed = await message_body(request)
        if isinstance(parsed, JSONResponse):
            log(request, parsed.status_code)
            return parsed
        payload, files = parsed
        msg = message_object(channel_id, payload, files)
        ctl.messages.append({**msg, "files": files})
        log(request, 200)
        return JSONResponse(msg)

    @app.patch("/api/v10/guilds/{guild_id}/roles/{role_id}")
    async def modify_role(guild_id: str, role_id: str, request: Request) -> JSONResponse:
        refused = await refuse(request)
        if refused is not None:
            return refused
        try:
            body = await request.json()
        except ValueError:
            body = None
        if guild_id not in ctl.member_guilds or (role_id != guild_id and role_id not in ctl.known_roles.get(guild_id, set())):
            log(request, 404)
            return JSONResponse({"message": "Unknown Role", "code": 10011}, status_code=404)
        # Modify Guild Role: ``colors`` (``primary_color``, what discord.py 2.7's Role.edit sends) or the
        # deprecated ``color``; both are taken, as Discord takes both.
        colors = body.get("colors") if isinstance(body, dict) else None
        if isinstance(colors, dict):
            name, colour = "colors.primary_color", colors.get("primary_color")
        else:
            name, colour = "color", body.get("color") if isinstance(body, dict) else None
        if not isinstance(colour, int) or isinstance(colour, bool) or not 0 <= colour <= 0xFFFFFF:
            log(request, 400)
            return _form_error(name, "NUMBER_TYPE_MAX", f"{name} must be an integer 0..16777215")
        with ctl.lock:
            ctl.roles.setdefault((guild_id, role_id), {"id": role_id, "name": "miku"})["color"] = colour
            ctl.roles[(guild_id, role_id)]["sent"] = name
        log(request, 200)
        return JSONResponse(ctl.role(guild_id, role_id))

    @app.get("/api/v10/guilds/{guild_id}")
    async def get_guild(guild_id: str, request: Request) -> JSONResponse:
        refused = await refuse(request) or guild_access(request, guild_id)
        if refused is not None:
            return refused
        log(request, 200)
        return JSONResponse(ctl.guild(guild_id))

    @app.get("/api/v10/guilds/{guild_id}/members/{user_id}")
    async def get_member(guild_id: str, user_id: str, request: Request) -> JSONResponse:
        refused = await refuse(request) or guild_access(request, guild_id)
        if refused is not None:
            return refused
        if user_id != ctl.user_id:  # the emulator's servers know only the bot itself
            log(request, 404)
            return JSONResponse({"message": "Unknown Member", "code": 10007}, status_code=404)
        log(request, 200)
        return JSONResponse(ctl.member(guild_id))

    @app.post("/api/v10/interactions/{interaction_id}/{token}/callback")
    async def interaction_callback(interaction_id: str, token: str, request: Request) -> Response:
        bad = await misbehave(request)
        if bad is not None:
            log(request, bad.status_code)
            return bad
        parsed = await message_body(request, allow_empty=True)
        if isinstance(parsed, JSONResponse):
            log(request, parsed.status_code)
            return parsed
        body, files = parsed
        if body.get("type") not in (1, 4, 5, 6, 7, 9):
            log(request, 400)
            return _form_error("type", "BASE_TYPE_CHOICES", "Value must be one of (1, 4, 5, 6, 7, 9).")
        data = body.get("data") or {}
        if body["type"] == 4 and not (data.get("content") or data.get("embeds") or files):
            log(request, 400)
            return JSONResponse({"message": "Cannot send an empty message", "code": 50006}, status_code=400)
        answers = ctl.interactions.setdefault(token, [])
        if any(a["kind"] == "callback" for a in answers):
            log(request, 400)
            return JSONResponse({"message": "Interaction has already been acknowledged.", "code": 40060}, status_code=400)
        answers.append({"kind": "callback", "type": body["type"], "data": data, "files": files, "t": time.time()})
        log(request, 200)
        if not _is_true(request.query_params.get("with_response")):
            return Response(status_code=204)
        flags = int(data.get("flags") or 0)
        message = message_object("0", data, files) if body["type"] == 4 else None
        resource: dict[str, Any] = {"type": body["type"]}
        if message is not None:
            resource["message"] = message
        return JSONResponse({
            "interaction": {"id": interaction_id, "type": 2, "response_message_id": message and message["id"],
                            "response_message_loading": body["type"] == 5, "response_message_ephemeral": bool(flags & 64)},
            "resource": resource,
        })

    def acknowledged(token: str) -> list[dict[str, Any]] | None:
        answers = ctl.interactions.get(token)
        return answers if answers and any(a["kind"] == "callback" for a in answers) else None

    async def webhook_answer(kind: str, application_id: str, token: str, request: Request) -> JSONResponse:
        """An interaction's later answer (an edit of the original, or a followup): only after a callback."""
        answers = acknowledged(token)
        if answers is None or application_id != APPLICATION_ID:
            log(request, 404)
            return JSONResponse({"message": "Unknown Webhook", "code": 10015}, status_code=404)
        parsed = await message_body(request)
        if isinstance(parsed, JSONResponse):
            log(request, parsed.status_code)
            return parsed
        payload, files = parsed
        answers.append({"kind": kind, "content": payload.get("content") or "", "files": files, "t": time.time()})
        log(request, 200)
        return JSONResponse(message_object("0", payload, files))

    @app.patch("/api/v10/webhooks/{application_id}/{token}/messages/@original")
    async def edit_original(application_id: str, token: str, request: Request) -> JSONResponse:
        return await webhook_answer("edit", application_id, token, request)

    @app.post("/api/v10/webhooks/{application_id}/{token}")
    async def followup(application_id: str, token: str, request: Request) -> JSONResponse:
        return await webhook_answer("followup", application_id, token, request)

    @app.get("/_emulator/state")
    async def state() -> dict[str, Any]:
        return ctl.to_json()

    @app.post("/_emulator/configure")
    async def configure(request: Request) -> dict[str, Any]:
        changes = await request.json()
        allowed = {"force_429", "retry_after_s", "global_429", "send_via", "force_status", "force_status_count", "delay_s",
                   "avatar_delay_s",
                   "avatar_changes_allowed", "bucket_limit", "bucket_window_s", "max_avatar_bytes", "max_banner_bytes",
                   "max_bio_chars", "member_avatar_changes_allowed"}
        for k, v in changes.items():
            if k in allowed:
                setattr(ctl, k, v)
        return ctl.to_json()

    return app, ctl
