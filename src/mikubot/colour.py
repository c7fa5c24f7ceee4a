"""Hair colours compared one way: the one ``#rrggbb`` parser and the one perceptual metric.

The verifier (is the character in this picture?) and the crop (which face is the character's?) both ask
"is this hair one of the character's colours, and how near?"; both ask it here, so they cannot disagree.

The metric is ``hair_difference``: the CIE Lab distance (Delta-E 1976, D65) with lightness counted at
``LIGHTNESS_WEIGHT``. Light and shade change a hair's lightness far more than its hue and chroma (a red
in shadow is still red, not another character's), and a colour without chroma (grey, black, white) is
far from every saturated colour, so grey hair never passes for a dark teal. A colour *matches* when its
difference to the nearest configured colour is at most the tolerance (``MIKU_HAIR_TOLERANCE``, in the
same units); among matching faces the nearer colour ranks first, in steps of ``NEARNESS_STEP``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

# Lightness counts at this weight in hair_difference (chosen on the generated scene set's tune split).
LIGHTNESS_WEIGHT = 0.25
# The default tolerance (MIKU_HAIR_TOLERANCE): how different a hair colour may look and still be the
# character's. Chosen on the generated scene set's tune split (docs/crop.md: 20 picked the target
# character less often, 30 let scenery pass for Miku's teal). Miku's teal in shade (#1a8a8a) is 5 from
# #137a7f; grey and black hair (#535353, #3b3937) are 27-29 from it, blue (#3c7fd0) 48 (tests/mikubot/test_crop.py).
DEFAULT_TOLERANCE = 25.0
# Matching faces are ordered by their difference in steps this wide: nearer by less is a tie, left to the
# detector's confidence.
NEARNESS_STEP = 8.0

_HEX = re.compile(r"#?([0-9a-fA-F]{6})")


def parse_hex(colour: str) -> tuple[int, int, int]:
    """``"#rrggbb"`` (the ``#`` optional, either case) as (r, g, b); ``ValueError`` for anything else."""
    m = _HEX.fullmatch(colour) if isinstance(colour, str) else None
    if m is None:
        raise ValueError(f"{colour!r} is not a #rrggbb colour")
    h = m.group(1)
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def is_hex(colour: object) -> bool:
    """Is ``colour`` a ``#rrggbb`` string (with its ``#``)?"""
    return isinstance(colour, str) and colour.startswith("#") and _HEX.fullmatch(colour) is not None


def to_hex(rgb: Iterable[float]) -> str:
    r, g, b = (int(v) for v in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


# sRGB (D65) to CIE XYZ, IEC 61966-2-1; the white point the Lab conversion divides by.
_RGB_TO_XYZ = ((0.4124, 0.3576, 0.1805), (0.2126, 0.7152, 0.0722), (0.0193, 0.1192, 0.9505))
_WHITE = (0.95047, 1.0, 1.08883)


def lab(colour: str) -> tuple[float, float, float]:
    """CIE Lab (D65) of a ``#rrggbb`` colour: L 0-100, a and b around 0."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (v / 255 for v in parse_hex(colour))]
    x, y, z = (sum(m * c for m, c in zip(row, linear, strict=True)) / w for row, w in zip(_RGB_TO_XYZ, _WHITE, strict=True))

    def f(t: float) -> float:
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    fx, fy, fz = f(x), f(y), f(z)
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def hair_difference(a: str, b: str) -> float:
    """How different two ``#rrggbb`` hair colours look: CIE Lab distance with lightness down-weighted
    (``LIGHTNESS_WEIGHT``), so the same hair lit or shaded stays close and another hue does not."""
    (l1, a1, b1), (l2, a2, b2) = lab(a), lab(b)
    return math.hypot(LIGHTNESS_WEIGHT * (l1 - l2), a1 - a2, b1 - b2)


def hair_nearness(colour: str | None, hair_colours: list[str] | None) -> float:
    """``hair_difference`` from ``colour`` to the nearest of ``hair_colours``; infinite when either is
    unknown or unreadable."""
    if colour is None or not hair_colours:
        return math.inf
    try:
        return min(hair_difference(colour, c) for c in hair_colours)
    except ValueError:
        return math.inf


def colour_matches(colour: str | None, hair_colours: list[str] | None, tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """Is ``colour`` one of ``hair_colours``: within ``tolerance`` of the nearest (``hair_nearness``)?"""
    return hair_nearness(colour, hair_colours) <= tolerance


def hair_rank(colour: str | None, hair_colours: list[str] | None, tolerance: float = DEFAULT_TOLERANCE) -> tuple[bool, int]:
    """How well a face's hair speaks for the character, larger is better: (matches, minus its difference in
    ``NEARNESS_STEP`` steps). The crop's face order and the heuristic verifier's choice of face both start
    with this key. Red and orange hair both pass for a configured red, but the red-haired face is the
    character."""
    near = hair_nearness(colour, hair_colours)
    if near > tolerance:
        return False, 0
    return True, -round(near / NEARNESS_STEP)
