"""Images wider than a JPEG can be (65 535 px): detection, the panel's preview and a change all answer,
with the annotated copy scaled to 65 500 px instead of a 500 "internal error (OSError)"."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from facedetect.annotate import JPEG_MAX_SIDE
from facedetect.api import create_app
from facedetect.settings import FaceDetectSettings
import loopback
from images import encode
from mikubot.pipeline import AvatarPipeline
from panel_helpers import bearer, panel_server, panel_settings
from servers import serve_app

WIDTH, HEIGHT = 65_600, 300  # 19.7 Mpx: wider than any JPEG


@pytest.fixture(scope="module")
def banner(art_dir: Path) -> bytes:
    im = Image.new("RGB", (WIDTH, HEIGHT), "white")
    im.paste(Image.open(art_dir / "lucy mad.png").convert("RGB").resize((175, 300)), (30_000, 0))
    return encode(im, "PNG")


def test_detect_answers_and_scales_the_annotated_copy(tmp_path: Path, banner: bytes) -> None:
    with serve_app(create_app(FaceDetectSettings(outputs=tmp_path / "out"))) as url:
        r = loopback.post(f"{url}/detect", files={"file": ("wide.png", banner, "image/png")}, timeout=300)
    assert r.status_code == 200, r.text
    with Image.open(r.json()["annotated_image"]) as im:
        assert im.width == JPEG_MAX_SIDE and im.height == round(HEIGHT * JPEG_MAX_SIDE / WIDTH)


def test_panel_upload_of_a_wide_image(tmp_path: Path, banner: bytes) -> None:
    folder = tmp_path / "art"
    folder.mkdir()
    (folder / "wide.png").write_bytes(banner)
    with panel_server(panel_settings(tmp_path / "data", folder, max_download_mib=40)) as base:
        r = loopback.post(f"{base}/profile-picture/upload", files={"file": ("wide.png", banner, "image/png")},
                       headers=bearer(), timeout=300)
        assert r.status_code == 200, r.text
        assert loopback.get(base + r.json()["annotated_url"], timeout=60).status_code == 200


async def test_a_change_of_a_wide_image_is_recorded(tmp_path: Path, banner: bytes) -> None:
    folder = tmp_path / "art"
    folder.mkdir()
    (folder / "wide.png").write_bytes(banner)
    settings = panel_settings(tmp_path / "data", folder, max_download_mib=40)
    async with AvatarPipeline(settings) as pipeline:
        record = await pipeline.change()
    assert record.status == "dry-run", record.error
    with Image.open(record.files["annotated"]) as im:
        assert im.width == JPEG_MAX_SIDE
