"""The default animeface backend: it finds faces (never silently nothing), keeps keypoint order, the fast
scheme maps every pass's coordinates back to the original image exactly, and the vote between passes keeps
what two passes (or one confident pass) found."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facedetect.backends import create_detector
from facedetect.backends.animeface import KEYPOINT_NAMES, AnimefaceDetector
from facedetect.backends._nvxs import RawFace
from facedetect.backends.scheme import (
    WHEEL_MIN_WINDOW,
    WHEEL_SCALE_FACTOR,
    Placed,
    SearchScheme,
    plan,
    refine,
    resize_for,
    vote,
)
from facedetect.errors import BackendUnavailable

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
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
    assert isinstance(det, AnimefaceDetector) and det.mode == "twostage"
    return det


@pytest.mark.parametrize("mode", ["twostage", "fast", "full"])
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
    # A large min_face_fraction forces the downscaled path on a small image (fast to test); one
    # full-resolution pass without voting is then exactly one raw call on the working image.
    det = AnimefaceDetector(mode="fast", min_face_fraction=0.25, threads=1, pass_offsets=(0,), votes=1)
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


@pytest.mark.parametrize(
    ("options", "min_iou"),
    [
        # One full-resolution pass: padding moves the lattice, not the image's pixels.
        ({"mode": "fast", "pass_offsets": (0,), "votes": 1}, 0.7),
        # The fast scheme downscales, so padding also changes how pixels are resampled: the box may move more,
        # but the face stays found at the benchmark's matching bar.
        ({"mode": "fast"}, 0.5),
        # The default two-stage mode: the proposal lattice moves with the padding; same bar.
        ({}, 0.5),
    ],
)
def test_padded_copy_finds_the_same_face_shifted(eileen: Image.Image, options: dict, min_iou: float) -> None:
    det = AnimefaceDetector(**options)
    (d0,) = det.detect(eileen)
    pad = Image.new("RGB", (eileen.width + 64, eileen.height + 48), (255, 255, 255))
    pad.paste(eileen, (64, 48))
    dets = det.detect(pad)
    shifted = (d0.bbox[0] + 64, d0.bbox[1] + 48, d0.bbox[2] + 64, d0.bbox[3] + 48)
    assert max(iou(d.bbox, shifted) for d in dets) >= min_iou


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
    for bad in (
        {"threads": 0},
        {"pass_offsets": ()},
        {"pass_offsets": (5.5, 5.5)},
        {"pass_offsets": (-1,)},
        {"pass_offsets": "fast"},
        {"pass_offsets": (5.5,), "votes": 2},
        {"votes": 0},
        {"lone_likelihood": 1.5},
    ):
        with pytest.raises(BackendUnavailable) as e:
            create_detector("animeface", **bad)
        assert e.value.status_code == 400, bad


def test_unload_and_reload(eileen: Image.Image) -> None:
    det = AnimefaceDetector(mode="fast")
    assert det.detect(eileen)
    det.unload()
    assert not det.loaded and det._pool is None
    assert det.detect(eileen)
    search = det.describe()["search"]
    assert search["threads"] == 2 and search["pass_offsets"] == [0.0, 5.5] and search["votes"] == 2


def test_each_pass_maps_back_exactly(eileen: Image.Image) -> None:
    """A downscaled pass alone (no vote) returns the raw call on its resampled image, divided by the exact
    per-axis factors; mapped back, its face overlaps the full-resolution face."""
    rgb = np.asarray(eileen)
    offset = 5.5
    det = AnimefaceDetector(mode="fast", threads=1, pass_offsets=(offset,), votes=1)
    s = WHEEL_SCALE_FACTOR**-offset
    small, sx, sy = resize_for(rgb, s)
    assert small.shape[:2] == (round(rgb.shape[0] * s), round(rgb.shape[1] * s))
    assert (sx, sy) == (small.shape[1] / rgb.shape[1], small.shape[0] / rgb.shape[0]) and sx != sy
    raw = det.raw(np.ascontiguousarray(small))
    expected = [
        (f.face[0] / sx, f.face[1] / sy, (f.face[0] + f.face[2]) / sx, (f.face[1] + f.face[3]) / sy) for f in raw
    ]
    got = det.detect(eileen)
    assert got and [v for d in got for v in d.bbox] == pytest.approx([v for b in expected for v in b], abs=1e-9)
    (full,) = AnimefaceDetector(mode="full").detect(eileen)
    assert iou(got[0].bbox, full.bbox) >= 0.5
    # Keypoints are mapped with the same factors, so they stay inside the mapped box.
    x1, y1, x2, y2 = got[0].bbox
    assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y, _ in got[0].keypoints)


def test_plan_splits_the_largest_pass_and_runs_the_others_whole() -> None:
    scheme = SearchScheme(threads=2, pass_offsets=(0, 5.5, 7.5))
    rgb = np.zeros((720, 420, 3), np.uint8)
    jobs = plan(rgb, scheme)
    assert [j.cost for j in jobs] == sorted((j.cost for j in jobs), reverse=True)
    main = [j for j in jobs if j.source == 0]
    assert len(main) == 2 + 3 - 1  # threads + other passes: jobs about the size of a small pass
    # Together the split jobs visit the whole ladder once.
    rungs = sorted(j.min_window * j.scale_factor**k for j in main for k in range(6))
    assert rungs == pytest.approx([WHEEL_MIN_WINDOW * WHEEL_SCALE_FACTOR**k for k in range(24)])
    for source, offset in enumerate(scheme.pass_offsets[1:], start=1):
        (whole,) = [j for j in jobs if j.source == source]
        assert (whole.min_window, whole.scale_factor) == (WHEEL_MIN_WINDOW, WHEEL_SCALE_FACTOR)
        h, w = whole.image.shape[:2]
        assert (w, h) == (round(420 * WHEEL_SCALE_FACTOR**-offset), round(720 * WHEEL_SCALE_FACTOR**-offset))
        assert whole.sx == pytest.approx(w / 420) and whole.sy == pytest.approx(h / 720)
    # A pass whose image cannot hold the smallest window is skipped rather than run for nothing.
    tiny = plan(np.zeros((80, 80, 3), np.uint8), scheme)
    assert {j.source for j in tiny} == {0}
    assert len(plan(rgb, SearchScheme(threads=1))) == 2


def _face(x: float, y: float, w: float, likelihood: float, source: int, scale: float = 1.0) -> Placed:
    # A box given in original pixels, stored the way a pass at ``scale`` reports it.
    box = (round(x * scale), round(y * scale), round(w * scale), round(w * scale))
    return Placed(
        RawFace(likelihood, box, (0, 0, 1, 1), (0, 0, 1, 1), (0, 0), (0, 0, 1, 1), (0, 0), (0, 0, 0), (0, 0, 0)),
        scale, scale, source,
    )


VOTE = {"overlap": 0.1, "votes": 2, "lone_likelihood": 0.9, "agree_iou": 0.5}


def test_vote_keeps_faces_two_passes_agree_on() -> None:
    a = _face(100, 100, 80, 0.7, source=0)
    b = _face(104, 98, 78, 0.6, source=1, scale=0.6)  # the same face seen by the downscaled pass
    (kept,) = vote([a, b], **VOTE)
    assert kept.face is a.face and kept.support == 2  # the more likely box leads, as in libnvxs' merge


def test_vote_drops_a_lone_unconfident_face_and_keeps_a_lone_confident_one() -> None:
    lone = _face(10, 10, 56, 0.83, source=0)
    sure = _face(300, 10, 90, 0.95, source=1)
    assert [(p.face, p.support) for p in vote([lone, sure], **VOTE)] == [(sure.face, 1)]


def test_vote_counts_a_pass_once_and_needs_agreement() -> None:
    # Two boxes from the same pass are one vote; an overlapping box of another size is no vote either.
    a = _face(100, 100, 80, 0.7, source=0)
    a2 = _face(102, 100, 80, 0.65, source=0)
    b_big = _face(80, 80, 180, 0.6, source=1)  # contains a (merged into its cluster), IoU < 0.5
    assert vote([a, a2, b_big], **VOTE) == []
    assert [p.face for p in vote([a, a2, b_big, _face(98, 102, 82, 0.55, source=1)], **VOTE)] == [a.face]


def test_vote_with_one_vote_is_libnvxs_merge() -> None:
    faces = [
        _face(100, 100, 80, 0.7, 0), _face(110, 105, 80, 0.8, 1), _face(400, 400, 60, 0.5, 0),
        _face(405, 400, 50, 0.5, 1), _face(10, 300, 40, 0.51, 1),
    ]
    kept = vote(faces, overlap=0.1, votes=1, lone_likelihood=1.0, agree_iou=0.5)
    assert [round(p.face.likelihood, 2) for p in kept] == [0.8, 0.51, 0.5]
    assert kept[2].face.face == (405, 400, 50, 50)  # a tie goes to the smaller box


def test_refine_re_places_a_loose_box_on_the_face(eileen: Image.Image, face_labels: dict) -> None:
    """A lone face's box, here the true one blown up by 40 %, is re-placed by the dense local search:
    closer to the hand label once mapped back through the crop's offset and scale, likelihood kept."""
    det = AnimefaceDetector()
    lib = det.library
    pad = Image.new("RGB", (eileen.width + 200, eileen.height + 150), (255, 255, 255))
    pad.paste(eileen, (200, 150))  # so the crop starts inside the image and its offset matters
    rgb = np.ascontiguousarray(np.asarray(pad))
    x1, y1, x2, y2 = face_labels[EILEEN][0]
    label = (x1 + 200, y1 + 150, x2 + 200, y2 + 150)
    cx, cy, half = (label[0] + label[2]) / 2, (label[1] + label[3]) / 2, (label[2] - label[0]) * 0.7
    loose = _face(cx - half, cy - half, 2 * half, 0.87, source=0)
    better = refine(lib.detect, rgb, loose)
    assert better.face.likelihood == 0.87 and better.ox > 0 and better.oy > 0
    assert iou(better.box, label) > iou(loose.box, label) + 0.1
    # Nothing face-like near the box: the face is returned unchanged.
    blank = np.full_like(rgb, 255)
    assert refine(lib.detect, blank, loose) is loose


