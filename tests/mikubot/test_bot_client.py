"""The discord.py layer without a gateway: the /pfp command tree it would register, its intents, and
the mapping from a discord.py interaction's member to our Invoker."""

from __future__ import annotations

import discord
from discord.http import HTTPClient
from emulators.discord import create_app
from interactions import interaction_payload
from mikubot.bot.client import MikuClient, intents, pfp_group
from mikubot.bot.commands import BotState
from mikubot.bot.context import Invoker, invoker_of
from mikubot.config import Settings
from mikubot.discord_rest import EmulatorHTTP, at_api
from mikubot.pipeline import AvatarPipeline
from mikubot.runner import ChangeRunner
from servers import serve_app


async def test_command_tree_and_minimal_intents(tmp_path):
    settings = Settings(data_dir=tmp_path)
    pipeline = AvatarPipeline(settings)
    try:
        state = BotState(ChangeRunner(pipeline))
        client = MikuClient(state)
        # Discord's own API: discord.py's HTTP client as it ships (the subclass is for another base URL only).
        assert type(client.http) is HTTPClient and client._connection.http is client.http
        elsewhere = discord.Client(intents=intents(), max_ratelimit_timeout=45.0)
        at_api(elsewhere, "http://127.0.0.1:9/api/v10")
        assert isinstance(elsewhere.http, EmulatorHTTP) and elsewhere._connection.http is elsewhere.http
        assert elsewhere.http.max_ratelimit_timeout == 45.0, "the client's own options are kept"
        assert elsewhere.http.api_base == "http://127.0.0.1:9/api/v10"
        group = client.tree.get_command("pfp")
        assert isinstance(group, discord.app_commands.Group)
        assert sorted(c.name for c in group.commands) == ["change", "history", "restore", "status"]
        change = group.get_command("change")
        assert [p.name for p in change.parameters] == ["source", "scope"]
        assert not any(p.required for p in change.parameters)
        assert [(c.name, c.value) for c in change.parameters[1].choices] == [("this server", "server"),
                                                                             ("global profile", "global")]
        restore = group.get_command("restore")
        assert restore.parameters[0].required and restore.parameters[0].min_value == 1
        # No configured admins: Discord itself hides /pfp from members without Manage Server.
        assert group.default_permissions == discord.Permissions(manage_guild=True)
        assert client.intents.value == intents().value == discord.Intents(guilds=True).value
        assert not client.intents.message_content and not client.intents.members and not client.intents.presences
        await client.close()

        other = AvatarPipeline(Settings(data_dir=tmp_path / "b", admin_role_ids=[5]))
        try:
            with_admins = pfp_group(BotState(ChangeRunner(other)))
        finally:
            await other.aclose()
        assert with_admins.default_permissions is None  # configured roles must see it; our check decides
    finally:
        await pipeline.aclose()


async def test_a_slash_command_answers_through_discord_py(tmp_path):
    """/pfp status as discord.py receives it: the registered callback builds the context from the
    discord.py Interaction (the invoker from Discord's resolved permissions) and answers through the
    interaction webhooks at MIKU_DISCORD_API."""
    app, ctl = create_app(token="bot-token")
    with serve_app(app) as base:
        settings = Settings(data_dir=tmp_path, discord_api=f"{base}/api/v10", discord_token="bot-token", guild_id=99)
        pipeline = AvatarPipeline(settings)
        client = MikuClient(BotState(ChangeRunner(pipeline), edit_interval_s=0.0))
        try:
            await client.login("bot-token")  # the REST half: the token check, then /pfp registered in server 99
            assert [c["name"] for c in ctl.commands["99"]] == ["pfp"]
            assert sorted(o["name"] for o in ctl.commands["99"][0]["options"]) == ["change", "history", "restore", "status"]
            status = client.tree.get_command("pfp").get_command("status")
            manager = Invoker(user_id=4, name="manager")
            for n, perms in ((1, discord.Permissions(manage_guild=True)), (2, discord.Permissions.none())):
                interaction = discord.Interaction(data=interaction_payload(manager, n, perms, sub="status"),
                                                  state=client._connection)
                assert invoker_of(interaction).manage_guild is perms.manage_guild
                await status.callback(interaction)
            allowed, refused = ctl.interactions["itoken-1"], ctl.interactions["itoken-2"]
            assert allowed[0]["type"] == 5 and "no change running" in allowed[-1]["content"]
            assert refused[0]["type"] == 4 and refused[0]["data"]["flags"] == 64
            assert "Manage Server" in refused[0]["data"]["content"]
        finally:
            await client.close()
            await pipeline.aclose()


def test_every_app_command_fits_discords_limits(tmp_path):
    """Application commands (Interactions › Application Commands): names 1-32 characters, lower case;
    descriptions 1-100 (discord.py cuts a longer one to 99 and "…" without a word: none may end so);
    at most 25 options and 25 choices, choice names 1-100."""
    import re

    from mikubot.bot.client import pfp_group

    class Settled:
        settings = Settings(data_dir=tmp_path)

    group = pfp_group(Settled())  # type: ignore[arg-type]
    name = re.compile(r"^[-_\w]{1,32}$")
    texts: list[tuple[str, str]] = [(group.name, group.description)]
    assert name.match(group.name) and group.name == group.name.lower() and len(group.commands) <= 25
    for command in group.commands:
        assert name.match(command.name) and command.name == command.name.lower(), command.name
        texts.append((command.name, command.description))
        assert len(command.parameters) <= 25
        for param in command.parameters:
            assert name.match(param.name) and param.name == param.name.lower(), param.name
            texts.append((f"{command.name} {param.name}", param.description))
            assert len(param.choices) <= 25
            for choice in param.choices:
                assert 1 <= len(choice.name) <= 100, choice.name
    for where, text in texts:
        assert 1 <= len(text) <= 100 and not text.endswith("…"), (where, len(text), text)
    payload = group.to_dict(discord.app_commands.CommandTree(discord.Client(intents=discord.Intents.none())))
    assert payload["name"] == "pfp" and all(len(o["description"]) <= 100 for o in payload["options"])
