"""An OpenCV cascade the user supplies (e.g. nagadomi's lbpcascade_animeface.xml): CPU, 0 VRAM.

Confidence: OpenCV's ``detectMultiScale3(..., outputRejectLevels=True)`` gives each detection the
``levelWeight`` it scored in the cascade's *last* stage (the sum of that stage's weak classifiers).
Every window OpenCV returns passed that stage, i.e. ``levelWeight >= stageThreshold``. We report
``confidence = 1 / (1 + exp(-(levelWeight - stageThreshold)))``: 0.5 means "just passed", and the
larger the margin the closer to 1. So a caller's usual ``min_confidence`` of 0.5 or below keeps
exactly what OpenCV's plain ``detectMultiScale`` would. The threshold is read from the XML (new and
old cascade formats); a file where it cannot be found falls back to 0.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from facedetect.backends.base import MODEL_PATH_HOW, Detector
from facedetect.errors import BackendUnavailable
from facedetect.types import Detection


def _short(exc: cv2.error) -> str:
    # "OpenCV(4.x) /io/.../persistence.cpp:767: error: (-5:Bad argument) Input file is invalid in ..."
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else "parse error"
    return text.split(" error: ", 1)[-1]


def _config_error(message: str) -> BackendUnavailable:
    return BackendUnavailable(message, status_code=400)


def last_stage_threshold(path: Path) -> float | None:
    """The last stage's threshold, read with OpenCV's own reader (XML/YAML, gzip, either format)."""
    try:
        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    except cv2.error:
        return None
    try:
        if not fs.isOpened():
            return None
        root = fs.getNode("cascade")
        key = "stageThreshold"
        if root.empty():  # old format: <haarcascade_*> with stage_threshold
            root = fs.getFirstTopLevelNode()
            key = "stage_threshold"
        stages = root.getNode("stages")
        if stages.empty() or not stages.isSeq() or stages.size() == 0:
            return None
        node = stages.at(stages.size() - 1).getNode(key)
        return float(node.real()) if node.isReal() or node.isInt() else None
    except cv2.error:
        return None
    finally:
        fs.release()


class CascadeDetector(Detector):
    """``cv2.CascadeClassifier`` on an equalised grey image.

    Options: ``model_path`` (required; the cascade XML), ``scale_factor`` (1.1), ``min_neighbors``
    (5), ``min_size`` (24 px; the smallest face searched for), ``max_size`` (none), ``equalize``
    (True: histogram equalisation of the grey image, as lbpcascade_animeface's author recommends).
    No keypoints.
    """

    name = "cascade"
    keypoint_names: list[str] = []

    def __init__(
        self,
        *,
        model_path: str | os.PathLike[str] | None = None,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: int = 24,
        max_size: int | None = None,
        equalize: bool = True,
    ):
        super().__init__()
        if model_path is None or str(model_path) == "":
            raise _config_error(f"the cascade backend needs a cascade .xml file (never downloaded): {MODEL_PATH_HOW}")
        self.model_path = Path(model_path).expanduser()
        if not self.model_path.is_file():
            raise BackendUnavailable(f"cascade file not found: {self.model_path}")
        if not scale_factor > 1.0:
            raise _config_error(f"scale_factor must be greater than 1, got {scale_factor}")
        if min_neighbors < 0:
            raise _config_error(f"min_neighbors must be >= 0, got {min_neighbors}")
        if min_size < 1:
            raise _config_error(f"min_size must be at least 1 px, got {min_size}")
        if max_size is not None and max_size < min_size:
            raise _config_error(f"max_size ({max_size}) is smaller than min_size ({min_size})")
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_size = int(min_size)
        self.max_size = int(max_size) if max_size is not None else None
        self.equalize = bool(equalize)
        self._classifier: cv2.CascadeClassifier | None = None
        self._threshold = 0.0
        self._threshold_source = "default"

    def _load(self) -> None:
        if not self.model_path.is_file():
            raise BackendUnavailable(f"cascade file not found: {self.model_path}")
        if self.model_path.stat().st_size == 0:
            raise BackendUnavailable(f"cascade file {self.model_path} is empty")
        classifier = cv2.CascadeClassifier()
        try:
            ok = classifier.load(str(self.model_path))
        except cv2.error as exc:  # a malformed XML makes OpenCV's parser throw rather than fail softly
            raise BackendUnavailable(
                f"{self.model_path} is not a readable OpenCV cascade XML (OpenCV: {_short(exc)})"
            ) from exc
        if not ok or classifier.empty():
            raise BackendUnavailable(
                f"{self.model_path} is not an OpenCV cascade classifier (expected a cascade XML such as "
                "lbpcascade_animeface.xml)"
            )
        threshold = last_stage_threshold(self.model_path)
        self._threshold, self._threshold_source = (threshold, "xml") if threshold is not None else (0.0, "default")
        self._classifier = classifier

    def _unload(self) -> None:
        self._classifier = None

    def _grey(self, image: Image.Image) -> np.ndarray:
        grey = np.asarray(image.convert("L"))
        return cv2.equalizeHist(grey) if self.equalize else grey

    def _detect(self, image: Image.Image) -> list[Detection]:
        classifier = self._classifier
        if classifier is None:
            raise BackendUnavailable("the cascade was unloaded; load it again")
        grey = self._grey(image)
        max_size = (self.max_size, self.max_size) if self.max_size else (0, 0)  # (0, 0): no limit
        rects, _levels, weights = classifier.detectMultiScale3(
            grey,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
            maxSize=max_size,
            outputRejectLevels=True,
        )
        out: list[Detection] = []
        for (x, y, w, h), weight in zip(np.asarray(rects).reshape(-1, 4), np.asarray(weights).reshape(-1)):
            bbox = (float(x), float(y), float(x + w), float(y + h))
            out.append(Detection(bbox=bbox, confidence=self.confidence(float(weight))))
        out.sort(key=lambda d: d.confidence, reverse=True)
        return out

    def confidence(self, level_weight: float) -> float:
        """Last-stage margin squashed into [0, 1] (see the module docstring)."""
        margin = level_weight - self._threshold
        if margin >= 0:
            return 1.0 / (1.0 + math.exp(-margin))
        z = math.exp(margin)
        return z / (1.0 + z)

    def describe(self) -> dict[str, object]:
        info = super().describe()
        info.update(
            {
                "model_path": str(self.model_path),
                "scale_factor": self.scale_factor,
                "min_neighbors": self.min_neighbors,
                "min_size": self.min_size,
                "max_size": self.max_size,
                "equalize": self.equalize,
                "last_stage_threshold": self._threshold if self._loaded else None,
                "threshold_source": self._threshold_source if self._loaded else None,
            }
        )
        return info
