"""The Gradio UI: its detect function in-process and through the API, a real launch, and what
``facedetect ui`` serves (``ui_app``): uploads capped, same-origin only, the Host rule, temp files removed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from facedetect.api import create_app  # noqa: E402
from facedetect.settings import FaceDetectSettings  # noqa: E402
import loopback
from servers import free_port, run_command, serve_app, venv_bin  # noqa: E402


@pytest.fixture(scope="module")
def ui_module():
    """facedetect.ui, imported when a test of this file runs: Gradio takes seconds to import, and every
    pytest-xdist worker collects this file, the one that does not run it too."""
    from facedetect import ui

    return ui


@pytest.fixture(scope="module")
def blocks(ui_module, tmp_path_factory):
    return ui_module.build_ui(FaceDetectSettings(outputs=tmp_path_factory.mktemp("ui-out")))


def test_detect_in_process(blocks, art_dir):
    image, result = blocks.detector(str(art_dir / "lucy mad.png"), "animeface", 0.0, 0)
    assert image.size == (420, 720) and image.mode == "RGB"
    assert result["count"] == 1 and result["backend"] == "animeface"
    assert result["annotated_image"] is None  # the UI shows the image; it writes no files


def test_threshold_and_max_faces_controls(blocks, art_dir):
    # The sprites' least certain face (most round to 1.0 in the four decimals reported): a bar just above it drops it.
    sylvie = str(art_dir / "sylvie green giggle.png")
    _, loose = blocks.detector(sylvie, "animeface", 0.0, 0)
    (conf,) = [d["confidence"] for d in loose["detections"]]
    assert conf < 1.0
    _, strict = blocks.detector(sylvie, "animeface", (conf + 1.0) / 2, 0)
    assert strict["count"] == 0
    _, kept = blocks.detector(sylvie, "animeface", conf, 0)
    assert kept["count"] == 1
    _, limited = blocks.detector(str(art_dir / "eileen happy.png"), "animeface", 0.0, 1)
    assert limited["count"] == 1


def test_problems_are_shown_not_raised(blocks, tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"definitely not a png")
    assert blocks.detector(None, "animeface", 0.0, 0) == (None, {"error": "upload an image first"})
    image, result = blocks.detector(str(junk), "animeface", 0.0, 0)
    assert image is None and result["status"] == 415 and "not an image" in result["error"]
    _, missing = blocks.detector(str(gone := tmp_path / "gone.png"), "animeface", 0.0, 0)
    assert "cannot read" in missing["error"] and str(gone) in missing["error"]
    _, no_model = blocks.detector(str(junk), "cascade", 0.0, 0)
    assert no_model["status"] in (400, 503) and "error" in no_model


def test_detect_through_the_api(ui_module, tmp_path, art_dir):
    with serve_app(create_app(FaceDetectSettings(outputs=tmp_path / "api-out"))) as url:
        ui = ui_module.build_ui(FaceDetectSettings(api_url=url))
        image, result = ui.detector(str(art_dir / "eileen happy.png"), "animeface", 0.0, 0)
        health = loopback.get(f"{url}/metrics").text
    assert image.size == (320, 720)
    assert result["count"] == 1 and result["annotated_image"].startswith(str(tmp_path / "api-out"))
    assert 'facedetect_requests_total{endpoint="/detect",status="200"} 1.0' in health


def test_launch_serves_the_page(blocks):
    port = free_port()
    blocks.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        r = loopback.get(f"http://127.0.0.1:{port}/", timeout=30)
        assert r.status_code == 200 and "gradio" in r.text.lower()
    finally:
        blocks.close()


def test_ui_binds_loopback_and_sends_no_analytics(tmp_path):
    """`facedetect ui` with no options: 127.0.0.1 only, and Gradio's analytics off (nothing phones home)."""
    port = free_port()
    env = {**os.environ, "FACEDETECT_UI_PORT": str(port), "FACEDETECT_OUTPUTS": str(tmp_path)}
    env["GRADIO_ANALYTICS_ENABLED"] = "True"  # the UI must switch them off itself
    with run_command([venv_bin("facedetect"), "ui"], url=f"http://127.0.0.1:{port}/config", env=env, timeout=120) as proc:
        config = loopback.get(f"http://127.0.0.1:{port}/config", timeout=30).json()
        assert config["analytics_enabled"] is False
        listening = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
        local = {row[1] for row in listening if row[3] == "0A"}  # state 0A: LISTEN
        assert f"0100007F:{port:04X}" in local and f"00000000:{port:04X}" not in local
    said = proc.stdout.read()  # type: ignore[union-attr]
    # Only what a user of ours can act on: where the UI is; not Gradio's advice to open a public share link.
    assert f"facedetect UI on http://127.0.0.1:{port}/" in said and "share" not in said.lower(), said


@pytest.fixture
def guarded_ui(ui_module, tmp_path, monkeypatch):
    """``ui_app`` on a real uvicorn, uploads into its own temporary directory, files kept for a second."""
    uploads = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(uploads))
    settings = FaceDetectSettings(outputs=tmp_path / "out", max_bytes=64 * 1024, ui_cache_s=1, preload=False)
    with serve_app(ui_module.ui_app(settings)) as url:
        yield url, uploads


def files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def upload(url: str, data: bytes, **headers: str) -> httpx.Response:
    return loopback.post(f"{url}/gradio_api/upload", files={"files": ("a.png", data, "image/png")}, headers=headers,
                      timeout=30)


@pytest.mark.parametrize("headers", [{"Origin": "http://evil.example"}, {"Origin": "null"},
                                     {"Sec-Fetch-Site": "cross-site"}])
def test_ui_refuses_a_cross_site_upload(guarded_ui, headers):
    url, uploads = guarded_ui
    r = upload(url, b"x" * 1000, **headers)
    assert r.status_code == 403 and "cross-site" in r.json()["detail"]
    assert files_in(uploads) == []


def test_ui_refuses_a_foreign_host(guarded_ui):
    url, uploads = guarded_ui
    port = url.rsplit(":", 1)[1]
    r = upload(url, b"x" * 1000, Host=f"evil.example:{port}", Origin=f"http://evil.example:{port}")
    assert r.status_code == 400 and "FACEDETECT_ALLOWED_HOSTS" in r.json()["detail"]
    assert loopback.get(url + "/", headers={"Host": f"evil.example:{port}"}).status_code == 400
    assert files_in(uploads) == []


def test_ui_caps_uploads(guarded_ui):
    url, uploads = guarded_ui
    r = upload(url, b"x" * (2 * 1024 * 1024))  # over the body cap: refused before it is read
    assert r.status_code == 413 and "FACEDETECT_MAX_BYTES" in r.json()["detail"]
    r = upload(url, b"x" * (64 * 1024 + 100))  # within the body cap, over the file cap: Gradio's max_file_size
    assert r.status_code == 413
    chunked = loopback.post(f"{url}/gradio_api/upload", content=iter([b"--b\r\n"]),
                         headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert chunked.status_code == 411
    assert files_in(uploads) == []


def test_ui_removes_uploads_after_their_time(guarded_ui):
    url, uploads = guarded_ui
    r = upload(url, b"x" * 1000, Origin=url)  # the UI's own page
    assert r.status_code == 200
    (stored,) = r.json()
    assert Path(stored).is_file() and Path(stored).is_relative_to(uploads)
    deadline = time.monotonic() + 20  # FACEDETECT_UI_CACHE_S=1, swept every second
    while Path(stored).exists():
        assert time.monotonic() < deadline, "the upload was never removed"
        time.sleep(0.1)
