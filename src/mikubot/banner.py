"""The profile banner: a 5:2 crop of the avatar's picture, with the avatar's face where the card shows it.

Discord shows a profile banner 5:2 at the top of the profile card, and the avatar circle sits over the
banner's lower left, its centre on the banner's bottom edge. A face there would be hidden behind the
avatar. So the banner is framed on the face the avatar chose (the same detections, no second detection
pass) and only placements that keep that face wholly inside the banner and clear of the avatar circle
(its ring included) are taken; among those, the face at a readable size, eyes a little above the
middle, and the most of what stands out (``mikubot.saliency``) inside the frame, without cutting
another detected face in half. Only a face so low in the picture's lower left that no frame inside the
picture lifts it clear of the circle makes the banner reach below the picture (by at most the circle's
height, filled with the colour of the picture's bottom edge, mostly behind the avatar anyway). Without
a face (the avatar came from saliency), the widest 5:2 frame holding the most saliency outside the circle.

Pure functions of (picture, detections, chosen face) -> banner image, so a server's banner is made the
same way as the global one. A banner keeps its frame's own pixels (a frame at least 600 px wide when the
picture has one); a picture whose widest 5:2 frame would have to be blown up more than
``BANNER_MAX_UPSCALE`` to reach 600 x 240 (a portrait sprite's 320 x 128 strip) gets none — it would look
soft on the profile — (``NoBanner``, its message the reason recorded); the avatar is still applied.

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
from mikubot.crop import usable
from mikubot.errors import MikubotError
from mikubot.saliency import SaliencyUnavailable, saliency_map

Method = Literal["face", "saliency"]
IntBox = tuple[int, int, int, int]
FloatBox = tuple[float, float, float, float]

# --- Discord's profile card, measured on the desktop client's profile popout (px) --------------------
# The card is 340 px wide; the banner fills its width at 5:2 (340 x 136). The avatar is an 80-px circle
# at x 16..96 whose centre lies on the banner's bottom edge, drawn inside a 6-px ring of the card's
# colour, so 46 px around that centre are hidden from the banner.
CARD_WIDTH = 340
ASPECT = 5 / 2  # banner width / height
AVATAR_LEFT = 16
AVATAR_DIAMETER = 80
AVATAR_RING = 6
# The hidden disc in banner units (shares of the banner's width; the banner is 1 / ASPECT tall).
CIRCLE_X = (AVATAR_LEFT + AVATAR_DIAMETER / 2) / CARD_WIDTH  # 0.1647
CIRCLE_Y = 1 / ASPECT  # on the bottom edge
CIRCLE_R = (AVATAR_DIAMETER / 2 + AVATAR_RING) / CARD_WIDTH  # 0.1353
FACE_MARGIN = 0.01  # the face box stays this far (share of the width) from the disc
# The most a banner may reach below the picture (share of its width): the circle's height above the
# bottom edge and the margin. Only for a face no frame inside the picture can show.
MAX_PAD = CIRCLE_R + 2 * FACE_MARGIN

# --- size ---------------------------------------------------------------------------------------------
MIN_WIDTH, MIN_HEIGHT = 600, 240  # Discord's smallest banner
OUTPUT_WIDTH = 1200  # twice the widest the banner is shown (the full profile, ~600 px)
# A banner is shown up to ~600 px wide, far larger than the avatar's circle: a crop blown up to reach
# MIN_WIDTH looks soft there, so it may be upscaled this much at most (MIKU_MAX_UPSCALE, if lower, wins),
# and never beyond MIN_WIDTH — a frame wider than that keeps its own pixels.
BANNER_MAX_UPSCALE = 1.25

# --- how the face sits in the banner ---------------------------------------------------------------------
TARGET_FACE_HEIGHT = 0.40  # face height / banner height we aim for: a face with its hair, some scene around
MIN_FACE_HEIGHT = 0.15  # a smaller face is still fine when the picture gives no closer frame
MAX_FACE_HEIGHT = 0.75  # a bigger face has no room for its hair
EYE_LINE = 0.45  # eyes this far down the banner
SIZE_STEPS = 10
GRID = 24  # positions tried across each free span

# The placement score: face size, saliency inside the frame, the eyes' place; cutting another face costs,
# and so does less room above the face than HEADROOM of its height (an anime face box runs brow to chin:
# the hair is above it).
W_SIZE, W_SALIENCY, W_PLACE, CUT_FACE, W_HEAD = 0.45, 0.35, 0.20, 0.15, 0.15
HEADROOM = 0.25


class NoBanner(MikubotError):
    """No banner can be made from this picture; the message is the reason recorded."""


@dataclass
class BannerResult:
    image: Image.Image  # RGB, 5:2, at least MIN_WIDTH x MIN_HEIGHT
    box: IntBox  # source pixels; inside the picture unless ``padded``
    method: Method
    face: Detection | None  # the avatar's face, when the banner is framed on it
    face_visible: bool | None  # the face wholly inside the banner and clear of the avatar circle (None: no face)
    upscale: float  # output px per source px
    reason: str
    padded: bool = False  # the box reaches below the picture, filled with its bottom edge's colour

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "box": [int(v) for v in self.box], "size": [self.image.width, self.image.height],
                "face": self.face.to_json() if self.face else None, "face_visible": self.face_visible,
                "upscale": round(self.upscale, 4), "reason": self.reason, "padded": self.padded}


def hidden_disc(box: FloatBox) -> tuple[float, float, float]:
    """The part of ``box`` (a banner crop) that the avatar circle covers on the card: (cx, cy, r) in the
    same pixels as ``box``."""
    width = box[2] - box[0]
    return box[0] + CIRCLE_X * width, box[1] + CIRCLE_Y * width, CIRCLE_R * width


def clearances(face_box: FloatBox, box: FloatBox) -> tuple[float, float]:
    """The face box's distance to the banner's edges and to the avatar circle, as shares of the banner's
    width (< 0: cut by an edge, or under the circle)."""
    edges, clear = _clearances(face_box, *(np.array([v], dtype=np.float64) for v in box))
    return float(edges[0]), float(clear[0])


def _clearances(face_box: FloatBox, x1: np.ndarray, y1: np.ndarray, x2: np.ndarray,
                y2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`clearances` for many banners at once, given as arrays of their edges."""
    width = x2 - x1
    fx1, fy1, fx2, fy2 = face_box
    edges = np.minimum(np.minimum(fx1 - x1, fy1 - y1), np.minimum(x2 - fx2, y2 - fy2))
    cx, cy, r = hidden_disc((x1, y1, x2, y2))
    nearest_x, nearest_y = np.minimum(np.maximum(cx, fx1), fx2), np.minimum(np.maximum(cy, fy1), fy2)  # nearest the centre
    return edges / width, (np.hypot(nearest_x - cx, nearest_y - cy) - r) / width


