"""The profile banner (MIKU_BANNER): its geometry against Discord's profile card, the refusal of pictures
too small for one, the change that writes and applies it with the avatar, the restore that re-applies
both, and the Discord emulator's ``banner`` field checked through discord.py's own HTTP client."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import io
import math
import random
from pathlib import Path

import discord
import numpy as np
import pytest
from discord.http import HTTPClient
from emulators.discord import create_app
from panel_helpers import sprite_folder
from PIL import Image
from servers import serve_app
from test_discord_conformance import TOKEN as EMULATOR_TOKEN
from test_discord_conformance import emulator  # noqa: F401  (the fixture: the emulator as discord.py's API base)

from facedetect.types import Detection
from mikubot.banner import (
    CARD_WIDTH,
    MAX_PAD,
    MIN_HEIGHT,
    MIN_WIDTH,
    NoBanner,
    crop_banner,
    face_visible,
    hidden_disc,
    visibility,
)
from mikubot.config import Settings
from mikubot.history import History
from mikubot.pipeline import AvatarPipeline

TOKEN = "banner-token"


@functools.lru_cache(maxsize=None)
def scene(width: int, height: int, seed: int = 1) -> Image.Image:
    """A busy picture (noise over a gradient): saliency has something to say everywhere. Made once per
    size and seed (nothing here draws on it)."""
    rng = np.random.default_rng(seed)
    base = np.linspace(40, 200, width, dtype=np.float32)[None, :, None]
    noise = rng.standard_normal((height, width, 3), dtype=np.float32) * 40
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def face_at(x: float, y: float, side: float) -> Detection:
    return Detection(bbox=(x, y, x + side, y + side), confidence=1.0)


def check_shape(result) -> None:
    w, h = result.image.size
    assert w >= MIN_WIDTH and h >= MIN_HEIGHT and w * 2 == h * 5, (w, h)
    x1, y1, x2, y2 = result.box
    assert abs((x2 - x1) / (y2 - y1) - 2.5) < 0.02 and result.upscale <= 1.25 + 1e-9


# --- geometry ------------------------------------------------------------------------------------------


def test_the_hidden_disc_is_discords_avatar_circle():
    # On a banner drawn at the card's own width the disc is the 80-px avatar at x 16..96 with its 6-px
    # ring, centred on the banner's bottom edge.
    cx, cy, r = hidden_disc((0, 0, CARD_WIDTH, CARD_WIDTH / 2.5))
    assert (cx, cy, r) == pytest.approx((56, 136, 46))
    card = (0, 0, 340, 136)
    assert not face_visible((30, 96, 70, 130), card), "a face under the avatar circle is hidden"
    assert face_visible((150, 30, 200, 80), card)
    assert not face_visible((300, 30, 350, 80), card), "a face past the right edge is cut"
    assert visibility((150, 30, 200, 80), card) == pytest.approx(30 / 340)  # 30 px from the top edge


@pytest.mark.parametrize("size", [(1600, 1000), (1280, 720), (700, 1400), (2400, 900)])
def test_the_face_is_never_under_the_circle_nor_cut(size):
    """Faces all over the picture, corners included (20 per size, 80 in all): each banner is 5:2, at least
    600x240, and shows the face clear of the avatar circle and the edges."""
    image = scene(*size, seed=size[0])
    w, h = size
    rng = random.Random(size[0] * 7 + size[1])
    tried = padded = 0
    for _ in range(20):
        side = rng.uniform(40, min(w, h) * 0.25)
        face = face_at(rng.uniform(0, w - side), rng.uniform(0, h - side), side)
        result = crop_banner(image, face)
        check_shape(result)
        x1, y1, x2, y2 = result.box
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2
        # Only a face too low in the lower left makes the banner reach below the picture, by at most the circle.
        assert y2 <= h or (result.padded and y2 - h <= MAX_PAD * (x2 - x1) and face.bbox[0] < w / 2), result.box
        padded += result.padded
        assert result.method == "face" and result.face_visible, (face.bbox, result.box, result.reason)
        assert face_visible(face.bbox, result.box)
        tried += 1
    assert tried == 20 and padded <= 2


def test_a_face_in_the_lower_left_corner_is_framed_above_the_circle():
    image = scene(1600, 1000)
    face = face_at(5, 1000 - 125, 120)  # where the avatar circle would hide it in a naive crop
    result = crop_banner(image, face)
    assert result.face_visible and face_visible(face.bbox, result.box) and result.padded
    assert "reaches below the picture" in result.reason
    cx, cy, r = hidden_disc(result.box)
    assert math.hypot(max(face.bbox[0], min(cx, face.bbox[2])) - cx, max(face.bbox[1], min(cy, face.bbox[3])) - cy) > r


def test_another_face_is_not_cut_in_half_when_it_need_not_be():
    image = scene(2000, 800)
    chosen, other = face_at(900, 250, 110), face_at(1150, 260, 110)
    result = crop_banner(image, chosen, [chosen, other])
    x1, y1, x2, y2 = result.box
    ox1, oy1, ox2, oy2 = other.bbox
    inside = x1 <= ox1 and ox2 <= x2 and y1 <= oy1 and oy2 <= y2
    outside = ox2 <= x1 or ox1 >= x2 or oy2 <= y1 or oy1 >= y2
    assert inside or outside and result.face_visible


def test_without_a_face_the_widest_frame_by_saliency():
    image = scene(1500, 1000)
    result = crop_banner(image, None)
    check_shape(result)
    assert result.method == "saliency" and result.face is None and result.face_visible is None
    assert result.box[2] - result.box[0] == 1500, "the widest 5:2 frame"


def test_a_picture_too_small_for_600x240_gets_no_banner_and_says_why():
    """A banner is blown up 1.25x at most: a portrait sprite's 320x128 strip would be a soft 2x blow-up."""
    with pytest.raises(NoBanner, match=r"too small for a 600x240 banner: its largest 5:2 crop is 320x128, which "
                                       r"would be blown up 1\.9x and look soft on the profile \(a banner is "
                                       r"upscaled 1\.25x at most\)"):
        crop_banner(scene(320, 720), face_at(100, 50, 100))
    with pytest.raises(NoBanner):
        crop_banner(scene(479, 400), face_at(100, 20, 60))  # 479x192: just over 1.25x short
    result = crop_banner(scene(480, 400), face_at(100, 20, 60))  # 480x192 is just enough at 1.25x
    assert result.image.size == (600, 240) and result.upscale == pytest.approx(1.25)
    with pytest.raises(NoBanner):  # and the avatar's upscaling limit, when lower, wins
        crop_banner(scene(500, 400), face_at(100, 20, 60), max_upscale=1.0)


