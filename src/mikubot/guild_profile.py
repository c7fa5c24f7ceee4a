"""A look per server: the bot's own member in one guild — its avatar there and its bio there.

Discord lets a bot set, per server, an avatar, a banner and a bio of its own (``PATCH
/guilds/{guild.id}/members/@me``, "Modify Current Member"; bots may since 2025-09-10). Members see them
in that server instead of the global profile, which stays as it is. discord.py 2.7 sends it as
``Member.edit(avatar=…, banner=…, bio=…)`` on the bot's own member, which is
``HTTPClient.edit_my_member``; a REST session has no gateway and so no ``Member`` object, and calls
``edit_my_member`` itself, with the image as the data URI discord.py's ``Member.edit`` makes.

The bio carries the credit line: the artist and a link to the post, inert as Discord Markdown, within
``BIO_MAX_CHARS``. Discord's documentation of the route gives no length; 400 characters is what
independent clients enforce (twilight-http's ``UpdateCurrentMember::bio``:
1 to 400 codepoints), so the emulator refuses more and the credit is cut to fit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import discord.utils
from discord.utils import escape_mentions

from mikubot.config import Settings
from mikubot.discord_rest import DiscordError, discord_errors, rest_session
from mikubot.upload import KEPT

BIO_MAX_CHARS = 400
ELLIPSIS = "…"


# Every character Discord's Markdown gives a meaning to (emphasis, code, spoilers, quotes, headings, lists,
# masked links ``[text](url)``, ``<…>`` mentions and links), and the backslash itself. discord.py's
# ``escape_markdown`` leaves a masked link's later brackets alone, so the bio escapes them all itself.
MARKDOWN = re.compile(r"([\\*_~`|>\[\]()<#-])")


def _inert(text: str) -> str:
    """One line of untrusted text as plain Discord text: every Markdown character escaped, no mentions."""
    return escape_mentions(MARKDOWN.sub(r"\\\1", " ".join(str(text).split())))


def credit_bio(credit: dict[str, Any], *, limit: int = BIO_MAX_CHARS) -> str | None:
    """The credit line for a server bio: ``Art by <artist> · <page link>`` (or the source's name), at most
    ``limit`` characters. The link is kept whole or left out, never cut; a long artist name is cut
    before its escaping, so no escape is split in half. None when there is nothing to credit."""
    link = credit.get("page_url") or ""
    link = link if link.startswith(("https://", "http://")) and not any(c.isspace() for c in link) else ""
    artist = str(credit.get("artist") or "").strip()
    name = str(credit.get("name") or "").strip()
    if not artist and not link and not name:
        return None
    tail = f" · {link}" if link else (f" · from {_inert(name)}" if name and not artist else "")
    if len(tail) > limit // 2:  # a link too long to leave room for the artist is left out
        tail = ""
    if not artist:
        return (tail[3:] if tail else f"from {_inert(name)}")[:limit] or None
    head = "Art by "
    room = limit - len(head) - len(tail)
    shown = artist[:limit]
    while shown and len(_inert(shown) + (ELLIPSIS if shown != artist else "")) > room:
        shown = shown[:-1].rstrip()
    if not shown:
        return tail[3:] or None
    return head + _inert(shown) + (ELLIPSIS if shown != artist else "") + tail


@dataclass
class GuildUploadResult:
    guild_id: int
    member: dict[str, Any]
    attempts: int
    bio: str | None
    rate_limits: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        user = self.member.get("user") or {}
        return {
            "guild_id": self.guild_id, "user_id": user.get("id"), "username": user.get("username"),
            "avatar": self.member.get("avatar"), "banner": self.member.get("banner"), "bio": self.bio, "attempts": self.attempts,
            "rate_limits": self.rate_limits,
        }


async def set_guild_look(settings: Settings, guild_id: int, image: bytes, *, bio: str | None = None,
                         banner: bytes | None = None) -> GuildUploadResult:
    """Make ``image`` the bot's avatar in server ``guild_id`` and, when given, ``banner`` its banner and
    ``bio`` its bio there, in one request. The global profile is not touched. DiscordError (with the hint that the avatar is kept) when Discord refuses:
    a 403/404 here usually means the bot is not in that server."""
    what = f"the avatar for server {guild_id}"
    try:
        async with rest_session(settings, max_wait_s=max(30.0, settings.upload_max_wait_s)) as session:
            with discord_errors(session.api_base, what):
                # What Member.edit sends: the data URI (its ValueError for an unsupported image is mapped too).
                fields: dict[str, Any] = {"avatar": discord.utils._bytes_to_base64_data(image)}
                if banner is not None:
                    fields["banner"] = discord.utils._bytes_to_base64_data(banner)
                if bio is not None:
                    fields["bio"] = bio
                member = await session.http.edit_my_member(guild_id, reason="avatar change", **fields)
    except DiscordError as exc:
        if exc.status_code in (403, 404):
            exc.message += f"; is the bot a member of server {guild_id}?"
        exc.message += KEPT
        exc.args = (exc.message,)
        raise
    patches = [e for e in session.http.exchanges
               if e["method"] == "PATCH" and e["path"].endswith(f"/guilds/{guild_id}/members/@me")]
    return GuildUploadResult(
        guild_id, member, attempts=len(patches), bio=bio,
        rate_limits=[{k: e[k] for k in ("retry_after", "bucket", "global")} for e in patches if e["status"] == 429],
    )
