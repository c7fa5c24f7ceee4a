"""A look per server: the bot's own member in one guild — its avatar there and its bio there.

Discord lets a bot set, per server, an avatar, a banner and a bio of its own (``PATCH
/guilds/{guild.id}/members/@me``, "Modify Current Member"; bots may since 2025-09-10). Members see them
in that server instead of the global profile, which stays as it is. A REST session has no gateway, so
the bot's member comes from the REST API with discord.py's public calls — ``Client.fetch_guild`` →
``Guild.fetch_member`` — and ``Member.edit(avatar=…, banner=…, bio=…)`` (discord.py 2.7) sends the change.

The bio carries the credit line: the artist and a link to the post, inert as Discord Markdown. Discord's
documentation of the route gives no length for ``bio``; ``BIO_MAX_CHARS`` (400) is what independent
clients enforce (twilight-http's ``UpdateCurrentMember::bio``: 1 to 400 codepoints), and the credit is
made to fit it. What Discord answers wins: should it refuse the bio as too long (50035
``BASE_TYPE_MAX_LENGTH``, "Must be N or fewer in length."), the credit is made again within N and the
change sent once more.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import discord
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


def _credit_link(credit: dict[str, Any]) -> str:
    """The credit's page link when it is a plain http(s) URL (nothing else may ride in the bio), else ""."""
    link = credit.get("page_url") or ""
    return link if link.startswith(("https://", "http://")) and not any(c.isspace() for c in link) else ""


def _artist_within(artist: str, room: int) -> str:
    """``artist`` escaped, cut (before its escaping, so no escape is split in half) with an ellipsis to fit
    ``room`` characters; "" when not even one character fits."""
    shown = artist[:room]
    while shown and len(_inert(shown) + (ELLIPSIS if shown != artist else "")) > room:
        shown = shown[:-1].rstrip()
    return _inert(shown) + (ELLIPSIS if shown != artist else "") if shown else ""


def credit_bio(credit: dict[str, Any], *, limit: int = BIO_MAX_CHARS) -> str | None:
    """The credit line for a server bio: ``Art by <artist> · <page link>`` (or the source's name), at most
    ``limit`` characters. The link is kept whole or left out, never cut; a long artist name is cut
    before its escaping, so no escape is split in half. None when there is nothing to credit."""
    link = _credit_link(credit)
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
    shown = _artist_within(artist, limit - len(head) - len(tail))
    if not shown:
        return tail[3:] or None
    return head + shown + tail


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


async def set_guild_look(settings: Settings, guild_id: int, image: bytes, *, credit: dict[str, Any] | None = None,
                         banner: bytes | None = None) -> GuildUploadResult:
    """Make ``image`` the bot's avatar in server ``guild_id`` and, when given, ``banner`` its banner and
    the credit line of ``credit`` (``credit_bio``) its bio there, in one request. The global profile is not
    touched. DiscordError (with the hint that the avatar is kept) when Discord refuses: a 403/404 here
    usually means the bot is not in that server."""
    what = f"the avatar for server {guild_id}"
    bio = credit_bio(credit) if credit is not None else None
    try:
        async with rest_session(settings, max_wait_s=max(30.0, settings.upload_max_wait_s)) as session:
            with discord_errors(session.api_base, what):
                assert session.client.user is not None  # set by the login
                guild = await session.client.fetch_guild(guild_id, with_counts=False)
                me = await guild.fetch_member(session.client.user.id)
                look: dict[str, Any] = {"avatar": image, **({"banner": banner} if banner is not None else {})}
                try:
                    member = await me.edit(**look, **({"bio": bio} if bio is not None else {}), reason="avatar change")
                except discord.HTTPException as exc:
                    limit = bio_limit(exc)
                    if credit is None or bio is None or limit is None or len(bio) <= limit:
                        raise
                    bio = credit_bio(credit, limit=limit)  # Discord's own number, then once more
                    member = await me.edit(**look, bio=bio or "", reason="avatar change")
    except DiscordError as exc:
        if exc.status_code in (403, 404):
            exc.message += f"; is the bot a member of server {guild_id}?"
        exc.message += KEPT
        exc.args = (exc.message,)
        raise
    assert member is not None  # Member.edit answers with the member when it sends the change
    patches = [e for e in session.answers.exchanges
               if e["method"] == "PATCH" and e["path"].endswith(f"/guilds/{guild_id}/members/@me")]
    return GuildUploadResult(
        guild_id, _member_json(member), attempts=len(patches), bio=bio,
        rate_limits=[{k: e[k] for k in ("retry_after", "bucket", "global")} for e in patches if e["status"] == 429],
    )


BIO_TOO_LONG = re.compile(r"In bio: Must be (\d+) or fewer in length")


def bio_limit(exc: discord.HTTPException) -> int | None:
    """The bio length Discord's 50035 names (``BASE_TYPE_MAX_LENGTH`` on ``bio``), if that is the refusal."""
    m = BIO_TOO_LONG.search(exc.text or "") if exc.code == 50035 else None
    return int(m.group(1)) if m else None


def _member_json(member: discord.Member) -> dict[str, Any]:
    """What the record keeps of the member Discord answered with: who, and the server's own image hashes."""
    return {"user": {"id": str(member.id), "username": member.name},
            "avatar": member.guild_avatar.key if member.guild_avatar else None,
            "banner": member.guild_banner.key if member.guild_banner else None}
