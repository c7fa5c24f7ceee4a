"""The avatar crop: a square made for a ROUND avatar, around the best face, else what stands out.

Discord shows avatars in a circle, so a face near the corners of a square crop is cut off. The
face path puts the chosen face well inside the inscribed circle at a pleasant size (its width about
42 % of the crop's), with the eyes a little above the middle so there is room for hair, then keeps
the square inside the image (shift; shrink when the image is narrower than the square). Faces too
small to fill the avatar without upscaling past ``max_upscale`` are refused with ``FaceTooSmall``
so the caller can try its next candidate image. Without a usable face: saliency
(``mikubot.saliency``), then a top-centre square. Every result records which path it took.

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
from mikubot.saliency import SaliencyUnavailable, salient_square

Method = Literal["face", "saliency", "top-centre"]
IntBox = tuple[int, int, int, int]

# --- which faces count -------------------------------------------------------------------------
MIN_CONFIDENCE = 0.5  # below this animeface's boxes are mostly hair, hands or background
MIN_FACE_PX = 32  # narrower "faces" are noise at any zoom, and far too small for a 1024-px avatar
# A face this wide (share of the image's shorter side) or wider gets the full size bonus.
FULL_SIZE_SHARE = 0.25

# --- how the face sits in the square -----------------------------------------------------------
TARGET_FACE_SHARE = 0.425  # face width / crop width we aim for: a head-and-shoulders avatar
MIN_FACE_SHARE = 0.25  # widest crop (smallest face) we accept to avoid upscaling
MAX_FACE_SHARE = 0.70  # tightest crop (largest face) we accept when the image is narrow
EYE_LINE = 0.42  # eyes this far down the crop: room for hair above, chin well inside the circle
# Anime face boxes run from the brow to the chin, so the eyes sit about halfway down the box.
EYES_IN_FACE_BOX = 0.5
SIZE_STEPS = 24
# A source too small for a full-size avatar still gives one at least this big, or the face is refused:
# below it Discord's profile card (about 120 px at 2x DPI) shows upscaling blur.
MIN_OUTPUT_PX = 256  # crop sizes tried when the preferred one cannot keep the face inside the circle

# --- scores (for choosing between candidate images) --------------------------------------------
# A face crop scores in [0.5, 1]; saliency in [0.1, 0.3]; top-centre 0.05: any face beats any fallback.
TOP_CENTRE_SCORE = 0.05


class CropError(Exception):
    """The crop stage cannot make an avatar from this image with these options."""


class FaceTooSmall(CropError):
    """The best face would need upscaling beyond ``max_upscale``: try the next candidate image."""


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
    return float(face.confidence) * (0.4 + 0.6 * size) * (0.6 + 0.4 * centrality)


def usable(face: Detection) -> bool:
    return face.confidence >= MIN_CONFIDENCE and face.width >= MIN_FACE_PX and face.height > 0


def rank_faces(detections: list[Detection], image_size: tuple[int, int]) -> list[tuple[float, Detection]]:
    """Usable faces, best first, with their ``face_score``."""
    scored = [(face_score(d, image_size), d) for d in detections if usable(d)]
    return sorted(scored, key=lambda sd: sd[0], reverse=True)


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
) -> CropResult:
    """A square avatar from ``image`` around its best face, for a round display.

    Raises ``FaceTooSmall`` when usable faces exist but none fills the avatar within ``max_upscale``
    (the caller should try another image, or call again with ``detections=[]`` to force the
    fallbacks), and ``NoUsableFace`` (a ``FaceTooSmall``) when there is no usable face and
    ``allow_fallback`` is False.
    """
    if output_size < 1 or not max_upscale > 0:
        raise ValueError("output_size must be >= 1 and max_upscale > 0")
    rgb = to_rgb(image)
    size = rgb.size
    ranked = rank_faces(detections, size)
    if ranked:
        best: CropResult | None = None
        refused: list[str] = []
        for quality, face in ranked:
            placed = _place_face(face, size, output_size, max_upscale)
            if placed is None:
                refused.append(f"a {face.width:.0f}-px face")
                continue
            box, inside, padded, out = placed
            upscale = out / (box[2] - box[0])
            score = 0.5 + 0.5 * quality * (1.0 if inside else 0.5) * (1.0 if upscale <= 1 else upscale ** -0.25)
            if best is None or score > best.score:
                _, share = face_in_circle(face.bbox, box)
                best = CropResult(_render(rgb, box, out), box, "face", face, upscale, score, inside, share, padded)
        if best is not None:
            return best
        raise FaceTooSmall(
            f"no face is big enough for a {output_side(size, output_size, max_upscale)}-px avatar within "
            f"{max_upscale:g}x upscaling ({', '.join(refused)}): try another image"
        )
    if not allow_fallback:
        raise NoUsableFace(
            f"no usable face (confidence >= {MIN_CONFIDENCE}, width >= {MIN_FACE_PX} px) among "
            f"{len(detections)} detection(s), and fallbacks are off"
        )
    return _fallback(rgb, output_side(size, output_size, max_upscale))


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

    None when the face is too small: it would need more than ``max_upscale`` to fill the avatar.
    A source big enough for a full ``output_size`` avatar must give one (the crop widens, down to
    ``MIN_FACE_SHARE``, to keep the upscale in bounds); a smaller source gives a smaller avatar at
    the preferred framing, but never below ``MIN_OUTPUT_PX``.
    """
    smallest_side = min(size)
    full_size = smallest_side * max_upscale >= output_size
    need = (output_size if full_size else min(output_size, MIN_OUTPUT_PX)) / max_upscale  # source px
    widest = face.width / MIN_FACE_SHARE
    if min(widest, smallest_side) < need * (1 - 1e-9):
        return None
    lo = max(face.width / MAX_FACE_SHARE, need)  # sizes in [lo, widest] keep the face at a good share
    preferred = min(max(face.width / TARGET_FACE_SHARE, lo), widest)

    def fit(s: float) -> int:  # whole pixels, never below what the upscaling limit allows
        return max(math.ceil(need - 1e-9), math.floor(s))

    def result(box: IntBox, inside: bool, padded: bool) -> tuple[IntBox, bool, bool, int]:
        side = box[2] - box[0]
        return box, inside, padded, output_size if full_size else min(output_size, math.floor(side * max_upscale))

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
