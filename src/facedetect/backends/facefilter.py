"""A small learned filter that drops a detector's confident false positives.

animeface (and any sliding-window detector) fires, often with likelihood ~1.0, on face-like things that are
not faces: cartoon smileys, heads whose face is missing, busy background patches. The filter looks at each
candidate box once more, with features that describe *drawn faces in general* rather than the characters it
was trained on:

* HOG (gradient-orientation histograms) of the box resized to 32 x 32 grey, and of a window twice the box's
  size around it (the face's context: hair above, neck below);
* brightness and saturation statistics, the shares of dark (line/eye) and skin-toned pixels, and edge
  densities of the box's upper and lower halves. Hue is left out on purpose: the training art has three
  characters, and a hue feature would learn their hair colours;
* the box's size relative to the image's short side, and its aspect ratio.

The detector's likelihood is *not* a feature: the false positives this filter exists for are confident
(~1.0), and leaving it out lets the training add label boxes and distractor boxes, which have no likelihood,
to the few false positives a detector makes on the training images.

The model is an L2-regularised logistic regression on standardised features (numpy only; a few kB of JSON
in ``models/facefilter.json``), trained by ``bench/train_facefilter.py`` on the candidates a detector
proposes on the generated scene-tune images (docs/detector-speed.md has the recipe and the numbers).
A candidate is kept when its face probability reaches the model's ``threshold``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facedetect.errors import FaceDetectError

FEATURES_VERSION = 1  # bump when :func:`features` changes; a model records the version it was trained on
CROP = 32  # side of the resized crops the HOG sees
CONTEXT = 2.0  # the context window's side, in box sides
MODEL_NAME = "facefilter.json"

Box = Sequence[float]  # x1, y1, x2, y2 in image pixels

_HOG = cv2.HOGDescriptor((CROP, CROP), (16, 16), (8, 8), (8, 8), 9)


class FaceFilterError(FaceDetectError, RuntimeError):
    """The model file is missing, unreadable, or does not fit this version of the features."""

    status_code = 503


def default_model_path() -> Path:
    """The committed model (package data of ``facedetect.backends``)."""
    return Path(str(resources.files("facedetect.backends") / "models" / MODEL_NAME))


def _crop(rgb: np.ndarray, box: Box, grow: float, size: int) -> np.ndarray:
    """The square-resized window ``grow`` times the box's size about its centre; pixels outside the image
    repeat the border, so a box at the edge is described like one inside."""
    h, w = rgb.shape[:2]
    cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
    bw, bh = max(1.0, (box[2] - box[0]) * grow), max(1.0, (box[3] - box[1]) * grow)
    x1, y1 = math.floor(cx - bw / 2), math.floor(cy - bh / 2)
    x2, y2 = max(x1 + 1, math.ceil(cx + bw / 2)), max(y1 + 1, math.ceil(cy + bh / 2))
    pad = (max(0, -y1), max(0, y2 - h), max(0, -x1), max(0, x2 - w))
    part = rgb[max(0, y1):min(h, y2), max(0, x1):min(w, x2)]
    if part.size == 0:  # wholly outside the image
        part = rgb[min(max(0, y1), h - 1):min(max(0, y1), h - 1) + 1, min(max(0, x1), w - 1):min(max(0, x1), w - 1) + 1]
        pad = (0, 0, 0, 0)
    if any(pad):
        part = cv2.copyMakeBorder(part, *pad, cv2.BORDER_REPLICATE)
    interp = cv2.INTER_AREA if part.shape[0] > size or part.shape[1] > size else cv2.INTER_LINEAR
    return cv2.resize(part, (size, size), interpolation=interp)


def _stats(face_rgb: np.ndarray) -> list[float]:
    """Colour and edge statistics of the face crop (64 x 64 RGB)."""
    hsv = cv2.cvtColor(face_rgb, cv2.COLOR_RGB2HSV).astype(np.float32)
    hue, sat, val = hsv[..., 0] * 2.0, hsv[..., 1] / 255.0, hsv[..., 2] / 255.0
    grey = cv2.cvtColor(face_rgb, cv2.COLOR_RGB2GRAY)
    # Anime skin: warm hue, light, moderately saturated (the same range for every character).
    skin = ((hue <= 40) | (hue >= 340)) & (sat >= 0.08) & (sat <= 0.6) & (val >= 0.55)
    edges = cv2.Canny(grey, 60, 150) > 0
    half = face_rgb.shape[0] // 2
    mid = slice(face_rgb.shape[0] // 4, 3 * face_rgb.shape[0] // 4)
    return [
        float(val.mean()), float(val.std()), float(sat.mean()), float(sat.std()),
        float((val < 0.3).mean()), float(skin.mean()), float(skin[mid, mid].mean()),
        float(edges[:half].mean()), float(edges[half:].mean()), float(edges[mid, mid].mean()),
    ]


def features(rgb: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    """One feature row per candidate (float32, shape ``(len(boxes), n)``) for an RGB uint8 image."""
    short = float(min(rgb.shape[:2]))
    rows = []
    for box in boxes:
        face = _crop(rgb, box, 1.0, 2 * CROP)
        context = _crop(rgb, box, CONTEXT, CROP)
        face_grey = cv2.resize(cv2.cvtColor(face, cv2.COLOR_RGB2GRAY), (CROP, CROP), interpolation=cv2.INTER_AREA)
        bw, bh = max(1.0, box[2] - box[0]), max(1.0, box[3] - box[1])
        rows.append(np.concatenate([
            _HOG.compute(face_grey).ravel(),
            _HOG.compute(cv2.cvtColor(context, cv2.COLOR_RGB2GRAY)).ravel(),
            np.asarray(_stats(face), np.float32),
            np.asarray([math.log(bw / short), math.log(bh / bw)], np.float32),
        ]))
    if not rows:
        return np.zeros((0, feature_count()), np.float32)
    return np.stack(rows).astype(np.float32)


def feature_count() -> int:
    return 2 * int(_HOG.getDescriptorSize()) + 10 + 2


@dataclass
class FaceFilter:
    """Logistic regression on standardised features: p(face) = sigmoid(w . (x - mean) / scale + bias)."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    threshold: float
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = feature_count()
        if not (self.mean.shape == self.scale.shape == self.weights.shape == (n,)):
            raise FaceFilterError(f"face filter model has {self.weights.shape} weights; these features need ({n},)")
        if not 0.0 <= self.threshold <= 1.0 or not np.all(np.isfinite(self.weights)) or not np.all(self.scale > 0):
            raise FaceFilterError("face filter model has a threshold outside [0, 1] or non-finite/zero parameters")

    def probabilities(self, rgb: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
        return self.predict(features(rgb, boxes))

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = ((x.astype(np.float64) - self.mean) / self.scale) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))

    def keep(self, rgb: np.ndarray, boxes: Sequence[Box]) -> list[bool]:
        """Which candidates are faces (probability >= ``threshold``)."""
        if not len(boxes):
            return []
        return [bool(p >= self.threshold) for p in self.probabilities(rgb, boxes)]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "logistic-regression",
            "features_version": FEATURES_VERSION,
            "feature_count": int(self.weights.shape[0]),
            "threshold": round(float(self.threshold), 6),
            "bias": float(self.bias),
            "mean": [float(v) for v in self.mean],
            "scale": [float(v) for v in self.scale],
            "weights": [float(v) for v in self.weights],
            "meta": self.meta,
        }

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n")

    @classmethod
    def from_json(cls, doc: Any) -> FaceFilter:
        if not isinstance(doc, dict) or doc.get("kind") != "logistic-regression":
            raise FaceFilterError("not a face filter model (expected kind 'logistic-regression')")
        if doc.get("features_version") != FEATURES_VERSION:
            raise FaceFilterError(
                f"face filter model was trained on features version {doc.get('features_version')!r}, this code "
                f"computes version {FEATURES_VERSION}: retrain it (make facefilter)"
            )
        try:
            return cls(
                mean=np.asarray(doc["mean"], np.float64), scale=np.asarray(doc["scale"], np.float64),
                weights=np.asarray(doc["weights"], np.float64), bias=float(doc["bias"]),
                threshold=float(doc["threshold"]), meta=dict(doc.get("meta", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FaceFilterError(f"face filter model is malformed: {exc!r}") from exc

    @classmethod
    def load(cls, path: str | Path | None = None) -> FaceFilter:
        """Read a model file (default: the committed one); :class:`FaceFilterError` says what is wrong."""
        p = Path(path) if path is not None else default_model_path()
        try:
            text = p.read_text()
        except OSError as exc:
            raise FaceFilterError(f"face filter model {p} cannot be read: {exc.strerror or exc}") from exc
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise FaceFilterError(f"face filter model {p} is not valid JSON: {exc}") from exc
        try:
            return cls.from_json(doc)
        except FaceFilterError as exc:
            raise FaceFilterError(f"{p}: {exc}") from exc
