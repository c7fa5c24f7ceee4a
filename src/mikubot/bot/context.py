"""What a command handler needs from a slash-command invocation, and nothing more.

Handlers are plain async functions over ``CommandContext``: who asked (``Invoker``) and three ways
to answer (refuse at once, defer, edit the deferred answer). ``RestInteraction`` implements it with
Discord's interaction webhooks (``POST /interactions/{id}/{token}/callback``, ``PATCH
/webhooks/{app}/{token}/messages/@original``); the gateway client hands it the ids of each
discord.py interaction, so production and the tests (against the REST emulator) run the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mikubot.bot.rest import DiscordRest

EPHEMERAL = 64


@dataclass(frozen=True)
class Invoker:
    """The person behind a command: their id, their roles in the server (empty in a DM) and whether
    they hold Manage Server (or Administrator) there."""

    user_id: int
    role_ids: frozenset[int] = field(default_factory=frozenset)
    manage_guild: bool = False
    name: str = ""


class CommandContext(Protocol):
    invoker: Invoker

    async def refuse(self, content: str) -> None:
        """Answer at once, visible only to the invoker (permission errors, bad arguments)."""

    async def defer(self) -> None:
        """Acknowledge now ("Miku is thinking…"); the answer follows through ``edit``."""

    async def edit(self, content: str, *, image: Path | None = None) -> None:
        """Replace the deferred answer (progress, then the result, optionally with the avatar)."""


class RestInteraction:
    """A ``CommandContext`` over Discord's interaction webhooks."""

    def __init__(self, rest: DiscordRest, *, interaction_id: int | str, application_id: int | str, token: str,
                 invoker: Invoker) -> None:
        self.rest = rest
        self.interaction_id = interaction_id
        self.application_id = application_id
        self._token = token
        self.invoker = invoker

    async def refuse(self, content: str) -> None:
        await self.rest.request(
            "POST", f"/interactions/{self.interaction_id}/{self._token}/callback", auth=False,
            json={"type": 4, "data": {"content": content, "flags": EPHEMERAL, "allowed_mentions": {"parse": []}}},
        )

    async def defer(self) -> None:
        await self.rest.defer(self.interaction_id, self._token)

    async def edit(self, content: str, *, image: Path | None = None) -> None:
        files = [image] if image is not None and image.is_file() else None
        await self.rest.edit_original(self.application_id, self._token, content, files=files)
