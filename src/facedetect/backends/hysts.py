"""hysts' anime-face-detector 0.1.0 on PyTorch: YOLOv3 (or Faster R-CNN) face boxes, HRNetV2's 28 landmarks.

The detector the original bot ran. Its package (MIT) runs the released mmdetection/mmpose checkpoints in
plain PyTorch; it is an optional install (the ``hysts`` extra plus the package itself, see
docs/backends.md), so nothing here imports torch until ``load()``.

Weights: by default the package's own download from the Hugging Face Hub on the first load (into the Hub
cache, ``HF_HOME``); or local checkpoints, ``.safetensors`` or the original ``.pth`` release files, named by
``model_path`` (a directory) or ``detector_path`` / ``landmark_path`` (files). A GPU host runs it on CUDA;
without one it runs on the CPU (seconds per picture).

What one detection does: the face model's boxes (the package maps them back to the image's pixels) at
``conf_threshold`` or above, the ``max_det`` best, each enlarged ``box_scale_factor`` times about its
centre as the package's ``LandmarkDetector`` does before it places the landmarks; then the 28 landmarks of
every kept box. Boxes and landmarks are clipped to the image.
"""

from __future__ import annotations

import gc
import importlib.metadata
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from facedetect.backends.base import Detector
from facedetect.errors import BackendUnavailable
from facedetect.types import Detection

PACKAGE_VERSION = "0.1.0"  # the API below (LandmarkDetector with checkpoint paths) is that release's
INSTALL_HINT = (
    "pip install 'miku-discord[hysts]', then pip install --no-deps --ignore-requires-python "
    f"anime-face-detector=={PACKAGE_VERSION} (`make test-hysts` does both in .cache/hysts-venv)"
)
FACE_DETECTORS = ("yolov3", "faster-rcnn")
LANDMARK_MODEL = "hrnetv2"
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
DEFAULT_MAX_DET = 100  # the package's own max_per_img for both face models

# The landmark model's 28 outputs, in its order. "left"/"right" are sides of the picture (the character's
# right eye is on the picture's left); see docs/backends.md for the drawing.
KEYPOINT_NAMES = [
    "contour_left_upper", "contour_left_lower", "chin", "contour_right_lower", "contour_right_upper",  # 0-4
    "brow_left_outer", "brow_left_middle", "brow_left_inner",  # 5-7
    "brow_right_inner", "brow_right_middle", "brow_right_outer",  # 8-10
    "eye_left_outer", "eye_left_top", "eye_left_inner",  # 11-13
    "eye_left_bottom_outer", "eye_left_bottom_middle", "eye_left_bottom_inner",  # 14-16
    "eye_right_inner", "eye_right_top", "eye_right_outer",  # 17-19
    "eye_right_bottom_inner", "eye_right_bottom_middle", "eye_right_bottom_outer",  # 20-22
    "nose", "mouth_left", "mouth_top", "mouth_right", "mouth_bottom",  # 23-27
]

# Local checkpoint names in a model_path directory: the package's model names (as safetensors), or the
# original release files of anime-face-detector v0.0.1, which the package reads as well.
CHECKPOINT_NAMES = {
    "yolov3": ("yolov3.safetensors", "mmdet_anime-face_yolov3.pth"),
    "faster-rcnn": ("faster-rcnn.safetensors", "mmdet_anime-face_faster-rcnn.pth"),
    "hrnetv2": ("hrnetv2.safetensors", "mmpose_anime-face_hrnetv2.pth"),
}


def _config_error(message: str) -> BackendUnavailable:
    # A wrong option is the caller's mistake (400); a missing package, file or GPU stays a 503.
    return BackendUnavailable(message, status_code=400)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(frozen=True)
