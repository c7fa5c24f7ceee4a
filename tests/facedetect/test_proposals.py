"""The two-stage detector (``AnimefaceDetector(mode="twostage")``): its proposal model, its proposals' recall
on scene-tune faces (small ones included), its end result, and the training script's determinism.

The images are the first twelve scene-tune images (the same as tests/facedetect/test_detect_scenes.py: 30 faces of
30-297 px, 6 of them 30-41 px, under animeface's 42.6-px minimum window), generated here from the fetched art.
They are **in-sample** for the proposal classifier (bench/train_proposals.py trains on all of scene-tune),
so these are regression floors, not evidence of generalisation (bench/detect.py's scene-test, Ren'Py and
anime-grid columns are). Measured when written: the proposals (after suppression, at the default
threshold and stride) cover 29 of the 30 faces (IoU >= 0.3) and all 6 small ones; the two-stage detector
(default: with its verifier and face filter) scores 29 true positives, 2 false positives, 1 miss at IoU 0.5
(3 false positives without the filter; without the verifier 26 / 5 / 4; raw animeface 19 / 6 / 11).

Why the bars sit where they do: the proposal stage is a fixed linear classifier, but OpenCV's pyramid
resampling and the generator's JPEG decoding may differ by a rounding between builds, which moves a
borderline window's score across the threshold; a face or two either way is that noise, not a regression.
So the proposals must cover 27 of 30 (10 % below all, 2 below the measured 29) and 5 of the 6 small faces
(the point of the stage: animeface alone finds 36 % of such faces). The detector must keep 26 true
positives (3 below the measured 29, as in tests/facedetect/test_detect_scenes.py), at most 5 false positives (3 above
the measured 2), and beat raw animeface's F1 on the same images, which is the mode's reason to exist. That
comparison runs on every other image (16 faces; raw animeface 12 / 4 / 4 there): raw animeface is the costliest
mode to run, and the fast scheme's floor compares itself with it on the same six.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facedetect.backends import create_detector
from facedetect.backends.proposals import (
    CASCADE_PATH,
    MODEL_PATH,
    CascadeProposer,
    ProposalModel,
    default_model,
    grey,
    make_hog,
    propose,
)
from facedetect.backends.twostage import TwoStage, propose_bounded, suppress
from facedetect.errors import BackendUnavailable

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import train_proposals
from metrics import Counts, iou, match

SMALL = 42.0  # px: faces narrower than this are under animeface's minimum window
MIN_COVERED, MIN_SMALL = 27, 5
MIN_TP, MAX_FP = 26, 5


def test_model_loads_and_matches_the_descriptor() -> None:
    model = ProposalModel.load()
    assert model.weights.shape == (make_hog().getDescriptorSize(),)
    assert np.isfinite(model.weights).all() and np.isfinite(model.bias)
    assert model.detector().getDescriptorSize() == model.weights.size


def test_model_with_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    data = json.loads(MODEL_PATH.read_text())
    data["weights"] = data["weights"][:-1]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="weights"):
        ProposalModel.load(bad)


def test_bad_twostage_options_are_a_400() -> None:
    with pytest.raises(BackendUnavailable) as err:
        create_detector("animeface", mode="twostage", twostage={"stride": 0})
    assert err.value.status_code == 400
    with pytest.raises(BackendUnavailable):
        create_detector("animeface", mode="twostage", twostage={"no_such_option": 1})


def test_cascade_proposals_ship_with_their_licence_and_find_faces(first_tune_scenes) -> None:
    """lbpcascade_animeface, the second proposal source, ships in the package with its MIT notice; on the first
    twelve scene-tune images its boxes (in the labels' convention, none under ~40 px at the default 64-px
    cascade box) cover most faces of 40 px and more at IoU 0.3 (measured when written: 22 of 25; floor 18,
    room for OpenCV's resampling and the generator's JPEG decoding to move a borderline box), and a bad
    option is a 400."""
    head = CASCADE_PATH.read_text()[:600]
    assert "The MIT License" in head and "nagadomi" in head
    cascade = CascadeProposer(TwoStage.cascade_neighbours or 3, TwoStage.cascade_min_size)
    faces = covered = 0
    for _name, image, truth in first_tune_scenes:
        found = cascade.propose(grey(np.asarray(image)))
        assert all(p.box[2] - p.box[0] >= 0.6 * TwoStage.cascade_min_size for p in found)
        for box in truth:
            if box[2] - box[0] >= 40:
                faces += 1
                covered += any(iou(p.box, box) >= 0.3 for p in found)
    assert faces == 25 and covered >= 18, f"cascade boxes cover {covered} of {faces} faces"
    assert cascade.propose(np.zeros((20, 20), np.uint8)) == []
    with pytest.raises(BackendUnavailable) as err:
        create_detector("animeface", twostage={"cascade_neighbours": 0})
    assert err.value.status_code == 400
    assert create_detector("animeface", twostage={"cascade_neighbours": None}).describe()["twostage"]["cascade_neighbours"] is None


def test_proposals_cover_the_faces_small_ones_included(first_tune_scenes) -> None:
    params, model = TwoStage(), ProposalModel.load()
    hog = model.detector()
    covered = small = small_covered = faces = 0
    for _name, image, truth in first_tune_scenes:
        found = suppress(propose(hog, grey(np.asarray(image)), params.threshold, stride=params.stride,
                                 scale=params.scale), params.nms_iou, params.max_proposals)
        for box in truth:
            hit = any(iou(p.box, box) >= 0.3 for p in found)
            faces += 1
            covered += hit
            if box[2] - box[0] < SMALL:
                small += 1
                small_covered += hit
    assert faces == 30 and small == 6
    assert covered >= MIN_COVERED, f"proposals cover {covered} of {faces} faces (floor {MIN_COVERED})"
    assert small_covered >= MIN_SMALL, f"proposals cover {small_covered} of {small} small faces (floor {MIN_SMALL})"


def test_twostage_finds_the_faces(first_tune_scenes, first_tune_found) -> None:
    # The default mode (no options), so a default that silently finds nothing fails here.
    assert create_detector("animeface").describe()["mode"] == "twostage"
    got, with_detections = Counts(), 0
    found = first_tune_found()
    for (_name, _image, truth), boxes in zip(first_tune_scenes, found, strict=True):
        with_detections += bool(boxes)
        got += match(boxes, truth, 0.5)
    assert with_detections >= len(first_tune_scenes) - 2
    assert got.tp >= MIN_TP, f"two-stage: {got} at IoU 0.5 (floor {MIN_TP} true positives)"
    assert got.fp <= MAX_FP, f"two-stage: {got} at IoU 0.5 (at most {MAX_FP} false positives)"
    half, base = Counts(), Counts()
    for (_name, _image, truth), boxes, raw in zip(first_tune_scenes[1::2], found[1::2],
                                                  first_tune_found(mode="full", every_other=True), strict=True):
        half += match(boxes, truth, 0.5)
        base += match(raw, truth, 0.5)
    assert half.f1 >= base.f1, f"two-stage {half} against raw animeface {base} on every other image"


def test_training_is_deterministic(small_tune_dir: Path, tmp_path: Path) -> None:
    # Three small scenes keep it fast; the same code path as the full run (augmentation, mining, threshold).
    source = json.loads((small_tune_dir / "tune" / "labels.json").read_text())
    names = sorted(source["images"])
    few = tmp_path / "few"
    (few / "tune").mkdir(parents=True)
    (few / "tune" / "labels.json").write_text(json.dumps({**source, "images": {k: source["images"][k] for k in names[:3]}}))
    for k in names[:3]:
        (few / "tune" / k).write_bytes((small_tune_dir / "tune" / k).read_bytes())
    a = train_proposals.train(few, None, seed=9, rounds=1, recall=0.99)
    b = train_proposals.train(few, None, seed=9, rounds=1, recall=0.99)
    assert a == b
    c = train_proposals.train(few, None, seed=10, rounds=1, recall=0.99)
    assert c["weights"] != a["weights"]  # the seed is what fixes it, not a constant result

    # A real-art split (same labels format, each picture naming its repository): its pictures are trained on,
    # unless their repository is held out, which must leave exactly the scene-only model.
    real = tmp_path / "real"
    real.mkdir()
    doc = {"split": "tune", "images": {k: {**source["images"][k], "repo": "Some/Artist"} for k in names[3:5]}}
    (real / "labels.json").write_text(json.dumps(doc))
    for k in names[3:5]:
        (real / k).write_bytes((small_tune_dir / "tune" / k).read_bytes())
    with_real = train_proposals.train(few, real, seed=9, rounds=1, recall=0.99)
    assert with_real["weights"] != a["weights"] and with_real["trained_on"] == "scene-tune + real-art tune"
    held = train_proposals.train(few, real, seed=9, rounds=1, recall=0.99, hold_out=frozenset({"some/artist"}))
    assert held["weights"] == a["weights"] and held["trained_on"].endswith("less some/artist")


def test_describe_is_json() -> None:
    # /health serves describe(); a two-stage detector's options must be plain JSON (no inf, no tuples lost).
    det = create_detector("animeface", mode="twostage")
    text = json.dumps(det.describe(), allow_nan=False)
    assert json.loads(text)["twostage"]["confirm_faces"] == [64.0, 56.0]
    assert json.loads(text)["face_filter"] is True  # the learned false-positive filter is on by default here too


def test_a_large_image_is_downscaled_for_the_proposals(art_dir: Path) -> None:
    """Above ``max_proposal_pixels`` the HOG pyramid runs on an area-downscaled copy (bounded time and
    memory); the proposals are mapped back onto the full image, where the face still is."""
    labels = json.loads((ROOT / "tests" / "labels" / "renpy.json").read_text())["images"]
    sprite = Image.open(art_dir / "eileen happy.png").convert("RGB")
    x1, y1, x2, y2 = labels["eileen happy.png"][0]
    big = Image.new("RGB", (3000, 2000), (170, 190, 210))  # 6 Mpx
    big.paste(sprite, (1200, 300))
    truth = (x1 + 1200, y1 + 300, x2 + 1200, y2 + 300)
    model = default_model()
    bounded = TwoStage(max_proposal_pixels=1_500_000)  # proposals searched on a 1500x1000 copy
    found = propose_bounded(model.detector(), grey(np.asarray(big)), model.threshold, bounded)
    assert found and max(iou(p.box, truth) for p in found) >= 0.3
    with pytest.raises(ValueError):
        TwoStage(max_proposal_pixels=100)
