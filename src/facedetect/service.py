"""The detection pipeline every front end shares (API, CLI, UI):
bytes -> ``load_image`` -> detector -> filter -> annotate -> outputs, with per-stage timings.

Front ends differ only in how bytes arrive and where results go; keeping the pipeline here means the
HTTP API, ``facedetect detect`` and the Gradio UI cannot disagree about what a detection is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from PIL import Image

from facedetect.annotate import annotate as draw_detections
from facedetect.backends import Detector, create_detector
from facedetect.errors import BackendUnavailable
from facedetect.imageio import Limits, load_image
from facedetect.memory import map_large_blocks, release_after
from facedetect.outputs import OutputPaths, OutputStore
from facedetect.settings import FaceDetectSettings
from facedetect.types import Detection, DetectionResult, ImageInfo


@dataclass
class DetectionOutcome:
    """One detection run: the result, the annotated image (if drawn) and where files were written."""

    result: DetectionResult
    annotated: Image.Image | None = None
    paths: OutputPaths | None = None

    def to_json(self) -> dict[str, Any]:
        """The API's response body: the four contract fields first (detections, count, annotated_image,
        json_file), then the extras."""
        body = self.result.to_json()
        annotated = self.paths.annotated if self.paths else None
        return {
            "detections": body.pop("detections"),
            "count": body.pop("count"),
            "annotated_image": str(annotated) if annotated is not None else None,
            "json_file": str(self.paths.results) if self.paths else None,
            **body,
        }


def filter_detections(
    detections: list[Detection], *, min_confidence: float = 0.0, max_faces: int | None = None
) -> list[Detection]:
    """Drop faces under ``min_confidence``; keep the ``max_faces`` most confident, in the backend's order."""
    kept = [d for d in detections if d.confidence >= min_confidence]
    if max_faces is not None and len(kept) > max_faces:
        best = sorted(range(len(kept)), key=lambda i: kept[i].confidence, reverse=True)[:max_faces]
        kept = [kept[i] for i in sorted(best)]
    return kept


class _SharedExclusive:
    """Many detections at once, but ``unload``/``load`` wait for them: a model is never freed mid-use."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer)
            self._writer = True
            self._cond.wait_for(lambda: self._readers == 0)
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class DetectionService:
    """Holds one ``Detector`` and runs the pipeline. Thread-safe; every method blocks (call it off the loop).

    A detection while the model is unloaded loads it again (lazily), so ``unload`` is "lend the memory
    until someone needs faces", never "refuse work".
    """

    def __init__(
        self,
        detector: Detector,
        *,
        limits: Limits = Limits(),
        outputs: OutputStore | None = None,
        min_confidence: float = 0.0,
    ):
        self.detector = detector
        self.limits = limits
        self.outputs = outputs
        self.min_confidence = min_confidence
        self._guard = _SharedExclusive()
        map_large_blocks()  # large image buffers go back to the OS when freed (facedetect.memory)

    @classmethod
    def from_settings(cls, settings: FaceDetectSettings, *, outputs: OutputStore | None = None) -> "DetectionService":
        """Build the configured backend (not loaded yet). Bad configuration raises ``BackendUnavailable``."""
        try:
            detector = create_detector(settings.backend, model_path=settings.model_path)
        except ImportError as exc:  # an optional package (onnxruntime, OpenCV) missing from this install
            raise BackendUnavailable(f"backend {settings.backend!r} cannot be used here: {exc}") from exc
        if outputs is None:
            outputs = OutputStore(settings.outputs, retention=settings.retention)
        return cls(
            detector,
            limits=Limits(max_bytes=settings.max_bytes, max_pixels=settings.max_pixels),
            outputs=outputs,
            min_confidence=settings.min_confidence,
        )

    @property
    def backend(self) -> str:
        return self.detector.name

    @property
    def loaded(self) -> bool:
        return self.detector.loaded

    def load(self) -> float:
        """Load the model; returns seconds spent (0 when it was already loaded)."""
        start = time.perf_counter()
        with self._guard.exclusive():
            self.detector.load()
        return time.perf_counter() - start

    def unload(self) -> float:
        """Wait for running detections, then free the model (and its VRAM); returns seconds spent."""
        start = time.perf_counter()
        with self._guard.exclusive():
            self.detector.unload()
        return time.perf_counter() - start

    def health(self) -> dict[str, Any]:
        return {
            "status": "healthy",
            "detector_loaded": self.loaded,
            "backend": self.backend,
            "vram_mib": round(float(self.detector.vram_mib()), 1),
            # Whether the backend runs on the GPU even while unloaded: what vramctl plans a reservation by.
            "uses_gpu": bool(self.detector.uses_gpu),
            "keypoint_names": list(self.detector.keypoint_names),
        }

    def detect_bytes(
        self,
        data: bytes,
        filename: str | None = None,
        *,
        min_confidence: float | None = None,
        max_faces: int | None = None,
        annotate: bool = True,
        save: bool = True,
    ) -> DetectionOutcome:
        """Decode untrusted bytes and detect. Bad input raises a ``FaceDetectError`` subclass (4xx)."""
        start = time.perf_counter()
        image, info = load_image(data, self.limits)
        timings = {"decode": (time.perf_counter() - start) * 1000}
        try:
            return self._run(image, info, filename, start, timings, min_confidence, max_faces, annotate, save)
        finally:
            del image
            release_after(info.width * info.height)

    def _run(
        self,
        image: Image.Image,
        info: ImageInfo,
        filename: str | None,
        start: float,
        timings: dict[str, float],
        min_confidence: float | None,
        max_faces: int | None,
        annotate: bool,
        save: bool,
    ) -> DetectionOutcome:
        if not self.detector.loaded:  # lazy reload after /unload; reported so a slow answer is explained
            timings["load"] = self.load() * 1000
        t0 = time.perf_counter()
        with self._guard.shared():
            raw = self.detector.detect(image)
        timings["detect"] = (time.perf_counter() - t0) * 1000
        threshold = self.min_confidence if min_confidence is None else min_confidence
        detections = filter_detections(raw, min_confidence=threshold, max_faces=max_faces)
        drawn = None
        if annotate:
            t1 = time.perf_counter()
            drawn = draw_detections(image, detections)
            timings["annotate"] = (time.perf_counter() - t1) * 1000
        result = DetectionResult(
            detections=detections,
            image=info,
            backend=self.backend,
            keypoint_names=list(self.detector.keypoint_names),
            timings_ms=timings,
        )
        outcome = DetectionOutcome(result=result, annotated=drawn)
        # "total" stops before the files are written, so the results file and the response are identical.
        timings["total"] = (time.perf_counter() - start) * 1000
        if save and self.outputs is not None:
            outcome.paths = self.outputs.paths(self.outputs.allocate(filename), annotated=drawn is not None)
            self.outputs.write(outcome.paths, outcome.to_json(), drawn)
        return outcome
