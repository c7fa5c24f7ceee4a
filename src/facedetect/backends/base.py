"""The interface every detector backend implements."""

from __future__ import annotations

import abc
import threading

from PIL import Image

from facedetect.types import Detection


# Where a backend's model file comes from, for the message when it has none (each front end names it its own way).
MODEL_PATH_HOW = "give it with --model PATH (facedetect detect/serve/ui), FACEDETECT_MODEL_PATH (the service's environment) or model_path= (Python)"


class Detector(abc.ABC):
    """A face detector that can be loaded, used, and unloaded (to lend its memory back).

    ``detect`` takes an RGB image and returns detections in that image's pixel coordinates.
    Implementations must be safe to call from worker threads; ``load``/``unload`` are serialised here.
    """

    name: str = "base"
    keypoint_names: list[str] = []

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._loaded = False

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        with self._lock:
            if not self._loaded:
                self._load()
                self._loaded = True

    def unload(self) -> None:
        with self._lock:
            if self._loaded:
                self._unload()
                self._loaded = False

    def detect(self, image: Image.Image) -> list[Detection]:
        if not self._loaded:
            self.load()
        return self._detect(image)

    @property
    def uses_gpu(self) -> bool:
        """Whether this backend runs on the GPU (and so needs VRAM when loaded).

        Reported in ``/health`` so a VRAM coordinator can tell a detector that needs memory from one that
        needs none, before it is loaded, instead of trusting a configured figure. CPU backends: False.
        """
        return False

    def vram_mib(self) -> float:
        """GPU memory this backend holds now (0 for CPU backends)."""
        return 0.0

    def describe(self) -> dict[str, object]:
        return {"backend": self.name, "loaded": self._loaded, "keypoint_names": self.keypoint_names}

    @abc.abstractmethod
    def _load(self) -> None: ...

    @abc.abstractmethod
    def _unload(self) -> None: ...

    @abc.abstractmethod
    def _detect(self, image: Image.Image) -> list[Detection]: ...
