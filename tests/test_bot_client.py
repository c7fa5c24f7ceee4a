"""The discord.py layer without a gateway: the /pfp command tree it would register, its intents, and
the mapping from a discord.py interaction's member to our Invoker."""

from __future__ import annotations

import discord
import httpx

from mikubot.bot.client import MikuClient, intents, pfp_group
from mikubot.bot.commands import BotState
from mikubot.bot.rest import DiscordRest
from mikubot.config import Settings
from mikubot.pipeline import AvatarPipeline
from mikubot.runner import ChangeRunner


async def test_command_tree_and_minimal_intents(tmp_path):
    settings = Settings(data_dir=tmp_path)
    pipeline = AvatarPipeline(settings)
    try:
        state = BotState(ChangeRunner(pipeline))
        async with httpx.AsyncClient() as http:
            rest = DiscordRest(settings.discord_api, None, http=http)
            client = MikuClient(state, rest)
            group = client.tree.get_command("pfp")
            assert isinstance(group, discord.app_commands.Group)
            assert sorted(c.name for c in group.commands) == ["change", "history", "restore", "status"]
            change = group.get_command("change")
            assert [p.name for p in change.parameters] == ["source"] and not change.parameters[0].required
            restore = group.get_command("restore")
            assert restore.parameters[0].required and restore.parameters[0].min_value == 1
            # No configured admins: Discord itself hides /pfp from members without Manage Server.
            assert group.default_permissions == discord.Permissions(manage_guild=True)
            assert client.intents.value == intents().value == discord.Intents(guilds=True).value
            assert not client.intents.message_content and not client.intents.members and not client.intents.presences
            await client.close()

            other = AvatarPipeline(Settings(data_dir=tmp_path / "b", admin_role_ids=[5]))
            try:
                with_admins = pfp_group(BotState(ChangeRunner(other)), rest)
            finally:
                await other.aclose()
            assert with_admins.default_permissions is None  # configured roles must see it; our check decides
    finally:
        await pipeline.aclose()
