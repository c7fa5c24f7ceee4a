"""The two-stage search: cheap HOG proposals (``proposals.py``), each confirmed by animeface on a small crop.

animeface alone cannot find faces under its 42.6-px minimum window, and searching a whole image down to
30-px faces costs about twice a raw call (docs/detector-speed.md). Here the whole image is searched only by
the proposal classifier (OpenCV's HOG detector, C++ on all cores, a fraction of a raw call), and animeface
searches just a crop around each proposal, resized so the face is 64 px wide (then 56 px if that found
nothing; ``CONFIRM_FACES``): a 30-px face becomes one animeface sees, and a crop of ~140 px costs tens of
milliseconds.

Before animeface, the proposal verifier (``verifier.py``, a small network run on all proposals in one batch)
sorts them: a proposal it scores under ``verifier_reject`` is dropped, one at or over ``verifier_accept`` is
kept with the verifier's regressed box (animeface then only reads its landmarks and colours, when
``landmarks`` is on), and animeface decides the rest. The verifier was trained on three Ren'Py characters and
pictures by a few dozen other artists, so the gate is set wide: where it is unsure, animeface judges as before.

A proposal left to animeface is kept as a face when animeface finds a face on its crop that is the same
face (IoU >= ``SAME_FACE_IOU`` with the proposal), and reported with animeface's box and likelihood (mapped
back to the image); or, unconfirmed, when the proposal's own score reaches ``strong_score`` (its box then is
the proposal's, in the labels' convention). Proposals are thinned by non-maximum suppression first and at
most ``max_proposals`` (the highest-scoring) are judged, which bounds the time an image can take.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, replace

import cv2
import numpy as np

from facedetect.backends._nvxs import RawFace
from facedetect.backends.proposals import CascadeProposer, Proposal, ProposalModel, grey, propose
from facedetect.backends.scheme import WHEEL_SCALE_FACTOR, WHEEL_STEP, Placed
from facedetect.backends.verifier import Verdict, Verifier
from facedetect.types import iou

CONFIRM_FACES = (64.0, 56.0)  # px: the proposed face's width in the crop animeface searches, first try first
CONFIRM_MARGIN = 0.6  # crop: the proposal box plus this share of its size on each side
CONFIRM_MIN_SHARE = 0.75  # smallest window, share of the face: animeface's boxes are ~1.2x the labels'

SAME_FACE_IOU = 0.3
LANDMARKS_FACE = 64.0  # px: an accepted face's width in the crop animeface reads its landmarks on
# A face the verifier accepts is reported in animeface's convention, so every face of this detector is framed
# alike whichever stage kept it: its regressed box (the labels' convention) is grown this much. animeface's
# boxes are 1.24x the labels' width on scene-tune and 1.06x on real-art tune (medians, docs/detector-speed.md);
# 1.12 was chosen on both tune sets with the verifier trained on both (1.22, the scenes' value, cost real art).
ANIMEFACE_BOX = 1.12
# The proposal stage searches at most this many pixels: a larger image is area-downscaled for it first. The
# scenes it was tuned on are <= 2.6 Mpx, so they are searched at full resolution; in a 36-Mpx photo the
# smallest face proposed is then ~3x larger (~75 px, 1 % of its width: no avatar material), and the HOG
# pyramid's time and memory stay those of a 4-Mpx image instead of growing with the upload.
MAX_PROPOSAL_PIXELS = 4_000_000


@dataclass(frozen=True)
class TwoStage:
    """Parameters of the two-stage search (``AnimefaceDetector(mode="twostage")``)."""

    threshold: float | None = 0.3  # proposal score (log-odds) floor; None: the model's trained operating point
    stride: int = 8  # px between windows at each scale
    scale: float = 1.1  # ratio between pyramid levels
    nms_iou: float = 0.3
    max_proposals: int = 16
    strong_score: float | None = None  # unconfirmed proposals scoring this much are kept too (None: none)
    # animeface's lattice and ladder on the crop: twice as dense as the wheel's (4, 1.095). On the first 40
    # scene-tune images the wheel's own found 63 faces, this 79 (docs/detector-speed.md).
    confirm_step: float = 2.0
    confirm_scale_factor: float = 1.05
    # Face widths (px) a proposal's crop is normalised to, tried in turn until animeface confirms it: one
    # resampling misses faces another finds (docs/detector-speed.md; chosen on scene-tune).
    confirm_faces: tuple[float, ...] = CONFIRM_FACES
    max_proposal_pixels: int = MAX_PROPOSAL_PIXELS  # larger images are downscaled for the proposal stage
    # The verifier's gate (probabilities; docs/detector-speed.md, "The verifier"). verifier=False: animeface
    # judges every proposal, as before the verifier.
    verifier: bool = True
    verifier_reject: float = 3e-2
    verifier_accept: float = 0.99
    landmarks: bool = True  # read keypoints and colours of verifier-accepted faces with animeface
    # Ranking by the verifier (docs/detector-speed.md, "Real art"): with ``pool_threshold`` set (and the
    # verifier on), windows scoring at least that are thinned lightly (IoU ``pool_nms_iou``), the
    # ``pool_size`` best by HOG score are scored by the verifier in one batch, and suppression and the cap of
    # ``max_proposals`` then go by the verifier's probability, not the HOG score. None: the HOG score ranks.
    pool_threshold: float | None = None
    pool_nms_iou: float = 0.7
    pool_size: int = 64
    # lbpcascade_animeface as a second proposal source (docs/detector-speed.md, "Real art"): its boxes with
    # at least this many grouped hits and from ``cascade_min_size`` px (its box; ~40 px in the labels'
    # convention) up join the HOG proposals, and the verifier's probability ranks them all before suppression
    # and the cap: on real art it finds faces the HOG proposals miss (docs/detector-speed.md, "Real art").
    # None, or without the verifier: HOG proposals alone.
    cascade_neighbours: int | None = 3
    cascade_min_size: int = 64

    def __post_init__(self) -> None:
        if not 0.0 <= self.verifier_reject <= self.verifier_accept <= 1.0:
            raise ValueError("need 0 <= verifier_reject <= verifier_accept <= 1")
        if self.stride < 1 or self.scale <= 1.0 or self.max_proposals < 1:
            raise ValueError("stride and max_proposals must be >= 1 and scale > 1")
        if self.max_proposal_pixels < 64 * 64:
            raise ValueError("max_proposal_pixels must be at least 4096")
        if not 0.0 < self.nms_iou <= 1.0 or not 0.0 < self.pool_nms_iou <= 1.0:
            raise ValueError("nms_iou and pool_nms_iou must be in (0, 1]")
        if self.pool_size < self.max_proposals:
            raise ValueError("pool_size must be at least max_proposals")
        if self.cascade_neighbours is not None and self.cascade_neighbours < 1 or self.cascade_min_size < 16:
            raise ValueError("cascade_neighbours must be >= 1 (or None) and cascade_min_size >= 16")
        if not self.confirm_faces or any(not 32.0 <= f <= 200.0 for f in self.confirm_faces):
            raise ValueError("confirm_faces must be one or more widths in [32, 200] px")


def suppress(found: list[Proposal], nms_iou: float, limit: int) -> list[Proposal]:
    """Non-maximum suppression, best first, at most ``limit`` kept."""
    kept: list[Proposal] = []
    for p in sorted(found, key=lambda p: -p.score):
        if all(iou(p.box, k.box) < nms_iou for k in kept):
            kept.append(p)
            if len(kept) == limit:
                break
    return kept


RawCall = Callable[..., list[RawFace]]


def confirm(raw: RawCall, rgb: np.ndarray, p: Proposal, params: TwoStage) -> Placed | None:
    """The first of ``params.confirm_faces`` at which :func:`confirm_at` confirms ``p``, or None."""
    for face in params.confirm_faces:
        found = confirm_at(raw, rgb, p, params, face)
        if found is not None:
            return found
    return None


def confirm_at(raw: RawCall, rgb: np.ndarray, p: Proposal, params: TwoStage, face: float) -> Placed | None:
    """animeface on a crop around ``p`` normalised to a ``face``-px face: its most likely face that
    is still ``p`` (IoU >= ``SAME_FACE_IOU``), mapped to the image; None when it finds none."""
    h, w = rgb.shape[:2]
    x1, y1, x2, y2 = p.box
    bw, bh = x2 - x1, y2 - y1
    cx1, cy1 = max(0, int(x1 - CONFIRM_MARGIN * bw)), max(0, int(y1 - CONFIRM_MARGIN * bh))
    cx2, cy2 = min(w, int(np.ceil(x2 + CONFIRM_MARGIN * bw))), min(h, int(np.ceil(y2 + CONFIRM_MARGIN * bh)))
    if cx2 <= cx1 or cy2 <= cy1:
        return None
    crop = rgb[cy1:cy2, cx1:cx2]
    s = face / bw
    min_window = CONFIRM_MIN_SHARE * face
    nw, nh = max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s))
    if min(nw, nh) * 0.75 < min_window:
        return None  # cut off by the image edge too much to hold the face
    interp = cv2.INTER_AREA if s < 1.0 else cv2.INTER_LINEAR
    region = np.ascontiguousarray(cv2.resize(crop, (nw, nh), interpolation=interp))
    fx, fy = nw / crop.shape[1], nh / crop.shape[0]
    faces = raw(region, step=params.confirm_step, scale_factor=params.confirm_scale_factor,
                min_window=min_window)
    same = [q for q in (Placed(f, fx, fy, 0, float(cx1), float(cy1)) for f in faces) if iou(q.box, p.box) >= SAME_FACE_IOU]
    return max(same, key=lambda q: q.face.likelihood) if same else None


def bounded(search: Callable[[np.ndarray], list[Proposal]], gray: np.ndarray, params: TwoStage) -> list[Proposal]:
    """``search`` on ``gray``, area-downscaled first when it has more than ``params.max_proposal_pixels``
    pixels; the boxes are mapped back to ``gray``'s pixels."""
    h, w = gray.shape[:2]
    if h * w <= params.max_proposal_pixels:
        return search(gray)
    f = (params.max_proposal_pixels / (h * w)) ** 0.5
    nw, nh = max(1, int(w * f)), max(1, int(h * f))
    small = cv2.resize(gray, (nw, nh), interpolation=cv2.INTER_AREA)
    sx, sy = w / nw, h / nh
    return [Proposal((p.box[0] * sx, p.box[1] * sy, p.box[2] * sx, p.box[3] * sy), p.score) for p in search(small)]


