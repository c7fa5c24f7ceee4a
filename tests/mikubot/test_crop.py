"""The avatar crop (mikubot.crop): framing for a round avatar, clamping, refusals and fallbacks.

Real art with hand labels for the framing; synthetic images where a property needs an exact
geometry (faces at corners, a blank picture, a single salient object).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from facedetect.backends import create_detector
from facedetect.imageio import to_rgb
from facedetect.types import Detection
from mikubot.crop import (
    CropResult,
    FaceTooSmall,
    NoUsableFace,
    avatar_png,
    colour_matches,
    crop_avatar,
    face_in_circle,
    rank_faces,
)

LABELS = json.loads((Path(__file__).resolve().parents[1] / "labels" / "renpy.json").read_text())["images"]
FACE_IMAGES = sorted(n for n, boxes in LABELS.items() if boxes)


def face(x1: float, y1: float, x2: float, y2: float, confidence: float = 1.0) -> Detection:
    return Detection(bbox=(x1, y1, x2, y2), confidence=confidence)


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    """A busy picture: every crop of it is distinguishable, so pixel checks can tell boxes apart."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def assert_well_formed(result: CropResult, image_size: tuple[int, int], max_upscale: float = 2.0) -> None:
    x1, y1, x2, y2 = result.box
    assert all(isinstance(v, int) for v in result.box)
    assert x2 - x1 == y2 - y1 > 0, "the crop must be square"
    if not result.padded:
        assert 0 <= x1 and 0 <= y1 and x2 <= image_size[0] and y2 <= image_size[1], result.box
    assert result.image.mode == "RGB"
    assert result.image.width == result.image.height
    assert result.upscale == pytest.approx(result.image.width / (x2 - x1))
    assert result.upscale <= max_upscale + 1e-9


def assert_face_framed(result: CropResult, truths: list[list[float]]) -> None:
    verdicts = [face_in_circle(tuple(t), result.box) for t in truths]  # type: ignore[arg-type]
    assert any(inside and 0.20 <= share <= 0.75 for inside, share in verdicts), (result.to_json(), verdicts)


# --- the labelled art ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", FACE_IMAGES)
def test_labelled_face_lands_inside_the_round_avatar(art_dir: Path, face_labels: dict, name: str) -> None:
    image = to_rgb(Image.open(art_dir / name))
    truths = face_labels[name]
    result = crop_avatar(image, [face(*b) for b in truths])
    assert result.method == "face"
    assert list(result.face.bbox) in truths
    assert_well_formed(result, image.size)
    assert_face_framed(result, truths)
    assert result.face_inside is True
    # Eyes (half-way down an anime face box) sit above the middle: room for hair, chin clear of the rim.
    eye_y = (result.face.bbox[1] + result.face.bbox[3]) / 2
    assert (eye_y - result.box[1]) / (result.box[3] - result.box[1]) < 0.5
    # framing decides the crop; the output follows: at most 1024, at most 2x upscaled, never below 256
    side = result.box[2] - result.box[0]
    assert result.image.width == min(1024, math.floor(side * 2.0)) >= 256
    assert result.reason.startswith("face: " + ("the only usable face" if len(truths) == 1 else "the best of"))


def test_band_cg_gives_a_full_size_avatar_of_a_labelled_face(art_dir: Path, face_labels: dict) -> None:
    image = to_rgb(Image.open(art_dir / "concert1.png"))
    truths = face_labels["concert1.png"]
    result = crop_avatar(image, [face(*b) for b in truths])
    assert result.image.size == (1024, 1024)
    assert 1.0 <= result.upscale <= 2.0
    assert_face_framed(result, truths)


@pytest.mark.parametrize("name", ["eileen happy.png", "lucy mad.png", "sylvie green giggle.png"])
def test_detector_output_frames_the_true_face(art_dir: Path, face_labels: dict, name: str) -> None:
    """The way the pipeline runs: animeface's own boxes in, the hand-labelled face must come out framed."""
    image = to_rgb(Image.open(art_dir / name))
    detections = create_detector("animeface").detect(image)
    assert detections, "animeface finds these sprites (test_labels cross-checks it)"
    result = crop_avatar(image, detections)
    assert result.method == "face"
    assert_well_formed(result, image.size)
    assert_face_framed(result, face_labels[name])


