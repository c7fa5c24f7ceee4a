"""The avatar crop: a square made for a ROUND avatar, around the character's face, else what stands out.

Framing first, resolution second. Discord shows avatars in a circle at 128 px or less (about 120 px at
2x on the profile card), so a face matters more than pixels: whenever a usable face exists, the avatar
is framed on it. The face is put well inside the inscribed circle at a pleasant size (its width about
42 % of the crop's), eyes a little above the middle, and the square kept inside the image (shift; shrink
when the image is narrower). The output side then follows from the crop: up to ``output_size``,
upscaling by at most ``max_upscale``, never below ``MIN_OUTPUT_PX``; to reach that floor a small face's
crop widens (down to a ``MIN_FACE_SHARE`` face share). Only a face too small even for the floor is
refused (``FaceTooSmall``), so the caller can try its next candidate image. Without a usable face:
saliency (``mikubot.saliency``), then a top-centre square.

With several faces the character's comes first: a face whose hair colour (``mikubot.hair`` reads one per
face; else the detector's own reading) matches one of ``hair_colours``, the nearest colour first (both
``mikubot.colour.hair_rank``, the key the heuristic verifier picks its face by too), then the detector's
confidence, then the face score (size, centrality). Every result records which path it took and why (``reason``) and, on the face path, the
faces it chose between (``choice``).

Coordinates are source-image pixels, ``[x1, y1, x2, y2]``, exclusive at x2/y2 like Pillow's boxes.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

from facedetect.imageio import to_rgb
from facedetect.types import Detection
from mikubot.colour import DEFAULT_TOLERANCE, colour_matches, hair_nearness, hair_rank, is_hex
from mikubot.errors import MikubotError
from mikubot.saliency import SaliencyUnavailable, salient_square

Method = Literal["face", "saliency", "top-centre"]
IntBox = tuple[int, int, int, int]

# --- which faces count -------------------------------------------------------------------------
MIN_CONFIDENCE = 0.5  # below this animeface's boxes are mostly hair, hands or background
MIN_FACE_PX = 32  # narrower "faces" are noise at any zoom
# Confidence counts steeply: animeface gives real faces ~1.0, and its confident false positives (a blank
# head, a drawn smiley, a fold of clothes) 0.9-0.95 but often bigger or more central than the real face.
CONFIDENCE_POWER = 8.0
# A face this wide (share of the image's shorter side) or wider gets the full size bonus.
FULL_SIZE_SHARE = 0.25

# A better-ranked face that cannot sit wholly inside the circle (against an image corner) gives way to a
# later face that can only when that face scores at least this share of it; otherwise it is taken, clipped.
INSIDE_TRADE = 0.5

# --- how the face sits in the square -----------------------------------------------------------
TARGET_FACE_SHARE = 0.425  # face width / crop width we aim for: a head-and-shoulders avatar
MIN_FACE_SHARE = 0.25  # widest crop (smallest face) we accept, to reach the MIN_OUTPUT_PX floor
MAX_FACE_SHARE = 0.70  # tightest crop (largest face) we accept when the image is narrow
EYE_LINE = 0.42  # eyes this far down the crop: room for hair above, chin well inside the circle
# Anime face boxes run from the brow to the chin, so the eyes sit about halfway down the box.
EYES_IN_FACE_BOX = 0.5
SIZE_STEPS = 24
# The output's floor: a face avatar is at least this big (or output_size, if smaller), or the face is
# refused. Discord's profile card shows about 120 px at 2x DPI; 256 px leaves room for that.
MIN_OUTPUT_PX = 256

# --- scores (for choosing between candidate images) --------------------------------------------
# A face crop scores in [0.5, 1]; saliency in [0.1, 0.3]; top-centre 0.05: any face beats any fallback.
TOP_CENTRE_SCORE = 0.05


class CropError(MikubotError):
    """The crop stage cannot make an avatar from this image with these options."""


class FaceTooSmall(CropError):
    """Every usable face would need upscaling beyond ``max_upscale`` to reach the ``MIN_OUTPUT_PX``
    floor: try the next candidate image."""


class NoUsableFace(FaceTooSmall):
    """No face is big or confident enough and fallbacks are off (``allow_fallback=False``)."""


@dataclass
class CropResult:
    image: Image.Image  # square RGB, output_size x output_size (smaller only when the source is smaller)
    box: IntBox  # the square crop in SOURCE pixels [x1, y1, x2, y2]; outside the image only if padded
    method: Method
    face: Detection | None  # the chosen face (None for fallbacks)
    upscale: float  # output px per source px (>1 means upscaled)
    score: float  # how good this candidate is (for choosing between candidates)
    face_inside: bool | None = None  # the face box wholly inside the round avatar (None: no face)
    face_share: float | None = None  # face width / crop width (None: no face)
    padded: bool = False  # the square reached past a too-narrow image, filled with its border colour
    reason: str = ""  # which path was taken and why, in words
    choice: list[dict[str, Any]] | None = None  # face path: every usable face, ranked, the chosen one marked

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "box": [int(v) for v in self.box],
            "size": [self.image.width, self.image.height],
            "upscale": round(self.upscale, 4),
            "score": round(self.score, 4),
            "face": self.face.to_json() if self.face else None,
            "face_inside": self.face_inside,
            "face_share": None if self.face_share is None else round(self.face_share, 4),
            "padded": self.padded,
            "reason": self.reason,
            "choice": self.choice,
        }


def face_in_circle(face_box: tuple[float, float, float, float], crop_box: tuple[float, float, float, float]) -> tuple[bool, float]:
    """Is the whole face box inside the circle inscribed in ``crop_box``? And its width share of the crop.

    All four corners of the face box must lie within the circle: the strictest reading, so a face
    that passes is never clipped by a round avatar.
    """
    fx1, fy1, fx2, fy2 = face_box
    cx1, cy1, cx2, cy2 = crop_box
    side = cx2 - cx1
    if side <= 0:
        return False, math.inf
    r = side / 2.0
    cx, cy = cx1 + r, cy1 + r
    worst = max(math.hypot(x - cx, y - cy) for x in (fx1, fx2) for y in (fy1, fy2))
    return worst <= r * (1 + 1e-9), (fx2 - fx1) / side


def face_score(face: Detection, image_size: tuple[int, int]) -> float:
    """How good ``face`` is as the avatar's subject, in [0, 1]: confident, big, central."""
    width, height = image_size
    size = min(1.0, face.width / (FULL_SIZE_SHARE * min(width, height)))
    fx, fy = (face.bbox[0] + face.bbox[2]) / 2, (face.bbox[1] + face.bbox[3]) / 2
    off = math.hypot(fx - width / 2, fy - height / 2) / (0.5 * math.hypot(width, height))
    centrality = 1.0 - min(1.0, off)
    return float(face.confidence) ** CONFIDENCE_POWER * (0.4 + 0.6 * size) * (0.6 + 0.4 * centrality)


