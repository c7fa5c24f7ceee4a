"""Where to put a square when an image has no usable face: OpenCV's spectral-residual saliency.

``cv2.saliency`` comes with the contrib build of OpenCV (``opencv-contrib-python-headless``, the
detector extra). Spectral residual (Hou & Zhang, CVPR 2007) is fast (about a millisecond on a
thumbnail) and needs no model file. It answers "what stands out", which is enough to keep a
character rather than an empty corner in the avatar; it does not know what a face is, so the
face path is always preferred.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from mikubot.errors import MikubotError

# The saliency map is computed on a thumbnail: the method looks at coarse structure anyway
# (OpenCV's implementation works on a 64x64 resize internally), and it keeps the cost constant.
THUMB_SIDE = 256
# A map whose values span less than this is flat: a blank or nearly uniform picture. The
# spectral residual of a constant image is ~1 everywhere after OpenCV's normalisation, so
# "no contrast" rather than "all zero" is the failure to look for.
MIN_CONTRAST = 0.05
# On a tall image the square is hung from the top of the salient region (a standing figure's head
# is its top), this share of the square above it so the hair is not cut.
TOP_MARGIN = 0.05
# A row belongs to the salient region once its saliency reaches this share of the busiest row.
ROW_THRESHOLD = 0.25


class SaliencyUnavailable(MikubotError):
    """The saliency map is unusable (a flat or blank picture, or OpenCV failed): use another fallback."""


@dataclass(frozen=True)
class SalientSquare:
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in source pixels; always inside the image
    mass: float  # share of the picture's saliency inside the box, 0..1


def saliency_map(image: Image.Image, *, thumb_side: int = THUMB_SIDE) -> np.ndarray:
    """The spectral-residual saliency of ``image`` at thumbnail size, float32 in [0, 1].

    Raises ``SaliencyUnavailable`` when the map carries no information.
    """
    thumb = image.convert("RGB")
    thumb.thumbnail((thumb_side, thumb_side), Image.Resampling.BILINEAR)
    bgr = cv2.cvtColor(np.asarray(thumb), cv2.COLOR_RGB2BGR)
    ok, smap = cv2.saliency.StaticSaliencySpectralResidual_create().computeSaliency(bgr)
    if not ok or smap is None:
        raise SaliencyUnavailable("OpenCV could not compute a saliency map for this image")
    smap = np.asarray(smap, dtype=np.float32)
    if smap.size == 0 or not np.isfinite(smap).all():
        raise SaliencyUnavailable("the saliency map is empty or not finite")
    lo, hi = float(smap.min()), float(smap.max())
    if hi - lo < MIN_CONTRAST:
        raise SaliencyUnavailable("the image is flat: nothing stands out")
    return (smap - lo) / (hi - lo)


def salient_square(image: Image.Image) -> SalientSquare:
    """The largest square of ``image`` placed over what stands out.

    Wide images: the square slides sideways to hold the most saliency. Tall images: it hangs from
    the top of the salient region (a character's head), with a little room above. Square images:
    the whole picture.
    """
    width, height = image.size
    smap = saliency_map(image)
    th, tw = smap.shape
    side = min(width, height)
    total = float(smap.sum())
    if width > height:
        cols = smap.sum(axis=0)
        win = max(1, round(side * tw / width))
        sums = np.convolve(cols, np.ones(win, dtype=np.float32), mode="valid")
        start = int(np.argmax(sums))
        x1 = min(round(start * width / tw), width - side)
        box = (x1, 0, x1 + side, side)
    elif height > width:
        rows = cv2.GaussianBlur(smap, (0, 0), sigmaX=2).sum(axis=1)
        first = int(np.argmax(rows >= ROW_THRESHOLD * float(rows.max())))
        y_top = first * height / th - TOP_MARGIN * side
        y1 = int(min(max(0, round(y_top)), height - side))
        box = (0, y1, side, y1 + side)
    else:
        box = (0, 0, side, side)
    sx, sy = tw / width, th / height
    inside = smap[int(box[1] * sy) : max(int(box[1] * sy) + 1, round(box[3] * sy)),
                  int(box[0] * sx) : max(int(box[0] * sx) + 1, round(box[2] * sx))]
    return SalientSquare(box=box, mass=float(inside.sum()) / total if total > 0 else 0.0)
