"""A fast proposal stage for the two-stage detector: HOG features and a linear classifier, run by OpenCV.

``cv2.HOGDescriptor.detectMultiScale`` slides a ``WINDOW``-px window over an image pyramid in C++ on all
cores and scores each position with one dot product, so a whole 1280x720 scene down to ~26-px faces costs
a fraction of one animeface call. The classifier (``models/proposals.json``) is trained by
``bench/train_proposals.py`` on scene-tune only; its window is a face's labelled box grown by
``CONTEXT`` about its centre (the hair and head outline around a face are most of what HOG sees).
It is meant to be permissive: what it proposes is confirmed or rejected by the second stage
(``facedetect.backends.twostage``).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

MODEL_PATH = Path(__file__).parent / "models" / "proposals.json"
WINDOW = 32  # px, square; faces from WINDOW / CONTEXT (~26 px) up are searchable
CONTEXT = 1.25  # a window is the face's box grown this much about its centre
BLOCK, STRIDE, CELL, BINS = 16, 8, 8, 9


def make_hog() -> cv2.HOGDescriptor:
    """The descriptor both training and detection use (324 features per window)."""
    return cv2.HOGDescriptor((WINDOW, WINDOW), (BLOCK, BLOCK), (STRIDE, STRIDE), (CELL, CELL), BINS)


def grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb


@dataclass(frozen=True)
class Proposal:
    """A proposed face box (x1, y1, x2, y2) in the image's pixels, in the labels' convention, and its score."""

    box: tuple[float, float, float, float]
    score: float


@dataclass(frozen=True)
class ProposalModel:
    """The linear classifier: ``score = weights . hog(window) + bias``."""

    weights: np.ndarray
    bias: float
    threshold: float  # the permissive default operating point chosen at training time

    @classmethod
    def load(cls, path: Path = MODEL_PATH) -> ProposalModel:
        data = json.loads(Path(path).read_text())
        if data.get("window") != WINDOW or data.get("context") != CONTEXT:
            raise ValueError(f"{path}: trained for another window ({data.get('window')}, {data.get('context')})")
        w = np.asarray(data["weights"], dtype=np.float32)
        if w.shape != (make_hog().getDescriptorSize(),):
            raise ValueError(f"{path}: {w.shape[0]} weights, the descriptor has {make_hog().getDescriptorSize()}")
        return cls(w, float(data["bias"]), float(data["threshold"]))

    def detector(self) -> cv2.HOGDescriptor:
        hog = make_hog()
        hog.setSVMDetector(np.append(self.weights, np.float32(self.bias)).astype(np.float32))
        return hog


@lru_cache(maxsize=1)
def default_model() -> ProposalModel:
    return ProposalModel.load()


def propose(
    hog: cv2.HOGDescriptor, gray: np.ndarray, threshold: float, *, stride: int = 4, scale: float = 1.08
) -> list[Proposal]:
    """Every window scoring at least ``threshold`` (no grouping), mapped to face boxes."""
    h, w = gray.shape[:2]
    if min(h, w) < WINDOW:
        return []
    rects, weights = hog.detectMultiScale(
        gray, hitThreshold=threshold, winStride=(stride, stride), padding=(0, 0), scale=scale, groupThreshold=0
    )
    out = []
    for (x, y, rw, rh), s in zip(np.asarray(rects).reshape(-1, 4), np.asarray(weights).reshape(-1)):
        cx, cy, side = x + rw / 2.0, y + rh / 2.0, rw / CONTEXT
        out.append(Proposal((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), float(s)))
    return out


CASCADE_PATH = Path(__file__).parent / "models" / "lbpcascade_animeface.xml"
# lbpcascade_animeface's boxes are ~1.6x the labels' width: the box calibration bench/detect.py fits on
# scene-tune (median width ratio of matched boxes, vertical shift in box heights) maps them to the labels'
# convention, the one the verifier's windows are cut in.
CASCADE_BOX_SCALE, CASCADE_BOX_DY = 0.633, -0.004


CASCADE_WINDOW = 24  # px: lbpcascade_animeface's own window


class CascadeProposer:
    """nagadomi's lbpcascade_animeface (MIT; trained on anime faces of many artists) as a second proposal
    source: OpenCV's cascade on the histogram-equalised grey image, each box with at least ``min_neighbours``
    grouped hits, mapped to the labels' convention. Faces from ``min_size`` px (the cascade's box) up: the
    image is area-downscaled by ``CASCADE_WINDOW / min_size`` first, so the cascade's 24-px window covers them
    at a fraction of the cost (at 64 px, a seventh of the pixels). Safe to call from several threads (OpenCV's
    cascade object is not, so calls are serialised)."""

    def __init__(self, min_neighbours: int, min_size: int, path: Path = CASCADE_PATH):
        self._classifier = cv2.CascadeClassifier()
        if not self._classifier.load(str(path)) or self._classifier.empty():
            raise ValueError(f"{path}: not an OpenCV cascade classifier")
        self.min_neighbours, self.min_size = min_neighbours, min_size
        self._lock = threading.Lock()

    def propose(self, gray: np.ndarray) -> list[Proposal]:
        f = min(1.0, CASCADE_WINDOW / self.min_size)
        h, w = gray.shape[:2]
        nw, nh = max(1, round(w * f)), max(1, round(h * f))
        if min(nw, nh) < CASCADE_WINDOW:
            return []
        small = gray if f == 1.0 else cv2.resize(gray, (nw, nh), interpolation=cv2.INTER_AREA)
        equalised = cv2.equalizeHist(small)
        with self._lock:
            rects, hits = self._classifier.detectMultiScale2(
                equalised, scaleFactor=1.1, minNeighbors=self.min_neighbours,
                minSize=(CASCADE_WINDOW, CASCADE_WINDOW),
            )
        sx, sy = w / nw, h / nh
        out = []
        for (x, y, bw, bh), n in zip(np.asarray(rects).reshape(-1, 4), np.asarray(hits).reshape(-1)):
            cx, cy = (x + bw / 2.0) * sx, (y + bh / 2.0 + CASCADE_BOX_DY * bh) * sy
            half = bw * sx * CASCADE_BOX_SCALE / 2.0
            out.append(Proposal((cx - half, cy - half, cx + half, cy + half), float(n)))
        return out
