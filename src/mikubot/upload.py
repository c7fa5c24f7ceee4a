"""Apply an avatar: discord.py's ``ClientUser.edit(avatar=…)``, i.e. ``PATCH /users/@me {"avatar": <data URI>}``;
with a banner (``MIKU_BANNER``) both in the same request, ``ClientUser.edit(avatar=…, banner=…)`` (discord.py
2.7, ``discord/user.py``), so the profile never shows a new avatar over the old banner.

Rate limits are Discord's normal flow control, and discord.py handles them: a 429 carrying Discord's
headers is waited out (``retry_after``) and retried. A wait longer than ``MIKU_UPLOAD_MAX_WAIT_S``
(discord.py's ``max_ratelimit_timeout``, never below 30 s there) fails at once instead. Two
answers are final and get their own errors, because the person must act: 401 (the token is wrong) and
50035 ``AVATAR_RATE_LIMIT`` ("You are changing your avatar too fast": Discord allows only a few avatar
changes per hour). In every failure the avatar file stays where the pipeline wrote it, so ``mikubot pfp
restore`` can apply it later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mikubot.config import Settings
from mikubot.discord_rest import DiscordError, discord_errors, rest_session

KEPT = "; the avatar is kept — apply it later with `mikubot pfp restore`"


@dataclass
class UploadResult:
    user: dict[str, Any]
    attempts: int
    rate_limits: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user.get("id"),
            "username": self.user.get("username"),
            "avatar": self.user.get("avatar"),
            "banner": self.user.get("banner"),
            "attempts": self.attempts,
            "rate_limits": self.rate_limits,
        }


async def set_avatar(settings: Settings, image: bytes, banner: bytes | None = None) -> UploadResult:
    """Make ``image`` (PNG, JPEG or GIF bytes) the bot's avatar and, when given, ``banner`` its profile
    banner, in one request; DiscordError (with the hint that the avatar is kept) when Discord does not
    take it."""
    try:
        async with rest_session(settings, max_wait_s=max(30.0, settings.upload_max_wait_s)) as session:
            with discord_errors(session.api_base, "the avatar"):
                assert session.client.user is not None  # set by the login
                user = await session.client.user.edit(avatar=image, **({"banner": banner} if banner is not None else {}))
    except DiscordError as exc:
        exc.message += KEPT
        exc.args = (exc.message,)
        raise
    patches = [e for e in session.answers.exchanges if e["method"] == "PATCH" and e["path"].endswith("/users/@me")]
    return UploadResult(
        {"id": str(user.id), "username": user.name, "avatar": user.avatar.key if user.avatar else None,
         "banner": user.banner.key if user.banner else None},
        attempts=len(patches),
        rate_limits=[{k: e[k] for k in ("retry_after", "bucket", "global")} for e in patches if e["status"] == 429],
    )


async def whoami(settings: Settings, *, timeout_s: float = 10.0) -> dict[str, Any]:
    """The bot user, through discord.py's login (``GET /users/@me``): the cheapest check that the token works."""
    async with rest_session(settings, login_timeout_s=timeout_s) as session:
        user = session.client.user
        assert user is not None
        return {"id": str(user.id), "username": user.name}
