"""Anime face detection: image intake, detector backends, annotation, HTTP API and UI."""

from facedetect.types import Detection, DetectionResult, ImageInfo

__all__ = ["Detection", "DetectionResult", "ImageInfo"]
__version__ = "0.1.0"
