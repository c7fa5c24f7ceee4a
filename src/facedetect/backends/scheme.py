"""How the default ``animeface`` detector searches an image fast without losing faces.

animeface-2009 slides a 32-px-model window over the image at scales ``min_window * scale_factor**k``
(k = 0, 1, ...) up to 3/4 of the short side, on a lattice of ``step * scale`` pixels. What we measured
(bench/detect.py, bench/RESULTS.md, docs/detector-speed.md) decided the scheme:

* A coarser lattice or coarser scale ladder loses faces: step 6 finds 27 of 31 raw faces, scale factor
  1.2 only 21. So each pass keeps the wheel's dense lattice and ladder.
* Scales split cleanly across threads. The largest pass is dealt to T jobs, job t searching rungs
  k = t, t+T, t+2T, ... (start ``min_window * scale_factor**t``, factor ``scale_factor**T``): together they
  visit the pass's whole ladder, the C call releases the GIL, and nothing is scanned twice. Smaller passes
  run as one call each, next to those jobs (see :func:`plan`).
* The smallest windows are not what the labels call faces nor usable avatars: faces smaller than
  ``min_face_fraction`` of the short side are not searched (the image is area-downscaled until that size
  maps onto animeface's own minimum window; images under ~1 000 px short side run untouched).
* The detector is sensitive to where its lattice and scale ladder happen to fall on a face: the same face
  is found or missed when the image is resampled by a fraction of a rung, and one-off background false
  positives come and go the same way. So the scheme runs *passes* on the working image downscaled by
  ``scale_factor ** -offset`` (one resampling each) and keeps a face when ``votes`` passes found it (a box
  with IoU >= ``agree_iou`` to the cluster's best), or a single pass found it with likelihood >=
  ``lone_likelihood``. Clusters are formed the way libnvxs merges its own candidates.
* A pass at offset o costs about ``scale_factor ** -2o`` of a full-resolution pass (5.5: 0.37) and sees
  faces from ``min_window * scale_factor ** o`` up (70 working-image px). The default is the
  full-resolution pass plus one at offset 5.5: ~1.4x the work of one raw call. Faces smaller than 70 px
  can only be found by the full-resolution pass, so they need the lone bar.
* A lone face kept for its likelihood lacks a second pass to confirm where it is; its box is re-placed by
  a dense search (step 2, scale factor 1.03) of a crop around it normalised to an 80-px face.
  Measurements and the alternatives tried: docs/detector-speed.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, replace
from typing import Any, Protocol

import cv2
import numpy as np

from facedetect.backends._nvxs import RawFace
from facedetect.types import iou

# libnvxs defaults, as the animeface wheel calls it.
WHEEL_STEP = 4.0
WHEEL_SCALE_FACTOR = 1.095
WHEEL_MIN_WINDOW = 42.592
MAX_WINDOW_SHARE = 0.75  # libnvxs searches windows up to 3/4 of the image's short side
# Refining a lone face: a crop of the face plus REFINE_MARGIN of its size on each side, resized so the face
# is REFINE_FACE px wide (about twice the minimum window, so the ladder has rungs below and above it), then
# searched with a lattice twice as dense and rungs three times finer than the wheel's. Only windows of
# 0.7x to ~1.3x the face are searched: libnvxs's largest window is 32 * short side / min_window, so a
# min_window of 0.7 * REFINE_FACE on the ~180-px crop stops the ladder near 1.3x (from the wheel's 42.6 px
# it would climb to 130 px through 40 dense rungs: 0.65 s measured on lucy mad.png, against ~0.3 s).
REFINE_MARGIN = 0.6
REFINE_FACE = 80.0
REFINE_STEP = 2.0
REFINE_SCALE_FACTOR = 1.03
REFINE_MIN_WINDOW = 0.7 * REFINE_FACE
REFINE_MIN_IOU = 0.3  # the refined box must still be the same face


@dataclass(frozen=True)
class SearchScheme:
    """Parameters of the fast search.

    ``threads=1, min_face_fraction=0, pass_offsets=(0,), votes=1`` is exactly one raw call.
    """

    step: float = WHEEL_STEP
    scale_factor: float = WHEEL_SCALE_FACTOR
    min_window: float = WHEEL_MIN_WINDOW
    min_face_fraction: float = 1.0 / 24.0
    threads: int = 2
    overlap: float = 0.1  # libnvxs' own duplicate threshold (intersection over the smaller box)
    # Each pass searches the working image downscaled by scale_factor ** -offset (0 = the working image).
    pass_offsets: tuple[float, ...] = (0.0, 5.5)
    votes: int = 2
    # A face found by a single pass needs this likelihood. libnvxs reports candidates from 0.5 up; a lone
    # face must clear that floor by 0.1. On both benchmark sets any bar in [0.6, 0.8] gives the same result
    # (docs/detector-speed.md); the lowest keeps the most faces.
    lone_likelihood: float = 0.6
    agree_iou: float = 0.5  # a pass "found" a cluster's face when one of its boxes has this IoU with the best
    refine_lone: bool = True  # re-search a lone face's neighbourhood densely to place its box

    def __post_init__(self) -> None:
        if self.step <= 0 or self.scale_factor <= 1.0 or self.min_window <= 0:
            raise ValueError("step and min_window must be > 0 and scale_factor > 1")
        if not 0.0 <= self.min_face_fraction < MAX_WINDOW_SHARE:
            raise ValueError("min_face_fraction must be in [0, 0.75)")
        if self.threads < 1:
            raise ValueError("threads must be >= 1")
        if not self.pass_offsets or any(not 0.0 <= o <= 40.0 for o in self.pass_offsets):
            raise ValueError("pass_offsets must be one or more scale rungs in [0, 40]")
        if len(set(self.pass_offsets)) != len(self.pass_offsets):
            raise ValueError("pass_offsets must be distinct")
        if not 1 <= self.votes <= len(self.pass_offsets):
            raise ValueError("votes must be between 1 and the number of passes")
        if not 0.0 <= self.lone_likelihood <= 1.0 or not 0.0 < self.agree_iou <= 1.0:
            raise ValueError("lone_likelihood must be in [0, 1] and agree_iou in (0, 1]")

    def work_scale(self, width: int, height: int) -> float:
        """Resize factor (<= 1) so that ``min_face_fraction`` of the short side fills the minimum window."""
        smallest_face = min(width, height) * self.min_face_fraction
        if smallest_face <= self.min_window:
            return 1.0
        return self.min_window / smallest_face

    def passes(self, jobs: int | None = None) -> list[tuple[float, float]]:
        """(min_window, scale_factor) of each of ``jobs`` (default ``threads``) calls that share one pass:
        interleaved rungs of its ladder."""
        n = self.threads if jobs is None else jobs
        return [(self.min_window * self.scale_factor**t, self.scale_factor**n) for t in range(n)]

    def pass_scales(self) -> list[float]:
        """Image scale of each pass, relative to the working image."""
        return [self.scale_factor ** -o for o in self.pass_offsets]


@dataclass(frozen=True)
class Placed:
    """A raw face, the factors that map its working coordinates back to the original image, and its pass."""

    face: RawFace
    sx: float
    sy: float
    source: int = 0  # index of the pass (in ``pass_offsets``) that found it
    ox: float = 0.0  # offset of the searched crop in the original image (refinement)
    oy: float = 0.0
    support: int = 1  # how many passes found it (set by :func:`vote`)

    @property
    def box(self) -> tuple[float, float, float, float]:
        x, y, w, h = self.face.face
        return (x / self.sx + self.ox, y / self.sy + self.oy, (x + w) / self.sx + self.ox, (y + h) / self.sy + self.oy)


RawCall = Callable[..., list[RawFace]]


def resize_for(rgb: np.ndarray, scale: float) -> tuple[np.ndarray, float, float]:
    """The working image and its exact per-axis factors (rounding makes sx and sy differ slightly)."""
    h, w = rgb.shape[:2]
    if scale >= 1.0:
        return rgb, 1.0, 1.0
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    small = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
    return small, nw / w, nh / h


@dataclass(frozen=True)
class Job:
    """One libnvxs call: which pass it belongs to, its image, the image's factors, its ladder."""

    source: int
    image: np.ndarray
    sx: float
    sy: float
    min_window: float
    scale_factor: float
    cost: float  # estimated relative work, for ordering: pixels, shared among a pass's jobs


