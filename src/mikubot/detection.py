"""The detect stage's engine: the detector service when one is configured, in-process otherwise, and a
fallback chain when things break — service down → in-process → no faces (the crop then uses saliency).

Each step down is reported through ``on_fallback`` so the change's events and record say what happened.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from facedetect.backends import Detector, create_detector
from facedetect.client import AsyncFaceDetectClient, FaceDetectClientError
from facedetect.errors import FaceDetectError
from facedetect.types import Detection


@dataclass
class FaceResult:
    detections: list[Detection]
    backend: str | None  # "animeface", "yolo-onnx", ... as reported by whoever detected
    via: str  # "service" | "in-process" | "none"
    error: str | None = None  # why this image has no result (bad image, no detector at all)
    timings_ms: dict[str, float] = field(default_factory=dict)


class InProcessDetector:
    """One lazily built detector shared by every change of a process (building animeface costs ~50 ms,
    a YOLO session far more). Thread-safe: detection runs in worker threads."""

    def __init__(self, backend: str = "animeface", model_path: str | None = None) -> None:
        self.backend = backend
        self.model_path = model_path
        self._detector: Detector | None = None
        self._lock = threading.Lock()

    def get(self) -> Detector:
        with self._lock:
            if self._detector is None:
                detector = create_detector(self.backend, model_path=self.model_path)
                detector.load()
                self._detector = detector
            return self._detector

    def detect(self, image: Image.Image) -> list[Detection]:
        return self.get().detect(image)


class FaceFinder:
    """Used for one change; remembers that the service is down so later candidates skip it."""

    def __init__(
        self,
        service_url: str | None,
        local: InProcessDetector,
        on_fallback: Callable[[str, str], None],
        *,
        timeout_s: float = 120.0,
    ) -> None:
        self.service_url = service_url
        self.local = local
        self.on_fallback = on_fallback
        self.timeout_s = timeout_s
        self.service_ok = service_url is not None
        self.local_ok = True
        self._client: AsyncFaceDetectClient | None = None

    async def __aenter__(self) -> "FaceFinder":
        if self.service_url:
            self._client = AsyncFaceDetectClient(self.service_url, timeout=self.timeout_s)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def find(self, image: Image.Image, data: bytes, filename: str) -> FaceResult:
        if self.service_ok and self._client is not None:
            try:
                result = await self._service(data, filename)
                return FaceResult(result.detections, result.backend, "service", timings_ms=result.timings_ms)
            except FaceDetectClientError as exc:
                if not exc.unreachable and exc.status_code < 500:
                    # The service read the image and refused it (400/413/415): in-process would too.
                    return FaceResult([], None, "service", error=exc.message)
                self.service_ok = False
                self.on_fallback("in-process", f"detector service unusable ({exc.message}); detecting in-process")
        if self.local_ok:
            try:
                dets = await asyncio.to_thread(self.local.detect, image)
                return FaceResult(dets, self.local.backend, "in-process")
            except FaceDetectError as exc:
                self.local_ok = False
                self.on_fallback("no-detector", f"in-process detector {self.local.backend!r} unusable ({exc.message}); "
                                 "cropping without faces")
        return FaceResult([], None, "none", error="no detector available")

    async def _service(self, data: bytes, filename: str):  # -> DetectionResult
        assert self._client is not None
        # A saturated service (503 + Retry-After) is waited for by the client's retry policy.
        return await self._client.detect(data, filename, annotate=False)