def test_a_big_picture_is_not_upscaled_past_1200():
    result = crop_banner(scene(3000, 2000), face_at(1400, 500, 300))
    assert result.image.size == (1200, 480) and result.upscale < 1


@pytest.mark.parametrize("face", [face_at(700, 300, 60), face_at(300, 200, 140)])
def test_a_banner_keeps_its_own_pixels_where_the_picture_has_them(face):
    """A small face in a big picture: the frame is at least 600 px of the picture (never a narrow crop
    blown up to 600 or 1200), and the banner is no wider than its frame."""
    result = crop_banner(scene(1600, 1000), face)
    width = result.box[2] - result.box[0]
    assert width >= 600 and result.upscale <= 1.0 + 1e-9 and result.image.width <= width, (result.box, result.upscale)


# --- a change with MIKU_BANNER ----------------------------------------------------------------------------


def composed(art_dir: Path, dest: Path) -> Path:
    """Eileen standing in a 1280x720 scene: room for a 5:2 frame around her face."""
    dest.mkdir(parents=True, exist_ok=True)
    with Image.open(art_dir / "bg uni.jpg") as bg, Image.open(art_dir / "eileen happy.png") as sprite:
        scene_image = bg.convert("RGB")
        figure = sprite.convert("RGBA")
        scene_image.paste(figure, (760, 0), figure)
    scene_image.save(dest / "eileen at uni.png")
    return dest


def settings(tmp_path: Path, art: Path, **kw) -> Settings:
    return Settings(data_dir=tmp_path / "data", source=f"local:{art}", candidates=1, banner=True, **kw)


