"""The values every backend returns and every caller reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in original-image pixels


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 for empty or disjoint boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class Detection:
    bbox: Box
    confidence: float
    keypoints: list[tuple[float, float, float]] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def width(self) -> float:
        return self.bbox[2] - self.bbox[0]

    @property
    def height(self) -> float:
        return self.bbox[3] - self.bbox[1]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "bbox": [round(float(v), 2) for v in self.bbox],
            "confidence": round(float(self.confidence), 4),
            "keypoints": [[round(float(x), 2), round(float(y), 2), round(float(s), 4)] for x, y, s in self.keypoints],
        }
        if self.attributes:
            out["attributes"] = self.attributes
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Detection":
        return cls(
            bbox=tuple(float(v) for v in data["bbox"]),  # type: ignore[arg-type]
            confidence=float(data["confidence"]),
            keypoints=[(float(x), float(y), float(s)) for x, y, s in data.get("keypoints", [])],
            attributes=dict(data.get("attributes", {})),
        )


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str | None = None
    mode: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DetectionResult:
    detections: list[Detection]
    image: ImageInfo
    backend: str
    keypoint_names: list[str]
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.detections)

    def to_json(self) -> dict[str, Any]:
        return {
            "detections": [d.to_json() for d in self.detections],
            "count": self.count,
            "image": self.image.to_json(),
            "backend": self.backend,
            "keypoint_names": self.keypoint_names,
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
        }