def visibility(face_box: FloatBox, box: FloatBox) -> float:
    """How clearly the face shows on the card, as a share of the banner's width: the smaller of its
    distances to the banner's edges and to the avatar circle (< 0: cut by an edge or under the circle)."""
    return min(clearances(face_box, box))


def face_visible(face_box: FloatBox, box: FloatBox) -> bool:
    """Is the whole face box inside the banner and off the avatar circle (its ring included)?"""
    return visibility(face_box, box) >= 0


def largest_box(size: tuple[int, int]) -> tuple[int, int]:
    """The biggest 5:2 (width, height) inside a picture of ``size``."""
    w, h = size
    bw = min(w, math.floor(h * ASPECT))
    return bw, round(bw / ASPECT)


def output_width(box_width: int, *, out_width: int = OUTPUT_WIDTH) -> int:
    """The banner's width for a crop ``box_width`` wide: its own width (upscaled only as far as
    ``MIN_WIDTH``), ``out_width`` at most, a multiple of 5 so the height is exact."""
    w = min(out_width, max(box_width, MIN_WIDTH))
    return w - w % 5


def upscale_limit(max_upscale: float) -> float:
    """How much a banner's crop may be blown up: ``BANNER_MAX_UPSCALE``, or the avatar's limit if lower."""
    return min(max_upscale, BANNER_MAX_UPSCALE)


