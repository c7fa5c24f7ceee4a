"""cascade backend with the real peer cascade (lbpcascade_animeface.xml) on the Ren'Py art.

The cascade is a public file outside the repository (never copied in): ``MIKU_TEST_CASCADE`` names it, and
``make test`` sets it from ``BENCH_DATA``. Tests that need it fail when it is missing (the ``peer``
fixture, conftest.py), like missing test art. The bad-file tests need nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from facedetect.backends import create_detector
from facedetect.backends.cascade import CascadeDetector, last_stage_threshold
from facedetect.errors import BackendUnavailable
from facedetect.imageio import load_image
from facedetect.types import iou

ROOT = Path(__file__).resolve().parents[2]
LABELS = ROOT / "tests" / "labels" / "renpy.json"
SPRITES = ["eileen happy.png", "lucy happy.png", "sylvie blue smile.png", "sylvie green normal.png"]


@pytest.fixture(scope="module")
def detector(peer: Path) -> CascadeDetector:
    det = create_detector("cascade", model_path=peer)
    assert isinstance(det, CascadeDetector)
    return det


def _rgb(art_dir: Path, name: str) -> Image.Image:
    # Through the service's own intake, so sprites' alpha is flattened onto white as in production.
    return load_image((art_dir / name).read_bytes())[0]

@pytest.mark.parametrize("name", SPRITES)
def test_finds_the_sprite_face(detector: CascadeDetector, art_dir: Path, name: str) -> None:
    image = _rgb(art_dir, name)
    dets = detector.detect(image)
    assert len(dets) == 1, dets
    (x1, y1, x2, y2), conf = dets[0].bbox, dets[0].confidence
    assert 0 <= x1 < x2 <= image.width and 0 <= y1 < y2 <= image.height
    assert (y1 + y2) / 2 < image.height / 2, "a standing sprite's face is in its upper half"
    assert x2 - x1 >= 24 and dets[0].keypoints == []
    assert 0.5 <= conf <= 1.0
    if LABELS.is_file():  # the hand labels (tests/labels/renpy.json), where they exist yet
        truth = json.loads(LABELS.read_text())["images"].get(name, [])
        assert truth and max(iou(dets[0].bbox, t) for t in truth) >= 0.3


def test_matches_opencv_detect_multiscale(detector: CascadeDetector, art_dir: Path, peer: Path) -> None:
    # The backend is detectMultiScale on an equalised grey image plus a confidence: same boxes.
    image = _rgb(art_dir, "sylvie green smile.png")
    grey = cv2.equalizeHist(np.asarray(image.convert("L")))
    plain = cv2.CascadeClassifier(str(peer)).detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
    want = sorted((float(x), float(y), float(x + w), float(y + h)) for x, y, w, h in np.asarray(plain).reshape(-1, 4))
    assert want and sorted(d.bbox for d in detector.detect(image)) == want


def test_no_faces_on_a_background(detector: CascadeDetector, art_dir: Path) -> None:
    assert detector.detect(_rgb(art_dir, "bg uni.jpg")) == []


def test_size_limits(art_dir: Path, peer: Path) -> None:
    image = _rgb(art_dir, "eileen happy.png")  # its face is ~220 px
    assert create_detector("cascade", model_path=peer, min_size=300).detect(image) == []
    assert create_detector("cascade", model_path=peer, max_size=120).detect(image) == []


def test_confidence_mapping(detector: CascadeDetector, peer: Path) -> None:
    detector.load()
    t = last_stage_threshold(peer)
    assert t is not None and detector.describe()["last_stage_threshold"] == pytest.approx(t)
    assert detector.confidence(t) == pytest.approx(0.5)
    assert detector.confidence(t + 1) < detector.confidence(t + 3) < 1.0
    assert detector.confidence(1e6) == 1.0 and detector.confidence(-1e6) == 0.0


def test_unload_and_lazy_reload(art_dir: Path, peer: Path) -> None:
    det = create_detector("cascade", model_path=peer)
    det.load()
    assert det.loaded and det.vram_mib() == 0.0
    det.unload()
    assert not det.loaded and det.describe()["last_stage_threshold"] is None
    assert len(det.detect(_rgb(art_dir, "eileen happy.png"))) == 1


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="not found") as err:
        create_detector("cascade", model_path=tmp_path / "missing.xml")
    assert err.value.status_code == 503
    with pytest.raises(BackendUnavailable, match="model_path") as err:
        create_detector("cascade")
    assert err.value.status_code == 400


BAD_FILES = {
    "empty": b"",
    "binary": b"\x00\x01\x02 not xml",
    "html": b"<html><body>404 Not Found</body></html>",
    "other-opencv-xml": b"<?xml version='1.0'?><opencv_storage><foo>1</foo></opencv_storage>",
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_invalid_files(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.xml"
    path.write_bytes(BAD_FILES[kind])
    det = create_detector("cascade", model_path=path)
    with pytest.raises(BackendUnavailable, match=str(path)):
        det.detect(Image.new("RGB", (64, 64)))
    assert not det.loaded


def test_truncated_cascade(tmp_path: Path, peer: Path) -> None:
    path = tmp_path / "truncated.xml"
    path.write_bytes(peer.read_bytes()[:20_000])  # a half-downloaded file, in the test's temp dir only
    with pytest.raises(BackendUnavailable, match="not a readable OpenCV cascade"):
        create_detector("cascade", model_path=path).load()


@pytest.mark.parametrize(
    "opts",
    [{"scale_factor": 1.0}, {"min_neighbors": -1}, {"min_size": 0}, {"min_size": 50, "max_size": 20}],
)
def test_bad_options_are_400(tmp_path: Path, opts: dict) -> None:
    path = tmp_path / "c.xml"
    path.write_bytes(b"<opencv_storage/>")
    with pytest.raises(BackendUnavailable) as err:
        create_detector("cascade", model_path=path, **opts)
    assert err.value.status_code == 400