def usable(face: Detection) -> bool:
    return face.confidence >= MIN_CONFIDENCE and face.width >= MIN_FACE_PX and face.height > 0


def hair_of(face: Detection) -> str | None:
    """The face's hair colour: our own read (``mikubot.hair``, in ``attributes["hair"]``; None when it found
    no hair to read) when the face has been through it, else the detector's (animeface's ``hair_color``)."""
    attributes = face.attributes or {}
    colour = attributes["hair"] if "hair" in attributes else attributes.get("hair_color")
    return colour if is_hex(colour) else None


def hair_distance(face: Detection, hair_colours: list[str] | None) -> float | None:
    """``mikubot.colour.hair_nearness`` of the face's hair colour (None: either unknown)."""
    near = hair_nearness(hair_of(face), hair_colours)
    return None if math.isinf(near) else near


def rank_faces(
    detections: list[Detection],
    image_size: tuple[int, int],
    hair_colours: list[str] | None = None,
    hair_tolerance: float = DEFAULT_TOLERANCE,
) -> list[tuple[float, Detection]]:
    """Usable faces, best first, with their ``face_score``: faces whose hair matches ``hair_colours``
    before the others, and among those the nearest colour first (``mikubot.colour.hair_rank``), then the
    detector's confidence, then the score (size, centrality). Confidence before size: animeface gives real faces 1.0 (its likelihood, clipped) and
    its confident false positives (a blank head, a drawn smiley, a fold of cloth) 0.98-0.9999, often
    bigger or more central than the real face."""
    scored = [(face_score(d, image_size), d) for d in detections if usable(d)]

    def key(sd: tuple[float, Detection]) -> tuple[tuple[bool, int], float, float]:
        return (hair_rank(hair_of(sd[1]), hair_colours, hair_tolerance), float(sd[1].confidence), sd[0])

    return sorted(scored, key=key, reverse=True)