def propose_bounded(hog: cv2.HOGDescriptor, gray: np.ndarray, threshold: float, params: TwoStage) -> list[Proposal]:
    """:func:`propose` on ``gray`` (downscaled first past ``params.max_proposal_pixels``, see :func:`bounded`)."""
    return bounded(lambda g: propose(hog, g, threshold, stride=params.stride, scale=params.scale), gray, params)


def ranked_proposals(
    hog: cv2.HOGDescriptor, rgb: np.ndarray, threshold: float, params: TwoStage, verifier: Verifier | None,
    cascade: CascadeProposer | None = None,
) -> tuple[list[Proposal], list[Verdict | None]]:
    """The proposals the second stage judges, with the verifier's verdict on each (None without a verifier).
    Without a verifier: the best by HOG score after suppression. With one, the pool it ranks (by its
    probability, then suppression and the cap) is those HOG proposals, or with ``params.pool_threshold`` a
    wider, lightly thinned pool of HOG windows; plus, with ``cascade``, the cascade's boxes."""
    gray = grey(rgb)
    if verifier is None or params.pool_threshold is None:
        candidates = suppress(propose_bounded(hog, gray, threshold, params), params.nms_iou, params.max_proposals)
        if verifier is None:
            return candidates, [None] * len(candidates)
        if cascade is None:
            return candidates, list(verifier.judge(rgb, [p.box for p in candidates])) if candidates else []
        pool = candidates
    else:
        found = propose_bounded(hog, gray, params.pool_threshold, params)
        pool = suppress(found, params.pool_nms_iou, params.pool_size)
    if cascade is not None:
        pool = pool + bounded(cascade.propose, gray, params)
    if not pool:
        return [], []
    scored = sorted(zip(pool, verifier.judge(rgb, [p.box for p in pool])), key=lambda pv: -pv[1].probability)
    kept: list[tuple[Proposal, Verdict]] = []
    for p, v in scored:
        if all(iou(p.box, k.box) < params.nms_iou for k, _ in kept):
            kept.append((p, v))
            if len(kept) == params.max_proposals:
                break
    return [p for p, _ in kept], [v for _, v in kept]