def test_box_is_in_source_pixels() -> None:
    image = noise(1600, 1200)
    result = crop_avatar(image, [face(680, 300, 920, 540)])
    expected = image.resize(result.image.size, Image.Resampling.LANCZOS, box=result.box)
    assert np.array_equal(np.asarray(result.image), np.asarray(expected))
    # and not some other box: one pixel off gives a different picture
    x1, y1, x2, y2 = result.box
    shifted = image.resize(result.image.size, Image.Resampling.LANCZOS, box=(x1 + 1, y1, x2 + 1, y2))
    assert not np.array_equal(np.asarray(result.image), np.asarray(shifted))
    # the face is at the target size and horizontally centred
    assert result.face_share == pytest.approx(0.425, abs=0.01)
    assert (x1 + x2) / 2 == pytest.approx(800, abs=1)
    # a smaller face keeps its framing; the avatar gets smaller instead (framing first, resolution second)
    small = crop_avatar(image, [face(700, 300, 900, 500)])
    assert small.face_share == pytest.approx(0.425, abs=0.01)
    assert small.image.width == math.floor((small.box[2] - small.box[0]) * 2.0) < 1024 and small.upscale <= 2.0


# --- clamping at the edges --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "corner_face",
    [(120, 120, 320, 320), (1280, 120, 1480, 320), (120, 880, 320, 1080), (1280, 880, 1480, 1080), (100, 100, 500, 500)],
    ids=["top-left", "top-right", "bottom-left", "bottom-right", "big-top-left"],
)
def test_faces_near_corners_stay_in_the_image_and_the_circle(corner_face: tuple[int, int, int, int]) -> None:
    """Shift against the edge; when that pushes the face out of the circle (the big face: its preferred
    941-px square would), shrink toward it, as far as the share and upscaling limits allow."""
    image = noise(1600, 1200)
    result = crop_avatar(image, [face(*corner_face)])
    assert_well_formed(result, image.size)  # shifted, never padded: the image is big enough
    assert not result.padded
    inside, share = face_in_circle(corner_face, result.box)
    assert inside and 0.20 <= share <= 0.75, result.to_json()
    assert 256 <= result.image.width <= 1024


def test_face_flush_with_the_corner_is_cropped_but_reported_and_scored_down() -> None:
    image = noise(1600, 1200)
    corner = crop_avatar(image, [face(0, 0, 260, 260)])
    assert_well_formed(corner, image.size)
    assert corner.box[:2] == (0, 0)
    assert corner.face_inside is False  # no square inside the image can keep a corner face in the circle
    assert face_in_circle((0, 0, 260, 260), corner.box)[0] is False
    centred = crop_avatar(image, [face(670, 470, 930, 730)])
    assert centred.face_inside is True
    assert centred.score > corner.score


def test_narrow_image_shrinks_the_square_to_its_width() -> None:
    image = noise(300, 900)
    result = crop_avatar(image, [face(80, 120, 220, 260)])  # wants a 329-px square; only 300 fit
    assert_well_formed(result, image.size)
    assert result.box[0] == 0 and result.box[2] == 300 and not result.padded
    assert result.face_inside