class Runtime:
    """The optional packages, imported on first use."""

    torch: Any
    afd: Any  # the anime_face_detector module


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def import_runtime() -> Runtime:
    """torch and anime_face_detector, or a ``BackendUnavailable`` (503) that says how to install them."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            try:
                import torch
                import anime_face_detector
            except ImportError as exc:
                raise BackendUnavailable(
                    f"the hysts backend needs PyTorch and hysts' anime-face-detector ({exc}): {INSTALL_HINT}"
                ) from exc
            try:
                version = importlib.metadata.version("anime-face-detector")
            except importlib.metadata.PackageNotFoundError:
                version = "unknown"
            if version != PACKAGE_VERSION:
                raise BackendUnavailable(
                    f"the hysts backend is written for anime-face-detector {PACKAGE_VERSION}; "
                    f"{version} is installed: {INSTALL_HINT}"
                )
            _runtime = Runtime(torch=torch, afd=anime_face_detector)
        return _runtime


def enlarge_box(box: np.ndarray, factor: float) -> np.ndarray:
    """``[x0, y0, x1, y1, score]`` enlarged ``factor`` times about its centre, with the package's arithmetic
    (anime_face_detector 0.1.0, detector.py, ``LandmarkDetector._update_pred_box``: size counts both end
    pixels)."""
    out = np.array(box, dtype=np.float32)
    size = (out[2:4] - out[0:2] + 1) * factor
    centre = (out[0:2] + out[2:4]) / 2
    out[0:2] = centre - size / 2
    out[2:4] = out[0:2] + size
    return out


class HystsDetector(Detector):
    """hysts' anime face detector (PyTorch) with its 28 landmarks.

    Options: ``face_detector`` (``yolov3``, the original bot's, or ``faster-rcnn``), ``device`` (``auto``:
    CUDA when torch sees a GPU, else the CPU; ``cuda``, ``cuda:N`` or ``cpu``), ``model_path`` (a directory
    of local checkpoints), ``detector_path`` / ``landmark_path`` (checkpoint files; they win over
    ``model_path``); without any of them the package downloads its weights from the Hugging Face Hub on the
    first load. ``conf_threshold`` (0.5, the package demo's face score threshold), ``max_det`` (100),
    ``box_scale_factor`` (1.1) and ``flip_test`` (True) as the package's ``LandmarkDetector``.
    """

    name = "hysts"
    keypoint_names = KEYPOINT_NAMES

    def __init__(
        self,
        *,
        face_detector: str = "yolov3",
        device: str = "auto",
        model_path: str | os.PathLike[str] | None = None,
        detector_path: str | os.PathLike[str] | None = None,
        landmark_path: str | os.PathLike[str] | None = None,
        conf_threshold: float = 0.5,
        max_det: int = DEFAULT_MAX_DET,
        box_scale_factor: float = 1.1,
        flip_test: bool = True,
    ):
        super().__init__()
        if face_detector not in FACE_DETECTORS:
            raise _config_error(f"unknown face_detector {face_detector!r}; choose one of {', '.join(FACE_DETECTORS)}")
        if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
            raise _config_error(f"device {device!r} is not one of auto, cuda, cuda:N, cpu")
        if not 0.0 <= conf_threshold <= 1.0:
            raise _config_error(f"conf_threshold must be in [0, 1], got {conf_threshold}")
        if max_det < 1:
            raise _config_error(f"max_det must be at least 1, got {max_det}")
        if not 1.0 <= box_scale_factor <= 4.0:
            raise _config_error(f"box_scale_factor must be in [1, 4], got {box_scale_factor}")
        self.face_detector = face_detector
        self.device_option = device
        self.conf_threshold = float(conf_threshold)
        self.max_det = int(max_det)
        self.box_scale_factor = float(box_scale_factor)
        self.flip_test = bool(flip_test)
        self.model_dir = Path(model_path).expanduser() if model_path not in (None, "") else None
        if self.model_dir is not None and not self.model_dir.is_dir():
            raise _config_error(
                f"model_path for the hysts backend is a directory of checkpoints ({self._expected_names()}); "
                f"{self.model_dir} is not one (name single files with detector_path= and landmark_path=)"
            )
        self.detector_path = self._checkpoint(detector_path, face_detector)
        self.landmark_path = self._checkpoint(landmark_path, LANDMARK_MODEL)
        self._model: Any = None  # the package's LandmarkDetector
        self._device = ""
        self._weights_in_use: tuple[Path, Path] | None = None  # (face model, landmarks) of the loaded models

    # -- configuration --------------------------------------------------------------------

    def _expected_names(self) -> str:
        names = CHECKPOINT_NAMES
        return " or ".join(names[self.face_detector]) + ", and " + " or ".join(names[LANDMARK_MODEL])

    def _checkpoint(self, given: str | os.PathLike[str] | None, model: str) -> Path | None:
        """The local checkpoint for ``model``: the named file, else one in ``model_path``, else None (the Hub)."""
        if given not in (None, ""):
            path = Path(given).expanduser()  # type: ignore[arg-type]
            if not path.is_file():
                raise BackendUnavailable(f"{model} checkpoint not found: {path}")
            return path
        if self.model_dir is None:
            return None
        for name in CHECKPOINT_NAMES[model]:
            if (self.model_dir / name).is_file():
                return self.model_dir / name
        raise BackendUnavailable(
            f"no {model} checkpoint in {self.model_dir}: expected {' or '.join(CHECKPOINT_NAMES[model])}"
        )

    def _resolve_device(self, torch: Any) -> str:
        if self.device_option == "cpu":
            return "cpu"
        cuda = torch.cuda.is_available()
        if self.device_option == "auto":
            return "cuda:0" if cuda else "cpu"
        index = int(self.device_option.partition(":")[2] or 0)
        if not cuda:
            raise BackendUnavailable(
                f"device {self.device_option!r} asked for, but this PyTorch ({torch.__version__}, CUDA "
                f"{torch.version.cuda or 'none'}) sees no CUDA GPU; use device='cpu' or 'auto'"
            )
        if index >= torch.cuda.device_count():
            raise BackendUnavailable(
                f"device {self.device_option!r} asked for, but PyTorch sees {torch.cuda.device_count()} CUDA GPU(s)"
            )
        return f"cuda:{index}"

    def _weights(self, afd: Any, given: Path | None, model: str) -> Path:
        if given is not None:
            return given
        try:
            return Path(afd.get_checkpoint_path(model))
        except Exception as exc:  # the Hub client's own errors, its HTTP library's, OSError from the cache
            repo = afd.detector.HF_MODEL_REPOS.get(model, model)
            raise BackendUnavailable(
                f"cannot get the {model} weights from the Hugging Face Hub ({repo}): {_first_line(exc)}; "
                "on a host without internet, copy the checkpoints here and name them with model_path"
            ) from exc

    # -- lifecycle ------------------------------------------------------------------------

    def _load(self) -> None:
        rt = import_runtime()
        device = self._resolve_device(rt.torch)
        detector_path = self._weights(rt.afd, self.detector_path, self.face_detector)
        landmark_path = self._weights(rt.afd, self.landmark_path, LANDMARK_MODEL)
        try:
            model = rt.afd.LandmarkDetector(
                landmark_path,
                face_detector_name=self.face_detector,
                face_detector_checkpoint_path=detector_path,
                device=device,
                flip_test=self.flip_test,
                box_scale_factor=self.box_scale_factor,
            )
        except Exception as exc:  # safetensors, torch.load and load_state_dict(strict=True) each raise their own
            # The traceback's frames hold the half-built models (on the GPU, perhaps): drop them, then free.
            exc.with_traceback(None)
            self._release(rt.torch, device)
            if isinstance(exc, rt.torch.cuda.OutOfMemoryError):
                raise BackendUnavailable(
                    f"not enough GPU memory on {device} for the hysts models: {_first_line(exc)}", status_code=507
                ) from exc
            raise BackendUnavailable(
                f"cannot load the hysts checkpoints ({self.face_detector}: {detector_path}, {LANDMARK_MODEL}: "
                f"{landmark_path}): {_first_line(exc)}"
            ) from exc
        self._model = model
        self._device = device
        self._weights_in_use = (detector_path, landmark_path)

    def _unload(self) -> None:
        device = self._device
        self._model = None
        self._device = ""
        self._weights_in_use = None
        if _runtime is not None:
            self._release(_runtime.torch, device)

    @staticmethod
    def _release(torch: Any, device: str) -> None:
        # Dropping the modules frees their tensors into PyTorch's caching allocator; empty_cache hands that
        # memory back to the driver, so an unload lends the VRAM to others (the CUDA context stays).
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()

    # -- detection ------------------------------------------------------------------------

    def _detect(self, image: Image.Image) -> list[Detection]:
        model = self._model
        if model is None:  # unloaded by another thread between load and here
            raise BackendUnavailable("the hysts model was unloaded; load it again")
        # The package reads OpenCV's BGR order.
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        found = model.face_detector.detect(bgr)  # (n, 5) [x0, y0, x1, y1, score] in the image's pixels
        found = found[found[:, 4] >= self.conf_threshold]
        found = found[np.argsort(-found[:, 4], kind="stable")][: self.max_det]
        boxes = [enlarge_box(box, self.box_scale_factor) for box in found]
        results = model(bgr, boxes) if boxes else []
        width, height = image.size
        out: list[Detection] = []
        for result in results:
            x0, y0, x1, y1, score = (float(v) for v in result["bbox"][:5])
            bbox = (min(max(x0, 0.0), width), min(max(y0, 0.0), height),
                    min(max(x1, 0.0), width), min(max(y1, 0.0), height))
            if not (bbox[2] > bbox[0] and bbox[3] > bbox[1]):
                continue  # nothing of it lies in the image
            kps = [
                (min(max(float(x), 0.0), width), min(max(float(y), 0.0), height), min(max(float(s), 0.0), 1.0))
                for x, y, s in result["keypoints"]
            ]
            out.append(Detection(bbox=bbox, confidence=min(max(score, 0.0), 1.0), keypoints=kps))
        return out

    # -- reporting ------------------------------------------------------------------------

    @property
    def device(self) -> str:
        """The device the models run on ("" when not loaded)."""
        return self._device

    @property
    def uses_gpu(self) -> bool:
        """Loaded: whether the models sit on CUDA. Not loaded: whether the next load will put them there
        (``device`` cuda, or ``auto`` with a GPU torch can see); False when torch is not installed."""
        if self._loaded:
            return self._device.startswith("cuda")
        if self.device_option == "cpu":
            return False
        try:
            rt = import_runtime()
        except BackendUnavailable:  # cannot load at all, so it will not hold VRAM either
            return False
        return bool(rt.torch.cuda.is_available())

    def vram_mib(self) -> float:
        """MiB PyTorch's caching allocator holds on the models' GPU: what ``unload`` gives back (the CUDA
        context, a few hundred MiB, stays with the process). 0 on the CPU or unloaded."""
        if not self._loaded or not self._device.startswith("cuda") or _runtime is None:
            return 0.0
        return float(_runtime.torch.cuda.memory_reserved(self._device)) / 2**20

    def describe(self) -> dict[str, object]:
        info = super().describe()
        # The files the loaded models came from (the Hub's cache included), else those configured; None: the Hub.
        detector_path, landmark_path = self._weights_in_use or (self.detector_path, self.landmark_path)
        info.update(
            {
                "face_detector": self.face_detector,
                "device": self._device or None,
                "device_option": self.device_option,
                "detector_path": str(detector_path) if detector_path else None,
                "landmark_path": str(landmark_path) if landmark_path else None,
                "conf_threshold": self.conf_threshold,
                "max_det": self.max_det,
                "vram_mib": round(self.vram_mib(), 1),
            }
        )
        return info
