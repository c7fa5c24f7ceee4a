"""The embedded default: nagadomi's animeface-2009 model from the ``animeface`` wheel (CPU, 0 VRAM)."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image

from facedetect.backends._nvxs import NvxsLibrary, RawFace
from facedetect.backends.base import Detector
from facedetect.backends.facefilter import FaceFilter, FaceFilterError
from facedetect.backends.proposals import CascadeProposer, ProposalModel, default_model
from facedetect.backends.scheme import (
    WHEEL_MIN_WINDOW,
    WHEEL_SCALE_FACTOR,
    WHEEL_STEP,
    SearchScheme,
    search,
)
from facedetect.backends.twostage import Accepted, TwoStage, search_twostage
from facedetect.backends.verifier import Verifier, VerifierError
from facedetect.errors import BackendUnavailable
from facedetect.types import Detection

Mode = Literal["fast", "full", "twostage"]

# Whether the fast and two-stage modes filter their faces by default (docs/detector-speed.md, "Face filter").
DEFAULT_FACE_FILTER = True

KEYPOINT_NAMES = ["left_eye", "right_eye", "nose", "mouth", "chin"]


class AnimefaceDetector(Detector):
    """animeface-2009 through ``libnvxs``.

    ``step``, ``scale_factor`` and ``min_window`` are the sliding-window search parameters; the
    defaults are the wheel's (4, 1.095, 42.592). ``mode="twostage"`` (default) proposes faces with a
    trained HOG classifier, lets a small trained network (:mod:`facedetect.backends.verifier`) drop or keep
    the clear cases, and has animeface confirm the rest on small crops
    (:mod:`facedetect.backends.twostage`; ``twostage`` takes its :class:`TwoStage` options): on the
    generated scenes it finds more faces, small ones especially, in less time than the fast scheme
    (docs/detector-speed.md). ``mode="fast"`` (the previous default) searches with
    :class:`~facedetect.backends.scheme.SearchScheme`: the raw scale ladder split over ``threads``
    threads, one pass per ``pass_offsets`` entry on the working image downscaled by
    ``scale_factor ** -offset``, a face kept when ``votes`` passes find it or its likelihood reaches
    ``lone_likelihood`` (a lone face's box then re-placed by a dense local search; see
    docs/detector-speed.md). ``mode="full"`` is one raw call at full resolution, the wheel's behaviour.
    ``face_filter`` passes the found faces through the learned false-positive filter
    (:mod:`~facedetect.backends.facefilter`): ``True`` the committed model, a path another model file,
    ``False`` none; ``None`` (default) means on in the fast and two-stage modes and off in the full mode
    (the wheel's).
    Keypoints are [x, y, score] in the order of ``KEYPOINT_NAMES``; the
    model has no per-point score, so each carries the face's confidence. Attributes: hair and skin
    colour as ``#rrggbb``. A face the verifier kept has them only when animeface could read them on it.
    """

    name = "animeface"
    keypoint_names = KEYPOINT_NAMES

    def __init__(
        self,
        *,
        mode: Mode = "twostage",
        step: float = WHEEL_STEP,
        scale_factor: float = WHEEL_SCALE_FACTOR,
        min_window: float = WHEEL_MIN_WINDOW,
        min_face_fraction: float = SearchScheme.min_face_fraction,
        threads: int = SearchScheme.threads,
        pass_offsets: tuple[float, ...] | list[float] = SearchScheme.pass_offsets,
        votes: int = SearchScheme.votes,
        lone_likelihood: float = SearchScheme.lone_likelihood,
        twostage: dict[str, Any] | None = None,
        face_filter: bool | str | None = None,
    ):
        super().__init__()
        if mode not in ("fast", "full", "twostage"):
            raise BackendUnavailable(
                f"unknown animeface mode {mode!r}; choose 'fast', 'full' or 'twostage'", status_code=400
            )
        try:
            self.scheme = SearchScheme(
                step=step, scale_factor=scale_factor, min_window=min_window,
                min_face_fraction=min_face_fraction, threads=threads,
                pass_offsets=tuple(float(o) for o in pass_offsets), votes=votes,
                lone_likelihood=lone_likelihood,
            )
        except (TypeError, ValueError) as exc:
            raise BackendUnavailable(f"bad animeface search parameters: {exc}", status_code=400) from exc
        try:
            self.twostage = TwoStage(**(twostage or {}))
        except (TypeError, ValueError) as exc:
            raise BackendUnavailable(f"bad two-stage parameters: {exc}", status_code=400) from exc
        self._proposer: tuple[ProposalModel, cv2.HOGDescriptor] | None = None
        self._verifier: Verifier | None = None
        self._cascade: CascadeProposer | None = None
        self.mode: Mode = mode
        self.step = step
        self.scale_factor = scale_factor
        self.min_window = min_window
        if face_filter is None:
            face_filter = DEFAULT_FACE_FILTER and mode != "full"
        if not isinstance(face_filter, (bool, str)):
            raise BackendUnavailable("face_filter must be true, false or a model file path", status_code=400)
        self.face_filter: bool | str = face_filter
        self._filter: FaceFilter | None = None
        self._lib: NvxsLibrary | None = None
        self._pool: ThreadPoolExecutor | None = None

    def _load(self) -> None:
        if self.face_filter is not False:
            try:
                self._filter = FaceFilter.load(None if self.face_filter is True else self.face_filter)
            except FaceFilterError as exc:
                raise BackendUnavailable(f"animeface face filter: {exc}") from exc
        self._lib = NvxsLibrary()
        if self.mode == "twostage":
            model = default_model()
            self._proposer = (model, model.detector())
            if self.twostage.verifier:
                try:
                    self._verifier = Verifier()
                except VerifierError as exc:
                    raise BackendUnavailable(f"animeface proposal verifier: {exc}") from exc
                if self.twostage.cascade_neighbours is not None:
                    try:
                        self._cascade = CascadeProposer(self.twostage.cascade_neighbours, self.twostage.cascade_min_size)
                    except ValueError as exc:
                        raise BackendUnavailable(f"animeface cascade proposals: {exc}") from exc
        if self.mode != "full" and self.scheme.threads > 1:
            self._pool = ThreadPoolExecutor(self.scheme.threads, thread_name_prefix="animeface")

    def _unload(self) -> None:
        # The model lives in the library's data segment; dropping our handle is all there is to free.
        self._lib = None
        self._proposer = None
        self._verifier = None
        self._cascade = None
        self._filter = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def describe(self) -> dict[str, Any]:
        out = dict(super().describe())
        out["mode"] = self.mode
        out["face_filter"] = self.face_filter
        out["search"] = {"step": self.step, "scale_factor": self.scale_factor, "min_window": self.min_window}
        if self.mode == "fast":
            sch = self.scheme
            out["search"].update(
                min_face_fraction=sch.min_face_fraction, threads=sch.threads,
                pass_offsets=list(sch.pass_offsets), votes=sch.votes, lone_likelihood=sch.lone_likelihood,
            )
        if self.mode == "twostage":
            out["twostage"] = dataclasses.asdict(self.twostage)
            out["search"]["threads"] = self.scheme.threads
        return out

    @property
    def library(self) -> NvxsLibrary:
        if self._lib is None:
            self.load()
        assert self._lib is not None
        return self._lib

    def raw(self, rgb: np.ndarray, *, analyze: bool = True, **params: float) -> list[RawFace]:
        """One libnvxs call on ``rgb`` as given (no scheme); ``params`` override step/scale_factor/min_window."""
        merged = {"step": self.step, "scale_factor": self.scale_factor, "min_window": self.min_window}
        merged.update(params)
        return self.library.detect(rgb, analyze=analyze, **merged)

    def _detect(self, image: Image.Image) -> list[Detection]:
        # One copy of the pixels, not two: convert() copies even an RGB image, and so does np.asarray.
        rgb = np.ascontiguousarray(np.asarray(image if image.mode == "RGB" else image.convert("RGB")))
        if self.mode == "full":
            found = [to_detection(f) for f in self.raw(rgb)]
        elif self.mode == "twostage":
            lib = self.library  # loads (and builds the pool and the proposer) if needed
            assert self._proposer is not None
            model, hog = self._proposer
            accepted, confirmed, strong = search_twostage(
                partial(lib.detect, analyze=True), hog, model, rgb, self.twostage, self._pool, self._verifier,
                self._cascade,
            )
            found = [accepted_detection(a) for a in accepted] + [
                to_detection(p.face, (p.sx, p.sy), (p.ox, p.oy)) for p in confirmed
            ] + [
                Detection(bbox=p.box, confidence=float(1.0 / (1.0 + np.exp(-p.score))), keypoints=[], attributes={})
                for p in strong
            ]
        else:
            lib = self.library  # loads (and builds the pool) if needed
            placed = search(lib, rgb, self.scheme, self._pool)
            found = [to_detection(p.face, (p.sx, p.sy), (p.ox, p.oy)) for p in placed]
        if self._filter is None or not found:
            return found
        keep = self._filter.keep(rgb, [d.bbox for d in found])
        return [d for d, k in zip(found, keep) if k]


def to_detection(
    f: RawFace, scale: float | tuple[float, float] = 1.0, offset: tuple[float, float] = (0.0, 0.0)
) -> Detection:
    """A raw face in (possibly scaled, offset) working coordinates, mapped back to the original image.

    ``scale`` is working pixels per original pixel, one number or (x, y) when resizing rounded them apart.
    """
    ox, oy = offset
    sx, sy = (scale, scale) if isinstance(scale, (int, float)) else scale

    def pt(x: float, y: float) -> tuple[float, float]:
        return (x / sx + ox, y / sy + oy)

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


def accepted_detection(a: Accepted) -> Detection:
    """A face the verifier kept: its box and probability, with animeface's keypoints and colours when it
    read the face. As for every face of this detector, each keypoint carries the face's confidence."""
    if a.landmarks is None:
        return Detection(bbox=a.box, confidence=a.probability, keypoints=[], attributes={})
    read = to_detection(a.landmarks.face, (a.landmarks.sx, a.landmarks.sy), (a.landmarks.ox, a.landmarks.oy))
    keypoints = [(x, y, a.probability) for x, y, _ in read.keypoints]
    return Detection(bbox=a.box, confidence=a.probability, keypoints=keypoints, attributes=read.attributes)


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#%02x%02x%02x" % rgb