def crop_banner(
    image: Image.Image,
    face: Detection | None,
    detections: list[Detection] | None = None,
    *,
    out_width: int = OUTPUT_WIDTH,
    max_upscale: float = 2.0,
) -> BannerResult:
    """The banner for ``image`` framed on ``face`` (the face the avatar chose, or None when the avatar
    was cropped without one). ``detections``: the same picture's detections, so that other faces are not
    cut in half. Raises ``NoBanner`` when the picture is too small for ``MIN_WIDTH`` x ``MIN_HEIGHT``
    within ``upscale_limit(max_upscale)`` (the avatar's ``max_upscale``, at most ``BANNER_MAX_UPSCALE``)."""
    if out_width < MIN_WIDTH:
        raise ValueError(f"out_width must be at least {MIN_WIDTH}")
    rgb = to_rgb(image)
    size = rgb.size
    big_w, big_h = largest_box(size)
    limit = upscale_limit(max_upscale)
    need = math.ceil(MIN_WIDTH / limit - 1e-9)  # the narrowest crop that still gives MIN_WIDTH
    if big_w < need:
        raise NoBanner(f"the picture ({size[0]}x{size[1]}) is too small for a {MIN_WIDTH}x{MIN_HEIGHT} banner: its "
                       f"largest 5:2 crop is {big_w}x{big_h}, which would be blown up {MIN_WIDTH / big_w:.1f}x and "
                       f"look soft on the profile (a banner is upscaled {limit:g}x at most)")
    mass = _SaliencyMass(rgb)
    others = [d.bbox for d in (detections or []) if usable(d) and (face is None or d.bbox != face.bbox)]
    # A detector's box may reach past the picture's edge (a face cut by the frame): frame the part inside.
    inside = None if face is None else _within(face.bbox, size)
    if face is None or inside is None:
        box = _salient_box(size, big_w, mass)
        reason = "saliency: the avatar has no face; the widest 5:2 frame holding the most of what stands out"
        return _result(rgb, box, "saliency", None, None, reason, out_width)
    placed = _place_face(inside, size, need, mass, others, pad=False)
    assert placed is not None  # without padding there is always a placement (the one showing most)
    box, seen = placed
    padded = False
    if not seen:  # the face is too low in the lower left: reach below the picture, as little as needed
        below = _place_face(inside, size, need, mass, others, pad=True)
        if below is not None:
            box, seen, padded = below[0], True, below[0][3] > size[1]
    share = (inside[3] - inside[1]) / (box[3] - box[1])
    out = output_width(box[2] - box[0], out_width=out_width)
    reason = (f"face: the avatar's face, {share:.0%} of the banner's height, clear of the avatar circle"
              + ("; the face is so low in the lower left that the banner reaches below the picture (filled)"
                 if padded else "") + f"; {out}x{out * 2 // 5} banner" if seen else
              "face: the avatar's face cannot be framed clear of the avatar circle and the edges in this picture; "
              f"the placement showing most of it; {out}x{out * 2 // 5} banner")
    return _result(rgb, box, "face", face, seen, reason, out_width, padded)


def _within(box: FloatBox, size: tuple[int, int]) -> FloatBox | None:
    """The part of ``box`` inside the picture, or None when none of it is."""
    x1, y1 = max(0.0, box[0]), max(0.0, box[1])
    x2, y2 = min(float(size[0]), box[2]), min(float(size[1]), box[3])
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def banner_png(result: BannerResult) -> bytes:
    """The banner as PNG bytes (``PATCH /users/@me``'s ``banner``)."""
    buf = io.BytesIO()
    result.image.save(buf, format="PNG")
    return buf.getvalue()


# --- placement ------------------------------------------------------------------------------------------


class _SaliencyMass:
    """Saliency inside any box, from an integral image of the thumbnail's map (flat when unavailable)."""

    def __init__(self, rgb: Image.Image) -> None:
        try:
            smap = saliency_map(rgb)
        except SaliencyUnavailable:
            smap = np.ones((16, 40), dtype=np.float32)
        self.sx, self.sy = smap.shape[1] / rgb.width, smap.shape[0] / rgb.height
        self.total = float(smap.sum()) or 1.0
        self.integral = np.pad(smap.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))

    def share(self, box: FloatBox) -> float:
        return float(self.shares(*(np.array([v], dtype=np.float64) for v in box))[0])

    def shares(self, x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray) -> np.ndarray:
        """:meth:`share` of many boxes at once, given as arrays of their edges."""
        h, w = self.integral.shape
        # np.round rounds halves to even, as round() does.
        ix1 = np.clip(np.round(x1 * self.sx), 0, w - 1).astype(np.intp)
        ix2 = np.minimum(np.maximum(np.round(x2 * self.sx), ix1), w - 1).astype(np.intp)
        iy1 = np.clip(np.round(y1 * self.sy), 0, h - 1).astype(np.intp)
        iy2 = np.minimum(np.maximum(np.round(y2 * self.sy), iy1), h - 1).astype(np.intp)
        i = self.integral
        return (i[iy2, ix2] - i[iy1, ix2] - i[iy2, ix1] + i[iy1, ix1]) / self.total


