"""The two-stage detector's proposal verifier (``facedetect.backends.verifier``, ``models/verifier.onnx``).

The images are the first twelve scene-tune images (as in tests/facedetect/test_proposals.py), **in-sample** for the
verifier (bench/train_verifier.py trains on all of scene-tune): these are regression floors, not evidence
that it generalises (bench/detect.py's scene-test, Ren'Py, anime-grid and real-art test columns are). Measured
with the network trained on scene-tune and real-art tune (2026-12-08), on the proposal windows the detector
judges there: all 29 labelled faces that a window covers (IoU >= 0.3) have such a window scored >= 0.99
(the keep bar: accepted without animeface), all 29 accepted windows' regressed boxes hit the labels at IoU
>= 0.5, and of the 110 windows away from every face (IoU < 0.1), 89 (81 %) score under 1e-2 (dropped
without animeface; the default drop bar is 3e-2) and one is accepted. (The scene-only network before it,
with its bars 1e-4 and 0.9: 29, 29, 83 of 110 dropped, none accepted.)

Why the bars sit where they do: the network is fixed, but OpenCV's resampling and the generator's JPEG
decoding may move a borderline window by a rounding between builds. So: at least 26 of the 30 faces
accepted (3 below the measured 29: the mode's point is that most faces skip animeface), 24 of their boxes at
IoU >= 0.5 (the box is the face's, not the window's), at least 60 % of the windows away from faces dropped
(21 points under the measured 81 %, 15 under the first network's 75 %: that share is the time saved), and
no more than 2 of those accepted (each would be a false positive the face filter must catch).
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from facedetect.backends import create_detector
from facedetect.backends.proposals import default_model, grey
from facedetect.backends.twostage import (
    TwoStage,
    animeface_convention,
    propose_bounded,
    ranked_proposals,
    suppress,
)
from facedetect.backends.verifier import (
    CONTEXT,
    CROP,
    INPUT,
    Verifier,
    VerifierError,
    model_paths,
    regressed,
    windows,
)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import train_verifier
from metrics import Counts, iou, match

MIN_ACCEPTED, MIN_BOXES, MIN_DROPPED_SHARE, MAX_BACKGROUND_ACCEPTED = 26, 24, 0.6, 2


@pytest.fixture(scope="module")
def tune_scenes(first_tune_scenes) -> list[tuple[np.ndarray, list]]:
    return [(np.asarray(image), truth) for _name, image, truth in first_tune_scenes]


def judged(rgb: np.ndarray, verifier: Verifier):
    params = TwoStage()
    found = propose_bounded(default_model().detector(), grey(rgb), params.threshold, params)
    boxes = [p.box for p in suppress(found, params.nms_iou, params.max_proposals)]
    return boxes, verifier.judge(rgb, boxes)


def test_model_matches_the_windows_it_is_fed() -> None:
    meta = Verifier().meta
    assert (meta["context"], meta["crop"], meta["input"]) == (CONTEXT, CROP, INPUT)
    assert meta["trained_on"] == "scene-tune + real-art tune"
    assert model_paths()[0].stat().st_size < 1_000_000  # small enough to commit and to load in a blink


def test_unreadable_or_mismatched_models_are_refused(tmp_path: Path) -> None:
    model, description = model_paths()
    meta = json.loads(description.read_text())
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**meta, "input": INPUT * 2}))
    with pytest.raises(VerifierError, match="other windows"):
        Verifier(model, other)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(model.read_bytes()[: model.stat().st_size // 3])
    with pytest.raises(VerifierError, match="OpenCV"):
        Verifier(broken, description)
    with pytest.raises(VerifierError):
        Verifier(model, tmp_path / "missing.json")


def test_windows_follow_the_box_and_repeat_the_border() -> None:
    rgb = np.zeros((100, 100, 3), np.uint8)
    rgb[40:60, 40:60] = 255  # a white square: a 20-px box on it fills the middle half of its window
    (win,) = windows(rgb, [(40, 40, 60, 60)])
    assert win.shape == (CROP, CROP, 3)
    assert win[CROP // 2, CROP // 2].tolist() == [255, 255, 255] and win[2, 2].tolist() == [0, 0, 0]
    (edge,) = windows(rgb, [(-10, -10, 10, 10)])  # half outside the image: the border repeats, no black fill
    assert edge.shape == (CROP, CROP, 3)
    # OpenCV's warps refuse images over 32767 px a side; a window of a wide panorama is cut from it first.
    wide = np.zeros((100, 40_000, 3), np.uint8)
    wide[40:60, 39_960:39_980] = 255
    (far,) = windows(wide, [(39_960, 40, 39_980, 60)])
    assert far[CROP // 2, CROP // 2].tolist() == [255, 255, 255] and far[2, 2].tolist() == [0, 0, 0]
    assert regressed((0, 0, 10, 10), (0.1, -0.2, 0.0)) == pytest.approx((1, -2, 11, 8))


def test_accepts_faces_and_drops_background(tune_scenes) -> None:
    verifier = Verifier()
    accepted = boxes_hit = faces_covered = background = dropped = background_accepted = 0
    for rgb, truth in tune_scenes:
        boxes, verdicts = judged(rgb, verifier)
        for face in truth:
            near = [v for b, v in zip(boxes, verdicts) if iou(b, face) >= 0.3]
            faces_covered += bool(near)
            best = max(near, key=lambda v: v.probability, default=None)
            if best is not None and best.probability >= TwoStage.verifier_accept:
                accepted += 1
                boxes_hit += iou(best.box, face) >= 0.5
        for b, v in zip(boxes, verdicts):
            if all(iou(b, face) < 0.1 for face in truth):
                background += 1
                dropped += v.probability < TwoStage.verifier_reject
                background_accepted += v.probability >= TwoStage.verifier_accept
    assert faces_covered >= 28 and background >= 50
    assert accepted >= MIN_ACCEPTED, f"{accepted} of {faces_covered} covered faces accepted (floor {MIN_ACCEPTED})"
    assert boxes_hit >= MIN_BOXES, f"{boxes_hit} accepted boxes at IoU >= 0.5 (floor {MIN_BOXES})"
    assert dropped >= MIN_DROPPED_SHARE * background, f"{dropped} of {background} background windows dropped"
    assert background_accepted <= MAX_BACKGROUND_ACCEPTED


def test_a_wider_pool_ranked_by_the_verifier(tune_scenes) -> None:
    """With ``pool_threshold`` the verifier ranks a wider pool: at most ``max_proposals`` windows, best
    probability first, none overlapping another at ``nms_iou``, and no face the HOG-ranked proposals hold
    (IoU >= 0.3) lost on these scenes; without a verifier the HOG score ranks, as before. Every other scene
    (16 faces, all held by both rankings when written) carries the point at half the CPU time."""
    verifier, hog = Verifier(), default_model().detector()
    wide, plain = TwoStage(pool_threshold=-0.5), TwoStage()
    covered_plain = covered_wide = 0
    for rgb, truth in tune_scenes[1::2]:
        candidates, verdicts = ranked_proposals(hog, rgb, 0.3, wide, verifier)
        probabilities = [v.probability for v in verdicts]
        assert len(candidates) <= wide.max_proposals and probabilities == sorted(probabilities, reverse=True)
        assert all(iou(a.box, b.box) < wide.nms_iou for i, a in enumerate(candidates) for b in candidates[i + 1:])
        by_hog, none = ranked_proposals(hog, rgb, 0.3, plain, None)
        assert none == [None] * len(by_hog)
        covered_plain += sum(any(iou(p.box, f) >= 0.3 for p in by_hog) for f in truth)
        covered_wide += sum(any(iou(p.box, f) >= 0.3 for p in candidates) for f in truth)
    assert covered_wide >= covered_plain >= 15
    with pytest.raises(Exception, match="pool_size"):
        create_detector("animeface", twostage={"pool_threshold": -0.5, "pool_size": 8})


def test_judging_from_two_threads_gives_the_same_answers(tune_scenes) -> None:
    verifier = Verifier()
    rgb, _ = tune_scenes[0]
    boxes, alone = judged(rgb, verifier)
    results: list[list] = [[], []]

    def run(i: int) -> None:
        for _ in range(5):
            results[i].append(verifier.judge(rgb, boxes))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for answers in results[0] + results[1]:
        assert [v.probability for v in answers] == pytest.approx([v.probability for v in alone], rel=1e-5, abs=1e-7)


def test_verifier_off_is_the_animeface_only_confirmation(tune_scenes, first_tune_found) -> None:
    # Both must find faces, and the gate must not cost true positives against animeface judging alone
    # (on every other scene: 16 faces, enough to tell, at half the CPU time).
    assert create_detector("animeface").describe()["twostage"]["verifier"] is True  # the default: with the gate
    without = create_detector("animeface", twostage={"verifier": False})
    assert without.describe()["twostage"]["verifier"] is False
    a, b = Counts(), Counts()
    for (rgb, truth), with_gate in zip(tune_scenes[1::2], first_tune_found()[1::2], strict=True):
        a += match(with_gate, truth, 0.5)
        b += match([(d.bbox, d.confidence) for d in without.detect(load_image_from(rgb))], truth, 0.5)
    assert b.tp > 0
    assert a.tp >= b.tp


def test_accepted_faces_carry_animeface_landmarks_when_asked(tune_scenes) -> None:
    rgb, _ = tune_scenes[0]
    image = load_image_from(rgb)
    on = create_detector("animeface", face_filter=False).detect(image)
    off = create_detector("animeface", face_filter=False, twostage={"landmarks": False}).detect(image)
    assert [d.bbox for d in on] == [d.bbox for d in off]  # landmarks never change which faces are found
    assert any(d.keypoints and "hair_color" in d.attributes for d in on)
    assert any(not d.keypoints for d in off)


def test_kept_boxes_are_in_animeface_convention_and_inside_the_image() -> None:
    # A kept face's box is the regressed one grown 1.12x about its centre; at the image's edge, clipped.
    assert animeface_convention((40, 40, 60, 60), 100, 100) == pytest.approx((38.8, 38.8, 61.2, 61.2))
    assert animeface_convention((-5, 90, 15, 110), 100, 100) == pytest.approx((0, 88.8, 16.2, 100))


def test_bad_gate_is_a_400() -> None:
    from facedetect.errors import BackendUnavailable

    with pytest.raises(BackendUnavailable) as err:
        create_detector("animeface", twostage={"verifier_reject": 0.95, "verifier_accept": 0.9})
    assert err.value.status_code == 400


def load_image_from(rgb: np.ndarray):
    from PIL import Image

    return Image.fromarray(rgb)


# --- the training script's data (PyTorch itself is not installed for the tests; these parts need none) ---


def test_training_windows_are_labelled_from_the_scenes(small_tune_dir: Path) -> None:
    data = train_verifier.collect([small_tune_dir / "tune"])
    assert data["crops"].shape[1:] == (CROP, CROP, 3) and len(data["crops"]) == len(data["iou"]) == len(data["target"])
    assert not data["real"].any()  # scene windows; real-art ones (pictures naming a repository) are marked
    positive = data["iou"] >= train_verifier.POSITIVE
    faces = sum(len(e["faces"]) for e in json.loads((small_tune_dir / "tune" / "labels.json").read_text())["images"].values())
    # Each face under its own windows and some of the proposals', and background windows outnumber them.
    assert faces == 13 and positive.sum() >= (train_verifier.OWN_WINDOWS + 1) * faces
    assert (data["iou"] < train_verifier.NEGATIVE).sum() > 2 * positive.sum()
    # A positive window overlaps its face, so the face is near it: small shifts, width within a factor of 2.
    assert np.abs(data["target"][positive][:, :2]).max() < 0.5
    assert np.abs(data["target"][positive][:, 2]).max() < np.log(2)


def test_real_art_windows_are_marked_and_held_out_by_repository(small_tune_dir: Path, tmp_path: Path) -> None:
    full = json.loads((small_tune_dir / "tune" / "labels.json").read_text())
    names = sorted(full["images"])[:2]
    real = tmp_path / "real"
    real.mkdir()
    doc = {"split": "tune", "images": {k: {**full["images"][k], "repo": "Some/Artist"} for k in names}}
    (real / "labels.json").write_text(json.dumps(doc))
    for k in names:
        (real / k).write_bytes((small_tune_dir / "tune" / k).read_bytes())
    data = train_verifier.collect([real])
    assert len(data["real"]) > 0 and data["real"].all()
    assert len(train_verifier.collect([real], hold_out=frozenset({"some/artist"}))["real"]) == 0


def test_augmentation_moves_the_target_with_the_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    # A white square "face" at a known place relative to the window; after any augmentation, the square must
    # sit where the new target says (the network learns boxes from these pairs). Line art turns the square
    # into its outline, which the next test checks; here the square stays filled.
    monkeypatch.setattr(train_verifier, "LINE_ART", 0.0)
    unit = CROP / CONTEXT  # px of the crop per proposal width
    target = np.array([0.12, -0.08, np.log(0.8)], np.float32)
    side = np.exp(target[2]) * unit
    cx, cy = CROP / 2 + target[0] * unit, CROP / 2 + target[1] * unit
    crop = np.full((CROP, CROP, 3), 40, np.uint8)
    crop[round(cy - side / 2):round(cy + side / 2), round(cx - side / 2):round(cx + side / 2)] = 255
    rng = np.random.default_rng(3)
    k = INPUT / CROP
    for _ in range(25):
        x, t = train_verifier.augment(rng, crop, target)
        assert x.shape == (3, INPUT, INPUT) and x.dtype == np.float32 and 0.0 <= x.min() <= x.max() <= 1.0
        grey_img = x.mean(0)
        ys, xs = np.nonzero(grey_img > (grey_img.max() + grey_img.min()) / 2)
        want_x, want_y = (CROP / 2 + t[0] * unit) * k, (CROP / 2 + t[1] * unit) * k
        assert xs.mean() + 0.5 == pytest.approx(want_x, abs=1.2) and ys.mean() + 0.5 == pytest.approx(want_y, abs=1.2)
        width = np.sqrt(len(xs))  # the square's side (rotation keeps its area)
        assert width == pytest.approx(np.exp(t[2]) * unit * k, rel=0.12)


def test_line_art_draws_the_edges_dark_on_white() -> None:
    img = np.full((CROP, CROP, 3), 0.2, np.float32)
    img[20:44, 20:44] = 0.9
    ink = train_verifier.line_art(img, np.random.default_rng(0))
    assert ink.shape == img.shape and np.allclose(ink[..., 0], ink[..., 2])  # grey, three channels
    assert ink[5, 5, 0] == pytest.approx(1.0) and ink[32, 32, 0] == pytest.approx(1.0)  # flat areas: white paper
    assert ink[32, 20, 0] < 0.5 and ink[20, 32, 0] < 0.5  # the square's edges: dark lines


def test_training_without_pytorch_says_how_to_get_it(first_tune_dir: Path) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit, match="make verifier"):
            train_verifier.main(["--scenes", str(first_tune_dir)])
    else:
        pytest.skip("PyTorch is installed here; the message is for machines without it")
