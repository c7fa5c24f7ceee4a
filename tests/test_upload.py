"""Uploading through the Discord REST emulator over loopback: success, 429 flow control, final errors."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from emulators.discord import create_app
from mikubot.upload import (
    AvatarRateLimited,
    DiscordUnavailable,
    DiscordUploader,
    RateLimited,
    Unauthorized,
    UploadError,
    data_uri,
    retry_after_of,
)
from servers import free_port, serve_app


def png(size: int = 64, colour: tuple[int, int, int] = (57, 197, 187)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def discord():
    app, ctl = create_app(token="good-token", bucket_limit=50)
    with serve_app(app) as base:
        yield f"{base}/api/v10", ctl


async def test_upload_applies_avatar(discord):
    api, ctl = discord
    result = await DiscordUploader(api, "good-token").set_avatar(png())
    assert result.attempts == 1
    assert ctl.uploads and ctl.uploads[-1].width == 64 and ctl.uploads[-1].format == "PNG"
    assert result.user["avatar"] == ctl.uploads[-1].avatar_hash


async def test_429_waits_retry_after_then_succeeds(discord):
    api, ctl = discord
    ctl.force_429, ctl.retry_after_s = 2, 0.2
    result = await DiscordUploader(api, "good-token", max_retries=3).set_avatar(png())
    assert result.attempts == 3
    assert result.waited_s == pytest.approx(0.4, abs=0.01)
    assert [r["retry_after"] for r in result.rate_limits] == [0.2, 0.2]
    assert len(ctl.uploads) == 1


async def test_429_beyond_the_bound_is_a_clear_retryable_error(discord):
    api, ctl = discord
    ctl.force_429, ctl.retry_after_s = 10, 5.0
    with pytest.raises(RateLimited) as err:
        await DiscordUploader(api, "good-token", max_wait_s=1.0).set_avatar(png())
    assert err.value.retryable and err.value.retry_after == 5.0
    assert "restore" in err.value.message
    assert not ctl.uploads


async def test_bucket_rate_limit_headers_are_honoured():
    app, ctl = create_app(token="t", bucket_limit=1, bucket_window_s=0.3)
    with serve_app(app) as base:
        up = DiscordUploader(f"{base}/api/v10", "t")
        await up.set_avatar(png())
        second = await up.set_avatar(png(colour=(1, 2, 3)))
        assert second.attempts == 2 and 0 < second.waited_s <= 0.31
        assert second.rate_limits[0]["bucket"] == "b3a0f4c1e2d5users@me"
        assert len(ctl.uploads) == 2


async def test_real_429_response_carries_discord_headers():
    app, ctl = create_app(token="t", bucket_limit=0, bucket_window_s=2.0)
    with serve_app(app) as base:
        r = httpx.patch(f"{base}/api/v10/users/@me", json={"avatar": data_uri(png())}, headers={"Authorization": "Bot t"})
    assert r.status_code == 429
    assert r.json()["message"] == "You are being rate limited." and r.json()["global"] is False
    for h in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset-after", "x-ratelimit-bucket", "retry-after"):
        assert h in r.headers
    assert 0 < retry_after_of(r) <= 2.0


async def test_bad_token_is_401(discord):
    api, ctl = discord
    with pytest.raises(Unauthorized, match="MIKU_DISCORD_TOKEN"):
        await DiscordUploader(api, "wrong").set_avatar(png())
    with pytest.raises(Unauthorized):
        await DiscordUploader(api, "wrong").me()
    assert (await DiscordUploader(api, "good-token").me())["username"] == "Miku"


async def test_avatar_too_fast_is_its_own_error(discord):
    api, ctl = discord
    ctl.avatar_changes_allowed = 1
    up = DiscordUploader(api, "good-token")
    await up.set_avatar(png())
    with pytest.raises(AvatarRateLimited, match="changing your avatar too fast"):
        await up.set_avatar(png())
    assert len(ctl.uploads) == 1


async def test_emulator_rejects_invalid_images(discord):
    api, ctl = discord
    h = {"Authorization": "Bot good-token"}
    async with httpx.AsyncClient() as c:
        for avatar in ("not a data uri", "data:image/png;base64,!!!!", "data:image/png;base64,aGVsbG8=", "data:image/webp;base64,aGVsbG8="):
            r = await c.patch(f"{api}/users/@me", json={"avatar": avatar}, headers=h)
            assert r.status_code == 400 and r.json()["code"] == 50035, avatar
            assert r.json()["errors"]["avatar"]["_errors"][0]["code"] == "IMAGE_INVALID"
    ctl.max_avatar_bytes = 100
    with pytest.raises(UploadError, match="BINARY_TYPE_MAX_SIZE"):
        await DiscordUploader(api, "good-token").set_avatar(png(256))
    assert not ctl.uploads


async def test_server_errors_retry_then_fail_clearly(discord):
    api, ctl = discord
    ctl.force_status_count = 1
    result = await DiscordUploader(api, "good-token", max_retries=2, max_wait_s=2).set_avatar(png())
    assert result.attempts == 2
    ctl.force_status_count = 10
    with pytest.raises(DiscordUnavailable, match="500"):
        await DiscordUploader(api, "good-token", max_retries=1, max_wait_s=2).set_avatar(png())


async def test_discord_down_is_a_clear_error():
    with pytest.raises(DiscordUnavailable, match="cannot reach Discord"):
        await DiscordUploader(f"http://127.0.0.1:{free_port()}/api/v10", "t").set_avatar(png())


def test_data_uri_refuses_other_formats():
    assert data_uri(png()).startswith("data:image/png;base64,")
    with pytest.raises(UploadError, match="not JPEG, PNG or GIF"):
        data_uri(b"RIFF....WEBPVP8 ")