def _spans(start_pref: float, lo: float, hi: float) -> list[int]:
    """Starts from ``lo`` to ``hi`` (whole px): an even grid, plus the preferred one (clamped)."""
    lo_i, hi_i = math.ceil(lo), math.floor(hi)
    if hi_i <= lo_i:
        return [max(lo_i, 0) if hi_i < lo_i else lo_i]
    steps = {lo_i + round((hi_i - lo_i) * i / GRID) for i in range(GRID + 1)}
    steps.add(round(min(max(start_pref, lo_i), hi_i)))
    return sorted(steps)


def _widths(lo: float, hi: float) -> list[int]:
    if hi <= lo:
        return [math.floor(hi)]
    return sorted({math.floor(lo * (hi / lo) ** (i / SIZE_STEPS)) for i in range(SIZE_STEPS + 1)})


def _cuts(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray, other: FloatBox) -> np.ndarray:
    """Which banners (arrays of their edges) cut ``other``: hold part of it, not all."""
    ix = np.minimum(x2, other[2]) - np.maximum(x1, other[0])
    iy = np.minimum(y2, other[3]) - np.maximum(y1, other[1])
    return (ix > 0) & (iy > 0) & (ix * iy < (other[2] - other[0]) * (other[3] - other[1]) * 0.999)


def _place_face(face: FloatBox, size: tuple[int, int], need: int, mass: _SaliencyMass,
                others: list[FloatBox], *, pad: bool) -> tuple[IntBox, bool] | None:
    """The best 5:2 box for ``face``, and whether the face is visible in it (if not, the box showing most
    of it). ``pad``: the box may reach below the picture by up to ``MAX_PAD`` of its width (the less the
    better), and only a box showing the face counts (None if there is none).

    Each width's grid of starts is scored at once with numpy (:func:`_clearances`, :meth:`_SaliencyMass.shares`);
    of equal scores the first start, x before y, wins."""
    w, h = size
    big_w, _ = largest_box(size)
    fx1, fy1, fx2, fy2 = face
    fh = fy2 - fy1
    fcx, fcy = (fx1 + fx2) / 2, fy1 + 0.5 * fh  # eyes half-way down an anime face box
    # At least MIN_WIDTH source pixels wide when the picture has them: a narrower frame would be blown up.
    lo = max(need, min(MIN_WIDTH, big_w), fh / MAX_FACE_HEIGHT * ASPECT)
    hi = min(big_w, max(lo, fh / MIN_FACE_HEIGHT * ASPECT))
    lo = min(lo, big_w)  # a face too big for any frame: the widest frame, the face share over the limit
    best: tuple[float, IntBox] | None = None
    hiding: list[tuple[np.ndarray, np.ndarray, np.ndarray, int, int]] = []  # place, x, y, bw, bh of hiding starts
    for bw in _widths(lo, hi):
        bh = round(bw / ASPECT)
        below = math.floor(MAX_PAD * bw) if pad else 0
        if bh > h + below or bw > w:
            continue
        share = fh / bh
        size_score = math.exp(-(math.log(share / TARGET_FACE_HEIGHT) ** 2) / (2 * 0.5 ** 2))
        # The preferred place: eyes on EYE_LINE, the face a little right of the middle (away from the circle).
        # Only starts that keep the face inside the frame: the grid is fine where it matters.
        xs = _spans(fcx - 0.55 * bw, max(0, fx2 - bw), min(fx1, w - bw))
        ys = _spans(fcy - EYE_LINE * bh, max(0, fy2 - bh), min(fy1, h - bh + below))
        gx, gy = np.meshgrid(np.array(xs, dtype=np.float64), np.array(ys, dtype=np.float64), indexing="ij")
        x, y = gx.ravel(), gy.ravel()
        x2, y2 = x + bw, y + bh
        edges, clear = _clearances(face, x, y, x2, y2)
        dx = (fcx - x) / bw - 0.55
        dy = (fcy - y) / bh - EYE_LINE
        place = np.maximum(0.0, 1 - np.hypot(dx, dy * 0.4) * 2)
        hidden = (edges < 0) | (clear < FACE_MARGIN)
        if not pad:
            hiding.append((place[hidden], x[hidden], y[hidden], bw, bh))
        if hidden.all():
            continue
        cramped = np.maximum(0.0, 1 - (fy1 - y) / (HEADROOM * fh))
        cut = sum((_cuts(x, y, x2, y2, o).astype(np.int64) for o in others), np.zeros(len(x), np.int64))
        score = (W_SIZE * size_score + W_SALIENCY * mass.shares(x, y, x2, y2) + W_PLACE * place - W_HEAD * cramped
                 - CUT_FACE * cut - np.maximum(0.0, y2 - h) / bh)
        score[hidden] = -np.inf
        at = int(np.argmax(score))  # the first of equals
        if best is None or score[at] > best[0]:
            best = (float(score[at]), (int(x[at]), int(y[at]), int(x[at]) + bw, int(y[at]) + bh))
    if best is not None:
        return best[1], True
    if pad:
        return None
    # No start shows all of the face: the one showing most of it. Sampled only now, as it is needed rarely.
    starts = [(float(p), (int(a), int(b), int(a) + bw, int(b) + bh))
              for places, xs_, ys_, bw, bh in hiding for p, a, b in zip(places, xs_, ys_)]
    fallback = max(starts, key=lambda pb: _shown(face, tuple(map(float, pb[1]))) + 0.01 * pb[0])  # first of equals
    return fallback[1], False


