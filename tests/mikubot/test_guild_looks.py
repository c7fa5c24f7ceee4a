"""A look per server: the settings (``MIKU_GUILD_LOOKS`` / the config file), a change of one server's look
through discord.py (``PATCH /guilds/{id}/members/@me``) against the Discord REST emulator, the bio's
credit line, the history's scope, restore, ``/pfp change`` in a server, and ``mikubot pfp change --guild``."""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path

import discord as discordpy
import httpx
import pytest
from PIL import Image
import loopback
from cli_runner import run_cli
from emulators.danbooru import create_app as create_danbooru
from emulators.danbooru import make_post
from emulators.discord import create_app
from interactions import interaction_payload
from panel_helpers import panel_server, panel_settings
from pydantic import ValidationError
from servers import serve_app
from test_banner import composed

from mikubot.bot.announce import AfterChange
from mikubot.bot.commands import BotState, pfp_change, pfp_history
from mikubot.cli import app as mikubot_app
from mikubot.bot.context import InteractionContext, Invoker
from mikubot.config import ConfigFileError, GuildLook, load_settings
from mikubot.discord_rest import at_api
from mikubot.guild_profile import BIO_MAX_CHARS, credit_bio
from mikubot.history import History
from mikubot.pipeline import AvatarPipeline
from mikubot.record import ChangeRecord
from mikubot.runner import ChangeRunner

TOKEN = "bot-token"
SERVER = 99  # the server of tests/interactions.py's payloads
_tokens = itertools.count(500)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith("MIKU_") or k == "FACE_DETECTOR_URL":
            monkeypatch.delenv(k)


def _folder(tmp_path: Path, art_dir: Path, name: str, *files: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for f in files:
        shutil.copy(art_dir / f, folder / f)
    return folder


# --- settings ---------------------------------------------------------------------------------------------

def test_looks_from_the_environment_and_from_the_config_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MIKU_GUILD_LOOKS", json.dumps({
        "123456789012345678": {"source": "danbooru", "character_tag": "Kagamine Rin", "character_name": "Kagamine Rin",
                               "hair_colours": ["F5D142"], "bio_credit": False}}))
    s = load_settings()
    look = s.look_for(123456789012345678)
    assert look == GuildLook(source="danbooru", character_tag="kagamine_rin", character_name="Kagamine Rin",
                             hair_colours=["#f5d142"], bio_credit=False)
    rin = s.for_guild(123456789012345678)
    assert (rin.source, rin.character_tag, rin.character_name, rin.hair_colours) == (
        "danbooru", "kagamine_rin", "Kagamine Rin", ["#f5d142"])
    assert rin.source_settings()["character_tag"] == "kagamine_rin"  # what the booru sources search for
    assert rin.data_dir == s.data_dir and rin.discord_api == s.discord_api  # everything else is shared
    # Unknown servers and the global profile get the global settings, unchanged.
    assert s.for_guild(42) is s and s.for_guild(None) is s and s.look_for(None) is None
    assert s.character_tag == "hatsune_miku"
    assert s.masked()["guild_looks"] == {"123456789012345678": {
        "source": "danbooru", "character_tag": "kagamine_rin", "character_name": "Kagamine Rin",
        "hair_colours": ["#f5d142"], "bio_credit": False}}

    monkeypatch.delenv("MIKU_GUILD_LOOKS")
    yaml = tmp_path / "miku.yaml"
    yaml.write_text("guild_looks:\n  555:\n    source: local:art/five\n  777:\n    character_name: Miku (winter)\n")
    monkeypatch.setenv("MIKU_CONFIG", str(yaml))
    s = load_settings()
    assert s.for_guild(555).source == "local:art/five" and s.for_guild(555).character_name == "Hatsune Miku"
    assert s.for_guild(777).character_name == "Miku (winter)" and s.for_guild(777).source == s.source
    assert s.look_for(555).bio_credit is True  # the default: the bio carries the credit


