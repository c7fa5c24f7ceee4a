"""The /pfp handlers against the real pipeline (sample art, in-process detection, SQLite history) and
the Discord REST emulator for everything Discord sees: the interaction answers, the avatar upload,
the announcement and the role colour, all sent by discord.py. No gateway: each interaction is a
discord.py ``Interaction`` built from the INTERACTION_CREATE payload Discord would send, and the
handlers are plain async functions over it."""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path

import discord as discordpy
import pytest
from emulators.discord import create_app
from interactions import interaction_payload
from panel_helpers import sprite_folder
from mikubot.bot.announce import AfterChange
from mikubot.bot.commands import BotState, pfp_change, pfp_history, pfp_restore, pfp_status, source_allowed
from mikubot.bot.context import InteractionContext, Invoker
from mikubot.config import Settings
from mikubot.discord_rest import at_api
from mikubot.pipeline import AvatarPipeline
from mikubot.runner import ChangeRunner
from servers import serve_app

ADMIN = Invoker(user_id=1001, name="admin")
STRANGER = Invoker(user_id=2002, role_ids=frozenset({5}), name="stranger")
_tokens = itertools.count(1)


@pytest.fixture
def discord():
    app, ctl = create_app(token="bot-token", bucket_limit=50)
    with serve_app(app) as base:
        yield f"{base}/api/v10", ctl


@pytest.fixture
def sprites(art_dir, tmp_path) -> Path:
    return sprite_folder(art_dir, tmp_path / "art")


@pytest.fixture
async def bot(discord, sprites, tmp_path):
    async with bot_on(discord, sprites, tmp_path / "data") as parts:
        yield parts


@contextlib.asynccontextmanager
async def bot_on(discord, art: Path, data_dir: Path):
    api, ctl = discord
    settings = Settings(
        data_dir=data_dir, source=f"local:{art}", candidates=1, discord_token="bot-token",
        discord_api=api, admin_user_ids=[ADMIN.user_id], admin_role_ids=[77], announce_channel_id=4242,
        guild_id=99, colour_role_id=555,
        output_size=256,  # these tests are about the commands: a 1024-px avatar costs a quarter second to draw
    )
    pipeline = AvatarPipeline(settings)
    runner = ChangeRunner(pipeline)
    after = AfterChange(settings)
    runner.add_listener(after)
    state = BotState(runner, edit_interval_s=0.0)
    client = discordpy.Client(intents=discordpy.Intents(guilds=True))
    at_api(client, api)
    await client.login("bot-token")  # no gateway: the REST half of the client, as the bot's own
    try:
        yield state, client, ctl, after
    finally:
        await client.close()
        await pipeline.aclose()


def interaction(client: discordpy.Client, invoker: Invoker = ADMIN) -> InteractionContext:
    perms = discordpy.Permissions(manage_guild=invoker.manage_guild)
    data = interaction_payload(invoker, next(_tokens), perms)
    # The roles come with the Invoker: the test server is not in this gateway-less client's cache.
    return InteractionContext(discordpy.Interaction(data=data, state=client._connection), invoker)


def token_of(ctx: InteractionContext) -> str:
    return ctx.interaction.token


async def test_change_applies_avatar_with_live_progress_announcement_and_role_colour(bot):
    state, client, ctl, after = bot
    ctx = interaction(client)
    record = await pfp_change(ctx, state)
    assert record is not None and record.status == "applied", record.error

    # Discord got exactly one avatar: a square PNG, the one the change recorded.
    assert len(ctl.uploads) == 1
    up = ctl.uploads[0]
    assert up.format == "PNG" and [up.width, up.height] == record.avatar_size and up.width == up.height
    assert up.data == Path(record.avatar_path).read_bytes()

    answers = ctl.interactions[token_of(ctx)]
    assert answers[0]["kind"] == "callback" and answers[0]["type"] == 5  # deferred
    edits = [a for a in answers if a["kind"] == "edit"]
    # Progress edits came before the result and walked through the stages in order.
    progress = [e["content"] for e in edits[:-1]]
    assert any("search" in p for p in progress) and any("crop" in p for p in progress)
    assert f"#{record.id}" in progress[0]
    final = edits[-1]
    assert "New avatar applied" in final["content"] and f"#{record.id}" in final["content"]
    assert len(final["files"]) == 1
    assert final["files"][0]["data"] == up.data

    # The announcement: one message in the configured channel, with the avatar attached.
    assert len(ctl.messages) == 1
    msg = ctl.messages[0]
    assert msg["channel_id"] == "4242" and "new look" in msg["content"]
    assert msg["files"] and msg["files"][0]["data"] == ctl.uploads[0].data
    # The role took a real colour from the avatar.
    colour = ctl.roles[("99", "555")]["color"]
    assert 0 < colour <= 0xFFFFFF
    assert ctl.roles[("99", "555")]["sent"] == "colors.primary_color", "Role.edit's colors, not the deprecated color"
    assert after.outcomes[-1]["role_colour"] == f"#{colour:06x}"

    row = state.runner.pipeline.history.get(record.id)
    assert row.status == "applied" and row.uploaded


