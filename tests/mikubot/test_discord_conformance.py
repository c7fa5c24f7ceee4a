"""The Discord REST emulator checked by an independent client: discord.py 2.7's own ``HTTPClient``
(stock, not our subclass; pointed at the emulator through its ``Route.BASE``) and the ``mikubot``
console script, which uploads through discord.py.

What discord.py requires of a real Discord, read from ``discord/http.py`` (``HTTPClient.request``):
a 429 is waited out and retried only when it carries the ``Via`` header and a JSON body with
``retry_after`` (else it is taken for a Cloudflare ban and raised); ``global: true`` holds every route;
``X-RateLimit-Remaining`` and ``X-RateLimit-Bucket`` drive its per-bucket accounting.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
from typing import Any

import aiohttp
import discord
import pytest
from discord.http import HTTPClient, Route
from PIL import Image

from cli_runner import run_cli
from emulators.discord import create_app
from mikubot.cli import app as mikubot_app
from servers import serve_app

TOKEN = "conformance-token"


def png(colour: tuple[int, int, int] = (57, 197, 187)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), colour).save(buf, "PNG")
    return buf.getvalue()


def avatar(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


@pytest.fixture
def emulator(monkeypatch):
    app, ctl = create_app(token=TOKEN, bucket_limit=50)
    with serve_app(app) as base:
        monkeypatch.setattr(Route, "BASE", f"{base}/api/v10")  # discord.py's one API base, restored after
        yield ctl


@pytest.fixture
async def stock_http():
    """discord.py's HTTP client as it ships; a trace records each answer's status and headers."""
    answers: list[tuple[int, Any]] = []

    async def record(_session, _ctx, params: aiohttp.TraceRequestEndParams) -> None:
        answers.append((params.response.status, params.response.headers.copy()))  # case-insensitive

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(record)
    http = HTTPClient(asyncio.get_running_loop(), http_trace=trace)
    try:
        yield http, answers
    finally:
        await http.close()


async def test_a_429_with_discords_headers_is_waited_out_then_200(emulator, stock_http):
    http, answers = stock_http
    me = await http.static_login(TOKEN)
    assert me["username"] == "Miku" and me["bot"] is True
    emulator.force_429, emulator.retry_after_s = 1, 0.3
    user = await http.edit_profile({"avatar": avatar(png())})
    assert [r["status"] for r in emulator.requests if r["method"] == "PATCH"] == [429, 200]
    assert user["avatar"] == emulator.uploads[-1].avatar_hash and len(emulator.uploads) == 1
    status, headers = answers[-2]
    assert status == 429 and headers["Via"] == "1.1 google"
    assert headers["Retry-After"] == "1" and headers["X-RateLimit-Reset-After"] == "0.300"
    assert headers["X-RateLimit-Remaining"] == "0" and headers["X-RateLimit-Bucket"]
    assert answers[-1][0] == 200


async def test_a_global_429_holds_then_200(emulator, stock_http):
    http, answers = stock_http
    await http.static_login(TOKEN)
    emulator.force_429, emulator.retry_after_s, emulator.global_429 = 1, 0.2, True
    await http.edit_profile({"avatar": avatar(png())})
    status, headers = answers[-2]
    assert status == 429 and headers["X-RateLimit-Global"] == "true" and "X-RateLimit-Bucket" not in headers
    assert answers[-1][0] == 200 and len(emulator.uploads) == 1


async def test_remaining_zero_makes_discord_py_wait_before_asking(emulator, stock_http):
    """X-RateLimit-Remaining: 0 with X-RateLimit-Reset-After: discord.py holds the next request on
    that bucket until the reset instead of running into a 429."""
    http, answers = stock_http
    await http.static_login(TOKEN)
    emulator.bucket_limit, emulator.bucket_window_s = 1, 1.0
    await http.edit_profile({"avatar": avatar(png())})
    await http.edit_profile({"avatar": avatar(png((9, 9, 9)))})
    patches = [r for r in emulator.requests if r["method"] == "PATCH"]
    assert [r["status"] for r in patches] == [200, 200] and len(emulator.uploads) == 2  # never ran into the 429
    # Held for the bucket's reset: the first answer is logged after the emulator read its body, so the gap
    # is the window less that work and the answer's travel (half the window left for a loaded machine).
    assert patches[1]["t"] - patches[0]["t"] >= 0.5


async def test_a_429_without_via_is_taken_for_a_ban(emulator, stock_http):
    """Why the emulator must send Via: without it discord.py raises at the first 429."""
    http, _ = stock_http
    await http.static_login(TOKEN)
    emulator.force_429, emulator.send_via = 1, False
    with pytest.raises(discord.HTTPException) as err:
        await http.edit_profile({"avatar": avatar(png())})
    assert err.value.status == 429 and not emulator.uploads


async def test_discord_py_errors_from_the_emulator(emulator, stock_http):
    http, _ = stock_http
    with pytest.raises(discord.LoginFailure):
        await http.static_login("not-the-token")
    await http.static_login(TOKEN)
    emulator.avatar_changes_allowed = 0
    with pytest.raises(discord.HTTPException) as err:
        await http.edit_profile({"avatar": avatar(png())})
    assert err.value.status == 400 and err.value.code == 50035
    assert "In avatar: You are changing your avatar too fast" in err.value.text
    emulator.avatar_changes_allowed = None
    with pytest.raises(discord.HTTPException) as err:
        await http.edit_profile({"avatar": "data:image/png;base64,aGVsbG8="})
    assert err.value.code == 50035 and "In avatar: Invalid image data" in err.value.text


def test_pfp_change_applies_through_discord_py_after_a_429(art_dir, tmp_path):
    """``mikubot pfp change`` (no dry run) against a Discord that first answers 429, then 200."""
    folder = tmp_path / "art"
    folder.mkdir()
    shutil.copy(art_dir / "eileen happy.png", folder / "eileen happy.png")
    app, ctl = create_app(token=TOKEN, bucket_limit=50)
    ctl.force_429, ctl.retry_after_s = 1, 0.3
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIKU_", "FACE_DETECTOR"))}
    with serve_app(app) as base:
        env.update(MIKU_DISCORD_API=f"{base}/api/v10", MIKU_DISCORD_TOKEN=TOKEN)
        r = run_cli(mikubot_app, "pfp", "change", "--source", f"local:{folder}", "--candidates", "1", "--json",
                    cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    record = json.loads(r.stdout)
    assert record["status"] == "applied" and record["uploaded"], record.get("error")
    assert record["upload"]["attempts"] == 2 and record["upload"]["rate_limits"][0]["retry_after"] == 0.3
    patches = [q["status"] for q in ctl.requests if q["method"] == "PATCH" and q["path"].endswith("/users/@me")]
    assert patches == [429, 200] and len(ctl.uploads) == 1
    with open(tmp_path / record["avatar_path"], "rb") as f:  # relative to the working directory
        assert ctl.uploads[0].data == f.read()
    assert TOKEN not in r.stdout + r.stderr


# --- PATCH /guilds/{id}/members/@me (Modify Current Member): a server's own avatar, banner and bio ----------------

def member_fields(**fields: Any) -> dict[str, Any]:
    """What discord.py's ``Member.edit`` sends for the bot's own member: images as its data URIs."""
    return {k: discord.utils._bytes_to_base64_data(v) if isinstance(v, bytes) else v for k, v in fields.items()}


async def test_a_servers_own_avatar_banner_and_bio_through_discord_py(emulator, stock_http):
    http, _ = stock_http
    await http.static_login(TOKEN)
    emulator.member_guilds = {"99", "100"}
    banner = io.BytesIO()
    Image.new("RGB", (600, 240), (19, 122, 127)).save(banner, "JPEG")
    member = await http.edit_my_member(99, reason="look", **member_fields(avatar=png(), banner=banner.getvalue(),
                                                                         bio="Art by someone · https://e.org/p/1"))
    assert member["user"]["id"] == emulator.user_id and member["bio"] == "Art by someone · https://e.org/p/1"
    assert member["avatar"] == emulator.guild_members["99"]["avatar"] == emulator.guild_uploads[0][2].avatar_hash
    assert member["banner"] == emulator.guild_members["99"]["banner"] and emulator.guild_uploads[1][2].format == "JPEG"
    assert emulator.uploads == [] and emulator.user()["avatar"] is None  # the global profile: as it was
    assert "100" not in emulator.guild_members
    state_url = Route.BASE.removesuffix("/api/v10") + "/_emulator/state"  # for a server run in another process
    async with aiohttp.ClientSession() as session, session.get(state_url) as r:
        state = await r.json()
    assert state["guild_members"] == {"99": emulator.guild_members["99"]} and state["member_guilds"] == ["100", "99"]
    assert state["uploads"] == 0
    # null removes the server's own avatar; an empty bio clears it; what is left out stays.
    member = await http.edit_my_member(99, avatar=None, bio="")
    assert member["avatar"] is None and member["bio"] == "" and member["banner"] == emulator.guild_members["99"]["banner"]


async def test_the_member_route_refuses_as_discord_does(emulator, stock_http):
    http, _ = stock_http
    await http.static_login(TOKEN)
    emulator.other_guilds = {"500"}
    with pytest.raises(discord.NotFound) as err:
        await http.edit_my_member(12345, bio="x")
    assert err.value.code == 10004 and "Unknown Guild" in err.value.text
    with pytest.raises(discord.Forbidden) as err:
        await http.edit_my_member(500, bio="x")
    assert err.value.code == 50001
    for fields, says in (
        ({"avatar": "data:image/png;base64,aGVsbG8="}, "In avatar: Invalid image data"),
        ({"banner": "https://example.org/banner.png"}, "In banner: Invalid image data"),
        ({"avatar": "data:image/webp;base64," + base64.b64encode(png()).decode()}, "In avatar: Invalid image data"),
        ({"bio": "b" * 401}, "In bio: Must be 400 or fewer in length."),
        ({"bio": 7}, "In bio: Must be a string."),
    ):
        with pytest.raises(discord.HTTPException) as err:
            await http.edit_my_member(99, **fields)
        assert err.value.status == 400 and err.value.code == 50035 and says in err.value.text, fields
    emulator.max_avatar_bytes = 100
    with pytest.raises(discord.HTTPException) as err:
        await http.edit_my_member(99, **member_fields(avatar=png()))
    assert "In avatar: File cannot be larger than" in err.value.text
    assert (await http.edit_my_member(99, bio="b" * 400))["bio"] == "b" * 400  # the limit itself is fine
    assert emulator.guild_uploads == []


async def test_the_member_route_429_is_waited_out_and_401_comes_before_the_body(emulator, stock_http):
    http, answers = stock_http
    await http.static_login(TOKEN)
    emulator.force_429, emulator.retry_after_s = 1, 0.3
    await http.edit_my_member(99, **member_fields(avatar=png()))
    patches = [r["status"] for r in emulator.requests if r["method"] == "PATCH"]
    assert patches == [429, 200] and len(emulator.guild_uploads) == 1
    status, headers = answers[-2]
    assert status == 429 and headers["Via"] == "1.1 google" and headers["X-RateLimit-Scope"] == "user"
    assert headers["Retry-After"] == "1" and "99" in headers["X-RateLimit-Bucket"]
    assert answers[-1][1]["X-RateLimit-Bucket"] == headers["X-RateLimit-Bucket"]  # one bucket per server

    base = Route.BASE
    async with aiohttp.ClientSession() as session:
        for auth in (None, "Bot wrong-token"):
            async with session.patch(f"{base}/guilds/99/members/@me", data=b"{not json",
                                     headers={"Authorization": auth} if auth else {}) as r:
                assert r.status == 401 and (await r.json())["message"] == "401: Unauthorized"
    assert len(emulator.guild_uploads) == 1


async def test_a_role_colour_as_colors_or_the_deprecated_color(emulator, stock_http):
    """Modify Guild Role takes ``colors`` (what discord.py 2.7's Role.edit sends) and still the deprecated
    ``color``; the role object carries both. A role the server lacks is 404 code 10011."""
    http, _ = stock_http
    await http.static_login(TOKEN)
    new = await http.edit_role(99, 555, colors={"primary_color": 0x39C5BB})
    assert new["colors"]["primary_color"] == new["color"] == 0x39C5BB
    old = await http.edit_role(99, 555, color=0x137A7F)
    assert old["colors"]["primary_color"] == old["color"] == 0x137A7F
    with pytest.raises(discord.HTTPException) as bad:
        await http.edit_role(99, 555, colors={"primary_color": 2**24})
    assert bad.value.code == 50035
    with pytest.raises(discord.NotFound) as missing:
        await http.edit_role(99, 556, colors={"primary_color": 1})
    assert missing.value.code == 10011
    guild = await http.get_guild(99)
    assert [r["id"] for r in guild["roles"]] == ["99", "555"] and guild["roles"][1]["color"] == 0x137A7F
