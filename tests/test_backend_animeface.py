"""The default animeface backend: it finds faces (never silently nothing), keeps keypoint order, and the
fast scheme maps working coordinates back to the original image exactly."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facedetect.backends import create_detector
from facedetect.backends.animeface import KEYPOINT_NAMES, AnimefaceDetector
from facedetect.backends.scheme import WHEEL_MIN_WINDOW, WHEEL_SCALE_FACTOR, SearchScheme, resize_for
from facedetect.errors import BackendUnavailable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from metrics import iou  # noqa: E402

EILEEN = "eileen happy.png"


def _flat(path: Path) -> Image.Image:
    im = Image.open(path).convert("RGBA")
    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
    bg.alpha_composite(im)
    return bg.convert("RGB")


@pytest.fixture(scope="module")
def eileen(art_dir: Path) -> Image.Image:
    return _flat(art_dir / EILEEN)


@pytest.fixture(scope="module")
def default_detector() -> AnimefaceDetector:
    det = create_detector("animeface")
    assert isinstance(det, AnimefaceDetector) and det.mode == "fast"
    return det


@pytest.mark.parametrize("mode", ["fast", "full"])
def test_finds_the_labelled_face(eileen: Image.Image, face_labels: dict, mode: str) -> None:
    dets = AnimefaceDetector(mode=mode).detect(eileen)
    assert dets, "animeface returned nothing for a clear frontal face"
    best = max(iou(d.bbox, face_labels[EILEEN][0]) for d in dets)
    assert best >= 0.5, f"no detection overlaps the hand label (best IoU {best:.2f})"


def test_keypoint_order_and_attributes(eileen: Image.Image, default_detector: AnimefaceDetector) -> None:
    (d,) = default_detector.detect(eileen)
    assert default_detector.keypoint_names == KEYPOINT_NAMES == ["left_eye", "right_eye", "nose", "mouth", "chin"]
    (lx, ly, ls), (rx, ry, _), (nx, ny, _), (mx, my, _), (cx, cy, _) = d.keypoints
    # The character's left eye is on the viewer's right.
    assert lx > rx
    assert max(ly, ry) < ny < my < cy
    x1, y1, x2, y2 = d.bbox
    assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y, _ in d.keypoints)
    assert ls == pytest.approx(d.confidence) and 0.5 <= d.confidence <= 1.0
    assert re.fullmatch(r"#[0-9a-f]{6}", d.attributes["hair_color"])
    assert re.fullmatch(r"#[0-9a-f]{6}", d.attributes["skin_color"])


def test_full_mode_is_one_raw_call(eileen: Image.Image) -> None:
    det = AnimefaceDetector(mode="full")
    raw = det.raw(np.asarray(eileen))
    assert [d.bbox for d in det.detect(eileen)] == [
        (float(f.face[0]), float(f.face[1]), float(f.face[0] + f.face[2]), float(f.face[1] + f.face[3])) for f in raw
    ]


def test_scaled_search_maps_back_exactly(eileen: Image.Image) -> None:
    # A large min_face_fraction forces the downscaled path on a small image (fast to test).
    det = AnimefaceDetector(min_face_fraction=0.25, threads=1)
    rgb = np.asarray(eileen)
    scale = det.scheme.work_scale(rgb.shape[1], rgb.shape[0])
    assert scale < 0.6
    work, sx, sy = resize_for(rgb, scale)
    assert work.shape[:2] == (round(rgb.shape[0] * scale), round(rgb.shape[1] * scale))
    expected = [
        (f.face[0] / sx, f.face[1] / sy, (f.face[0] + f.face[2]) / sx, (f.face[1] + f.face[3]) / sy)
        for f in det.raw(np.ascontiguousarray(work))
    ]
    got = [d.bbox for d in det.detect(eileen)]
    assert got and len(got) == len(expected)
    assert [v for b in got for v in b] == pytest.approx([v for b in expected for v in b], abs=1e-9)


def test_padded_copy_finds_the_same_face_shifted(eileen: Image.Image, default_detector: AnimefaceDetector) -> None:
    (d0,) = default_detector.detect(eileen)
    pad = Image.new("RGB", (eileen.width + 64, eileen.height + 48), (255, 255, 255))
    pad.paste(eileen, (64, 48))
    dets = default_detector.detect(pad)
    shifted = (d0.bbox[0] + 64, d0.bbox[1] + 48, d0.bbox[2] + 64, d0.bbox[3] + 48)
    assert max(iou(d.bbox, shifted) for d in dets) >= 0.7


def test_threads_visit_the_raw_scale_ladder() -> None:
    scheme = SearchScheme(threads=3)
    rungs = sorted(mw * sf**k for mw, sf in scheme.passes() for k in range(10))
    raw = [WHEEL_MIN_WINDOW * WHEEL_SCALE_FACTOR**k for k in range(30)]
    assert rungs == pytest.approx(raw)


def test_work_scale_only_shrinks_large_images() -> None:
    s = SearchScheme()
    assert s.work_scale(320, 720) == 1.0
    assert s.work_scale(1000, 1000) == 1.0  # 1000/24 < 42.592
    assert s.work_scale(2400, 1530) == pytest.approx(WHEEL_MIN_WINDOW / (1530 / 24))
    assert SearchScheme(min_face_fraction=0).work_scale(8000, 5000) == 1.0


def test_bad_options_are_client_errors() -> None:
    with pytest.raises(BackendUnavailable) as e:
        create_detector("animeface", mode="turbo")
    assert e.value.status_code == 400
    with pytest.raises(BackendUnavailable) as e:
        create_detector("animeface", scale_factor=1.0)
    assert e.value.status_code == 400
    with pytest.raises(BackendUnavailable):
        create_detector("animeface", threads=0)


def test_unload_and_reload(eileen: Image.Image) -> None:
    det = AnimefaceDetector()
    assert det.detect(eileen)
    det.unload()
    assert not det.loaded and det._pool is None
    assert det.detect(eileen)
    assert det.describe()["search"]["threads"] == 2
