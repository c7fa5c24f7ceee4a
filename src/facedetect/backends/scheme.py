"""How the default ``animeface`` detector searches an image fast without losing faces.

animeface-2009 slides a 32-px-model window over the image at scales ``min_window * scale_factor**k``
(k = 0, 1, ...) up to 3/4 of the short side, on a lattice of ``step * scale`` pixels. What we measured
(bench/detect.py, bench/RESULTS.md) decided the scheme:

* A coarser lattice or coarser scale ladder loses faces: step 6 finds 27 of 31 raw faces, scale factor
  1.2 only 21; unions of shifted coarse lattices do not win them back. So every window raw animeface
  tries at a scale we search, we try too.
* Scales split cleanly across threads. Thread t of T searches scales k = t, t+T, t+2T, ... (start
  ``min_window * scale_factor**t``, factor ``scale_factor**T``): together they visit the raw scale set,
  the C call releases the GIL, and nothing is scanned twice — unlike tiles, which must overlap.
* The smallest windows are most of the work, and faces a few dozen pixels wide in a 2400-px CG are
  neither what the labels call faces nor usable avatars. So faces smaller than ``min_face_fraction`` of
  the short side are not searched: the image is downscaled (area filter) until that size maps onto
  animeface's own minimum window. Images whose short side is under ``min_window / min_face_fraction``
  (about 1 000 px at the defaults) run at full resolution, untouched.
* Results of the threads are merged the way libnvxs merges its own candidates (larger likelihood wins
  an overlap, a tie goes to the smaller box), so the output matches one raw call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import cv2
import numpy as np

from facedetect.backends._nvxs import RawFace

# libnvxs defaults, as the animeface wheel calls it.
WHEEL_STEP = 4.0
WHEEL_SCALE_FACTOR = 1.095
WHEEL_MIN_WINDOW = 42.592


@dataclass(frozen=True)
class SearchScheme:
    """Parameters of the fast search. ``threads=1, min_face_fraction=0`` is exactly one raw call."""

    step: float = WHEEL_STEP
    scale_factor: float = WHEEL_SCALE_FACTOR
    min_window: float = WHEEL_MIN_WINDOW
    min_face_fraction: float = 1.0 / 24.0
    threads: int = 2
    overlap: float = 0.1  # libnvxs' own duplicate threshold (intersection over the smaller box)

    def __post_init__(self) -> None:
        if self.step <= 0 or self.scale_factor <= 1.0 or self.min_window <= 0:
            raise ValueError("step and min_window must be > 0 and scale_factor > 1")
        if not 0.0 <= self.min_face_fraction < 0.75:
            raise ValueError("min_face_fraction must be in [0, 0.75)")
        if self.threads < 1:
            raise ValueError("threads must be >= 1")

    def work_scale(self, width: int, height: int) -> float:
        """Resize factor (<= 1) so that the smallest face we search fills animeface's minimum window."""
        smallest_face = min(width, height) * self.min_face_fraction
        if smallest_face <= self.min_window:
            return 1.0
        return self.min_window / smallest_face

    def passes(self) -> list[tuple[float, float]]:
        """(min_window, scale_factor) of each thread's call: interleaved rungs of the raw scale ladder."""
        return [
            (self.min_window * self.scale_factor**t, self.scale_factor**self.threads)
            for t in range(self.threads)
        ]


@dataclass(frozen=True)
class Placed:
    """A raw face and the factors that map its working coordinates back to the original image."""

    face: RawFace
    sx: float
    sy: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        x, y, w, h = self.face.face
        return (x / self.sx, y / self.sy, (x + w) / self.sx, (y + h) / self.sy)


RawCall = Callable[..., list[RawFace]]


def resize_for(rgb: np.ndarray, scale: float) -> tuple[np.ndarray, float, float]:
    """The working image and its exact per-axis factors (rounding makes sx and sy differ slightly)."""
    h, w = rgb.shape[:2]
    if scale >= 1.0:
        return rgb, 1.0, 1.0
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    small = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
    return small, nw / w, nh / h


def search(
    raw: RawCall, rgb: np.ndarray, scheme: SearchScheme, pool: Executor | None = None, *, analyze: bool = True
) -> list[Placed]:
    """Run the scheme: ``raw(rgb, step=, scale_factor=, min_window=, analyze=)`` once per pass."""
    work, sx, sy = resize_for(rgb, scheme.work_scale(rgb.shape[1], rgb.shape[0]))
    work = np.ascontiguousarray(work)

    def one(p: tuple[float, float]) -> list[RawFace]:
        mw, sf = p
        return raw(work, step=scheme.step, scale_factor=sf, min_window=mw, analyze=analyze)

    passes = scheme.passes()
    results = list(pool.map(one, passes)) if pool is not None and len(passes) > 1 else [one(p) for p in passes]
    placed = [Placed(f, sx, sy) for faces in results for f in faces]
    return merge(placed, scheme.overlap)


def overlap_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over the smaller box's area (1.0 when one box contains the other)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller if smaller > 0 else 0.0


def merge(faces: list[Placed], overlap: float) -> list[Placed]:
    """Duplicate removal as libnvxs does it: of overlapping faces, the more likely wins; a tie, the smaller."""

    def rank(p: Placed) -> tuple[float, float]:
        x1, y1, x2, y2 = p.box
        return (-p.face.likelihood, (x2 - x1) * (y2 - y1))

    kept: list[Placed] = []
    for cand in sorted(faces, key=rank):
        if all(overlap_ratio(cand.box, k.box) <= overlap for k in kept):
            kept.append(cand)
    return kept
