"""The embedded default: nagadomi's animeface-2009 model from the ``animeface`` wheel (CPU, 0 VRAM)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from facedetect.backends._nvxs import NvxsLibrary, RawFace
from facedetect.backends.base import Detector
from facedetect.types import Detection

KEYPOINT_NAMES = ["left_eye", "right_eye", "nose", "mouth", "chin"]


class AnimefaceDetector(Detector):
    """animeface-2009 through ``libnvxs``.

    ``step``, ``scale_factor`` and ``min_window`` are the sliding-window search parameters; the
    defaults are the wheel's. Keypoints are [x, y, score] in the order of ``KEYPOINT_NAMES``; the
    model has no per-point score, so each carries the face's likelihood. Attributes: hair and skin
    colour as ``#rrggbb``.
    """

    name = "animeface"
    keypoint_names = KEYPOINT_NAMES

    def __init__(self, *, step: float = 4.0, scale_factor: float = 1.095, min_window: float = 42.592):
        super().__init__()
        self.step = step
        self.scale_factor = scale_factor
        self.min_window = min_window
        self._lib: NvxsLibrary | None = None

    def _load(self) -> None:
        self._lib = NvxsLibrary()

    def _unload(self) -> None:
        # The model lives in the library's data segment; dropping our handle is all there is to free.
        self._lib = None

    @property
    def library(self) -> NvxsLibrary:
        if self._lib is None:
            self.load()
        assert self._lib is not None
        return self._lib

    def raw(self, rgb: np.ndarray, *, analyze: bool = True, **search: float) -> list[RawFace]:
        params = {"step": self.step, "scale_factor": self.scale_factor, "min_window": self.min_window}
        params.update(search)
        return self.library.detect(rgb, analyze=analyze, **params)

    def _detect(self, image: Image.Image) -> list[Detection]:
        rgb = np.asarray(image.convert("RGB"))
        return [to_detection(f) for f in self.raw(rgb)]


def to_detection(f: RawFace, scale: float = 1.0, offset: tuple[float, float] = (0.0, 0.0)) -> Detection:
    """A raw face in (possibly scaled, offset) working coordinates, mapped back to the original image."""
    ox, oy = offset

    def pt(x: float, y: float) -> tuple[float, float]:
        return (x / scale + ox, y / scale + oy)

    def centre(r: tuple[int, int, int, int]) -> tuple[float, float]:
        return pt(r[0] + r[2] / 2.0, r[1] + r[3] / 2.0)

    x, y, w, h = f.face
    x1, y1 = pt(x, y)
    x2, y2 = pt(x + w, y + h)
    score = float(min(1.0, max(0.0, f.likelihood)))
    kps = [centre(f.left_eye), centre(f.right_eye), pt(*f.nose), centre(f.mouth), pt(*f.chin)]
    return Detection(
        bbox=(x1, y1, x2, y2),
        confidence=score,
        keypoints=[(kx, ky, score) for kx, ky in kps],
        attributes={"hair_color": _hex(f.hair_rgb), "skin_color": _hex(f.skin_rgb)},
    )


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#%02x%02x%02x" % rgb
