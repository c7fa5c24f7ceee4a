"""The avatar's dominant colour, for a role that wears it.

"Dominant" means the most common *colourful* cluster inside the round part of the avatar (what people
see): near-white, near-black and grey clusters (backgrounds, line art, skin highlights) are skipped
unless nothing else is there. Pillow's median-cut quantiser does the clustering.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SAMPLE = 128  # pixels per side: plenty for a colour histogram, and fast


def dominant_colour(path: Path, *, clusters: int = 8) -> int:
    """The colour as Discord's integer ``0xRRGGBB`` (never 0, which Discord treats as "no colour")."""
    with Image.open(path) as im:
        rgb = im.convert("RGB").resize((SAMPLE, SAMPLE), Image.Resampling.BILINEAR)
    mask = Image.new("L", rgb.size, 0)
    ImageDraw.Draw(mask).ellipse((0, 0, SAMPLE - 1, SAMPLE - 1), fill=255)
    pixels = np.asarray(rgb)[np.asarray(mask) > 0]  # (n, 3): the round part only
    sample = Image.fromarray(np.ascontiguousarray(pixels.reshape(1, -1, 3)), "RGB")
    quant = sample.quantize(colors=clusters, method=Image.Quantize.MEDIANCUT)
    palette = quant.getpalette() or []
    counts = sorted(quant.getcolors() or [], reverse=True)
    best: tuple[int, int, int] | None = None
    for _count, index in counts:
        r, g, b = palette[index * 3: index * 3 + 3]
        _h, lightness, saturation = colorsys.rgb_to_hls(r / 255, g / 255, b / 255)
        if saturation >= 0.25 and 0.15 <= lightness <= 0.85:
            best = (r, g, b)
            break
    if best is None:  # a monochrome avatar: its most common colour, whatever it is
        index = counts[0][1]
        best = tuple(palette[index * 3: index * 3 + 3])  # type: ignore[assignment]
    value = (best[0] << 16) | (best[1] << 8) | best[2]
    return value or 0x010101
