"""What happens after an avatar is applied: an announcement in a channel and the role's new colour.

Both are optional (``MIKU_ANNOUNCE_CHANNEL_ID``, ``MIKU_COLOUR_ROLE_ID`` + ``MIKU_GUILD_ID``) and both
run for every applied change the process makes — from a slash command, the schedule or the panel — as
a listener of the ``ChangeRunner``. Their failures are logged, never raised: the avatar is already on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mikubot.bot.colour import dominant_colour
from mikubot.bot.messages import announcement_text
from mikubot.bot.rest import DiscordRest, DiscordRestError
from mikubot.config import Settings

log = logging.getLogger(__name__)


class AfterChange:
    def __init__(self, settings: Settings, rest: DiscordRest) -> None:
        self.settings = settings
        self.rest = rest
        self.outcomes: list[dict[str, Any]] = []  # the last few, for /pfp status

    async def __call__(self, record: dict[str, Any]) -> None:
        if record.get("status") != "applied":
            return  # dry runs and failures change nothing anyone can see
        outcome: dict[str, Any] = {"change_id": record.get("id")}
        avatar = Path(record["avatar_path"]) if record.get("avatar_path") else None
        s = self.settings
        if s.announce_channel_id is not None:
            try:
                text = announcement_text(record, s.character_name)
                files = [avatar] if avatar is not None and avatar.is_file() else None
                msg = await self.rest.send_message(s.announce_channel_id, text, files=files)
                outcome["announced"] = msg.get("id")
            except (DiscordRestError, OSError) as exc:
                log.warning("cannot announce change #%s in channel %s: %s", record.get("id"), s.announce_channel_id, exc)
                outcome["announce_error"] = str(exc)
        if s.colour_role_id is not None and s.guild_id is not None and avatar is not None:
            try:
                colour = dominant_colour(avatar)
                await self.rest.set_role_colour(s.guild_id, s.colour_role_id, colour)
                outcome["role_colour"] = f"#{colour:06x}"
            except (DiscordRestError, OSError) as exc:
                log.warning("cannot recolour role %s: %s", s.colour_role_id, exc)
                outcome["role_colour_error"] = str(exc)
        self.outcomes = (self.outcomes + [outcome])[-10:]