@dataclass(frozen=True)
class Accepted:
    """A face the verifier kept without animeface: its box in animeface's convention (clipped to the image),
    its probability, and what animeface read on it (keypoints, colours), if landmarks were asked for and it
    found the face."""

    box: tuple[float, float, float, float]
    probability: float
    landmarks: Placed | None


def animeface_convention(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, float, float, float]:
    """A labels'-convention box grown to animeface's about its centre, clipped to the image."""
    x1, y1, x2, y2 = box
    cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * ANIMEFACE_BOX / 2
    return (max(0.0, cx - half), max(0.0, cy - half), min(float(width), cx + half), min(float(height), cy + half))


def _judged(
    hog: cv2.HOGDescriptor, model: ProposalModel, rgb: np.ndarray, params: TwoStage, verifier: Verifier | None,
    cascade: CascadeProposer | None = None,
) -> tuple[list[Verdict], list[Proposal]]:
    """The proposals, split by the verifier: the faces it accepted (distinct, most probable first) and the
    proposals animeface must confirm (not accepted, nor rejected outright)."""
    threshold = model.threshold if params.threshold is None else params.threshold
    candidates, verdicts = ranked_proposals(hog, rgb, threshold, params, verifier if params.verifier else None,
                                            cascade if params.verifier else None)
    accepted: list[Verdict] = []
    to_confirm: list[Proposal] = []
    for p, v in zip(candidates, verdicts):
        if v is not None and v.probability >= params.verifier_accept:
            accepted.append(v)
        elif v is None or v.probability >= params.verifier_reject:
            to_confirm.append(p)
    kept: list[Verdict] = []
    for v in sorted(accepted, key=lambda v: -v.probability):  # two proposals of one face regress to nearly the same box
        if all(iou(v.box, k.box) < 0.5 for k in kept):
            kept.append(v)
    return kept, to_confirm