@pytest.mark.parametrize("value, says", [
    ("{not json", "not valid JSON"),
    ('["123"]', r"must map server \(guild\) ids"),
    ('{"general": {}}', "must be Discord server ids"),
    ('{"0": {}}', "must be Discord server ids"),
    ('{"5": {"sauce": "danbooru"}}', "guild_looks.5.sauce"),
    ('{"5": {"source": "ftp:x"}}', "source must be danbooru"),
    ('{"5": {"source": "local:"}}', "source must be danbooru"),
    ('{"5": {"hair_colours": ["teal"]}}', "#rrggbb"),
    ('{"5": {"character_tag": "  "}}', "character_tag is empty"),
    ('{"5": {"bio_credit": "perhaps"}}', "bio_credit"),
])
def test_bad_looks_are_refused_clearly(monkeypatch, value, says):
    monkeypatch.setenv("MIKU_GUILD_LOOKS", value)
    with pytest.raises(ValidationError, match=says):
        load_settings()


def test_bad_looks_in_the_file_and_in_the_cli(tmp_path, monkeypatch):
    bad = tmp_path / "bad.toml"
    bad.write_text('[guild_looks.12]\nhair_colours = ["nope"]\n')
    monkeypatch.setenv("MIKU_CONFIG", str(bad))
    with pytest.raises(ValidationError, match="#rrggbb"):
        load_settings()
    monkeypatch.setenv("MIKU_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigFileError):
        load_settings()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIKU_")}
    env["MIKU_GUILD_LOOKS"] = '{"12": {"source": "gopher:x"}}'
    r = run_cli(mikubot_app, "config", "show", env=env)
    assert r.returncode == 2 and "invalid configuration" in r.stderr and "guild_looks.12.source" in r.stderr
    assert "Traceback" not in r.stderr


# --- the bio -------------------------------------------------------------------------------------------------

def test_the_bio_credits_the_artist_and_links_the_post():
    bio = credit_bio({"artist": "kei_(keigarou)", "page_url": "https://danbooru.donmai.us/posts/123"})
    assert bio == r"Art by kei\_\(keigarou\) · https://danbooru.donmai.us/posts/123"
    assert credit_bio({"name": "local", "filename": "a.png"}) == "from local"
    assert credit_bio({"page_url": "https://example.org/p/1"}) == "https://example.org/p/1"
    assert credit_bio({}) is None


@pytest.mark.parametrize("artist", [
    "x" * 1000, "*" * 500, "_`~|>" * 120, "@everyone " * 60, "[click](https://evil.example) " * 30,
    "名前" * 300, "a\nb\r\n" * 200,
])
def test_the_bio_stays_within_discords_limit_and_inert(artist):
    url = "https://danbooru.donmai.us/posts/4242"
    bio = credit_bio({"artist": artist, "page_url": url})
    assert bio is not None and len(bio) <= BIO_MAX_CHARS == 400
    assert bio.startswith("Art by ") and bio.endswith(" · " + url)  # the link is whole
    assert "\n" not in bio and "@everyone" not in bio and "](" not in bio
    body = bio[len("Art by "):-len(" · " + url)]
    # Every Markdown character is escaped: no backslash is left dangling by the cut.
    assert not (len(body) - len(body.rstrip("\\"))) % 2
    if len(artist) > 300:
        assert body.endswith("…")


def test_a_link_too_long_to_share_the_bio_is_left_out():
    bio = credit_bio({"artist": "someone", "page_url": "https://example.org/" + "p" * 400})
    assert bio == "Art by someone"
    assert credit_bio({"artist": "a", "page_url": "javascript:alert(1)"}) == "Art by a"


# --- a server's change against the emulator ---------------------------------------------------------------------

@pytest.fixture
def discord():
    app, ctl = create_app(token=TOKEN, bucket_limit=50)
    ctl.member_guilds, ctl.other_guilds = {str(SERVER), "100"}, {"404040"}
    with serve_app(app) as base:
        yield f"{base}/api/v10", ctl


@pytest.fixture
def looks(tmp_path, art_dir):
    """The global source (Eileen) and server 99's own (Lucy, with a character name of its own)."""
    return (_folder(tmp_path, art_dir, "global", "eileen happy.png"),
            _folder(tmp_path, art_dir, "server", "lucy happy.png"))


@pytest.fixture
async def pipeline(discord, looks, tmp_path):
    api, _ = discord
    everywhere, server = looks
    settings = load_settings(
        data_dir=tmp_path / "data", source=f"local:{everywhere}", candidates=1, discord_token=TOKEN, discord_api=api,
        guild_looks={str(SERVER): {"source": f"local:{server}", "character_name": "Lucy", "bio_credit": True},
                     "100": {"bio_credit": False}},
    )
    p = AvatarPipeline(settings)
    try:
        yield p
    finally:
        await p.aclose()


async def test_a_server_change_sets_that_servers_look_only(pipeline, discord):
    _, ctl = discord
    first = await pipeline.change()  # the global profile, from the global source
    assert first.status == "applied" and first.guild_id is None, first.error
    global_hash = ctl.avatar_hash
    assert global_hash is not None and first.source.filename == "eileen happy.png"

    record = await pipeline.change(guild_id=SERVER)
    assert record.status == "applied", record.error
    assert record.guild_id == SERVER and record.upload.guild_id == SERVER
    assert record.source.filename == "lucy happy.png"  # the server's own source ...
    assert "Lucy" in record.description  # ... and character
    # Discord: the bot's member in server 99 has the new avatar; the global avatar is the one from before.
    kept = Path(record.avatar_path).read_bytes()
    assert ctl.avatar_hash == global_hash and len(ctl.uploads) == 1
    (guild, field, image), = ctl.guild_uploads
    assert (guild, field, image.format, image.data) == (str(SERVER), "avatar", "PNG", kept)
    assert ctl.guild_members[str(SERVER)]["avatar"] == hashlib.md5(kept).hexdigest() == record.upload.avatar
    assert "100" not in ctl.guild_members
    # The bio: the credit line, as sent and as Discord keeps it.
    bio = ctl.guild_members[str(SERVER)]["bio"]
    assert bio == record.upload.bio == "from local" and len(bio) <= 400
    patches = [r for r in ctl.requests if r["method"] == "PATCH"]
    assert [r["path"] for r in patches] == ["/api/v10/users/@me", f"/api/v10/guilds/{SERVER}/members/@me"]

    history = pipeline.history
    assert history.get(record.id).guild_id == SERVER and history.get(first.id).guild_id is None
    assert [r.id for r in history.list(scope=SERVER)] == [record.id]
    assert [r.id for r in history.list(scope=None)] == [first.id]
    assert [r.id for r in history.list()] == [record.id, first.id]
    assert history.list(scope=100) == []
    with pytest.raises(ValueError, match="scope"):
        history.list(scope="99")


async def test_a_server_without_bio_credit_keeps_its_bio_and_an_unknown_server_uses_the_global_look(pipeline, discord):
    _, ctl = discord
    record = await pipeline.change(guild_id=100)
    assert record.status == "applied", record.error
    assert record.source.filename == "eileen happy.png"  # no source of its own: the global one
    assert "bio" not in ctl.guild_members["100"] and record.upload.bio is None
    assert ctl.uploads == []  # the global profile untouched


async def test_restoring_a_server_change_reapplies_it_to_that_server(pipeline, discord):
    _, ctl = discord
    first = await pipeline.change(guild_id=SERVER)
    assert first.status == "applied", first.error
    ctl.guild_members[str(SERVER)] = {}  # someone reset the server look meanwhile
    again = await pipeline.restore(first.id)
    assert again.status == "applied", again.error
    assert again.guild_id == SERVER and pipeline.history.get(again.id).restored_from == first.id
    assert ctl.uploads == [] and len(ctl.guild_uploads) == 2
    assert ctl.guild_uploads[1][2].data == ctl.guild_uploads[0][2].data
    assert ctl.guild_members[str(SERVER)]["bio"] == first.upload.bio  # the restored change's credit


async def test_a_server_the_bot_is_not_in_fails_at_upload_and_keeps_the_avatar(discord, art_dir, tmp_path):
    api, ctl = discord
    two = _folder(tmp_path, art_dir, "two", "eileen happy.png", "eileen vhappy.png")  # a post is used once only
    settings = load_settings(data_dir=tmp_path / "d", source=f"local:{two}", candidates=1, discord_token=TOKEN,
                             discord_api=api, guild_looks={"404040": {}, "31337": {}})
    async with AvatarPipeline(settings) as p:
        for guild, status in ((404040, 403), (31337, 404)):
            record = await p.change(guild_id=guild)
            assert record.status == "failed" and record.failed_stage == "upload"
            assert record.upload.status_code == status and f"member of server {guild}" in record.error
            assert Path(record.avatar_path).is_file()
    assert ctl.guild_members == {} and ctl.uploads == []


async def test_a_dry_run_server_change_touches_nothing(pipeline, discord):
    _, ctl = discord
    record = await pipeline.change(guild_id=SERVER, dry_run=True)
    assert record.status == "dry-run" and record.guild_id == SERVER and record.upload.guild_id == SERVER
    assert ctl.guild_members == {} and ctl.uploads == []


async def test_a_servers_booru_look_searches_its_tag_and_credits_the_artist_in_the_bio(discord, art_dir, tmp_path):
    """A server whose look is Danbooru with a character of its own: the search asks for that tag, the
    verifier checks it, and the bio credits the post's (very long, Markdown-laden) artist within 400."""
    api, ctl = discord
    artist = "*kagamine*_" + "r" * 500 + "_(artist)"
    lucy = make_post(art_dir / "lucy happy.png", 2001, characters=["lucy_(ren'py)"], artist=artist,
                     general=["1girl", "solo", "smile", "red_hair"])
    booru = create_danbooru(posts=[lucy], art_dir=art_dir)
    with serve_app(booru) as danbooru_url:
        settings = load_settings(
            data_dir=tmp_path / "data", source="local:/nonexistent", candidates=1, discord_token=TOKEN,
            discord_api=api, danbooru_url=danbooru_url, min_side=64,
            guild_looks={str(SERVER): {"source": "danbooru", "character_tag": "lucy_(ren'py)", "character_name": "Lucy"}})
        async with AvatarPipeline(settings) as p:
            record = await p.change(guild_id=SERVER)
    assert record.status == "applied", record.error
    assert record.source.artist == artist and record.verification.is_character
    searched = [r.params.get("tags", "") for r in booru.state.control.requests if r.path == "/posts.json"]
    assert searched and all("lucy_(ren'py)" in q and "hatsune_miku" not in q for q in searched)
    bio = ctl.guild_members[str(SERVER)]["bio"]
    page = record.source.page_url
    assert page.startswith(danbooru_url) and bio.endswith(" · " + page) and bio.startswith(r"Art by \*kagamine\*\_rrr")
    assert len(bio) <= 400 and bio == record.upload.bio and "…" in bio and ctl.uploads == []


async def test_with_miku_banner_a_server_gets_its_own_banner_too(discord, art_dir, tmp_path):
    """MIKU_BANNER on: the server's avatar and banner go in one member PATCH; the global profile (avatar and
    banner) stays as it was; a restore of that change sends both to the same server again."""
    api, ctl = discord
    art = composed(art_dir, tmp_path / "art")
    settings = load_settings(data_dir=tmp_path / "data", source=f"local:{art}", candidates=1, discord_token=TOKEN,
                             discord_api=api, banner=True, guild_looks={str(SERVER): {"bio_credit": False}})
    async with AvatarPipeline(settings) as p:
        record = await p.change(guild_id=SERVER)
        assert record.status == "applied", record.error
        banner = Path(record.banner_path).read_bytes()
        assert [(g, f) for g, f, _ in ctl.guild_uploads] == [(str(SERVER), "avatar"), (str(SERVER), "banner")]
        assert ctl.guild_uploads[1][2].data == banner and record.upload.banner == hashlib.md5(banner).hexdigest()
        assert ctl.guild_members[str(SERVER)]["banner"] == record.upload.banner
        assert ctl.uploads == [] and ctl.banners == [] and ctl.avatar_hash is None  # the global profile
        patches = [r for r in ctl.requests if r["method"] == "PATCH"]
        assert [r["path"] for r in patches] == [f"/api/v10/guilds/{SERVER}/members/@me"]

        again = await p.restore(record.id)
        assert again.status == "applied" and again.guild_id == SERVER, again.error
        assert [f for _, f, _ in ctl.guild_uploads[2:]] == ["avatar", "banner"] and ctl.guild_uploads[3][2].data == banner
        assert ctl.uploads == [] and ctl.banners == []


async def test_a_server_change_is_neither_announced_nor_recolours_the_role(pipeline, discord):
    """The announcement and the role colour follow the global avatar; a server's own look changes neither."""
    _, ctl = discord
    settings = pipeline.settings.model_copy(update={"announce_channel_id": 4242, "guild_id": SERVER,
                                                    "colour_role_id": 555})
    after = AfterChange(settings)
    server = await pipeline.change(guild_id=SERVER)
    await after(server)
    assert server.status == "applied" and ctl.messages == [] and ctl.roles == {} and after.outcomes == []
    everywhere = await pipeline.change()
    await after(everywhere)
    assert everywhere.status == "applied" and len(ctl.messages) == 1 and ("99", "555") in ctl.roles


# --- /pfp change in a server ------------------------------------------------------------------------------------

@pytest.fixture
async def bot(pipeline, discord):
    api, ctl = discord
    state = BotState(ChangeRunner(pipeline), edit_interval_s=0.0)
    client = discordpy.Client(intents=discordpy.Intents(guilds=True))
    at_api(client, api)
    await client.login(TOKEN)
    try:
        yield state, client, ctl
    finally:
        await client.close()


def in_server(client: discordpy.Client, *, manage: bool, user_id: int = 1001, guild: int = SERVER) -> InteractionContext:
    """An interaction as Discord sends it from a server; who asked and where is read from the payload."""
    data = interaction_payload(Invoker(user_id=user_id, name="someone"), next(_tokens),
                               discordpy.Permissions(manage_guild=manage))
    data["guild_id"] = data["channel"]["guild_id"] = str(guild)
    return InteractionContext(discordpy.Interaction(data=data, state=client._connection))


async def test_pfp_change_in_a_server_with_a_look_changes_that_server_only(bot):
    state, client, ctl = bot
    ctx = in_server(client, manage=True)
    assert ctx.invoker.guild_id == SERVER and ctx.invoker.manage_guild
    record = await pfp_change(ctx, state)
    assert record is not None and record.status == "applied" and record.guild_id == SERVER, record
    assert ctl.uploads == [] and ctl.guild_members[str(SERVER)]["avatar"]
    final = ctl.interactions[ctx.interaction.token][-1]["content"]
    assert "New avatar applied" in final and "this server's look only" in final and f"server {SERVER}" in final

    # Asked for the global profile in the same server: the global avatar changes, the server's stays.
    ctx = in_server(client, manage=True)
    record = await pfp_change(ctx, state, scope="global")
    assert record.status == "applied" and record.guild_id is None and len(ctl.uploads) == 1
    assert "global profile" in ctl.interactions[ctx.interaction.token][-1]["content"]
    assert len(ctl.guild_uploads) == 1

    text = await pfp_history(in_server(client, manage=True), state)
    assert text is not None and "**#1** applied" in text and f"server {SERVER}" in text.splitlines()[2]
    assert "server" not in text.splitlines()[1]  # #2, the global profile's change


async def test_pfp_change_refuses_non_admins_and_scopes_that_cannot_be(bot):
    state, client, ctl = bot
    stranger = in_server(client, manage=False, user_id=2002)
    assert await pfp_change(stranger, state) is None
    (answer,) = ctl.interactions[stranger.interaction.token]
    assert answer["type"] == 4 and answer["data"]["flags"] == 64 and "Manage Server" in answer["data"]["content"]

    elsewhere = in_server(client, manage=True, guild=5151)  # a server without a look of its own
    assert await pfp_change(elsewhere, state, scope="server") is None
    assert "no look of its own" in ctl.interactions[elsewhere.interaction.token][0]["data"]["content"]

    assert state.runner.pipeline.history.list() == [] and ctl.uploads == [] and ctl.guild_members == {}

    # Without a scope, a server with no look of its own keeps /pfp change's old meaning: the global profile.
    default = in_server(client, manage=True, guild=5151)
    record = await pfp_change(default, state)
    assert record.status == "applied" and record.guild_id is None and len(ctl.uploads) == 1


# --- the CLI -------------------------------------------------------------------------------------------------------

def test_cli_pfp_change_guild(discord, looks, tmp_path):
    api, ctl = discord
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIKU_", "FACE_DETECTOR"))}
    env.update(MIKU_DISCORD_API=api, MIKU_DISCORD_TOKEN=TOKEN, MIKU_SOURCE=f"local:{looks[0]}", MIKU_CANDIDATES="1",
               MIKU_GUILD_LOOKS=json.dumps({str(SERVER): {"source": f"local:{looks[1]}"}}))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(mikubot_app, "pfp", *args, cwd=tmp_path, env=env)

    r = run("change", "--guild", str(SERVER), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    record = ChangeRecord.model_validate_json(r.stdout)  # the --json output is a whole record
    assert record.status == "applied" and record.guild_id == SERVER
    assert record.source.filename == "lucy happy.png" and ctl.uploads == [] and len(ctl.guild_uploads) == 1

    r = run("change", "--guild", "5151")
    assert r.returncode == 2 and "no look of its own" in r.stderr and str(SERVER) in r.stderr
    r = run("history", "--guild", str(SERVER), "--json")
    assert [row["id"] for row in json.loads(r.stdout)] == [record.id]
    r = run("history", "--global", "--json")
    assert json.loads(r.stdout) == []
    assert TOKEN not in r.stdout + r.stderr
    assert History(tmp_path / "data" / "history.sqlite3").get(record.id).guild_id == SERVER


# --- the panel: a profile card per configured server ---------------------------------------------------------------

def test_the_panel_shows_a_card_per_configured_server(art_dir, tmp_path):
    art = composed(art_dir, tmp_path / "art")
    shutil.copy(art_dir / "lucy happy.png", art / "lucy happy.png")  # a sprite: too small for a banner
    scene = composed(art_dir, tmp_path / "scene")  # the server's own copy of the scene: it always has a banner
    settings = panel_settings(tmp_path / "data", art, banner=True, guild_looks={
        str(SERVER): {"character_name": "Lucy", "source": f"local:{scene}"}, "100": {"source": f"local:{art}"}})

    async def changes() -> tuple[dict, dict]:
        async with AvatarPipeline(settings) as p:  # the bot's changes, on the panel's data directory
            return await p.change(source=f"file:{art}/eileen at uni.png"), await p.change(guild_id=SERVER)

    everywhere, server = asyncio.run(changes())
    assert everywhere.status == server.status == "dry-run", (everywhere.error, server.error)
    assert server.banner_path and server.guild_id == SERVER, (server.source, server.banner_reason)

    with panel_server(settings) as base, httpx.Client(base_url=base) as http:
        page = http.get("/actions/profile-picture").text
        assert f'data-latest="{everywhere.id}"' in page  # the global card: the global profile's latest
        cards = page.split('<figure class="profile-card server-card"')[1:]
        assert [c.split('"')[1] for c in cards] == [str(SERVER), "100"]
        assert f'src="/avatars/{server.id}.png"' in cards[0] and f'src="/avatars/{server.id}/banner.png"' in cards[0]
        assert "Lucy" in cards[0] and f"#{server.id} dry-run" in cards[0]
        assert "no change yet" in cards[1] and "/avatars/" not in cards[1] and "Hatsune Miku" in cards[1]
        for url in (f"/avatars/{server.id}.png", f"/avatars/{server.id}/banner.png"):
            got = http.get(url)
            assert got.status_code == 200 and got.headers["content-type"] == "image/png"
        for profile, ids in ((str(SERVER), [server.id]), ("global", [everywhere.id]), ("100", []),
                             (None, [server.id, everywhere.id])):
            listed = http.get("/profile-picture/history", params={"profile": profile} if profile else {}).json()["changes"]
            assert [c["id"] for c in listed] == ids, profile
        assert listed[0]["guild_id"] == SERVER
        for bad in ("servers", "0", "99999999999999999999", "-1"):
            assert http.get("/profile-picture/history", params={"profile": bad}).status_code == 422, bad
        history = http.get("/history").text
        mine = history.split(f'data-id="{server.id}"')[1].split("</article>")[0]
        assert f"server {SERVER}" in mine
        assert f"server {SERVER}" not in history.split(f'data-id="{everywhere.id}"')[1].split("</article>")[0]

    plain = panel_settings(tmp_path / "data", art)
    with panel_server(plain) as base:
        assert "server-looks" not in loopback.get(f"{base}/actions/profile-picture").text  # none configured: no section


async def test_a_server_avatar_changed_too_fast_fails_clearly_and_keeps_the_avatar(pipeline, discord):
    """The per-server route has Discord's avatar limit too (50035 AVATAR_RATE_LIMIT): the change fails at
    upload with what happened and what to do, and the avatar is kept for a restore."""
    _, ctl = discord
    ctl.member_avatar_changes_allowed = 0
    record = await pipeline.change(guild_id=SERVER)
    assert record.status == "failed" and record.failed_stage == "upload"
    assert "changing your avatar too fast" in record.error and "a few per hour" in record.error
    assert "mikubot pfp restore" in record.error and record.upload.retryable is True
    assert Path(record.avatar_path).is_file() and ctl.guild_uploads == []


async def test_the_bio_follows_the_length_discord_answers(discord, tmp_path):
    """400 is what independent clients enforce; should Discord refuse a bio as longer than N (50035
    BASE_TYPE_MAX_LENGTH, "Must be N or fewer in length."), the credit is made again within N and sent once
    more — the avatar goes on with it."""
    from mikubot.guild_profile import set_guild_look

    api, ctl = discord
    ctl.max_bio_chars = 60
    credit = {"artist": "a_very_long_artist_name_(with_parens)_and_more_words",
              "page_url": "https://danbooru.donmai.us/posts/1234567"}
    assert len(credit_bio(credit) or "") > 60
    png = io.BytesIO()
    Image.new("RGB", (256, 256), (57, 197, 187)).save(png, "PNG")
    settings = load_settings(data_dir=tmp_path / "d", discord_token=TOKEN, discord_api=api)
    result = await set_guild_look(settings, SERVER, png.getvalue(), credit=credit)
    assert result.attempts == 2 and result.bio is not None and len(result.bio) <= 60
    assert ctl.guild_members[str(SERVER)]["bio"] == result.bio == credit_bio(credit, limit=60)
    assert result.to_json()["avatar"] == ctl.guild_members[str(SERVER)]["avatar"] is not None
