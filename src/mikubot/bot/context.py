"""What a command handler needs from a slash-command invocation, and nothing more.

Handlers are plain async functions over ``CommandContext``: who asked (``Invoker``) and three ways
to answer (refuse at once, defer, edit the deferred answer). ``InteractionContext`` implements it on
discord.py's Interaction API (``interaction.response`` and ``edit_original_response``: Discord's
``POST /interactions/{id}/{token}/callback`` and ``PATCH /webhooks/{app}/{token}/messages/@original``),
sent to the client's own base URL, so production and the tests (against the REST emulator) run the
same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import discord

from mikubot.discord_rest import api_base_of, discord_errors, webhooks_of


@dataclass(frozen=True)
class Invoker:
    """The person behind a command: their id, their roles in the server (empty in a DM), whether
    they hold Manage Server (or Administrator) there, and the server (None in a DM)."""

    user_id: int
    role_ids: frozenset[int] = field(default_factory=frozenset)
    manage_guild: bool = False
    name: str = ""
    guild_id: int | None = None


def invoker_of(interaction: discord.Interaction) -> Invoker:
    """Who asked. Permissions are Discord's own resolution for this interaction (``member.permissions``
    in the payload), so they hold even when the server is not in the client's cache."""
    user = interaction.user
    roles: frozenset[int] = frozenset()
    manage = False
    if isinstance(user, discord.Member):
        roles = frozenset(r.id for r in user.roles if not r.is_default())
        perms = interaction.permissions
        manage = perms.manage_guild or perms.administrator
    return Invoker(user_id=user.id, role_ids=roles, manage_guild=manage, name=str(user), guild_id=interaction.guild_id)


class CommandContext(Protocol):
    invoker: Invoker

    async def refuse(self, content: str) -> None:
        """Answer at once, visible only to the invoker (permission errors, bad arguments)."""

    async def defer(self) -> None:
        """Acknowledge now ("Miku is thinking…"); the answer follows through ``edit``."""

    async def edit(self, content: str, *, image: Path | None = None) -> None:
        """Replace the deferred answer (progress, then the result, optionally with the avatar)."""


NO_MENTIONS = discord.AllowedMentions.none()


class InteractionContext:
    """A ``CommandContext`` over a discord.py interaction."""

    def __init__(self, interaction: discord.Interaction, invoker: Invoker | None = None) -> None:
        self.interaction = interaction
        self.invoker = invoker if invoker is not None else invoker_of(interaction)

    @property
    def _api_base(self) -> str:
        return api_base_of(self.interaction.client)

    async def refuse(self, content: str) -> None:
        with webhooks_of(self.interaction.client), discord_errors(self._api_base, "the answer"):
            await self.interaction.response.send_message(content, ephemeral=True, allowed_mentions=NO_MENTIONS)

    async def defer(self) -> None:
        with webhooks_of(self.interaction.client), discord_errors(self._api_base, "the answer"):
            await self.interaction.response.defer(thinking=True)

    async def edit(self, content: str, *, image: Path | None = None) -> None:
        attachments = [discord.File(image)] if image is not None and image.is_file() else discord.utils.MISSING
        with webhooks_of(self.interaction.client), discord_errors(self._api_base, "the answer"):
            await self.interaction.edit_original_response(content=content, attachments=attachments,
                                                          allowed_mentions=NO_MENTIONS)