async def test_a_dry_run_writes_avatar_and_banner_and_records_both(art_dir, tmp_path):
    art = composed(art_dir, tmp_path / "art")
    out = tmp_path / "out" / "avatar.png"
    async with AvatarPipeline(settings(tmp_path, art, dry_run=True)) as p:
        record = await p.change(out=out)
    assert record.status == "dry-run", record.error
    kept = Path(record.banner_path)
    assert kept.name == f"change-{record.id:05d}_banner.png" and kept.parent == Path(record.avatar_path).parent
    assert record.files["banner"] == str(out.with_name("avatar_banner.png"))
    assert out.with_name("avatar_banner.png").read_bytes() == kept.read_bytes()
    with Image.open(kept) as im:
        assert list(im.size) == record.banner_size and im.width * 2 == im.height * 5 and im.width >= MIN_WIDTH
    assert record.face_box and face_visible(tuple(record.face_box), tuple(record.banner_box))
    assert record.banner_reason.startswith("face: the avatar's face") and "clear of the avatar circle" in record.banner_reason
    assert record.upload.banner == record.files["banner"]
    row = History(tmp_path / "data" / "history.sqlite3").get(record.id)
    assert {k: getattr(row, k) for k in ("banner_path", "banner_box", "banner_reason", "banner_size")} == {
        k: getattr(record, k) for k in ("banner_path", "banner_box", "banner_reason", "banner_size")}


async def test_banners_off_by_default_leave_no_banner(art_dir, tmp_path):
    art = sprite_folder(art_dir, tmp_path / "art", ("eileen happy.png",))
    async with AvatarPipeline(Settings(data_dir=tmp_path / "data", source=f"local:{art}", candidates=1,
                                       dry_run=True)) as p:
        record = await p.change()
    assert record.status == "dry-run" and record.banner_path is None and record.banner_reason is None
    assert "banner" not in record.files and not list((tmp_path / "data" / "avatars").glob("*_banner.png"))


async def test_a_picture_too_small_for_a_banner_still_changes_the_avatar(art_dir, tmp_path):
    art = tmp_path / "art"
    art.mkdir()
    with Image.open(art_dir / "eileen happy.png") as im:
        im.resize((256, 576), Image.Resampling.LANCZOS).save(art / "small eileen.png")
    async with AvatarPipeline(settings(tmp_path, art, dry_run=True)) as p:
        record = await p.change()
    assert record.status == "dry-run" and record.avatar_path and Path(record.avatar_path).is_file()
    assert record.banner_path is None and record.banner_box is None
    assert record.banner_reason.startswith("no banner: the picture (256x576) is too small for a 600x240 banner")


async def test_an_applied_change_sets_both_in_one_request_and_restore_reapplies_both(art_dir, tmp_path):
    art = composed(art_dir, tmp_path / "art")
    app, ctl = create_app(token=TOKEN, bucket_limit=50)
    with serve_app(app) as base:
        s = settings(tmp_path, art, discord_token=TOKEN, discord_api=f"{base}/api/v10")
        async with AvatarPipeline(s) as p:
            record = await p.change()
            assert record.status == "applied", record.error
            patches = [r for r in ctl.requests if r["method"] == "PATCH"]
            assert len(patches) == 1 and len(ctl.uploads) == 1 and len(ctl.banners) == 1
            assert ctl.uploads[-1].data == Path(record.avatar_path).read_bytes()
            assert ctl.banners[-1].data == Path(record.banner_path).read_bytes()
            assert record.upload.banner == ctl.banner_hash and record.upload.avatar == ctl.avatar_hash

            restored = await p.restore(record.id)
        assert restored.status == "applied", restored.error
        assert len(ctl.uploads) == 2 and len(ctl.banners) == 2
        assert ctl.banners[-1].data == ctl.banners[0].data and ctl.uploads[-1].data == ctl.uploads[0].data
        assert {k: getattr(restored, k) for k in ("banner_path", "banner_box", "banner_size", "banner_reason")} == {
            k: getattr(record, k) for k in ("banner_path", "banner_box", "banner_size", "banner_reason")}
        row = History(s.history_path).get(restored.id)
        assert row.restored_from == record.id and row.banner_path == record.banner_path

        # MIKU_BANNER off: a restore applies the avatar alone, and says why.
        async with AvatarPipeline(s.model_copy(update={"banner": False})) as p:
            alone = await p.restore(record.id)
        assert alone.status == "applied" and len(ctl.uploads) == 3 and len(ctl.banners) == 2
        assert alone.banner_path is None and "MIKU_BANNER is off" in alone.banner_reason