async def test_non_admin_is_refused_and_nothing_happens(bot):
    state, client, ctl, _ = bot
    ctx = interaction(client, STRANGER)
    assert await pfp_change(ctx, state) is None
    (answer,) = ctl.interactions[token_of(ctx)]
    assert answer["type"] == 4 and answer["data"]["flags"] == 64
    assert "Manage Server" in answer["data"]["content"]
    assert ctl.uploads == [] and state.runner.pipeline.history.list() == []


async def test_admin_by_role_or_manage_server(bot):
    state, client, ctl, _ = bot
    by_role = interaction(client, Invoker(user_id=3, role_ids=frozenset({77})))
    manager = interaction(client, Invoker(user_id=4, manage_guild=True))
    assert await pfp_history(by_role, state) is not None
    assert await pfp_status(manager, state) is not None
    assert ctl.interactions[token_of(by_role)][0]["type"] == 5


async def test_sources_that_read_the_server_disk_are_refused(bot):
    state, client, ctl, _ = bot
    ctx = interaction(client)
    assert await pfp_change(ctx, state, source="file:/etc/passwd") is None
    (answer,) = ctl.interactions[token_of(ctx)]
    assert answer["type"] == 4 and "not a source" in answer["data"]["content"]
    assert state.runner.pipeline.history.list() == []
    assert source_allowed("danbooru") and source_allowed("url:https://example.org/a.png")
    assert not source_allowed("local:/") and not source_allowed("danboorux")


async def test_second_change_while_one_runs_names_the_running_one(bot):
    state, client, ctl, _ = bot
    handle = await state.runner.start_change(dry_run=True)
    ctx = interaction(client)
    assert await pfp_change(ctx, state) is None
    last = ctl.interactions[token_of(ctx)][-1]
    assert last["kind"] == "edit" and "already running" in last["content"] and f"#{handle.change_id}" in last["content"]
    record = await handle.result()
    assert record.status == "dry-run"
    assert ctl.uploads == []  # dry run: nothing reached Discord


async def test_restore_reapplies_an_earlier_avatar_and_history_lists_both(bot):
    state, client, ctl, _ = bot
    first = await pfp_change(interaction(client), state)
    assert first is not None and first.status == "applied"
    ctx = interaction(client)
    again = await pfp_restore(ctx, state, first.id)
    assert again is not None and again.status == "applied", again.error
    assert len(ctl.uploads) == 2 and ctl.uploads[1].data == ctl.uploads[0].data
    assert state.runner.pipeline.history.get(again.id).restored_from == first.id
    assert "New avatar applied" in ctl.interactions[token_of(ctx)][-1]["content"]

    text = await pfp_history(interaction(client), state)
    assert f"#{first.id}" in text and f"#{again.id}" in text and f"restore of #{first.id}" in text

    missing = interaction(client)
    assert await pfp_restore(missing, state, 999) is None
    assert "Cannot restore #999" in ctl.interactions[token_of(missing)][-1]["content"]


async def test_failed_upload_says_why_and_keeps_the_avatar(bot):
    state, client, ctl, _ = bot
    ctl.avatar_changes_allowed = 0  # Discord: "You are changing your avatar too fast"
    ctx = interaction(client)
    record = await pfp_change(ctx, state)
    assert record.status == "failed" and record.failed_stage == "upload"
    final = ctl.interactions[token_of(ctx)][-1]
    assert "failed at **upload**" in final["content"] and "too fast" in final["content"]
    assert f"/pfp restore {record.id}" in final["content"]
    assert Path(record.avatar_path).is_file()
    assert ctl.messages == [] and ctl.roles == {}  # nothing announced for a failed change


async def test_status_shows_running_change_and_last_result(bot):
    state, client, _, _ = bot
    handle = await state.runner.start_change(dry_run=True)
    text = await pfp_status(interaction(client), state)
    assert f"#{handle.change_id} running" in text
    await handle.result()
    text = await pfp_status(interaction(client), state)
    assert "no change running" in text and f"last: #{handle.change_id} dry-run" in text
    assert "no scheduled rotation" in text


async def test_progress_edits_are_throttled(bot):
    state, client, ctl, _ = bot
    state.edit_interval_s = 3600.0  # one progress edit at most, then the result
    ctx = interaction(client)
    record = await pfp_change(ctx, state)
    edits = [a for a in ctl.interactions[token_of(ctx)] if a["kind"] == "edit"]
    assert len(edits) == 2 and f"#{record.id}" in edits[-1]["content"]


async def test_a_full_disk_is_answered_not_raised(discord, sprites, small_disk):
    """With the data directory's disk full not even the history row can be written: /pfp change and
    /pfp restore say so (naming the place) instead of ending the interaction unanswered."""
    async with bot_on(discord, sprites, small_disk.path / "data") as (state, client, ctl, _):
        first = await state.runner.change(dry_run=True)
        small_disk.fill()
        change, restore = interaction(client), interaction(client)
        assert await pfp_change(change, state) is None
        assert await pfp_restore(restore, state, first.id) is None
        for ctx in (change, restore):
            last = ctl.interactions[token_of(ctx)][-1]
            assert last["kind"] == "edit" and "💾" in last["content"], last
            assert str(small_disk.path / "data") in last["content"] and "full" in last["content"], last
        assert state.runner.current is None
        small_disk.free()
        assert (await state.runner.change(dry_run=True)).status == "dry-run"
