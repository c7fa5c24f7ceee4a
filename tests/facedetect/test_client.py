"""FaceDetectClient / AsyncFaceDetectClient against the real API on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from facedetect.api import create_app
from facedetect.client import AsyncFaceDetectClient, FaceDetectClient, FaceDetectClientError
from facedetect.errors import FaceDetectError
from facedetect.settings import FaceDetectSettings
from facedetect.types import DetectionResult
from servers import free_port, serve_app


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    app = create_app(FaceDetectSettings(outputs=tmp_path_factory.mktemp("client-out")))
    with serve_app(app) as base:
        yield base


@pytest.fixture(scope="module")
def eileen(art_dir) -> bytes:
    return (art_dir / "eileen happy.png").read_bytes()


def test_detect_returns_a_detection_result(url, eileen, face_labels):
    with FaceDetectClient(url) as client:
        result = client.detect(eileen, "eileen happy.png")
    assert isinstance(result, DetectionResult)
    assert result.count == 1 and result.backend == "animeface"
    assert (result.image.width, result.image.height) == (320, 720)
    x1, y1, x2, y2 = result.detections[0].bbox
    lx1, ly1, lx2, ly2 = face_labels["eileen happy.png"][0]
    assert abs(x1 - lx1) < 30 and abs(y2 - ly2) < 30
    assert len(result.detections[0].keypoints) == len(result.keypoint_names) == 5


def test_detect_full_carries_the_server_paths_and_options(url, eileen):
    with FaceDetectClient(url + "/") as client:
        full = client.detect_full(eileen, "e.png", annotate=False, min_confidence=0.5, max_faces=1)
    assert full.annotated_image is None
    assert Path(full.json_file).exists()
    assert full.raw["count"] == full.result.count == 1


def test_unload_load_health(url):
    with FaceDetectClient(url) as client:
        assert client.unload()["detector_loaded"] is False
        assert client.health()["detector_loaded"] is False
        assert client.load()["detector_loaded"] is True
        assert client.health()["status"] == "healthy"


def test_bad_image_raises_with_the_api_message(url):
    with FaceDetectClient(url) as client, pytest.raises(FaceDetectClientError) as info:
        client.detect(b"not an image at all", "x.txt")
    assert info.value.status_code == 415
    assert "not an image" in str(info.value)
    assert isinstance(info.value, FaceDetectError) and not info.value.unreachable


def test_bad_parameter_raises_422(url, eileen):
    with FaceDetectClient(url) as client, pytest.raises(FaceDetectClientError) as info:
        client.detect(eileen, min_confidence=3.0)
    assert info.value.status_code == 422 and "min_confidence" in info.value.message


def test_unreachable_server_is_a_clear_error():
    dead = f"http://127.0.0.1:{free_port()}"
    with FaceDetectClient(dead, timeout=2) as client, pytest.raises(FaceDetectClientError) as info:
        client.health()
    assert info.value.unreachable and info.value.status_code == 503
    assert dead in info.value.message


async def test_async_client(url, eileen):
    async with AsyncFaceDetectClient(url) as client:
        result = await client.detect(eileen, "eileen happy.png", max_faces=1)
        assert result.count == 1
        assert (await client.unload())["detector_loaded"] is False
        assert (await client.load())["detector_loaded"] is True
        assert (await client.health())["backend"] == "animeface"
        with pytest.raises(FaceDetectClientError) as info:
            await client.detect(b"", "empty.png")
    assert info.value.status_code == 400 and "empty" in info.value.message


async def test_async_client_unreachable():
    async with AsyncFaceDetectClient(f"http://127.0.0.1:{free_port()}", timeout=2) as client:
        with pytest.raises(FaceDetectClientError) as info:
            await client.detect(b"x")
    assert info.value.unreachable
