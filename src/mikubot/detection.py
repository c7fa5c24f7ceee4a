"""The detect stage's engine: the detector service when one is configured, in-process otherwise, and a
fallback chain when things break — service down → in-process → no faces (the crop then uses saliency).

Each step down is reported through ``on_fallback`` so the change's events and record say what happened.

A second look for small faces: animeface's smallest window is ~42 px, so a scene whose faces are 30-40 px
wide gives no face at all, and the change would end in a saliency crop of the whole scene. When a
picture yields no usable face, it is detected once more at twice its size (in-process, whatever
detected first) and the boxes are mapped back (``via`` then ends in "+upscaled").

Every face found gets our own hair-colour read (``mikubot.hair.with_hair``, ``attributes["hair"]``), which the
crop's choice of the character's face and the heuristic verifier go by; the detector's own reading, if
any, stays beside it (animeface's ``hair_color``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from facedetect.backends import Detector, create_detector
from facedetect.client import AsyncFaceDetectClient, FaceDetectClientError
from facedetect.errors import FaceDetectError
from facedetect.types import Detection
from mikubot.crop import rank_faces
from mikubot.hair import with_hair

SMALL_FACE_UPSCALE = 2  # the second look's zoom: a 30-px face becomes 60 px, well above animeface's window
SECOND_LOOK_MAX_SIDE = 2400  # pictures longer than this are not zoomed (their faces are rarely that small)


def needs_second_look(detections: list[Detection], image: Image.Image) -> bool:
    return not rank_faces(detections, image.size) and max(image.size) <= SECOND_LOOK_MAX_SIDE


def detect_zoomed(detect: Callable[[Image.Image], list[Detection]], image: Image.Image) -> list[Detection]:
    """``detect`` on ``image`` enlarged ``SMALL_FACE_UPSCALE`` times, boxes mapped back to its pixels."""
    k = SMALL_FACE_UPSCALE
    big = image.resize((image.width * k, image.height * k), Image.Resampling.LANCZOS)
    return [
        Detection(bbox=tuple(v / k for v in d.bbox), confidence=d.confidence,  # type: ignore[arg-type]
                  keypoints=[(x / k, y / k, sc) for x, y, sc in d.keypoints], attributes=d.attributes)
        for d in detect(big)
    ]


def second_look(found: list[Detection], detect: Callable[[Image.Image], list[Detection]],
                image: Image.Image) -> tuple[list[Detection], bool]:
    """The faces to keep after the first look ``found``: the zoomed second look's (``detect`` on the picture
    enlarged) when the first found no usable face and the second does, else ``found``; (faces, zoomed)."""
    if needs_second_look(found, image):
        zoomed = detect_zoomed(detect, image)
        if rank_faces(zoomed, image.size):
            return zoomed, True
    return found, False


@dataclass
class FaceResult:
    detections: list[Detection]
    backend: str | None  # "animeface", "yolo-onnx", ... as reported by whoever detected
    via: str  # "service" | "in-process" | "none", + "+upscaled" when the second look found the faces
    error: str | None = None  # why this image has no result (bad image, no detector at all)
    timings_ms: dict[str, float] = field(default_factory=dict)


class InProcessDetector:
    """One lazily built detector shared by every change of a process (building animeface costs ~50 ms,
    a YOLO session far more). Thread-safe: detection runs in worker threads."""

    def __init__(self, backend: str = "animeface", model_path: str | None = None, **options: Any) -> None:
        self.backend = backend
        self.model_path = model_path
        self.options = options  # backend options beyond the model file (e.g. animeface's mode)
        self._detector: Detector | None = None
        self._lock = threading.Lock()

    def get(self) -> Detector:
        with self._lock:
            if self._detector is None:
                detector = create_detector(self.backend, model_path=self.model_path, **self.options)
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
        api_key: str | None = None,
    ) -> None:
        self.service_url = service_url
        self.api_key = api_key  # llama-swap's, when the service is reached through it
        self.local = local
        self.on_fallback = on_fallback
        self.timeout_s = timeout_s
        self.service_ok = service_url is not None
        self.local_ok = True
        self._client: AsyncFaceDetectClient | None = None

    async def __aenter__(self) -> "FaceFinder":
        if self.service_url:
            self._client = AsyncFaceDetectClient(self.service_url, timeout=self.timeout_s, api_key=self.api_key)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def find(self, image: Image.Image, data: bytes, filename: str) -> FaceResult:
        """The picture's faces, each with our own hair-colour read (``mikubot.hair``) in ``attributes["hair"]``."""
        result = await self._located(image, data, filename)
        if result.detections:
            result.detections = await asyncio.to_thread(with_hair, image, result.detections)
        return result

    async def _located(self, image: Image.Image, data: bytes, filename: str) -> FaceResult:
        result = await self._find(image, data, filename)
        if result.error is None and self.local_ok:  # the second look is in-process, whoever looked first
            try:
                faces, zoomed = await asyncio.to_thread(second_look, result.detections, self.local.detect, image)
            except FaceDetectError:
                return result
            if zoomed:
                return FaceResult(faces, self.local.backend, f"{result.via}+upscaled", timings_ms=result.timings_ms)
        return result

    async def _find(self, image: Image.Image, data: bytes, filename: str) -> FaceResult:
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