def _distinct_confirmed(
    to_confirm: list[Proposal], confirmations: list[Placed | None], taken: list[tuple[float, float, float, float]], strong_score: float | None,
) -> tuple[list[Placed], list[Proposal]]:
    """Animeface's confirmations that are no face already taken, and the strong proposals it did not confirm."""
    confirmed: list[Placed] = []
    strong: list[Proposal] = []
    for p, r in zip(to_confirm, confirmations):
        if r is not None:
            if all(iou(r.box, t) < 0.5 for t in taken):  # two proposals confirmed as one face
                confirmed.append(r)
                taken.append(r.box)
        elif strong_score is not None and p.score >= strong_score:
            strong.append(p)
    return confirmed, strong


def search_twostage(
    raw: RawCall, hog: cv2.HOGDescriptor, model: ProposalModel, rgb: np.ndarray, params: TwoStage,
    pool: Executor | None = None, verifier: Verifier | None = None, cascade: CascadeProposer | None = None,
) -> tuple[list[Accepted], list[Placed], list[Proposal]]:
    """Faces the verifier accepted, faces animeface confirmed (``Placed``), and strong unconfirmed proposals
    (``Proposal``); no two of them the same face."""
    kept, to_confirm = _judged(hog, model, rgb, params, verifier, cascade)
    # Reading an accepted face's landmarks needs no dense search: the face is known to be there.
    reading = replace(params, confirm_step=WHEEL_STEP, confirm_scale_factor=WHEEL_SCALE_FACTOR)

    def one(job: tuple[str, Proposal]) -> Placed | None:
        kind, p = job
        return confirm(raw, rgb, p, params) if kind == "confirm" else confirm_at(raw, rgb, p, reading, LANDMARKS_FACE)

    jobs = [("confirm", p) for p in to_confirm]
    if params.landmarks:
        jobs += [("landmarks", Proposal(v.box, v.probability)) for v in kept]
    results = list(pool.map(one, jobs)) if pool is not None and len(jobs) > 1 else [one(j) for j in jobs]
    confirmations, readings = results[:len(to_confirm)], results[len(to_confirm):]
    if not params.landmarks:
        readings = [None] * len(kept)
    height, width = rgb.shape[:2]
    accepted = [Accepted(animeface_convention(v.box, width, height), v.probability, r) for v, r in zip(kept, readings)]
    confirmed, strong = _distinct_confirmed(to_confirm, confirmations, [a.box for a in accepted], params.strong_score)
    return accepted, confirmed, strong
