"""A small convolutional verifier for the two-stage detector's proposals (``models/verifier.onnx``).

Confirming a proposal with animeface costs a dense search of its crop (~10-40 ms); most proposals are not
faces. The verifier looks at every proposal once, in one batch (a few ms for all of them), and gives

* ``probability``: that the window is a face (a proposal overlapping a labelled face at IoU >= 0.4 was a
  positive in training, one under 0.25 a negative), and
* ``box``: the face's box regressed from the proposal's (centre shift and log width change, in proposal
  widths), in the training labels' convention.

``twostage`` uses it as a gate, not as the only judge: the network was trained on scene-tune (three Ren'Py
characters) and real-art tune (pictures of 37 sources), so on other art its probabilities are less sure. Below
a low bar a proposal is dropped without animeface; above a high bar it is kept without animeface; in between
animeface decides as before (docs/detector-speed.md, "The verifier").

The network (four 3x3 convolutions, two fully connected layers; ~90 k weights) is trained by
``bench/train_verifier.py`` (``make verifier``, PyTorch on the CPU; CI need not run it) and run here by
OpenCV's DNN module, so the detector needs no deep-learning runtime. Its input is a window ``CONTEXT`` times
the proposal's size about its centre, cut at ``CROP`` px and area-resized to ``INPUT`` px, RGB in [0, 1];
training and detection both cut windows with :func:`windows`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from facedetect.errors import FaceDetectError

CONTEXT = 2.0  # the window's side, in proposal sides: the face and its hair, neck and surroundings
CROP = 64  # px: windows are cut at this size first (training augments at it) ...
INPUT = 40  # ... and area-resized to the network's input
MODEL_NAME = "verifier.onnx"

Box = Sequence[float]  # x1, y1, x2, y2


class VerifierError(FaceDetectError, RuntimeError):
    """The model or its description is missing, unreadable, or made for other windows."""

    status_code = 503


def model_paths() -> tuple[Path, Path]:
    """The committed network and its description (package data of ``facedetect.backends``)."""
    base = Path(str(resources.files("facedetect.backends") / "models"))
    return base / MODEL_NAME, base / "verifier.json"


def windows(rgb: np.ndarray, boxes: Sequence[Box], size: int = CROP) -> np.ndarray:
    """``size`` x ``size`` RGB windows, ``CONTEXT`` times each box's width about its centre (uint8, N x size x
    size x 3). Pixels outside the image repeat its border, so a face at the edge looks like one inside."""
    h, w = rgb.shape[:2]
    out = np.empty((len(boxes), size, size, 3), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        side = (x2 - x1) * CONTEXT
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        # The window's pixels and one more on each side (for interpolation), cut first: OpenCV's warps refuse
        # images over 32767 px a side, and a wide panorama is one. Outside the image, the border repeats.
        left, top = int(np.floor(cx - side / 2)) - 1, int(np.floor(cy - side / 2)) - 1
        right, bottom = int(np.ceil(cx + side / 2)) + 2, int(np.ceil(cy + side / 2)) + 2
        cut_l, cut_t = min(max(left, 0), w - 1), min(max(top, 0), h - 1)
        cut_r, cut_b = max(min(right, w), cut_l + 1), max(min(bottom, h), cut_t + 1)
        patch = cv2.copyMakeBorder(
            np.ascontiguousarray(rgb[cut_t:cut_b, cut_l:cut_r]), cut_t - top, bottom - cut_b, cut_l - left,
            right - cut_r, cv2.BORDER_REPLICATE,
        )
        k = size / side
        m = np.float32([[k, 0, size / 2 - k * (cx - left)], [0, k, size / 2 - k * (cy - top)]])
        out[i] = cv2.warpAffine(patch, m, (size, size), flags=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
    return out


def blob(crops: np.ndarray) -> np.ndarray:
    """The network's input for ``CROP``-px windows: N x 3 x INPUT x INPUT float32 in [0, 1]."""
    small = [cv2.resize(c, (INPUT, INPUT), interpolation=cv2.INTER_AREA) for c in crops]
    return np.ascontiguousarray(np.stack(small).astype(np.float32).transpose(0, 3, 1, 2) / 255.0)


def regressed(box: Box, shift: Sequence[float]) -> tuple[float, float, float, float]:
    """``box`` moved by the network's (dx, dy, log width ratio), each in the box's widths; square."""
    x1, y1, x2, y2 = box
    w = x2 - x1
    cx, cy = (x1 + x2) / 2 + float(shift[0]) * w, (y1 + y2) / 2 + float(shift[1]) * w
    side = w * float(np.exp(np.clip(shift[2], -1.0, 1.0)))
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


@dataclass(frozen=True)
class Verdict:
    probability: float
    box: tuple[float, float, float, float]  # the regressed face box, in the labels' convention


class Verifier:
    """The committed network, loaded once; :meth:`judge` is safe to call from several threads."""

    def __init__(self, model: Path | None = None, description: Path | None = None):
        default_model, default_description = model_paths()
        model, description = model or default_model, description or default_description
        try:
            meta = json.loads(Path(description).read_text())
        except (OSError, ValueError) as exc:
            raise VerifierError(f"{description}: {exc}") from exc
        if (meta.get("context"), meta.get("crop"), meta.get("input")) != (CONTEXT, CROP, INPUT):
            raise VerifierError(f"{description}: trained for other windows ({meta.get('context')}, "
                                f"{meta.get('crop')}, {meta.get('input')} px)")
        try:
            self._net = cv2.dnn.readNetFromONNX(str(model))
        except cv2.error as exc:
            raise VerifierError(f"{model}: not a network OpenCV can read ({str(exc).strip().splitlines()[-1]})") from exc
        self.meta = meta
        self._lock = threading.Lock()  # an OpenCV Net is not safe to run from two threads at once

    def judge(self, rgb: np.ndarray, boxes: Sequence[Box]) -> list[Verdict]:
        if not boxes:
            return []
        x = blob(windows(rgb, boxes))
        with self._lock:
            self._net.setInput(x)
            out = np.asarray(self._net.forward(), dtype=np.float64).reshape(len(boxes), 4)
        probs = 1.0 / (1.0 + np.exp(-np.clip(out[:, 0], -50, 50)))
        return [Verdict(float(p), regressed(b, o[1:])) for p, b, o in zip(probs, boxes, out)]