def output_side(image_size: tuple[int, int], output_size: int, max_upscale: float) -> int:
    """A fallback avatar's side (its crop is the image's shorter side): ``output_size``, unless even
    the whole image would need more than ``max_upscale``."""
    return max(1, min(output_size, math.floor(min(image_size) * max_upscale)))


def crop_avatar(
    image: Image.Image,
    detections: list[Detection],
    *,
    output_size: int = 1024,
    max_upscale: float = 2.0,
    allow_fallback: bool = True,
    hair_colours: list[str] | None = None,
    hair_tolerance: float = DEFAULT_TOLERANCE,
) -> CropResult:
    """A square avatar from ``image`` framed on the character's face, for a round display.

    Faces are taken in ``rank_faces`` order; the first whose framing keeps it wholly inside the circle
    wins (when none can, the best-ranked one, reported with ``face_inside`` false). Raises
    ``FaceTooSmall`` when usable faces exist but none reaches the ``MIN_OUTPUT_PX`` floor within
    ``max_upscale`` (the caller should try another image, or call again with ``detections=[]`` to force
    the fallbacks), and ``NoUsableFace`` (a ``FaceTooSmall``) when there is no usable face and
    ``allow_fallback`` is False.
    """
    if output_size < 1 or not max_upscale > 0:
        raise ValueError("output_size must be >= 1 and max_upscale > 0")
    rgb = to_rgb(image)
    size = rgb.size
    ranked = rank_faces(detections, size, hair_colours, hair_tolerance)
    if ranked:
        choice = [_face_entry(i, quality, face, hair_colours, hair_tolerance) for i, (quality, face) in enumerate(ranked)]
        chosen: tuple[int, IntBox, bool, bool, int] | None = None
        for i, (_quality, face) in enumerate(ranked):
            placed = _place_face(face, size, output_size, max_upscale)
            if placed is None:
                choice[i]["refused"] = f"too small for a {min(output_size, MIN_OUTPUT_PX)}-px avatar within {max_upscale:g}x"
                continue
            box, inside, padded, out = placed
            if not inside:
                choice[i]["refused"] = "cannot sit wholly inside the round frame"
            if chosen is None:
                chosen = (i, box, inside, padded, out)
            elif inside and _quality >= INSIDE_TRADE * ranked[chosen[0]][0]:
                chosen = (i, box, inside, padded, out)  # a fitting face nearly as good beats a clipped one
            if inside:
                break
        if chosen is not None:
            i, box, inside, padded, out = chosen
            quality, face = ranked[i]
            choice[i]["chosen"] = True
            choice[i].pop("refused", None)
            upscale = out / (box[2] - box[0])
            score = 0.5 + 0.5 * quality * (1.0 if inside else 0.5) * (1.0 if upscale <= 1 else upscale ** -0.25)
            _, share = face_in_circle(face.bbox, box)
            return CropResult(_render(rgb, box, out), box, "face", face, upscale, score, inside, share, padded,
                              _face_reason(choice, i, inside, out), choice)
        raise FaceTooSmall(
            f"no face is big enough for a {min(output_size, MIN_OUTPUT_PX)}-px avatar within {max_upscale:g}x "
            f"upscaling ({', '.join(f'a {f.width:.0f}-px face' for _, f in ranked)}): try another image"
        )
    if not allow_fallback:
        raise NoUsableFace(
            f"no usable face (confidence >= {MIN_CONFIDENCE}, width >= {MIN_FACE_PX} px) among "
            f"{len(detections)} detection(s), and fallbacks are off"
        )
    result = _fallback(rgb, output_side(size, output_size, max_upscale))
    why = (f"no usable face (confidence >= {MIN_CONFIDENCE}, width >= {MIN_FACE_PX} px) among "
           f"{len(detections)} detection(s)")
    result.reason = f"{result.method}: {why}" + (": the saliency map is flat" if result.method == "top-centre" else "")
    return result


