"""A custom image through the panel: bounded intake with the detector's 400/413/415, the crop preview
(the same detect + crop as a change), and "apply" as an ordinary, recorded change."""

from __future__ import annotations

import asyncio
import io
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from facedetect.types import iou
from mikubot.crop import face_in_circle
from mikubot.web import create_app
from mikubot.web.state import PanelState
from mikubot.web.upload import PREVIEW_WORKERS, PixelBudget, prune_uploads
import loopback
from panel_helpers import TOKEN, bearer, panel_server, panel_settings, read_sse, sprite_folder, until
from servers import serve_app


@pytest.fixture(scope="module")
def base(art_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    art = sprite_folder(art_dir, tmp_path_factory.mktemp("art"), ("lucy happy.png",))
    with panel_server(panel_settings(tmp_path_factory.mktemp("data"), art, max_download_mib=2.0)) as url:
        yield url


@pytest.fixture()
def client(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=60) as c:
        yield c

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


@pytest.mark.parametrize("kwargs, status, detail", [
    ({"content": b"raw bytes", "headers": {"Content-Type": "image/png"}}, 415, "multipart"),
    ({"data": {"note": "no file"}, "files": {"other": ("a.txt", b"x", "text/plain")}}, 400, "field 'file'"),
])
def test_malformed_forms_are_4xx(client: httpx.Client, kwargs: dict, status: int, detail: str) -> None:
    """The detector's own reader answers (the same words as POST /detect): 415 not multipart, 400 no file."""
    headers = {**bearer(), **kwargs.pop("headers", {})}
    r = client.post("/profile-picture/upload", headers=headers, **kwargs)
    assert r.status_code == status and detail in r.json()["detail"]


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


# --- bounds: previews at once, pixels at once, uploads kept -------------------------------------------------
@pytest.fixture(scope="module")
def bounded(art_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, PanelState]]:
    """A panel where two previews may run and none wait, and two stored uploads are kept."""
    art = sprite_folder(art_dir, tmp_path_factory.mktemp("art"), ("lucy happy.png",))
    app = create_app(panel_settings(tmp_path_factory.mktemp("data"), art, upload_preview_queue=0, uploads_kept=2))
    with serve_app(app) as url:
        yield url, app.state.panel


def test_previews_past_the_queue_are_503_before_the_upload_is_read(bounded: tuple[str, PanelState],
                                                                   art_dir: Path) -> None:
    base, state = bounded
    gate = state.previews.admission
    host, port = base.removeprefix("http://").split(":")
    head = (f"POST /profile-picture/upload HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 900000\r\n\r\n--b\r\n").encode()
    slow = [socket.create_connection((host, int(port)), timeout=30) for _ in range(PREVIEW_WORKERS)]
    try:
        for sock in slow:  # two uploads that never finish sending: each holds a place while it is read
            sock.sendall(head)
        until(lambda: gate.admitted == PREVIEW_WORKERS, "both slow uploads admitted")
        data = (art_dir / "lucy mad.png").read_bytes()
        r = loopback.post(f"{base}/profile-picture/upload", files={"file": ("m.png", data, "image/png")},
                       headers=bearer(), timeout=30)
        assert r.status_code == 503, r.text
        assert int(r.headers["retry-after"]) >= 1 and "upload previews" in r.json()["detail"]
    finally:
        for sock in slow:
            sock.close()
    until(lambda: gate.admitted == 0, "the places given back")
    r = loopback.post(f"{base}/profile-picture/upload", files={"file": ("m.png", data, "image/png")},
                   headers=bearer(), timeout=60)
    assert r.status_code == 200, r.text


def test_only_the_newest_uploads_are_kept(bounded: tuple[str, PanelState], art_dir: Path) -> None:
    base, state = bounded
    folder = state.settings.data_dir / "uploads"
    ids = []
    with httpx.Client(base_url=base, timeout=60, headers=bearer()) as c:
        for name in ("eileen happy.png", "sylvie blue smile.png", "eileen vhappy.png"):
            r = c.post("/profile-picture/upload", files={"file": (name, (art_dir / name).read_bytes(), "image/png")})
            assert r.status_code == 200, r.text
            ids.append(r.json()["upload_id"])
        assert sorted(p.name for p in folder.iterdir()) == sorted(ids[1:])  # the oldest is gone
        assert c.post(f"/profile-picture/upload/{ids[0]}/apply").status_code == 404
        assert c.get(f"/profile-picture/upload/{ids[2]}/preview.png").status_code == 200


def test_prune_uploads_by_count_and_age(tmp_path: Path) -> None:
    now = 1_000_000.0
    ids = [f"{i:064x}" for i in range(5)]
    for age_h, upload_id in zip((50, 40, 30, 2, 1), ids):
        (tmp_path / upload_id / "image").mkdir(parents=True)
        os.utime(tmp_path / upload_id, (now - age_h * 3600, now - age_h * 3600))
    (tmp_path / "not-an-upload").mkdir()
    removed = prune_uploads(tmp_path, keep_count=3, max_age_s=35 * 3600, keep=ids[0], now=now)
    assert sorted(removed) == sorted([ids[1]])  # past the age (ids[0] is the one being stored)
    removed = prune_uploads(tmp_path, keep_count=2, max_age_s=35 * 3600, now=now)
    assert sorted(removed) == sorted([ids[0], ids[2]])  # over the count, and too old
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ids[3], ids[4], "not-an-upload"])


async def test_the_pixel_budget_lets_big_previews_run_one_at_a_time() -> None:
    budget = PixelBudget(40_000_000)
    order: list[str] = []
    first_in = asyncio.Event()
    release_first = asyncio.Event()

    async def preview(name: str, pixels: int, hold: asyncio.Event | None = None) -> None:
        async with budget.hold(pixels):
            order.append(name)
            if hold is not None:
                first_in.set()
                await hold.wait()

    big1 = asyncio.create_task(preview("big1", 39_700_000, release_first))
    await first_in.wait()
    big2 = asyncio.create_task(preview("big2", 39_700_000))
    huge = asyncio.create_task(preview("huge", 90_000_000))  # over the budget: runs alone, never forever blocked
    small = asyncio.create_task(preview("small", 200_000))
    await small
    assert order == ["big1", "small"] and budget.used == 39_700_000  # the big ones wait for room
    release_first.set()
    await asyncio.gather(big1, big2, huge)
    assert sorted(order[2:]) == ["big2", "huge"] and budget.used == 0
