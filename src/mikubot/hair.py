"""Our own hair-colour read: which colour is the hair around a face box, from the pixels alone.

animeface reports a hair colour per face, but on sprite and scene art it often lands on a ribbon, a
shadow or the background (Sylvie's orange reads magenta), so the target-character choice was right only
about half the time. This read looks where anime hair is, the band above the face box (the fringe and the
crown), and leaves out what is not hair:

- skin: pixels near the face's own skin tone (the median of the box's cheeks-and-mouth region);
- background: pixels whose colour is common on the picture's border (the scene behind the character).

The hair colour is the per-channel median of what remains: for a two-tone hair (Sylvie's orange crown
over magenta shading) the colour between, as a person naming "her hair colour" would average it.
Background is judged in coarse CIE Lab cells (perceptual, so a cell holds colours a viewer would call the
same). No random numbers anywhere: the same pixels always give the same colour.

Comparing the colour read with a character's colours is ``mikubot.colour``'s (the one metric the crop and the
verifier share); the Lab here only sorts pixels (skin, background) inside one read.

Where the hair is looked for, and the median, were chosen on the generated scene set's *tune* split
(bench/scenes.py; docs/crop.md has the numbers).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from facedetect.imageio import to_rgb
from facedetect.types import Detection
from mikubot.colour import to_hex

# Where the hair is: a band as wide as the face box (brow to chin in anime face boxes), from this many face
# widths above its top edge to this many below it (the fringe over the brows). Not beside the face: side
# locks are often shaded in another hue (Sylvie's magenta under orange), and the read got worse with them.
ABOVE = 0.45
INTO = 0.05
WORK_SIDE = 64  # wider bands are resampled to this width

# Lab cells (OpenCV 8-bit Lab: L, a, b each 0-255) for the background; ~ Delta-E 12 wide.
CELL_L, CELL_AB = 32, 12
SKIN_DELTA_E = 22.0  # closer than this to the face's skin tone: skin, not hair
BORDER_SHARE = 0.02  # a Lab cell holding this share of the picture's border is background
BORDER_STRIP = 0.03  # the border strip, as a share of the picture's shorter side



@dataclass(frozen=True)
class HairRead:
    colour: str | None  # "#rrggbb", or None when no hair-like pixel was left
    kept: int  # pixels it was read from, after removing skin and background


def _lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.reshape(-1, 1, 3).astype(np.uint8), cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.int32)


def _cells(lab: np.ndarray) -> np.ndarray:
    return (lab[:, 0] // CELL_L) * 10_000 + (lab[:, 1] // CELL_AB) * 100 + lab[:, 2] // CELL_AB


def background_cells(rgb: np.ndarray) -> set[int]:
    """The Lab cells common on the picture's border: what lies behind the characters."""
    h, w = rgb.shape[:2]
    t = max(2, round(BORDER_STRIP * min(h, w)))
    border = np.concatenate([rgb[:t].reshape(-1, 3), rgb[-t:].reshape(-1, 3),
                             rgb[:, :t].reshape(-1, 3), rgb[:, -t:].reshape(-1, 3)])
    step = max(1, len(border) // 20_000)
    cells, counts = np.unique(_cells(_lab(border[::step])), return_counts=True)
    return {int(c) for c in cells[counts >= BORDER_SHARE * counts.sum()]}


def _region(rgb: np.ndarray, box: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The hair band's pixels above ``box`` and the skin region's inside it (each N x 3 RGB)."""
    h, w = rgb.shape[:2]
    x1, y1, x2, y2 = box
    fw, fh = x2 - x1, y2 - y1
    bx1, bx2 = max(0, round(x1)), min(w, round(x2))
    by1, by2 = max(0, round(y1 - ABOVE * fw)), min(h, round(y1 + INTO * fw))
    band = rgb[by1:by2, bx1:bx2]
    if band.size and fw > WORK_SIDE:  # resampled to WORK_SIDE wide: cost and noise independent of the face's size
        k = WORK_SIDE / fw
        band = cv2.resize(band, (max(1, round(band.shape[1] * k)), max(1, round(band.shape[0] * k))),
                          interpolation=cv2.INTER_AREA)
    sx1, sx2 = max(0, round(x1 + 0.3 * fw)), min(w, round(x2 - 0.3 * fw))
    sy1, sy2 = max(0, round(y1 + 0.55 * fh)), min(h, round(y1 + 0.85 * fh))
    return band.reshape(-1, 3), rgb[sy1:sy2, sx1:sx2].reshape(-1, 3)


def read_hair(rgb: np.ndarray, box: tuple[float, float, float, float],
              background: set[int] | None = None) -> HairRead:
    """The hair colour around face ``box`` in ``rgb`` (H x W x 3 uint8); ``background``: the picture's
    ``background_cells`` (computed here when not given; pass it when reading several faces)."""
    if background is None:
        background = background_cells(rgb)
    hair, skin = _region(rgb, box)
    if not len(hair):
        return HairRead(None, 0)
    lab = _lab(hair)
    keep = np.ones(len(lab), bool)
    if len(skin):
        skin_lab = np.median(_lab(skin), axis=0)
        keep &= np.linalg.norm(lab - skin_lab, axis=1) >= SKIN_DELTA_E
    keep &= ~np.isin(_cells(lab), np.fromiter(background, np.int64, len(background)))
    if not keep.any():
        return HairRead(None, 0)
    return HairRead(to_hex(np.median(hair[keep], axis=0).round()), int(keep.sum()))


def with_hair(image: Image.Image, detections: list[Detection]) -> list[Detection]:
    """``detections`` with our hair read in each one's ``attributes["hair"]`` (the detector's own reading,
    if any, stays in ``attributes["hair_color"]``). New Detection objects; the input is left alone."""
    if not detections:
        return []
    rgb = np.asarray(to_rgb(image))
    background = background_cells(rgb)
    out = []
    for d in detections:
        read = read_hair(rgb, d.bbox, background)
        attributes = {**d.attributes, "hair": read.colour}
        out.append(Detection(bbox=d.bbox, confidence=d.confidence, keypoints=list(d.keypoints), attributes=attributes))
    return out
