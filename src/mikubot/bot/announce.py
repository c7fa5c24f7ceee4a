"""What happens after an avatar is applied: an announcement in a channel and the role's new colour.

Both are optional (``MIKU_ANNOUNCE_CHANNEL_ID``, ``MIKU_COLOUR_ROLE_ID`` + ``MIKU_GUILD_ID``) and both
run for every applied change the process makes — from a slash command, the schedule or the panel — as
a listener of the ``ChangeRunner``. Their failures are logged, never raised: the avatar is already on.
Both go through a gateway-less discord.py client logged in for the occasion (``rest_session``), so
they work with or without the gateway bot in this process.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import discord

from mikubot.bot.colour import dominant_colour
from mikubot.bot.messages import announcement_text
from mikubot.config import Settings
from mikubot.record import ChangeRecord
from mikubot.discord_rest import DiscordError, RestSession, discord_errors, rest_session

log = logging.getLogger(__name__)


class AfterChange:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.outcomes: list[dict[str, Any]] = []  # the last few, for /pfp status

    async def __call__(self, record: ChangeRecord) -> None:
        if record.status != "applied":
            return  # dry runs and failures change nothing anyone can see
        if record.guild_id is not None:
            return  # one server's own look: the global avatar (announced, coloured) did not change
        outcome: dict[str, Any] = {"change_id": record.id}
        s = self.settings
        announce = s.announce_channel_id is not None
        recolour = s.colour_role_id is not None and s.guild_id is not None and record.avatar_path
        if not (announce or recolour):
            return
        avatar = Path(record.avatar_path) if record.avatar_path else None
        try:
            async with rest_session(s) as session:
                if announce:
                    await self._announce(session, record, avatar, outcome)
                if recolour and avatar is not None:
                    await self._recolour(session, avatar, outcome)
        except DiscordError as exc:  # the login itself failed
            log.warning("cannot tell Discord about change #%s: %s", record.id, exc)
            outcome["error"] = str(exc)
        self.outcomes = (self.outcomes + [outcome])[-10:]

    async def _announce(self, session: RestSession, record: ChangeRecord, avatar: Path | None,
                        outcome: dict[str, Any]) -> None:
        s = self.settings
        assert s.announce_channel_id is not None
        try:
            text = announcement_text(record, s.character_name)
            files = [discord.File(avatar)] if avatar is not None and avatar.is_file() else []
            channel = session.client.get_partial_messageable(s.announce_channel_id)
            with discord_errors(session.api_base, "the announcement"):
                msg = await channel.send(text, files=files, allowed_mentions=discord.AllowedMentions.none())
            outcome["announced"] = str(msg.id)
        except (DiscordError, OSError) as exc:
            log.warning("cannot announce change #%s in channel %s: %s", record.id, s.announce_channel_id, exc)
            outcome["announce_error"] = str(exc)

    async def _recolour(self, session: RestSession, avatar: Path, outcome: dict[str, Any]) -> None:
        s = self.settings
        assert s.guild_id is not None and s.colour_role_id is not None
        try:
            colour = dominant_colour(avatar)
            with discord_errors(session.api_base, "the role colour"):
                # discord.py's Role.edit sends the role's ``colors`` (``primary_color``), not the deprecated
                # ``color``; the role comes from the server's own object (no gateway cache here).
                guild = await session.client.fetch_guild(s.guild_id, with_counts=False)
                role = guild.get_role(s.colour_role_id)
                if role is None:
                    raise DiscordError(f"server {s.guild_id} has no role {s.colour_role_id} (MIKU_COLOUR_ROLE_ID)")
                await role.edit(colour=discord.Colour(colour), reason="avatar change")
            outcome["role_colour"] = f"#{colour:06x}"
        except (DiscordError, OSError) as exc:
            log.warning("cannot recolour role %s: %s", s.colour_role_id, exc)
            outcome["role_colour_error"] = str(exc)