def plan(rgb: np.ndarray, scheme: SearchScheme) -> list[Job]:
    """The calls of one search, most expensive first (greedy scheduling on a pool balances best so).

    The largest pass is dealt to ``threads + passes - 1`` jobs by interleaved rungs, so the jobs come out
    about the size of the smaller passes and the threads finish together. The smaller passes run as one
    call each: libnvxs then merges their candidates itself, exactly as in a raw call (split calls would
    let through candidates that its merge drops, which measured as an extra false positive).
    """
    work, sx, sy = resize_for(rgb, scheme.work_scale(rgb.shape[1], rgb.shape[0]))
    runs: list[tuple[int, np.ndarray, float, float]] = []
    for source, s in enumerate(scheme.pass_scales()):
        img, fx, fy = resize_for(work, s)
        if min(img.shape[:2]) * MAX_WINDOW_SHARE < scheme.min_window:
            continue  # too small to hold even the smallest window: the pass could find nothing
        runs.append((source, np.ascontiguousarray(img), sx * fx, sy * fy))
    if not runs:
        return []
    largest = max(range(len(runs)), key=lambda i: runs[i][1].shape[0] * runs[i][1].shape[1])
    jobs = []
    for i, (source, img, px, py) in enumerate(runs):
        pixels = float(img.shape[0] * img.shape[1])
        n = scheme.threads + len(runs) - 1 if i == largest and scheme.threads > 1 else 1
        jobs += [Job(source, img, px, py, mw, sf, pixels / n) for mw, sf in scheme.passes(n)]
    return sorted(jobs, key=lambda j: -j.cost)