def test_face_too_wide_for_a_narrow_image_is_padded_with_the_border_colour() -> None:
    image = Image.new("RGB", (300, 900), (250, 240, 230))
    ImageDraw.Draw(image).rectangle((20, 100, 280, 360), fill=(30, 60, 90))
    result = crop_avatar(image, [face(20, 100, 280, 360)])  # 260/300 = 87 % of the width: cannot fit
    assert result.padded and result.face_inside
    x1, y1, x2, y2 = result.box
    assert x1 < 0 and x2 > 300 and 0 <= y1 and y2 <= 900  # padded only across, where the image is short
    left = np.asarray(result.image)[result.image.height // 2, 2]
    assert tuple(int(v) for v in left) == pytest.approx((250, 240, 230), abs=2)
    assert 0.20 <= face_in_circle((20, 100, 280, 360), result.box)[1] <= 0.75


# --- refusals ----------------------------------------------------------------------------------------


def test_small_faces_in_big_scenes_are_framed_not_refused() -> None:
    """The scene case: a 2000-px picture with a 60-px face. Framing first: the face is framed at the
    usual share and the avatar is as big as 2x upscaling of that crop allows (282 px), not refused."""
    image = noise(2000, 2000)
    result = crop_avatar(image, [face(1000, 1000, 1060, 1060)])
    assert result.method == "face" and result.face_inside
    assert result.face_share == pytest.approx(0.425, abs=0.01)
    assert result.upscale == pytest.approx(2.0, abs=0.02) and 256 <= result.image.width < 300
    # a 40-px face: the preferred 94-px crop would give 188 px; the crop widens to reach the 256 floor
    tiny = crop_avatar(image, [face(1000, 1000, 1040, 1040)])
    assert tiny.image.width == 256 and tiny.box[2] - tiny.box[0] == 128
    assert tiny.face_inside and 0.25 <= tiny.face_share <= 0.425


def test_face_below_the_floor_is_refused_rather_than_blown_up() -> None:
    image = noise(2000, 2000)
    with pytest.raises(FaceTooSmall, match="256-px avatar within 1x"):
        crop_avatar(image, [face(1000, 1000, 1060, 1060)], max_upscale=1.0)  # 60 px at 25 % < 256 px
    # the same face is fine when the caller accepts upscaling
    result = crop_avatar(image, [face(1000, 1000, 1060, 1060)], max_upscale=8.0)
    assert result.method == "face" and result.upscale > 2.0
    # a refused image still yields an avatar when the caller asks for the fallbacks explicitly
    assert crop_avatar(image, []).method in ("saliency", "top-centre")


def test_a_framable_face_is_taken_when_the_best_ranked_is_below_the_floor() -> None:
    image = noise(2400, 2000)
    # 60 px, dead centre, the character's hair: ranked first, but below the floor at 1x
    small_central = hairy(1170, 970, 1230, 1030, "#39c5bb")
    big_side = face(200, 300, 500, 600)
    assert best([small_central, big_side], image.size, ["#39c5bb"]) == small_central
    result = crop_avatar(image, [small_central, big_side], max_upscale=1.0, hair_colours=["#39c5bb"])
    assert result.face == big_side
    assert [c["chosen"] for c in result.choice] == [c["bbox"] == [200.0, 300.0, 500.0, 600.0] for c in result.choice]
    assert "too small" in result.choice[0]["refused"] and result.choice[1]["chosen"]
    assert "1 better-ranked face(s) could not be framed" in result.reason


def test_unusable_faces_mean_fallback_or_a_clear_refusal() -> None:
    image = noise(1200, 800)
    junk = [face(100, 100, 400, 400, confidence=0.2), face(600, 300, 620, 320)]
    assert rank_faces(junk, image.size) == []
    assert crop_avatar(image, junk).method in ("saliency", "top-centre")
    with pytest.raises(NoUsableFace, match="fallbacks are off"):
        crop_avatar(image, junk, allow_fallback=False)
    with pytest.raises(FaceTooSmall):  # NoUsableFace is a FaceTooSmall: "try the next candidate"
        crop_avatar(image, [], allow_fallback=False)


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ValueError):
        crop_avatar(noise(100, 100), [], output_size=0)
    with pytest.raises(ValueError):
        crop_avatar(noise(100, 100), [], max_upscale=0)


# --- fallbacks ---------------------------------------------------------------------------------------