def _shown(face: FloatBox, box: FloatBox, n: int = 8) -> float:
    """The share of the face box the card shows (inside the banner, off the circle), from n x n samples."""
    cx, cy, r = hidden_disc(box)
    fx1, fy1, fx2, fy2 = face
    seen = 0
    for i in range(n):
        px = fx1 + (fx2 - fx1) * (i + 0.5) / n
        for j in range(n):
            py = fy1 + (fy2 - fy1) * (j + 0.5) / n
            seen += box[0] <= px < box[2] and box[1] <= py < box[3] and math.hypot(px - cx, py - cy) > r
    return seen / (n * n)


def _salient_box(size: tuple[int, int], bw: int, mass: _SaliencyMass) -> IntBox:
    """The widest 5:2 box, slid to hold the most saliency outside the avatar circle."""
    w, h = size
    bh = round(bw / ASPECT)
    best: tuple[float, IntBox] | None = None
    for x in _spans(0, 0, w - bw):
        for y in _spans(0, 0, h - bh):
            box = (float(x), float(y), float(x + bw), float(y + bh))
            cx, cy, r = hidden_disc(box)
            covered = mass.share((cx - r, cy - r, cx + r, cy))  # the circle's upper half's square, roughly
            score = mass.share(box) - covered
            if best is None or score > best[0]:
                best = (score, (x, y, x + bw, y + bh))
    assert best is not None
    return best[1]


def _result(rgb: Image.Image, box: IntBox, method: Method, face: Detection | None, seen: bool | None,
            reason: str, out_width: int, padded: bool = False) -> BannerResult:
    out = output_width(box[2] - box[0], out_width=out_width)
    source = rgb
    if box[3] > rgb.height:  # reach below the picture: continue it with its bottom edge's colour
        bottom = np.asarray(rgb)[-max(1, rgb.height // 100):].reshape(-1, 3)
        r, g, b = (int(v) for v in np.median(bottom, axis=0))
        source = Image.new("RGB", (rgb.width, box[3]), (r, g, b))
        source.paste(rgb, (0, 0))
    image = source.resize((out, out * 2 // 5), Image.Resampling.LANCZOS, box=box)
    return BannerResult(image, box, method, face, seen, out / (box[2] - box[0]), reason, padded)