class Preparer(Protocol):
    """What :func:`search` needs of the library (``NvxsLibrary``): prepare an image once and search it many
    times; ``detect`` for the one-off searches of :func:`refine`."""

    def prepare(self, rgb: np.ndarray) -> AbstractContextManager[Any]: ...

    def detect(self, rgb: np.ndarray, **params: Any) -> list[RawFace]: ...


def search(
    library: Preparer, rgb: np.ndarray, scheme: SearchScheme, pool: Executor | None = None, *, analyze: bool = True
) -> list[Placed]:
    """Run the scheme: each distinct image of the plan is prepared once (in the pool), then searched by
    ``prepared.detect(step=, scale_factor=, min_window=, analyze=)`` once per job."""
    jobs = plan(rgb, scheme)
    images = list({id(j.image): j.image for j in jobs}.values())
    parallel = pool is not None and len(jobs) > 1
    with ExitStack() as stack:
        made = list(pool.map(library.prepare, images)) if parallel and len(images) > 1 else [
            library.prepare(img) for img in images
        ]
        for p in made:
            stack.enter_context(p)
        prepared = {id(img): p for img, p in zip(images, made)}

        def one(j: Job) -> list[Placed]:
            faces = prepared[id(j.image)].detect(step=scheme.step, scale_factor=j.scale_factor,
                                                 min_window=j.min_window, analyze=analyze)
            return [Placed(f, j.sx, j.sy, j.source) for f in faces]

        results = list(pool.map(one, jobs)) if parallel else [one(j) for j in jobs]
    kept = vote(
        [p for found in results for p in found],
        overlap=scheme.overlap, votes=scheme.votes, lone_likelihood=scheme.lone_likelihood,
        agree_iou=scheme.agree_iou,
    )
    if scheme.refine_lone and scheme.votes > 1:
        kept = [refine(library.detect, rgb, p, analyze=analyze) if p.support < scheme.votes else p for p in kept]
    return kept