# --- the emulator's banner field, through discord.py's own HTTP client ---------------------------------------


def image_bytes(fmt: str, size: tuple[int, int] = (600, 240)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (57, 197, 187)).save(buf, fmt)
    return buf.getvalue()


def png_of(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


@pytest.fixture
async def stock_http():
    http = HTTPClient(asyncio.get_running_loop())
    try:
        await http.static_login(EMULATOR_TOKEN)
        yield http
    finally:
        await http.close()


async def test_discord_py_sets_a_banner_and_reads_its_hash(emulator, stock_http):
    for fmt, mime in (("PNG", "image/png"), ("JPEG", "image/jpeg"), ("GIF", "image/gif")):
        data = image_bytes(fmt)
        user = await stock_http.edit_profile({"banner": discord.utils._bytes_to_base64_data(data)})
        assert user["banner"] == hashlib.md5(data).hexdigest() == emulator.banner_hash, fmt
        assert emulator.banners[-1].format == fmt and emulator.banners[-1].mime == mime
    # ClientUser reads the same answer: its banner asset carries the hash.
    state_user = discord.ClientUser(state=discord.Client(intents=discord.Intents.none())._connection, data=user)
    assert state_user.banner is not None and state_user.banner.key == emulator.banner_hash
    user = await stock_http.edit_profile({"banner": None})  # null removes it
    assert user["banner"] is None and emulator.banner_hash is None


@pytest.mark.parametrize("value", ["not a data uri", "data:image/png;base64,!!!!", "data:image/png;base64,aGVsbG8=",
                                   "data:image/bmp;base64,Qk0=", 42])
async def test_a_bad_banner_is_a_form_error_and_nothing_is_kept(emulator, stock_http, value):
    good_avatar = discord.utils._bytes_to_base64_data(image_bytes("PNG", (64, 64)))
    with pytest.raises(discord.HTTPException) as err:
        await stock_http.edit_profile({"avatar": good_avatar, "banner": value})
    # discord.py flattens Discord's nested form errors into "In <field>: <message>" lines.
    assert err.value.status == 400 and err.value.code == 50035
    assert "In banner: Invalid image data" in err.value.text and "In avatar" not in err.value.text
    assert not emulator.uploads and not emulator.banners, "a bad banner keeps the avatar from changing too"


async def test_a_webp_banner_is_refused_like_a_webp_avatar(emulator, stock_http):
    # Reference › Image Data lists JPG, GIF and PNG for every image field; discord.py would send a WebP as is.
    webp = discord.utils._bytes_to_base64_data(image_bytes("WEBP"))
    assert webp.startswith("data:image/webp;base64,")
    with pytest.raises(discord.HTTPException) as err:
        await stock_http.edit_profile({"banner": webp})
    assert err.value.code == 50035 and "In banner: Invalid image data" in err.value.text
    assert not emulator.banners


async def test_bad_avatar_and_banner_are_named_together(emulator, stock_http):
    with pytest.raises(discord.HTTPException) as err:
        await stock_http.edit_profile({"avatar": "data:image/png;base64,aGVsbG8=", "banner": "nope"})
    assert err.value.code == 50035 and "In avatar: Invalid image data" in err.value.text
    assert "In banner: Invalid image data" in err.value.text


async def test_a_banner_over_the_size_limit_is_refused(emulator, stock_http):
    emulator.max_banner_bytes = 1000
    with pytest.raises(discord.HTTPException) as err:
        await stock_http.edit_profile({"banner": data_uri(png_of(scene(900, 360)), "image/png")})
    assert err.value.code == 50035 and "In banner: File cannot be larger than 0 kb." in err.value.text
    assert not emulator.banners


@pytest.mark.parametrize("corner", [(-50, 100), (1550, 100), (500, -40), (1540, 940), (-30, -30)])
def test_a_face_cut_by_the_pictures_edge_is_framed_inside_the_picture(corner):
    """A detector's box may reach past the picture (a face cut by the frame): the banner frames the part
    inside and never asks for pixels the picture does not have."""
    image = scene(1600, 1000)
    result = crop_banner(image, face_at(*corner, 100))
    check_shape(result)
    x1, y1, x2, y2 = result.box
    assert 0 <= x1 < x2 <= 1600 and 0 <= y1 < y2 and (y2 <= 1000 or result.padded)
    assert result.method == "face"
