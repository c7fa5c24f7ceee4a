"""The detect stage's second look: a picture whose faces are below animeface's ~42-px window gives the fast
scheme no face at its own size; zoomed 2x it does, and the change frames that face instead of a saliency
crop. The default two-stage mode proposes faces from ~24 px up, so it frames such a face at its own size once
its box (1.12x the labelled face, animeface's convention) reaches the crop's 32-px floor: from ~29 px up."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from mikubot.colour import hair_difference
from mikubot.crop import crop_avatar, face_in_circle
from mikubot.detection import FaceFinder, InProcessDetector, second_look


def small_face_scene(art_dir: Path, face_labels: dict, face_px: float) -> tuple[Image.Image, list[float]]:
    """Eileen shrunk until her labelled face is ``face_px`` wide, on a plain 900x600 backdrop."""
    sprite = Image.open(art_dir / "eileen happy.png").convert("RGBA")
    x1, y1, x2, y2 = face_labels["eileen happy.png"][0]
    k = face_px / (x2 - x1)
    small = sprite.resize((round(sprite.width * k), round(sprite.height * k)), Image.Resampling.LANCZOS)
    scene = Image.new("RGB", (900, 600), (170, 190, 210))
    at = (600, 400)
    scene.paste(small, at, small)
    return scene, [at[0] + x1 * k, at[1] + y1 * k, at[0] + x2 * k, at[1] + y2 * k]


async def test_a_face_too_small_for_the_detector_is_found_zoomed(art_dir: Path, face_labels: dict) -> None:
    scene, truth = small_face_scene(art_dir, face_labels, 32)
    local = InProcessDetector("animeface", mode="fast")
    assert not [d for d in local.detect(scene) if d.width >= 32], "animeface misses a 32-px face at its own size"
    async with FaceFinder(None, local, lambda to, why: None) as finder:
        found = await finder.find(scene, b"", "scene.png")
    assert found.via == "in-process+upscaled" and found.detections
    faces, zoomed = second_look(local.detect(scene), local.detect, scene)
    assert zoomed and [d.bbox for d in faces] == [d.bbox for d in found.detections]
    result = crop_avatar(scene, found.detections)
    assert result.method == "face"
    inside, share = face_in_circle(tuple(truth), result.box)  # type: ignore[arg-type]
    assert inside and 0.20 <= share <= 0.75 and result.image.width >= 256


async def test_the_default_frames_a_small_face_at_its_own_size(art_dir: Path, face_labels: dict) -> None:
    scene, truth = small_face_scene(art_dir, face_labels, 30)
    async with FaceFinder(None, InProcessDetector("animeface"), lambda to, why: None) as finder:
        found = await finder.find(scene, b"", "scene.png")
    assert found.via == "in-process" and found.detections
    result = crop_avatar(scene, found.detections)
    assert result.method == "face"
    inside, share = face_in_circle(tuple(truth), result.box)  # type: ignore[arg-type]
    assert inside and 0.20 <= share <= 0.75 and result.image.width >= 256


async def test_no_second_look_when_the_first_finds_a_face(art_dir: Path, face_labels: dict) -> None:
    scene, _ = small_face_scene(art_dir, face_labels, 90)
    async with FaceFinder(None, InProcessDetector("animeface"), lambda to, why: None) as finder:
        found = await finder.find(scene, b"", "scene.png")
    assert found.via == "in-process" and found.detections
    # Each face carries our own hair read (mikubot.hair) beside animeface's: Eileen's red, not a ribbon.
    eileen = max(found.detections, key=lambda d: d.confidence)
    assert eileen.attributes["hair"] and eileen.attributes["hair_color"]
    assert hair_difference(eileen.attributes["hair"], "#f87f7d") < hair_difference(eileen.attributes["hair"], "#d07255")
