"""The detector API over real loopback HTTP (uvicorn), with the real animeface backend."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import httpx
import pytest
from PIL import Image

from facedetect.api import create_app
from facedetect.backends import create_detector
from facedetect.outputs import OutputStore
from facedetect.service import DetectionService
from facedetect.settings import FaceDetectSettings
from facedetect.types import iou
import loopback
from servers import free_port, run_command, serve_app, venv_bin

@pytest.fixture(scope="module")
def eileen(art_dir) -> bytes:
    return (art_dir / "eileen happy.png").read_bytes()


@pytest.fixture(scope="module")
def pair(art_dir) -> bytes:
    """Eileen and Lucy side by side: two faces of different confidence."""
    a = Image.open(art_dir / "eileen happy.png").convert("RGBA")
    b = Image.open(art_dir / "lucy mad.png").convert("RGBA")
    canvas = Image.new("RGBA", (a.width + b.width, max(a.height, b.height)), (255, 255, 255, 255))
    canvas.alpha_composite(a, (0, 0))
    canvas.alpha_composite(b, (a.width, 0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def make_app(tmp_path: Path, **overrides):
    return create_app(FaceDetectSettings(outputs=tmp_path / "outputs", **overrides))


def post(url: str, data: bytes, name: str = "eileen happy.png", **params) -> httpx.Response:
    return loopback.post(f"{url}/detect", files={"file": (name, data, "image/png")}, params=params, timeout=60)


def test_detect_answers_the_documented_schema(tmp_path, eileen, face_labels):
    with serve_app(make_app(tmp_path)) as url:
        r = post(url, eileen)
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body)[:4] == ["detections", "count", "annotated_image", "json_file"]
    assert body["count"] == len(body["detections"]) == 1
    det = body["detections"][0]
    assert len(det["bbox"]) == 4 and all(isinstance(v, float) for v in det["bbox"])
    assert 0.0 <= det["confidence"] <= 1.0
    assert len(det["keypoints"]) == len(body["keypoint_names"]) == 5
    assert all(len(k) == 3 for k in det["keypoints"])
    assert iou(det["bbox"], face_labels["eileen happy.png"][0]) >= 0.5
    assert body["backend"] == "animeface"
    assert body["image"] == {"width": 320, "height": 720, "format": "PNG", "mode": "RGBA"}
    assert {"decode", "detect", "annotate", "total"} <= set(body["timings_ms"])

    annotated, results = Path(body["annotated_image"]), Path(body["json_file"])
    assert annotated.name.endswith("_eileen_happy_annotated.jpg")
    assert results.name.endswith("_eileen_happy_results.json")
    assert annotated.parent == results.parent == tmp_path / "outputs"
    with Image.open(annotated) as im:
        assert im.format == "JPEG" and im.size == (320, 720)
    assert json.loads(results.read_text()) == body


def test_annotate_false_writes_no_image(tmp_path, eileen):
    with serve_app(make_app(tmp_path)) as url:
        body = post(url, eileen, annotate="false").json()
    assert body["annotated_image"] is None
    assert Path(body["json_file"]).exists()
    assert list((tmp_path / "outputs").glob("*.jpg")) == []


def test_min_confidence_and_max_faces(tmp_path, pair):
    # The default detector's verifier is sure of both faces (equal confidences); animeface judging every
    # proposal gives each its own likelihood, so the API's cut-offs have two different numbers to split.
    detector = create_detector("animeface", twostage={"verifier": False})
    service = DetectionService(detector, outputs=OutputStore(tmp_path / "outputs"))
    with serve_app(create_app(FaceDetectSettings(outputs=tmp_path / "outputs"), service=service)) as url:
        both = post(url, pair, "pair.png").json()
        confidences = sorted(d["confidence"] for d in both["detections"])
        bar = sum(confidences) / 2
        one = post(url, pair, "pair.png", max_faces=1).json()
        strict = post(url, pair, "pair.png", min_confidence=bar).json()
    assert both["count"] == 2
    assert confidences[0] < confidences[1]  # Lucy's face is the less certain one
    assert one["count"] == 1 and one["detections"][0]["confidence"] == confidences[1]
    assert strict["count"] == 1 and strict["detections"][0]["confidence"] == confidences[1]


def test_output_names_are_collision_free_and_stay_inside_outputs(tmp_path, eileen):
    with serve_app(make_app(tmp_path)) as url:
        first = post(url, eileen, "same.png").json()
        second = post(url, eileen, "same.png").json()
        sneaky = post(url, eileen, "../../../etc/pass wd.png").json()
    assert first["json_file"] != second["json_file"]
    assert first["annotated_image"] != second["annotated_image"]
    out = (tmp_path / "outputs").resolve()
    assert Path(sneaky["json_file"]).resolve().parent == out
    assert Path(sneaky["json_file"]).name.endswith("_pass_wd_results.json")
    assert len(list(out.glob("*_results.json"))) == 3


def test_retention_keeps_the_newest_pairs(tmp_path, eileen):
    with serve_app(make_app(tmp_path, retention=2)) as url:
        bodies = [post(url, eileen, f"img{i}.png").json() for i in range(5)]
    out = tmp_path / "outputs"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        Path(b[k]).name for b in bodies[-2:] for k in ("annotated_image", "json_file")
    )


def test_health_unload_load_and_lazy_reload(tmp_path, eileen):
    with serve_app(make_app(tmp_path)) as url:
        health = loopback.get(f"{url}/health").json()
        assert health["status"] == "healthy" and health["detector_loaded"] is True
        assert health["backend"] == "animeface" and health["vram_mib"] == 0.0

        unloaded = loopback.post(f"{url}/unload").json()
        assert unloaded["detector_loaded"] is False and "released_mib" in unloaded
        assert loopback.get(f"{url}/health").json()["detector_loaded"] is False
        assert "facedetect_model_loaded 0.0" in loopback.get(f"{url}/metrics").text

        # /detect while unloaded loads the model again (documented choice) and says so in its timings
        body = post(url, eileen).json()
        assert body["count"] == 1 and "load" in body["timings_ms"]
        assert loopback.get(f"{url}/health").json()["detector_loaded"] is True

        loopback.post(f"{url}/unload")
        loaded = loopback.post(f"{url}/load").json()
        assert loaded["detector_loaded"] is True
        assert "facedetect_model_loaded 1.0" in loopback.get(f"{url}/metrics").text


def test_preload_false_starts_unloaded(tmp_path):
    with serve_app(make_app(tmp_path, preload=False)) as url:
        assert loopback.get(f"{url}/health").json()["detector_loaded"] is False


def test_metrics_count_requests_faces_and_latency(tmp_path, eileen):
    with serve_app(make_app(tmp_path)) as url:
        post(url, eileen)
        post(url, eileen)
        post(url, b"")
        text = loopback.get(f"{url}/metrics").text
    assert 'facedetect_requests_total{endpoint="/detect",status="200"} 2.0' in text
    assert 'facedetect_requests_total{endpoint="/detect",status="400"} 1.0' in text
    assert "facedetect_faces_found_total 2.0" in text
    assert 'facedetect_request_seconds_count{endpoint="/detect"} 3.0' in text
    assert "facedetect_queue_depth 0.0" in text


async def test_saturation_answers_503_with_retry_after(tmp_path, art_dir):
    data = (art_dir / "lucy mad.png").read_bytes()  # ~0.4 s per detection on 2 cores
    app = make_app(tmp_path, workers=1, queue=1, retention=0)
    responses: list[httpx.Response] = []
    with serve_app(app) as url:
        async with httpx.AsyncClient(timeout=60) as client:
            # Bursts of 8 against 1 worker + 1 queue slot; a burst normally overflows at once, more bursts
            # only guard against a detector fast enough to drain one (no timing is asserted).
            for _ in range(5):
                responses += await asyncio.gather(*[
                    client.post(f"{url}/detect", files={"file": ("lucy.png", data)}) for _ in range(8)
                ])
                if any(r.status_code == 503 for r in responses):
                    break
            metrics = (await client.get(f"{url}/metrics")).text
            health = (await client.get(f"{url}/health")).json()
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1
            assert "busy" in r.json()["detail"]
    assert f"facedetect_rejected_busy_total {float(codes.count(503))}" in metrics
    assert health["queue"] == {"workers": 1, "running": 0, "waiting": 0, "queue_limit": 1}


def test_openapi_documents_the_upload(tmp_path):
    with serve_app(make_app(tmp_path)) as url:
        spec = loopback.get(f"{url}/openapi.json").json()
    detect = spec["paths"]["/detect"]["post"]
    assert "file" in detect["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert {p["name"] for p in detect["parameters"]} == {"min_confidence", "max_faces", "annotate"}


def test_facedetect_serve_command(tmp_path, eileen):
    port = free_port()
    env = {"FACEDETECT_OUTPUTS": str(tmp_path / "served"), "FACEDETECT_RETENTION": "10"}
    args = [venv_bin("facedetect"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    with run_command(args, url=f"http://127.0.0.1:{port}/health", env=env):
        r = post(f"http://127.0.0.1:{port}", eileen)
        health = loopback.get(f"http://127.0.0.1:{port}/health").json()
    assert r.status_code == 200 and r.json()["count"] == 1
    assert Path(r.json()["json_file"]).parent == tmp_path / "served"
    assert health["detector_loaded"] is True
