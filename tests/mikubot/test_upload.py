"""Uploading through discord.py against the Discord REST emulator over loopback: success, Discord's 429
flow control (waited out by discord.py), and the final errors, each mapped to one clear DiscordError."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from emulators.discord import create_app
from mikubot.config import Settings
from mikubot.discord_rest import AvatarRateLimited, DiscordError, DiscordUnavailable, RateLimited, Unauthorized
from mikubot.upload import set_avatar, whoami
from servers import free_port, serve_app


def png(size: int = 64, colour: tuple[int, int, int] = (57, 197, 187)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "PNG")
    return buf.getvalue()


def settings(api: str, token: str = "good-token", **kw) -> Settings:
    return Settings(discord_api=api, discord_token=token, **kw)


@pytest.fixture
def discord():
    app, ctl = create_app(token="good-token", bucket_limit=50)
    with serve_app(app) as base:
        yield f"{base}/api/v10", ctl


async def test_upload_applies_avatar(discord):
    api, ctl = discord
    result = await set_avatar(settings(api), png())
    assert result.attempts == 1 and result.rate_limits == []
    assert ctl.uploads and ctl.uploads[-1].width == 64 and ctl.uploads[-1].format == "PNG"
    assert result.user["avatar"] == ctl.uploads[-1].avatar_hash and result.user["username"] == "Miku"
    # discord.py logged in first (the token check and the application), then sent the avatar.
    assert [(r["method"], r["path"]) for r in ctl.requests] == [
        ("GET", "/api/v10/users/@me"), ("GET", "/api/v10/oauth2/applications/@me"), ("PATCH", "/api/v10/users/@me")]


async def test_429_waits_retry_after_then_succeeds(discord):
    api, ctl = discord
    ctl.force_429, ctl.retry_after_s = 2, 0.2
    result = await set_avatar(settings(api), png())
    assert result.attempts == 3
    assert [r["retry_after"] for r in result.rate_limits] == [0.2, 0.2]
    assert len(ctl.uploads) == 1


async def test_429_beyond_the_bound_is_a_clear_retryable_error(discord):
    api, ctl = discord
    ctl.force_429, ctl.retry_after_s = 10, 45.0  # discord.py never waits less than 30 s before giving up
    with pytest.raises(RateLimited) as err:
        await set_avatar(settings(api, upload_max_wait_s=1.0), png())
    assert err.value.retryable and err.value.retry_after == 45.0
    assert "restore" in err.value.message and "MIKU_UPLOAD_MAX_WAIT_S" in err.value.message
    assert not ctl.uploads


async def test_a_bucket_spent_by_someone_else_is_waited_out():
    """Another client spent the route's bucket (1 per 3 s): our upload meets a 429 with the bucket's
    headers, discord.py waits it out, then 200. (A bucket our own client spends, discord.py waits out
    before returning: tests/mikubot/test_discord_conformance.py.)"""
    app, ctl = create_app(token="t", bucket_limit=1, bucket_window_s=3.0)
    avatar = "data:image/png;base64," + base64.b64encode(png()).decode()
    with serve_app(app) as base:
        async with httpx.AsyncClient() as other:
            r = await other.patch(f"{base}/api/v10/users/@me", json={"avatar": avatar}, headers={"Authorization": "Bot t"})
            assert r.status_code == 200 and r.headers["x-ratelimit-remaining"] == "0"
        result = await set_avatar(settings(f"{base}/api/v10", "t"), png(colour=(1, 2, 3)))
    assert result.attempts == 2 and len(ctl.uploads) == 2
    (limit,) = result.rate_limits
    assert limit["bucket"] == "b3a0f4c1e2d5users@me" and 0 < limit["retry_after"] <= 3.0 and not limit["global"]


async def test_real_429_response_carries_discord_headers():
    app, _ = create_app(token="t", bucket_limit=0, bucket_window_s=2.0)
    avatar = "data:image/png;base64," + base64.b64encode(png()).decode()
    with serve_app(app) as base:
        async with httpx.AsyncClient() as c:
            r = await c.patch(f"{base}/api/v10/users/@me", json={"avatar": avatar}, headers={"Authorization": "Bot t"})
    assert r.status_code == 429
    assert r.json()["message"] == "You are being rate limited." and r.json()["global"] is False
    assert 0 < r.json()["retry_after"] <= 2.0
    for h in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset-after", "x-ratelimit-bucket",
              "x-ratelimit-scope", "retry-after", "via"):
        assert h in r.headers


async def test_bad_token_is_401(discord):
    api, ctl = discord
    with pytest.raises(Unauthorized, match="MIKU_DISCORD_TOKEN"):
        await set_avatar(settings(api, "wrong"), png())
    with pytest.raises(Unauthorized):
        await whoami(settings(api, "wrong"))
    assert (await whoami(settings(api)))["username"] == "Miku"
    assert not ctl.uploads


async def test_avatar_too_fast_is_its_own_error(discord):
    api, ctl = discord
    ctl.avatar_changes_allowed = 1
    await set_avatar(settings(api), png())
    with pytest.raises(AvatarRateLimited, match="changing your avatar too fast") as err:
        await set_avatar(settings(api), png())
    assert err.value.retryable and "mikubot pfp restore" in err.value.message
    assert len(ctl.uploads) == 1


async def test_emulator_rejects_invalid_images(discord):
    api, ctl = discord
    h = {"Authorization": "Bot good-token"}
    async with httpx.AsyncClient() as c:
        for avatar in ("not a data uri", "data:image/png;base64,!!!!", "data:image/png;base64,aGVsbG8=",
                       "data:image/webp;base64,aGVsbG8=", "data:image/bmp;base64,Qk0="):
            r = await c.patch(f"{api}/users/@me", json={"avatar": avatar}, headers=h)
            assert r.status_code == 400 and r.json()["code"] == 50035, avatar
            assert r.json()["errors"]["avatar"]["_errors"][0]["code"] == "IMAGE_INVALID"
    ctl.max_avatar_bytes = 100
    with pytest.raises(DiscordError, match="larger than"):
        await set_avatar(settings(api), png(256))
    assert not ctl.uploads


async def test_formats_discord_accepts(discord):
    api, ctl = discord
    for fmt in ("JPEG", "GIF", "WEBP"):
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, fmt)
        if fmt == "WEBP":  # discord.py would send it; Discord's image data is JPG, GIF or PNG only
            with pytest.raises(DiscordError, match="Invalid image data"):
                await set_avatar(settings(api), buf.getvalue())
        else:
            await set_avatar(settings(api), buf.getvalue())
            assert ctl.uploads[-1].format == fmt
    with pytest.raises(DiscordError, match="Unsupported image type"):
        await set_avatar(settings(api), b"BM not an image discord.py can send")


async def test_server_errors_retry_then_fail_clearly(discord):
    api, ctl = discord
    ctl.force_status, ctl.force_status_count = 502, 1  # discord.py retries 500/502/504 once a second or more
    await set_avatar(settings(api), png())
    assert [r["status"] for r in ctl.requests][:2] == [502, 200] and len(ctl.uploads) == 1
    ctl.force_status, ctl.force_status_count = 503, 10  # others are final
    with pytest.raises(DiscordUnavailable, match="503"):
        await set_avatar(settings(api), png())


async def test_discord_down_is_a_clear_error():
    with pytest.raises(DiscordUnavailable, match="cannot reach Discord"):
        await set_avatar(settings(f"http://127.0.0.1:{free_port()}/api/v10", "t"), png())


async def test_a_429_that_is_not_discords_fails_at_once(discord):
    """A 429 without Discord's Via header (a Cloudflare edge refusing the host): discord.py does not
    wait it out, and the error says it is a rate limit, not a refused avatar."""
    api, ctl = discord
    ctl.force_429, ctl.send_via = 1, False
    with pytest.raises(RateLimited, match=r"\(429\)") as err:
        await set_avatar(settings(api), png())
    assert err.value.retryable and not ctl.uploads
