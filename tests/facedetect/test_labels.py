"""The hand labels in tests/labels/renpy.json: well-formed, complete for the art, and in agreement with animeface.

The detector benchmark and the avatar-crop quality bar are scored against these boxes, so a label file that
silently drifts from the art (a new image with no entry, a box off the canvas, a typo in a file name) would make
every score meaningless. The detector check is the cross-validation: on clean single-character sprites the
embedded animeface model is reliable, so a labelled box it cannot match at IoU >= 0.3 means a wrong label.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from facedetect.backends import create_detector
from facedetect.backends.base import Detector
from facedetect.imageio import load_image
from facedetect.types import iou

LABELS_PATH = Path(__file__).resolve().parents[1] / "labels" / "renpy.json"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
SPRITE_PREFIXES = ("eileen ", "lucy ", "sylvie ")
SOURCE = "Debian renpy-demo / renpy-thequestion 8.0.3 (Expat licence)"


def _label_doc() -> dict:
    return json.loads(LABELS_PATH.read_text())


# Read at collection time so every sprite is its own test case (and a missing file fails loudly).
SPRITES = sorted(n for n in _label_doc()["images"] if n.startswith(SPRITE_PREFIXES))

def test_schema() -> None:
    doc = _label_doc()
    assert set(doc) == {"source", "convention", "images"}
    assert doc["source"] == SOURCE
    assert isinstance(doc["convention"], str) and len(doc["convention"]) > 50
    images = doc["images"]
    assert isinstance(images, dict) and images
    for name, boxes in images.items():
        assert isinstance(name, str) and Path(name).suffix.lower() in IMAGE_SUFFIXES, name
        assert isinstance(boxes, list), name
        for box in boxes:
            assert isinstance(box, list) and len(box) == 4, (name, box)
            # bool is an int subclass; a stray `true` must not pass as a coordinate.
            assert all(type(v) is int for v in box), (name, box)


def test_every_art_image_has_an_entry_and_no_stale_ones(art_dir: Path, face_labels: dict) -> None:
    on_disk = {p.name for p in art_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    assert on_disk, f"no images in {art_dir}"
    assert sorted(on_disk - set(face_labels)) == [], "images without labels"
    assert sorted(set(face_labels) - on_disk) == [], "labels for images that are not in the art folder"


def test_boxes_lie_inside_their_image_and_have_positive_size(art_dir: Path, face_labels: dict) -> None:
    for name, boxes in face_labels.items():
        with Image.open(art_dir / name) as im:  # header only: size without decoding pixels
            width, height = im.size
        for x1, y1, x2, y2 in boxes:
            assert 0 <= x1 < x2 <= width, (name, [x1, y1, x2, y2], (width, height))
            assert 0 <= y1 < y2 <= height, (name, [x1, y1, x2, y2], (width, height))


def test_boxes_follow_the_square_ish_convention(face_labels: dict) -> None:
    for name, boxes in face_labels.items():
        for x1, y1, x2, y2 in boxes:
            aspect = (x2 - x1) / (y2 - y1)
            assert 0.7 <= aspect <= 1.4, (name, [x1, y1, x2, y2], round(aspect, 2))
            assert min(x2 - x1, y2 - y1) >= 16, (name, "a face box this small is a slip of the mouse")


def test_what_the_art_contains(face_labels: dict) -> None:
    """Facts about the art that a labelling slip would break: backgrounds are empty, sprites have one face."""
    backgrounds = [n for n in face_labels if n.startswith("bg ")]
    concerts = [n for n in face_labels if n.startswith("concert")]
    assert len(backgrounds) == 7 and all(face_labels[n] == [] for n in backgrounds)
    assert len(SPRITES) == 13 and all(len(face_labels[n]) == 1 for n in SPRITES)
    assert len(concerts) == 3 and all(len(face_labels[n]) >= 3 for n in concerts)
    for name in concerts:
        boxes = face_labels[name]
        overlaps = [iou(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]]
        assert max(overlaps, default=0.0) < 0.1, (name, "two boxes on one face")


@pytest.fixture(scope="module")
def animeface() -> Iterator[Detector]:
    detector = create_detector("animeface")
    detector.load()
    yield detector
    detector.unload()


@pytest.mark.parametrize("name", SPRITES)
def test_animeface_agrees_with_the_sprite_labels(name: str, art_dir: Path, face_labels: dict, animeface: Detector) -> None:
    image, _ = load_image((art_dir / name).read_bytes())
    found = [d.bbox for d in animeface.detect(image)]
    assert found, f"animeface found no face in {name}"
    best = max(iou(label, det) for label in face_labels[name] for det in found)
    assert best >= 0.3, f"{name}: best IoU {best:.2f} between labels {face_labels[name]} and detections {found}"