def refine(raw: RawCall, rgb: np.ndarray, face: Placed, *, analyze: bool = True) -> Placed:
    """A lone face (no second pass agreed on it) re-searched densely on a crop normalised to
    ``REFINE_FACE`` px: the most likely box that is still the same face (IoU >= ``REFINE_MIN_IOU``), or
    ``face`` unchanged when the dense search finds none. Its likelihood and support stay the lone face's."""
    h, w = rgb.shape[:2]
    x1, y1, x2, y2 = face.box
    bw, bh = x2 - x1, y2 - y1
    if bw <= 0 or bh <= 0:
        return face
    cx1, cy1 = max(0, int(x1 - REFINE_MARGIN * bw)), max(0, int(y1 - REFINE_MARGIN * bh))
    cx2, cy2 = min(w, int(np.ceil(x2 + REFINE_MARGIN * bw))), min(h, int(np.ceil(y2 + REFINE_MARGIN * bh)))
    crop = rgb[cy1:cy2, cx1:cx2]
    s = REFINE_FACE / bw
    nw, nh = max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s))
    if min(nw, nh) * MAX_WINDOW_SHARE < REFINE_MIN_WINDOW:
        return face
    interp = cv2.INTER_AREA if s < 1.0 else cv2.INTER_LINEAR
    region = np.ascontiguousarray(cv2.resize(crop, (nw, nh), interpolation=interp))
    fx, fy = nw / crop.shape[1], nh / crop.shape[0]
    found = [
        Placed(f, fx, fy, face.source, float(cx1), float(cy1), face.support)
        for f in raw(region, step=REFINE_STEP, scale_factor=REFINE_SCALE_FACTOR, min_window=REFINE_MIN_WINDOW,
                     analyze=analyze)
    ]
    same = [p for p in found if iou(p.box, face.box) >= REFINE_MIN_IOU]
    if not same:
        return face
    best = max(same, key=lambda p: p.face.likelihood)
    return replace(best, face=replace(best.face, likelihood=face.face.likelihood))


def overlap_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over the smaller box's area (1.0 when one box contains the other)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller if smaller > 0 else 0.0


def _rank(p: Placed) -> tuple[float, float]:
    x1, y1, x2, y2 = p.box
    return (-p.face.likelihood, (x2 - x1) * (y2 - y1))


def clusters(faces: list[Placed], overlap: float) -> list[list[Placed]]:
    """Group faces as libnvxs merges candidates: in rank order (more likely first, a tie to the smaller
    box) each face joins the first cluster whose leader it overlaps by more than ``overlap``, else leads
    a new one. Leaders are exactly what libnvxs's merge keeps."""
    groups: list[list[Placed]] = []
    for cand in sorted(faces, key=_rank):
        for g in groups:
            if overlap_ratio(cand.box, g[0].box) > overlap:
                g.append(cand)
                break
        else:
            groups.append([cand])
    return groups


def vote(
    faces: list[Placed], *, overlap: float, votes: int, lone_likelihood: float, agree_iou: float
) -> list[Placed]:
    """Merge the passes' faces and keep a cluster's leader when ``votes`` distinct passes found it (a
    member agreeing with the leader at IoU >= ``agree_iou``) or its likelihood reaches ``lone_likelihood``.
    With ``votes=1`` this is libnvxs's own merge (every cluster's leader)."""
    kept: list[Placed] = []
    for g in clusters(faces, overlap):
        lead = g[0]
        support = {p.source for p in g if iou(p.box, lead.box) >= agree_iou}
        if len(support) >= votes or lead.face.likelihood >= lone_likelihood:
            kept.append(replace(lead, support=len(support)))
    return kept
