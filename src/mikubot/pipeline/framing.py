"""The crop stage: which survivor becomes the avatar and how it is cut (``frame_best``, also the panel's
upload preview), and — MIKU_BANNER — the 5:2 banner from the same picture, framed on the same face."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from PIL import Image

from facedetect.types import Detection
from mikubot.config import Settings
from mikubot.banner import NoBanner, banner_png, crop_banner
from mikubot.colour import DEFAULT_TOLERANCE
from mikubot.crop import CropError, CropResult, FaceTooSmall, colour_matches, crop_avatar, hair_of, rank_faces
from mikubot.events import BannerFramed, Cropped, Skipped
from mikubot.pipeline.state import ChangeFailed, ChangeState, Chosen, Pick, counted
from mikubot.record import rounded_box
from mikubot.record_parts import FramingSummary


@dataclass
class Picture:
    """What the crop choice needs to know of one picture."""

    image: Image.Image
    detections: list[Detection]
    confidence: float  # how sure the verifier is that it shows the character (1.0: the owner chose it)


@dataclass
class Framing:
    """Which picture becomes the avatar and how it is cut; the faces that were too small, and why."""

    index: int
    crop: CropResult
    refused: list[tuple[int, str]] = field(default_factory=list)
    without_face: bool = False  # no usable face in any picture: cropped by saliency (then top-centre)
    lost: dict[int, str] = field(default_factory=dict)  # every other picture: why it was not chosen


def frame_best(pictures: list[Picture], *, output_size: int, max_upscale: float,
               hair_colours: list[str] | None = None, hair_tolerance: float = DEFAULT_TOLERANCE) -> Framing:
    """The crop stage's choice — for a change's survivors and the panel's upload preview alike: the best
    face (the character's hair colour first, then the face score weighted by the verifier's confidence)
    that can be framed at the output floor; if none can, the most confidently verified picture cropped
    without a face. Framing first: a picture with a usable face is never passed over for a fallback crop.
    ``CropError`` if even that fails."""

    def rank(i: int) -> tuple[bool, float, float]:
        p = pictures[i]
        faces = rank_faces(p.detections, p.image.size, hair_colours, hair_tolerance)
        match = bool(faces) and _matches(faces[0][1], hair_colours, hair_tolerance)
        return match, (faces[0][0] if faces else 0.0) * (0.5 + 0.5 * p.confidence), p.confidence

    refused: list[tuple[int, str]] = []
    order = sorted(range(len(pictures)), key=rank, reverse=True)
    for i in order:
        p = pictures[i]
        if not rank_faces(p.detections, p.image.size):
            continue
        try:
            crop = crop_avatar(p.image, p.detections, output_size=output_size, max_upscale=max_upscale,
                               allow_fallback=False, hair_colours=hair_colours, hair_tolerance=hair_tolerance)
        except FaceTooSmall as exc:
            refused.append((i, str(exc)))
            continue
        return Framing(i, crop, refused, lost=_lost(pictures, i, refused, "ranked below the chosen picture "
                                                    "(hair colour, then face score x verification confidence)"))
    best = max(range(len(pictures)), key=lambda i: pictures[i].confidence)
    crop = crop_avatar(pictures[best].image, [], output_size=output_size, max_upscale=max_upscale, allow_fallback=True)
    return Framing(best, crop, refused, without_face=True,
                   lost=_lost(pictures, best, refused, "verified less confidently than the chosen picture"))


def frame(settings: Settings, pictures: list[Picture]) -> Framing:
    """``frame_best`` with the change's (or the panel's) settings: the crop stage's and the upload preview's
    one call."""
    return frame_best(pictures, output_size=settings.output_size, max_upscale=settings.max_upscale,
                      hair_colours=settings.hair_colours, hair_tolerance=settings.hair_tolerance)


def _matches(face: Detection, hair_colours: list[str] | None, tolerance: float) -> bool:
    return colour_matches(hair_of(face), hair_colours, tolerance)


def _lost(pictures: list[Picture], chosen: int, refused: list[tuple[int, str]], otherwise: str) -> dict[int, str]:
    why = dict(refused)
    for i, p in enumerate(pictures):
        if i != chosen and i not in why:
            why[i] = otherwise if rank_faces(p.detections, p.image.size) else (
                f"no usable face among {len(p.detections)} detection(s)")
    return why


def crop(state: ChangeState, survivors: list[Pick]) -> Chosen:
    """The crop stage's choice: ``frame_best`` over the survivors, reported as events."""
    pictures = [Picture(p.image, p.faces.detections if p.faces else [],  # type: ignore[arg-type]
                        p.verification.confidence if p.verification else 0.0) for p in survivors]
    try:
        framing = frame(state.settings, pictures)
    except CropError as exc:
        best = max(survivors, key=lambda p: p.verification.confidence if p.verification else 0.0)
        raise ChangeFailed("crop", f"cannot crop {best.candidate.key}: {exc}") from exc
    for i, why in framing.refused:
        state.events.emit("crop", "skip", Skipped(key=survivors[i].candidate.key, reason=why))
    for i, why in framing.lost.items():
        survivors[i].lost = why
    pick, cut = survivors[framing.index], framing.crop
    if framing.without_face:
        refused = "; ".join(f"{survivors[i].candidate.key}: {why}" for i, why in framing.refused)
        state.fall_back("crop", cut.method, "no usable face in any candidate" + (f" ({refused})" if refused else ""),
                        key=pick.candidate.key)
    pick.framing = FramingSummary.model_validate(cut.to_json())
    state.events.emit("crop", "progress", Cropped(key=pick.candidate.key, method=cut.method, box=rounded_box(cut.box),
                      face=rounded_box(cut.face.bbox) if cut.face else None, size=[cut.image.width, cut.image.height]))
    return Chosen(pick, cut)


def chosen_summary(chosen: Chosen, among: int) -> str:
    """The crop stage's last word: which candidate became the avatar, what it showed and how it is cut."""
    pick, cut = chosen.pick, chosen.crop
    name = pick.candidate.filename or pick.candidate.key
    faces = counted(len(pick.faces.detections), "face") if pick.faces else "no detection"
    best = f" (best {cut.face.confidence:.2f})" if cut.face is not None else ""
    v = pick.verification
    verdict = f", {v.method} {v.confidence:.2f}" if v else ""
    return f"chose {name} of {among}: {faces}{best}{verdict}; {cut.method} crop {rounded_box(cut.box)}"


async def make_banner(state: ChangeState, chosen: Chosen) -> bytes | None:
    """MIKU_BANNER: the banner from the chosen picture and the same detections, framed on the face the
    avatar chose; None (the reason recorded) when the picture is too small for one."""
    pick, banner = chosen.pick, state.banner
    assert pick.image is not None
    detections = pick.faces.detections if pick.faces else []
    try:
        banner.made = made = await asyncio.to_thread(crop_banner, pick.image, chosen.crop.face, detections,
                                                     max_upscale=state.settings.max_upscale)
    except NoBanner as exc:
        banner.reason = f"no banner: {exc}"
        state.events.emit("crop", "progress", BannerFramed(key=pick.candidate.key, banner=None, reason=banner.reason))
        return None
    banner.reason = made.reason
    state.events.emit("crop", "progress", BannerFramed(key=pick.candidate.key, banner=rounded_box(made.box),
                      banner_size=[made.image.width, made.image.height], reason=made.reason))
    return await asyncio.to_thread(banner_png, made)