def _face_entry(rank: int, quality: float, face: Detection, hair_colours: list[str] | None,
                hair_tolerance: float) -> dict[str, Any]:
    distance = hair_distance(face, hair_colours)
    return {
        "rank": rank,
        "bbox": [round(float(v), 1) for v in face.bbox],
        "confidence": round(float(face.confidence), 4),
        "score": round(quality, 4),
        "hair": hair_of(face),
        "hair_detector": (face.attributes or {}).get("hair_color"),  # the detector's own reading, for comparison
        "hair_distance": None if distance is None else round(distance, 1),
        "hair_match": None if distance is None else colour_matches(hair_of(face), hair_colours, hair_tolerance),
        "chosen": False,
    }


def _face_reason(choice: list[dict[str, Any]], i: int, inside: bool, out: int) -> str:
    c = choice[i]
    n = len(choice)
    if n == 1:
        why = "the only usable face"
    elif c["hair_match"]:
        others = sum(1 for o in choice if o["hair_match"])
        why = (f"hair {c['hair']} matches the character's colours" +
               (f" (the most confident of {others} matching)" if others > 1 else f" ({n - 1} other face(s) do not)"))
    else:
        known = any(o["hair_match"] is not None for o in choice)
        why = f"the best of {n} usable faces (confidence, then size and centrality)" + (
            "; no hair colour matched" if known else "")
    if i > 0:
        why += f"; {i} better-ranked face(s) could not be framed"
    return f"face: {why}; {out}-px avatar" + ("" if inside else "; the face cannot sit wholly inside the circle")


def avatar_png(result: CropResult) -> bytes:
    """The avatar as PNG bytes (what Discord's ``PATCH /users/@me`` takes as a data URI)."""
    buf = io.BytesIO()
    result.image.save(buf, format="PNG")
    return buf.getvalue()


# --- the face path -----------------------------------------------------------------------------


def _clamp_start(start: float, side: int, dim: int) -> int:
    """Shift a span of ``side`` to lie inside [0, dim]; if it is longer than ``dim``, to cover it."""
    lo, hi = min(0, dim - side), max(0, dim - side)
    return int(round(min(max(start, lo), hi)))


def _box_at(face: Detection, side: int, size: tuple[int, int], *, centred: bool = False) -> IntBox:
    """The square of ``side`` framing ``face``: eyes on ``EYE_LINE`` (or, ``centred``, the face box
    centred: the placement that keeps its corners farthest inside the circle), shifted into the image."""
    width, height = size
    fcx = (face.bbox[0] + face.bbox[2]) / 2
    if centred:
        y_start = (face.bbox[1] + face.bbox[3]) / 2 - side / 2
    else:
        y_start = face.bbox[1] + EYES_IN_FACE_BOX * face.height - EYE_LINE * side
    x1 = _clamp_start(fcx - side / 2, side, width)
    y1 = _clamp_start(y_start, side, height)
    return (x1, y1, x1 + side, y1 + side)


def _margin(face: Detection, box: IntBox) -> float:
    """How far inside the circle the face's worst corner is, as a share of the radius (< 0: outside)."""
    r = (box[2] - box[0]) / 2
    cx, cy = box[0] + r, box[1] + r
    x1, y1, x2, y2 = face.bbox
    worst = max(math.hypot(x - cx, y - cy) for x in (x1, x2) for y in (y1, y2))
    return 1 - worst / r