def test_no_faces_uses_saliency_on_what_stands_out() -> None:
    image = Image.new("RGB", (1500, 600), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    for i in range(12):  # a busy, high-contrast object in the right third
        draw.ellipse((1100 + i * 10, 150 + i * 8, 1400 - i * 10, 450 - i * 8), fill=(255 * (i % 2), 40, 200))
    result = crop_avatar(image, [])
    assert result.method == "saliency" and result.face is None
    assert_well_formed(result, image.size)
    assert result.box[1] == 0 and result.box[3] == 600
    assert result.box[0] <= 1100 and result.box[2] >= 1400, result.box
    assert 0.1 <= result.score <= 0.3


def test_no_faces_on_real_background_art(art_dir: Path) -> None:
    image = to_rgb(Image.open(art_dir / "bg meadow.jpg"))
    result = crop_avatar(image, [])
    assert result.method == "saliency"
    assert_well_formed(result, image.size)
    assert result.image.size == (1024, 1024)


def test_tall_image_without_faces_hangs_the_square_from_the_figure() -> None:
    image = Image.new("RGB", (400, 1200), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.ellipse((120, 300, 280, 460), fill=(20, 20, 20))  # a "head" 300 px down
    draw.rectangle((100, 460, 300, 1100), fill=(200, 30, 30))
    result = crop_avatar(image, [])
    assert result.method == "saliency"
    assert 200 <= result.box[1] <= 320, result.box  # the square starts just above the head
    assert face_in_circle((120, 300, 280, 460), result.box)[0]


@pytest.mark.parametrize(
    ("size", "box"), [((800, 1200), (0, 0, 800, 800)), ((1200, 600), (300, 0, 900, 600)), ((500, 500), (0, 0, 500, 500))]
)
def test_blank_image_falls_back_to_top_centre(size: tuple[int, int], box: tuple[int, int, int, int]) -> None:
    result = crop_avatar(Image.new("RGB", size, (90, 160, 200)), [])
    assert result.method == "top-centre"
    assert result.box == box
    assert_well_formed(result, size)
    assert result.score < 0.1


def test_any_face_outscores_any_fallback() -> None:
    image = noise(1600, 1200)
    weak = crop_avatar(image, [face(0, 0, 260, 260, confidence=0.5)])
    fallback = crop_avatar(image, [])
    assert weak.method == "face" and weak.score > fallback.score


# --- choosing the face -----------------------------------------------------------------------------


def test_rank_faces_prefers_confident_then_big_central_faces() -> None:
    size = (2000, 1500)
    small_corner = face(40, 40, 140, 140, confidence=0.97)
    big_central = face(850, 600, 1150, 900, confidence=0.98)
    big_corner = face(1650, 1150, 1950, 1450, confidence=0.98)
    doubtful_central = face(800, 550, 1200, 950, confidence=0.3)  # below the confidence floor
    faces = [small_corner, big_corner, doubtful_central, big_central]
    ranked = [d for _, d in rank_faces(faces, size)]
    assert ranked == [big_central, big_corner, small_corner]
    # confidence first: a sure 90-px face beats a bigger, more central 0.999 one (animeface's confident
    # false positives — a blank head, a smiley — sit at 0.98-0.9999; real faces at 1.0)
    sure_small = face(300, 300, 390, 390, confidence=1.0)
    unsure_big = face(850, 600, 1100, 850, confidence=0.999)
    assert rank_faces([unsure_big, sure_small], size)[0][1] == sure_small
    same_conf = [face(900, 700, 1100, 900), face(800, 600, 1200, 1000)]
    assert rank_faces(same_conf, size)[0][1] == same_conf[1]  # bigger wins
    same_size = [face(100, 1200, 400, 1500), face(900, 600, 1200, 900)]
    assert rank_faces(same_size, size)[0][1] == same_size[1]  # more central wins
    assert rank_faces([face(900, 700, 920, 720)], size) == []  # 20 px: noise
    assert rank_faces([], size) == []


def best(detections: list[Detection], size: tuple[int, int], *hair: object, **kw: object) -> Detection | None:
    ranked = rank_faces(detections, size, *hair, **kw)  # type: ignore[arg-type]
    return ranked[0][1] if ranked else None


def hairy(x1: float, y1: float, x2: float, y2: float, hair: str, confidence: float = 1.0) -> Detection:
    return Detection(bbox=(x1, y1, x2, y2), confidence=confidence, attributes={"hair_color": hair})


def test_the_characters_hair_colour_decides_between_faces() -> None:
    size = (2000, 1500)
    red_central = hairy(850, 600, 1150, 900, "#f07f7d", confidence=0.95)  # the best face by confidence
    teal_side = hairy(100, 200, 250, 350, "#3ac0b5", confidence=0.7)  # Miku's colour, small and off-centre
    black = hairy(1500, 300, 1700, 500, "#202020", confidence=0.9)
    faces = [red_central, teal_side, black]
    assert best(faces, size) == red_central  # no colours configured: the score decides
    miku = ["#39c5bb", "#137a7f"]
    assert best(faces, size, miku) == teal_side
    assert [d for _, d in rank_faces(faces, size, miku)] == [teal_side, red_central, black]
    # two matching faces: confidence decides between them
    teal_central = hairy(900, 650, 1100, 850, "#39c5bb", confidence=0.9)
    assert best([*faces, teal_central], size, miku) == teal_central
    # the choice is recorded
    result = crop_avatar(noise(*size), faces, hair_colours=miku)
    assert result.face == teal_side
    assert "hair #3ac0b5 matches" in result.reason
    chosen = [c for c in result.choice if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["hair_match"] is True and chosen[0]["rank"] == 0
    assert {c["hair"]: c["hair_match"] for c in result.choice} == {"#3ac0b5": True, "#f07f7d": False, "#202020": False}
    # a tighter tolerance: nothing matches, the score decides again
    assert best(faces, size, miku, hair_tolerance=1.0) == red_central


def test_hair_colours_match_by_perceptual_difference_not_rgb_distance() -> None:
    miku = ["#39c5bb", "#137a7f"]
    assert colour_matches("#3ac0b5", miku) and colour_matches("#1a8a8a", miku)  # the default tolerance
    # grey and black hair are within 100 of the dark teal in RGB, but have no teal in them
    assert not colour_matches("#535353", miku) and not colour_matches("#3b3937", miku)
    assert not colour_matches("#3c7fd0", miku)  # blue: close in RGB, another hue
    # a configured colour without chroma (black hair) matches dark greys
    assert colour_matches("#2a2a2c", ["#3c3d3f"]) and not colour_matches("#f07f7d", ["#3c3d3f"])
    assert not colour_matches(None, miku) and not colour_matches("#39c5bb", [])
    assert not colour_matches("teal", miku)  # not a #rrggbb colour: no match, no error
    size = (1200, 800)
    grey_big = hairy(500, 300, 700, 500, "#535353")
    teal_small = hairy(100, 100, 160, 160, "#1a8a8a", confidence=0.8)
    assert best([grey_big, teal_small], size, miku) == teal_small
    assert best([grey_big, hairy(100, 100, 160, 160, "#555555")], size, miku) == grey_big


# --- helpers and output -----------------------------------------------------------------------------


def test_face_in_circle() -> None:
    assert face_in_circle((40, 40, 60, 60), (0, 0, 100, 100)) == (True, 0.2)
    inside, share = face_in_circle((0, 0, 30, 30), (0, 0, 100, 100))  # square's corner: outside the circle
    assert not inside and share == pytest.approx(0.3)
    # corners at exactly the radius count as inside; a hair beyond does not
    r = 50 / math.sqrt(2)
    assert face_in_circle((50 - r, 50 - r, 50 + r, 50 + r), (0, 0, 100, 100))[0]
    assert not face_in_circle((50 - r - 0.01, 50 - r, 50 + r, 50 + r), (0, 0, 100, 100))[0]


def test_avatar_png_and_json() -> None:
    rgba = Image.new("RGBA", (1400, 1400), (0, 0, 0, 0))  # transparent sprite background -> white
    ImageDraw.Draw(rgba).ellipse((500, 400, 900, 800), fill=(10, 120, 140, 255))
    result = crop_avatar(rgba, [face(500, 400, 900, 800)])
    png = avatar_png(result)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = Image.open(io.BytesIO(png))
    assert decoded.format == "PNG" and decoded.mode == "RGB" and decoded.size == (1024, 1024)
    assert decoded.getpixel((2, 2)) == (255, 255, 255)
    body = json.loads(json.dumps(result.to_json()))
    assert body["method"] == "face"
    assert body["box"] == list(result.box)
    assert body["size"] == [1024, 1024]
    assert body["face"]["bbox"] == [500.0, 400.0, 900.0, 800.0]
    assert body["face_inside"] is True
    assert body["reason"].startswith("face: the only usable face")
    assert body["choice"][0]["chosen"] is True and len(body["choice"]) == 1
    fallback = crop_avatar(rgba, [face(500, 400, 520, 420)]).to_json()  # 20 px: not a usable face
    assert fallback["reason"].startswith(fallback["method"] + ": no usable face") and fallback["choice"] is None


def test_a_clipped_best_face_gives_way_only_to_a_nearly_as_good_one() -> None:
    image = noise(1600, 1200)
    corner = face(0, 0, 300, 300)  # flush with the corner: no square inside the image keeps it in the circle
    fair = face(700, 500, 900, 700, confidence=0.95)  # central, a little smaller: scores more than half as much
    poor = face(700, 500, 740, 540, confidence=0.92)  # tiny and unsure: far less than half
    assert rank_faces([corner, fair], image.size)[0][1] == corner
    taken = crop_avatar(image, [corner, fair])
    assert taken.face == fair and taken.face_inside
    assert taken.choice[0]["refused"] == "cannot sit wholly inside the round frame"
    kept = crop_avatar(image, [corner, poor])
    assert kept.face == corner and kept.face_inside is False
    assert "cannot sit wholly inside" in kept.reason
