"""MPO (multi-picture JPEG, what many phones and 3D cameras write) is read as the JPEG it starts with,
everywhere, from the one format table: the detector, the panel's upload preview and its apply, a local
folder and the ``file:`` source."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
import loopback
from panel_helpers import bearer, panel_server, panel_settings, sprite_folder
from servers import serve_app

from facedetect import formats
from facedetect.api import create_app as create_detector
from facedetect.imageio import load_image
from facedetect.settings import FaceDetectSettings
from mikubot.sources import FileSource, LocalFolderSource, source_from_spec

FACE = "eileen happy.png"


def mpo_of(art_dir: Path, name: str = FACE) -> bytes:
    """A real two-picture MPO: the sprite on white, then a mirrored copy (a stereo pair's second eye)."""
    with Image.open(art_dir / name) as im:
        rgba = im.convert("RGBA")
    first = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    buf = io.BytesIO()
    first.save(buf, "MPO", save_all=True, append_images=[first.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as check:
        assert check.format == "MPO" and check.n_frames == 2  # what Pillow makes of it: not "JPEG"
    return data


@pytest.fixture(scope="module")
def mpo(art_dir: Path) -> bytes:
    return mpo_of(art_dir)


def test_the_table_reads_mpo_as_jpeg(mpo: bytes) -> None:
    assert formats.extension("MPO") == "jpg" and formats.canonical("MPO") == "JPEG"
    assert ".mpo" in formats.SUFFIXES and mpo.startswith(b"\xff\xd8\xff")  # JPEG's own leading bytes
    image, info = load_image(mpo)
    assert (info.format, info.width, info.height) == ("JPEG", 320, 720) and image.size == (320, 720)


def test_the_detector_finds_the_face_in_an_mpo(mpo: bytes, tmp_path: Path) -> None:
    with serve_app(create_detector(FaceDetectSettings(outputs=tmp_path / "outputs"))) as url:
        r = loopback.post(f"{url}/detect", files={"file": ("stereo.jpg", mpo, "image/jpeg")}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["count"] == 1 and r.json()["image"]["format"] == "JPEG"


async def test_local_folders_and_file_take_mpo(mpo: bytes, art_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "phone.jpg").write_bytes(mpo)  # what a phone names it
    (tmp_path / "camera.MPO").write_bytes(mpo_of(art_dir, "lucy happy.png"))  # what a 3D camera names it
    local = source_from_spec(f"local:{tmp_path}")
    assert isinstance(local, LocalFolderSource)
    found = await local.search(5, set())
    assert sorted(c.filename for c in found) == ["camera.MPO", "phone.jpg"]
    assert {c.file_ext for c in found} == {"jpg"} and local.last_search.accepted == 2
    assert (await local.download(found[0])).data is not None

    single = source_from_spec(f"file:{tmp_path / 'phone.jpg'}")
    assert isinstance(single, FileSource)
    [cand] = await single.search(1, set())
    assert (cand.file_ext, cand.width, cand.height) == ("jpg", 320, 720)
    assert (await single.download(cand)).data == mpo


@pytest.fixture(scope="module")
def panel(art_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    art = sprite_folder(art_dir, tmp_path_factory.mktemp("art"), ("lucy happy.png",))
    with panel_server(panel_settings(tmp_path_factory.mktemp("data"), art)) as url:
        yield url


def test_an_mpo_upload_previews_and_applies(panel: str, mpo: bytes) -> None:
    with httpx.Client(base_url=panel, timeout=60, headers=bearer()) as c:
        r = c.post("/profile-picture/upload", files={"file": ("IMG_0001.MPO", mpo, "image/jpeg")})
        assert r.status_code == 200, r.text
        p = r.json()
        assert p["crop_method"] == "face" and len(p["faces"]) == 1
        applied = c.post(p["apply_url"], params={"wait": "true"})
        assert applied.status_code == 200, applied.text
        rec = applied.json()
        assert rec["status"] == "dry-run", rec["error"]
        assert rec["source"]["filename"] == "IMG_0001.jpg"  # stored under the format's own extension
        assert rec["crop_box"] == [float(v) for v in p["crop_box"]]


def test_a_local_folder_of_mpo_makes_a_change(art_dir: Path, tmp_path: Path, mpo: bytes) -> None:
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "stereo.mpo").write_bytes(mpo)
    shutil.copy(art_dir / "lucy happy.png", tmp_path / "unused.txt")  # not an image name: never a candidate
    with panel_server(panel_settings(tmp_path / "data", tmp_path / "art")) as url:
        rec = loopback.post(f"{url}/profile-picture/change", params={"wait": "true"}, headers=bearer(), timeout=60).json()
    assert rec["status"] == "dry-run", rec["error"]
    assert rec["source"]["filename"] == "stereo.mpo" and rec["crop_method"] == "face"