def _place_face(
    face: Detection, size: tuple[int, int], output_size: int, max_upscale: float
) -> tuple[IntBox, bool, bool, int] | None:
    """The square for ``face``: (box, face inside the circle, padded, output side).

    Framing decides the square; the output side follows from it: ``output_size`` at most, the crop
    upscaled by at most ``max_upscale``. The floor (``MIN_OUTPUT_PX``, or ``output_size`` if smaller)
    widens the crop of a small face, down to a ``MIN_FACE_SHARE`` face share; None when even that
    cannot reach the floor (the face is too small for any avatar).
    """
    smallest_side = min(size)
    floor_px = min(output_size, MIN_OUTPUT_PX)
    need = floor_px / max_upscale  # the smallest crop side (source px) that still gives the floor
    widest = face.width / MIN_FACE_SHARE
    if min(widest, smallest_side) < need * (1 - 1e-9):
        return None
    lo = max(face.width / MAX_FACE_SHARE, need)  # sizes in [lo, widest] keep the face at a good share
    preferred = min(max(face.width / TARGET_FACE_SHARE, lo), widest)

    def fit(s: float) -> int:  # whole pixels, never below what the upscaling limit allows
        return max(math.ceil(need - 1e-9), math.floor(s))

    def result(box: IntBox, inside: bool, padded: bool) -> tuple[IntBox, bool, bool, int]:
        side = box[2] - box[0]
        return box, inside, padded, min(output_size, math.floor(side * max_upscale))

    def fits(box: IntBox) -> bool:
        return _margin(face, box) >= 0 and face.width / (box[2] - box[0]) <= MAX_FACE_SHARE

    # Inside the image: the preferred size, or smaller when the image is narrower.
    side = min(preferred, smallest_side)
    box = _box_at(face, fit(side), size)
    if fits(box):
        return result(box, True, False)
    # Shifting against an edge moved the face out of the circle (or the image is too narrow):
    # shrink toward the face, within the share and upscaling limits, trading the eye-line framing
    # for a centred one if need be, and keep the biggest square that fits (eye line first on a tie).
    sides = [fit(side)]
    if lo < side:
        sides += [fit(side - (side - lo) * i / SIZE_STEPS) for i in range(1, SIZE_STEPS + 1)]
    candidates = [_box_at(face, s, size, centred=c) for s in sides for c in (False, True)]
    fitting = [b for b in candidates if fits(b)]
    if fitting:
        return result(max(fitting, key=lambda b: b[2] - b[0]), True, False)
    if preferred > smallest_side:
        # The image is narrower than the square the face needs: pad (the only case we do).
        for centred in (False, True):
            padded = _box_at(face, math.ceil(preferred), size, centred=centred)
            if fits(padded):
                return result(padded, True, True)
    return result(max(candidates, key=lambda b: _margin(face, b)), False, False)


# --- fallbacks ---------------------------------------------------------------------------------


def _fallback(rgb: Image.Image, out: int) -> CropResult:
    try:
        found = salient_square(rgb)
    except SaliencyUnavailable:
        return _top_centre(rgb, out)
    box = found.box
    score = 0.1 + 0.2 * min(1.0, max(0.0, found.mass))
    return CropResult(_render(rgb, box, out), box, "saliency", None, out / (box[2] - box[0]), score)


def _top_centre(rgb: Image.Image, out: int) -> CropResult:
    """The largest square, centred across and touching the top: where a character's head usually is."""
    width, height = rgb.size
    side = min(width, height)
    x1 = (width - side) // 2
    box = (x1, 0, x1 + side, side)
    return CropResult(_render(rgb, box, out), box, "top-centre", None, out / side, TOP_CENTRE_SCORE)


# --- pixels ------------------------------------------------------------------------------------


def _render(rgb: Image.Image, box: IntBox, out: int) -> Image.Image:
    """Cut ``box`` out of ``rgb`` and resize to ``out`` x ``out`` with Lanczos.

    A box reaching past the image (padding) is filled with the median colour of the image's
    border, which for sprites and flat backgrounds continues the background seamlessly.
    """
    width, height = rgb.size
    x1, y1, x2, y2 = box
    if x1 >= 0 and y1 >= 0 and x2 <= width and y2 <= height:
        return rgb.resize((out, out), Image.Resampling.LANCZOS, box=box)
    canvas = Image.new("RGB", (x2 - x1, y2 - y1), _border_colour(rgb))
    canvas.paste(rgb, (-x1, -y1))
    return canvas.resize((out, out), Image.Resampling.LANCZOS)


def _border_colour(rgb: Image.Image) -> tuple[int, int, int]:
    a = np.asarray(rgb)
    edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    r, g, b = (int(v) for v in np.median(edge, axis=0))
    return (r, g, b)
