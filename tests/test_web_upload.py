"""A custom image through the panel: bounded intake with the detector's 400/413/415, the crop preview
(the same detect + crop as a change), and "apply" as an ordinary, recorded change."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from mikubot.crop import face_in_circle
from panel_helpers import bearer, panel_server, panel_settings, read_sse, sprite_folder


@pytest.fixture(scope="module")
def base(art_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    art = sprite_folder(art_dir, tmp_path_factory.mktemp("art"), ("lucy happy.png",))
    with panel_server(panel_settings(tmp_path_factory.mktemp("data"), art, max_download_mib=2.0)) as url:
        yield url


@pytest.fixture()
def client(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=60) as c:
        yield c


def iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_upload_preview_then_apply(client: httpx.Client, art_dir: Path, face_labels: dict) -> None:
    name = "eileen happy.png"
    data = (art_dir / name).read_bytes()
    r = client.post("/profile-picture/upload", files={"file": (name, data, "image/png")}, headers=bearer())
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["crop_method"] == "face" and len(p["upload_id"]) == 64
    # The preview's face is the hand-labelled one, and it sits inside the round avatar.
    assert iou(p["face_box"], face_labels[name][0]) > 0.4
    inside, _ = face_in_circle(p["face_box"], p["crop_box"])
    assert inside
    png = client.get(p["preview_url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    im = Image.open(io.BytesIO(png.content))
    assert im.size == tuple(p["crop"]["size"]) and im.width == im.height
    assert client.get(p["annotated_url"]).headers["content-type"] == "image/jpeg"

    assert client.post(p["apply_url"]).status_code == 401
    applied = client.post(p["apply_url"], headers=bearer())
    assert applied.status_code == 202
    frames = read_sse(client, applied.json()["events_url"])
    assert frames[-1][2]["status"] == "dry-run"
    rec = client.get(f"/profile-picture/changes/{applied.json()['change_id']}").json()
    assert rec["source"] == "file" and rec["crop_box"] == [float(v) for v in p["crop_box"]]
    assert rec["candidates"][0]["filename"] == name  # the owner's file name, not a hash
    assert client.get(rec["avatar_url"]).content == png.content  # the preview is exactly what was applied


def test_a_bmp_upload_previews_and_applies(client: httpx.Client, art_dir: Path) -> None:
    """Every format the preview reads, the change reads too (one format table): a BMP is applied, not
    refused by the file source after a good preview."""
    with Image.open(art_dir / "eileen vhappy.png") as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, "BMP")
    r = client.post("/profile-picture/upload", files={"file": ("portrait.bmp", buf.getvalue(), "image/bmp")},
                    headers=bearer())
    assert r.status_code == 200, r.text
    p = r.json()
    applied = client.post(p["apply_url"], params={"wait": "true"}, headers=bearer())
    assert applied.status_code == 200, applied.text
    rec = applied.json()
    assert rec["status"] == "dry-run", rec["error"]
    assert rec["source"]["filename"] == "portrait.bmp" and rec["crop_box"] == [float(v) for v in p["crop_box"]]


def test_upload_needs_the_token_before_reading_anything(client: httpx.Client) -> None:
    r = client.post("/profile-picture/upload", files={"file": ("a.png", b"\x89PNG....", "image/png")})
    assert r.status_code == 401


@pytest.mark.parametrize("payload, status", [
    (b"hello, not an image", (400, 415)),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, (400, 415)),  # a PNG signature with nothing behind it
    (b"GIF89a" + b"\x01" * 10, (400, 415)),
    (b"", (400,)),
])
def test_bad_images_get_4xx_json(client: httpx.Client, payload: bytes, status: tuple[int, ...]) -> None:
    r = client.post("/profile-picture/upload", files={"file": ("x.png", payload, "image/png")}, headers=bearer())
    assert r.status_code in status, (r.status_code, r.text)
    assert r.json()["detail"]


def test_truncated_png_is_400(client: httpx.Client, art_dir: Path) -> None:
    data = (art_dir / "lucy mad.png").read_bytes()
    r = client.post("/profile-picture/upload", files={"file": ("t.png", data[: len(data) // 2], "image/png")}, headers=bearer())
    assert r.status_code == 400 and r.json()["detail"]


def test_unsupported_format_is_415(client: httpx.Client) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "teal").save(buf, "TIFF")
    r = client.post("/profile-picture/upload", files={"file": ("x.tiff", buf.getvalue(), "image/tiff")}, headers=bearer())
    assert r.status_code == 415 and r.json()["detail"]


def test_too_large_is_413_even_without_content_length(client: httpx.Client) -> None:
    big = b"\x89PNG\r\n\x1a\n" + b"\x00" * (3 * 1024 * 1024)
    r = client.post("/profile-picture/upload", files={"file": ("big.png", big, "image/png")}, headers=bearer())
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # chunked transfer: no Content-Length to trust
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n"
        for _ in range(48):
            yield b"\x00" * 65536
        yield b"\r\n--b--\r\n"

    r = client.post("/profile-picture/upload", content=chunks(),
                    headers={**bearer(), "Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413


@pytest.mark.parametrize("kwargs, detail", [
    ({"content": b"raw bytes", "headers": {"Content-Type": "image/png"}}, "multipart"),
    ({"data": {"note": "no file"}, "files": {"other": ("a.txt", b"x", "text/plain")}}, "field named 'file'"),
])
def test_malformed_forms_are_400(client: httpx.Client, kwargs: dict, detail: str) -> None:
    headers = {**bearer(), **kwargs.pop("headers", {})}
    r = client.post("/profile-picture/upload", headers=headers, **kwargs)
    assert r.status_code == 400 and detail in r.json()["detail"]


def test_upload_names_are_cleaned(client: httpx.Client, art_dir: Path, base: str) -> None:
    data = (art_dir / "lucy mad.png").read_bytes()
    r = client.post("/profile-picture/upload", files={"file": ("../../evil<script>.jpg", data, "image/png")}, headers=bearer())
    assert r.status_code == 200
    rec = client.post(r.json()["apply_url"], params={"wait": "true"}, headers=bearer()).json()
    assert rec["source"]["filename"] == "evil_script.png"  # no folders, plain characters, the real format


@pytest.mark.parametrize("upload_id", ["0" * 64, "..", "../history.sqlite3", "A" * 64, "x" * 10])
def test_unknown_uploads_are_404(client: httpx.Client, upload_id: str) -> None:
    assert client.get(f"/profile-picture/upload/{upload_id}/preview.png").status_code == 404
    assert client.post(f"/profile-picture/upload/{upload_id}/apply", headers=bearer()).status_code == 404
