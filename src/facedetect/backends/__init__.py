"""Detector backends behind one interface; ``create_detector`` picks one by name."""

from __future__ import annotations

from typing import Any

from facedetect.backends.base import Detector
from facedetect.errors import BackendUnavailable

BACKENDS = ("animeface", "yolo-onnx", "cascade", "hysts")


def create_detector(name: str = "animeface", **options: Any) -> Detector:
    """Build a backend. Options are backend-specific (``model_path`` for yolo-onnx and cascade, a directory of
    checkpoints for hysts)."""
    options = {k: v for k, v in options.items() if v is not None}
    if name == "animeface":
        from facedetect.backends.animeface import AnimefaceDetector

        return AnimefaceDetector(**options)
    if name == "yolo-onnx":
        from facedetect.backends.yolo_onnx import YoloOnnxDetector

        return YoloOnnxDetector(**options)
    if name == "cascade":
        from facedetect.backends.cascade import CascadeDetector

        return CascadeDetector(**options)
    if name == "hysts":
        from facedetect.backends.hysts import HystsDetector

        return HystsDetector(**options)
    raise BackendUnavailable(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}", status_code=400)


__all__ = ["BACKENDS", "Detector", "create_detector"]