def test_a_prepared_image_searches_like_a_fresh_call_every_time(eileen: Image.Image) -> None:
    """The scheme prepares an image once and searches it several times (from several threads): each search
    must equal a one-off call with the same parameters, and a closed image must refuse to be searched."""
    from facedetect.backends._nvxs import NvxsLibrary

    lib = NvxsLibrary()
    rgb = np.ascontiguousarray(np.asarray(eileen))
    ladders = [dict(min_window=42.592, scale_factor=1.095), dict(min_window=46.6, scale_factor=1.313)]
    with lib.prepare(rgb) as prepared:
        # Colours are left out (analyze=False): libnvxs clusters them with a randomly seeded k-means.
        for params in ladders + ladders:
            assert prepared.detect(analyze=False, **params) == lib.detect(rgb, analyze=False, **params)
        assert prepared.detect(**ladders[0]), "the prepared image found no face on eileen"
    with pytest.raises(ValueError, match="closed"):
        prepared.detect()


def test_a_colourless_face_gets_its_colours_from_its_pixels(eileen: Image.Image) -> None:
    """nv_face_analyze can spin for ever on colourless faces (seen on a black-and-white manga page): a grey
    face's hair and skin are read as medians of its own pixels, and a coloured face still goes to the library."""
    from facedetect.backends._nvxs import NvxsLibrary, grey_colours

    library = NvxsLibrary()
    coloured = np.asarray(eileen)
    grey = np.asarray(eileen.convert("L").convert("RGB"))
    [face] = library.detect(coloured)
    assert len(set(face.hair_rgb)) > 1  # a coloured reading from the library
    bgr = np.ascontiguousarray(coloured[:, :, ::-1]).astype(np.float32)
    assert grey_colours(bgr, face.face, face.left_eye, face.right_eye, face.mouth) is None
    [face] = library.detect(grey)
    hair, skin = face.hair_rgb, face.skin_rgb
    assert hair[0] == hair[1] == hair[2] and skin[0] == skin[1] == skin[2]  # grey in, grey out
    x, y, w, h = face.face
    cheeks = grey[max(face.left_eye[1] + face.left_eye[3], face.right_eye[1] + face.right_eye[3]):face.mouth[1], x:x + w]
    assert skin[0] == int(round(float(np.median(cheeks[:, :, 0]))))
