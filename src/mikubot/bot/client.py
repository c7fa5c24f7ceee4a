"""The discord.py gateway client: registers /pfp and hands each invocation to the plain handlers.

Intents: none beyond ``guilds`` (the application-command cache needs the guild list). Slash commands
need no privileged intent, and the interaction itself carries the member's roles and permissions. The
answers go through ``InteractionContext`` (discord.py's Interaction API), the same code the tests drive
against the Discord REST emulator; the client's HTTP goes to ``MIKU_DISCORD_API`` (``at_api``).
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands

from mikubot.bot import commands
from mikubot.bot.commands import BotState
from mikubot.bot.context import InteractionContext
from mikubot.discord_rest import at_api

log = logging.getLogger(__name__)


def intents() -> discord.Intents:
    i = discord.Intents.none()
    i.guilds = True
    return i


class MikuClient(discord.Client):
    def __init__(self, state: BotState) -> None:
        super().__init__(intents=intents())
        at_api(self, state.settings.discord_api)
        self.state = state
        self.tree = app_commands.CommandTree(self)
        self.tree.add_command(pfp_group(state))
        self.tree.on_error = self._on_tree_error  # type: ignore[method-assign]

    async def setup_hook(self) -> None:
        guild_id = self.state.settings.guild_id
        if guild_id is not None:
            guild = discord.Object(id=guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("/pfp registered in server %s (%d commands)", guild_id, len(synced))
        else:
            synced = await self.tree.sync()
            log.info("/pfp registered globally (%d commands; Discord may take up to an hour to show them)", len(synced))

    async def on_ready(self) -> None:
        log.info("✅ Discord: logged in as %s (%s) in %d servers", self.user, getattr(self.user, "id", "?"), len(self.guilds))

    async def _on_tree_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        log.error("/pfp failed: %s", error, exc_info=error)


def pfp_group(state: BotState) -> app_commands.Group:
    s = state.settings
    # Without configured admins, only Manage Server may use /pfp: let Discord hide it from the others
    # as well. With configured users/roles Discord must show it to them, and our own check decides.
    only_managers = not s.admin_user_ids and not s.admin_role_ids
    group = app_commands.Group(
        name="pfp", description=f"{s.character_name}'s avatar",
        default_permissions=discord.Permissions(manage_guild=True) if only_managers else None,
    )

    @group.command(name="change", description="Find new art, crop around the face and make it the avatar")
    @app_commands.describe(source="danbooru, safebooru, gelbooru or url:https://… (default: the configured source)",
                           scope="this server's own look, or the global profile (default: the server's own, if "
                           "it has one)")
    @app_commands.choices(scope=[app_commands.Choice(name="this server", value="server"),
                                 app_commands.Choice(name="global profile", value="global")])
    async def change(interaction: discord.Interaction, source: str | None = None,
                     scope: app_commands.Choice[str] | None = None) -> None:
        await commands.pfp_change(InteractionContext(interaction), state, source, scope.value if scope else None)

    @group.command(name="restore", description="Apply an earlier avatar again")
    @app_commands.describe(change_id="the change's number, from /pfp history")
    async def restore(interaction: discord.Interaction, change_id: app_commands.Range[int, 1]) -> None:
        await commands.pfp_restore(InteractionContext(interaction), state, change_id)

    @group.command(name="status", description="The running change, the last one and the schedule")
    async def status(interaction: discord.Interaction) -> None:
        await commands.pfp_status(InteractionContext(interaction), state)

    @group.command(name="history", description="Recent avatar changes")
    async def history(interaction: discord.Interaction) -> None:
        await commands.pfp_history(InteractionContext(interaction), state)

    return group
