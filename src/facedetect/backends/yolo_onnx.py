"""User-supplied YOLO weights on onnxruntime: the GPU path, the one that needs VRAM coordination.

Reads the two export layouts people actually have:

* ultralytics v8/v11: one output ``(1, 4+nc, N)`` = ``[cx, cy, w, h, class scores...]`` per column,
  and the pose variant ``(1, 4+nc+K*d, N)`` with ``K`` keypoints of ``d`` = 2 or 3 values
  (``x, y[, visibility]``);
* YOLOv5: one output ``(1, N, 5+nc)`` = ``[cx, cy, w, h, objectness, class scores...]`` per row,
  confidence = objectness x class score.

Boxes are in the letterboxed input's pixels; we undo the letterbox exactly and clip to the image.
Weights are never downloaded: the user points ``model_path`` at a file.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image

from facedetect.backends.base import MODEL_PATH_HOW, Detector
from facedetect.errors import BackendUnavailable
from facedetect.types import Detection

Layout = Literal["v8", "v5"]
LAYOUTS = ("auto", "v8", "v5")
PAD_VALUE = 114  # ultralytics' letterbox grey
DEFAULT_INPUT_SIZE = 640  # what ultralytics exports and predicts at when nothing says otherwise
MAX_NMS_CANDIDATES = 30_000  # ultralytics' max_nms: beyond this the best-scored are kept


def _config_error(message: str) -> BackendUnavailable:
    # A wrong option is the caller's mistake (400); a missing/broken model stays a 503.
    return BackendUnavailable(message, status_code=400)


# --------------------------------------------------------------------------------------------
# Letterbox


@dataclass(frozen=True)
class Letterbox:
    """How an image was placed into the model input, and how to map points back.

    ``scale_x``/``scale_y`` are the resize actually done (``new_w / width``, ``new_h / height``):
    rounding the resized size to whole pixels makes them differ from the nominal gain by up to
    half a pixel, so we invert the real resize rather than ultralytics' single gain.
    """

    width: int
    height: int
    new_w: int
    new_h: int
    pad_left: int
    pad_top: int

    @property
    def scale_x(self) -> float:
        return self.new_w / self.width

    @property
    def scale_y(self) -> float:
        return self.new_h / self.height

    def to_original(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Input-pixel coordinates -> original-image pixels, clipped to the image."""
        ox = (np.asarray(x, dtype=np.float64) - self.pad_left) / self.scale_x
        oy = (np.asarray(y, dtype=np.float64) - self.pad_top) / self.scale_y
        return np.clip(ox, 0.0, self.width), np.clip(oy, 0.0, self.height)


def letterbox_geometry(width: int, height: int, input_hw: tuple[int, int]) -> Letterbox:
    """ultralytics ``LetterBox(auto=False, scaleup=True, center=True)``'s arithmetic, verbatim."""
    in_h, in_w = input_hw
    r = min(in_h / height, in_w / width)
    new_w, new_h = int(round(width * r)), int(round(height * r))
    dw, dh = (in_w - new_w) / 2, (in_h - new_h) / 2
    top, left = int(round(dh - 0.1)), int(round(dw - 0.1))
    return Letterbox(width=width, height=height, new_w=new_w, new_h=new_h, pad_left=left, pad_top=top)


def letterbox(rgb: np.ndarray, input_hw: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping aspect (bilinear, as ultralytics), centre, pad with grey 114 to ``input_hw``."""
    height, width = rgb.shape[:2]
    geo = letterbox_geometry(width, height, input_hw)
    img = rgb
    if (geo.new_w, geo.new_h) != (width, height):
        img = cv2.resize(rgb, (geo.new_w, geo.new_h), interpolation=cv2.INTER_LINEAR)
    in_h, in_w = input_hw
    bottom = in_h - geo.new_h - geo.pad_top
    right = in_w - geo.new_w - geo.pad_left
    img = cv2.copyMakeBorder(
        img, geo.pad_top, bottom, geo.pad_left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3
    )
    return img, geo


# --------------------------------------------------------------------------------------------
# Output decoding


@dataclass(frozen=True)
class HeadSpec:
    """What the output tensor holds, resolved from its shape, the model's metadata and options."""

    layout: Layout
    num_classes: int
    num_keypoints: int = 0
    keypoint_dims: int = 3


def resolve_head(
    shape: tuple[int, ...],
    *,
    layout: str = "auto",
    num_classes: int | None = None,
    kpt_shape: tuple[int, int] | None = None,
) -> HeadSpec:
    """Work out the layout from an output shape ``(1, A, B)``.

    Ambiguity rule for ``layout="auto"``: the attribute axis is the *shorter* one (a YOLO head has
    far more candidates than attributes: 8400 vs 5 at 640 px). So ``A < B`` is v8, ``A > B`` is v5,
    and ``A == B`` cannot be decided: pass ``layout=`` explicitly.
    """
    if len(shape) != 3 or shape[0] != 1:
        raise BackendUnavailable(
            f"unexpected YOLO output shape {list(shape)}: expected (1, 4+nc, N) (ultralytics v8/v11) "
            "or (1, N, 5+nc) (YOLOv5)"
        )
    a, b = int(shape[1]), int(shape[2])
    if layout == "auto":
        if a == b:
            raise BackendUnavailable(
                f"YOLO output shape {list(shape)} is square, so the layout cannot be told from it; "
                "pass layout='v8' or layout='v5'"
            )
        chosen: Layout = "v8" if a < b else "v5"
    elif layout in ("v8", "v5"):
        chosen = layout  # type: ignore[assignment]
    else:
        raise _config_error(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")

    attrs = a if chosen == "v8" else b
    k, d = kpt_shape if kpt_shape else (0, 3)
    if chosen == "v5":
        if k:
            raise BackendUnavailable("keypoints are read only from the ultralytics v8 pose layout, not YOLOv5")
        nc = attrs - 5
        expected = "5+nc"
    else:
        nc = attrs - 4 - k * d
        expected = f"4+nc+{k}*{d}" if k else "4+nc"
    if num_classes is not None and nc != num_classes:
        raise BackendUnavailable(
            f"YOLO output shape {list(shape)} read as layout {chosen} has {attrs} attributes per candidate, "
            f"which is not {expected} for {num_classes} classes"
            + (f" and {k} keypoints" if k else "")
        )
    if nc < 1:
        raise BackendUnavailable(
            f"YOLO output shape {list(shape)} read as layout {chosen} leaves {nc} class scores "
            f"({attrs} attributes, expected {expected}); is this a detection model?"
        )
    return HeadSpec(layout=chosen, num_classes=nc, num_keypoints=k, keypoint_dims=d)


@dataclass
class RawDetections:
    """Candidates in input-pixel coordinates (before letterbox undo)."""

    boxes: np.ndarray  # (n, 4) x1, y1, x2, y2
    scores: np.ndarray  # (n,)
    class_ids: np.ndarray  # (n,) int
    keypoints: np.ndarray | None  # (n, K, d) or None


def decode(
    output: np.ndarray,
    head: HeadSpec,
    *,
    conf_threshold: float,
    classes: tuple[int, ...] | None = None,
) -> RawDetections:
    """Per-candidate best class and confidence; drop those under the threshold."""
    rows = output[0].T if head.layout == "v8" else output[0]
    rows = rows.astype(np.float32, copy=False)
    nc = head.num_classes
    if head.layout == "v8":
        cls = rows[:, 4 : 4 + nc]
        kpts_flat = rows[:, 4 + nc :]
    else:
        cls = rows[:, 5 : 5 + nc] * rows[:, 4:5]
        kpts_flat = rows[:, 5 + nc : 5 + nc]
    if classes is not None:
        mask = np.zeros(nc, dtype=bool)
        mask[[c for c in classes if 0 <= c < nc]] = True
        cls = np.where(mask[None, :], cls, -np.inf)
    class_ids = np.argmax(cls, axis=1) if len(rows) else np.zeros(0, dtype=np.int64)
    scores = cls[np.arange(len(rows)), class_ids] if len(rows) else np.zeros(0, dtype=np.float32)
    keep = np.isfinite(scores) & (scores >= conf_threshold)
    cx, cy, w, h = (rows[keep, i] for i in range(4))
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    kpts = None
    if head.num_keypoints:
        kpts = kpts_flat[keep].reshape(-1, head.num_keypoints, head.keypoint_dims)
    return RawDetections(boxes=boxes, scores=scores[keep], class_ids=class_ids[keep], keypoints=kpts)


def nms(
    boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float, *, agnostic: bool = False
) -> np.ndarray:
    """Greedy NMS, per class unless ``agnostic``; returns kept indices, best score first.

    Classes are kept apart by shifting each class's boxes to its own region (ultralytics' trick),
    so one pass does all classes.
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    b = boxes.astype(np.float64)
    if not agnostic:
        span = float(np.abs(b).max()) * 2 + 1.0
        b = b + class_ids.astype(np.float64)[:, None] * span
    areas = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        iw = np.clip(np.minimum(b[i, 2], b[rest, 2]) - np.maximum(b[i, 0], b[rest, 0]), 0, None)
        ih = np.clip(np.minimum(b[i, 3], b[rest, 3]) - np.maximum(b[i, 1], b[rest, 1]), 0, None)
        inter = iw * ih
        union = areas[i] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# GPU memory (NVML)


def _nvml_handle(pynvml: Any, device_id: int) -> Any:
    """NVML numbers GPUs physically; CUDA (and so onnxruntime) after CUDA_VISIBLE_DEVICES."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if device_id < len(visible):
        ident = visible[device_id]
        if ident.isdigit():
            return pynvml.nvmlDeviceGetHandleByIndex(int(ident))
        return pynvml.nvmlDeviceGetHandleByUUID(ident)
    return pynvml.nvmlDeviceGetHandleByIndex(device_id)


def _nvml_usage(device_id: int) -> tuple[float | None, float | None]:
    """(MiB this process holds on the device, MiB used on the device), None where NVML cannot say."""
    try:
        import pynvml
    except ImportError:
        return None, None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver / no NVML library: a CPU-only host
        return None, None
    try:
        handle = _nvml_handle(pynvml, device_id)
        used = pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
        mine: float | None = None
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            # Inside a container NVML reports host pids, so ours may be absent; the caller then
            # falls back to the device-wide delta measured around loading.
            if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                mine = (mine or 0.0) + proc.usedGpuMemory / 2**20
        return mine, used
    except Exception:
        return None, None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


# --------------------------------------------------------------------------------------------
# The backend


def _parse_literal(value: str | None) -> Any:
    if not value:
        return None
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return None


def _input_hw(value: int | tuple[int, int] | list[int] | str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.lower().replace("x", ",").split(",")
        try:
            nums = [int(p) for p in parts if p.strip()]
        except ValueError as exc:
            raise _config_error(f"input_size {value!r} is not a size: use 640 or 384x640 (height x width)") from exc
    elif isinstance(value, int):
        nums = [value]
    else:
        nums = [int(v) for v in value]
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) < 1:
        raise _config_error(f"input_size {value!r} must be one or two positive integers (height, width)")
    return nums[0], nums[1]


def _check_options(layout: str, conf_threshold: float, iou_threshold: float, max_det: int,
                   num_keypoints: int | None, keypoint_dims: int) -> None:
    if layout not in LAYOUTS:
        raise _config_error(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if not 0.0 <= conf_threshold <= 1.0:
        raise _config_error(f"conf_threshold must be in [0, 1], got {conf_threshold}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise _config_error(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    if max_det < 1:
        raise _config_error(f"max_det must be at least 1, got {max_det}")
    if num_keypoints is not None and num_keypoints < 0:
        raise _config_error(f"num_keypoints must be >= 0, got {num_keypoints}")
    if keypoint_dims not in (2, 3):
        raise _config_error(f"keypoint_dims must be 2 or 3, got {keypoint_dims}")


def _image_input(session: Any, model_name: str) -> tuple[Any, type]:
    """The session's one image input and its dtype, with clear errors for odd graphs."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise BackendUnavailable(f"{model_name}: a YOLO export has one image input; this model has {len(inputs)}")
    inp = inputs[0]
    shape = list(inp.shape)
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
        raise BackendUnavailable(f"{model_name}: input {inp.name!r} has shape {shape}; expected (1, 3, height, width)")
    dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
    if inp.type not in dtypes:
        raise BackendUnavailable(f"{model_name}: input type {inp.type}; expected float or float16")
    return inp, dtypes[inp.type]


def _class_names(meta: dict[str, str]) -> dict[int, str]:
    """Ultralytics' ``names`` metadata; unusual metadata only loses the names, not the model."""
    names = _parse_literal(meta.get("names"))
    if isinstance(names, dict):
        try:
            return {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            pass
    return {}


def expected_tail(shape: tuple[int, ...], head: HeadSpec) -> tuple[int, ...]:
    """The output's shape past the batch for ``head``: the attribute count is fixed by the head; a dynamic
    candidate count may change per run."""
    attrs = (5 if head.layout == "v5" else 4) + head.num_classes + head.num_keypoints * head.keypoint_dims
    return (attrs, shape[2]) if head.layout == "v8" else (shape[1], attrs)


def to_detections(raw: RawDetections, geo: Letterbox, iou_threshold: float, max_det: int, agnostic: bool,
                  class_names: dict[int, str]) -> list[Detection]:
    """As ultralytics: NMS in input space, then at most ``max_det``, then back to the original image."""
    kept = nms(raw.boxes, raw.scores, raw.class_ids, iou_threshold, agnostic=agnostic)
    kept = kept[:max_det]
    x1, y1 = geo.to_original(raw.boxes[:, 0], raw.boxes[:, 1])
    x2, y2 = geo.to_original(raw.boxes[:, 2], raw.boxes[:, 3])
    boxes = np.stack([x1, y1, x2, y2], axis=1) if len(raw.scores) else np.zeros((0, 4))
    out: list[Detection] = []
    for i in kept:
        if not (boxes[i, 2] > boxes[i, 0] and boxes[i, 3] > boxes[i, 1]):
            continue  # degenerate, or wholly in the padding: nothing of it lies in the image
        conf = float(np.clip(raw.scores[i], 0.0, 1.0))
        kps: list[tuple[float, float, float]] = []
        if raw.keypoints is not None:
            kp = raw.keypoints[i]
            kx, ky = geo.to_original(kp[:, 0], kp[:, 1])
            ks = np.clip(kp[:, 2], 0.0, 1.0) if kp.shape[1] == 3 else np.full(len(kp), conf)
            kps = [(float(a), float(b), float(c)) for a, b, c in zip(kx, ky, ks)]
        cid = int(raw.class_ids[i])
        attrs: dict[str, Any] = {"class_id": cid}
        if cid in class_names:
            attrs["class_name"] = class_names[cid]
        bbox = (float(boxes[i, 0]), float(boxes[i, 1]), float(boxes[i, 2]), float(boxes[i, 3]))
        out.append(Detection(bbox=bbox, confidence=conf, keypoints=kps, attributes=attrs))
    return out


class YoloOnnxDetector(Detector):
    """YOLO face weights on onnxruntime (CUDA first when available, else CPU).

    Options: ``model_path`` (required), ``layout`` (``auto``/``v8``/``v5``), ``input_size`` (for
    models with a dynamic input: int or (h, w); default the model's ``imgsz`` metadata, else 640),
    ``conf_threshold`` (0.25), ``iou_threshold`` (0.45), ``max_det`` (300), ``classes`` (class ids
    that count as faces; default all), ``agnostic_nms``, ``num_classes``/``num_keypoints``/
    ``keypoint_dims`` (only for exports without ultralytics metadata), ``keypoint_names``,
    ``providers`` (onnxruntime provider list, overrides the automatic choice), ``device_id``.
    """

    name = "yolo-onnx"

    def __init__(
        self,
        *,
        model_path: str | os.PathLike[str] | None = None,
        layout: str = "auto",
        input_size: int | tuple[int, int] | list[int] | str | None = None,
        conf_threshold: float = 0.25,
        iou_threshold: float = 0.45,
        max_det: int = 300,
        classes: list[int] | tuple[int, ...] | None = None,
        agnostic_nms: bool = False,
        num_classes: int | None = None,
        num_keypoints: int | None = None,
        keypoint_dims: int = 3,
        keypoint_names: list[str] | None = None,
        providers: list[Any] | None = None,
        device_id: int = 0,
    ):
        super().__init__()
        if model_path is None or str(model_path) == "":
            raise _config_error(f"the yolo-onnx backend needs an .onnx file (never downloaded): {MODEL_PATH_HOW}")
        self.model_path = Path(model_path).expanduser()
        if not self.model_path.is_file():
            raise BackendUnavailable(f"YOLO model file not found: {self.model_path}")
        _check_options(layout, conf_threshold, iou_threshold, max_det, num_keypoints, keypoint_dims)
        self.layout = layout
        self.input_size = _input_hw(input_size)
        self.conf_threshold = float(conf_threshold)
        self.iou_threshold = float(iou_threshold)
        self.max_det = int(max_det)
        self.classes = tuple(int(c) for c in classes) if classes is not None else None
        self.agnostic_nms = bool(agnostic_nms)
        self.num_classes = num_classes
        self.num_keypoints = num_keypoints
        self.keypoint_dims = keypoint_dims
        self._keypoint_names_option = list(keypoint_names) if keypoint_names else None
        self.keypoint_names = []
        self.providers_option = providers
        self.device_id = int(device_id)

        self._session: Any = None
        self._input_name = ""
        self._input_dtype: type = np.float32
        self._input_hw: tuple[int, int] = (DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE)
        self._head: HeadSpec | None = None
        self._class_names: dict[int, str] = {}
        self._provider = ""
        self._load_delta_mib = 0.0
        self._meta: dict[str, str] = {}

    # -- lifecycle ------------------------------------------------------------------------

    def _choose_providers(self, ort: Any) -> list[Any]:
        if self.providers_option:
            return list(self.providers_option)
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return [("CUDAExecutionProvider", {"device_id": self.device_id}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def _load(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(
                "the yolo-onnx backend needs onnxruntime (pip install 'miku-discord[detector]', "
                "or onnxruntime-gpu for CUDA)"
            ) from exc
        if not self.model_path.is_file():
            raise BackendUnavailable(f"YOLO model file not found: {self.model_path}")
        providers = self._choose_providers(ort)
        wants_cuda = any((p[0] if isinstance(p, tuple) else p) == "CUDAExecutionProvider" for p in providers)
        if wants_cuda and hasattr(ort, "preload_dlls") and importlib.util.find_spec("nvidia") is not None:
            # onnxruntime-gpu[cuda,cudnn] (the GPU detector image) brings CUDA and cuDNN as NVIDIA's pip
            # wheels, outside the loader's search path: load them before the CUDA provider needs them.
            ort.preload_dlls()
        _, used_before = _nvml_usage(self.device_id) if wants_cuda else (None, None)

        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only: ORT's warnings about unused initialisers are noise here
        try:
            session = ort.InferenceSession(str(self.model_path), sess_options=opts, providers=providers)
        except Exception as exc:  # ORT raises its own pybind classes (InvalidProtobuf, Fail, ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendUnavailable(f"cannot load ONNX model {self.model_path}: {first}") from exc
        try:
            self._configure(session)
            # A warm-up run validates the real output shape (dynamic exports declare none) and makes
            # the CUDA provider allocate its arena now, so the VRAM we report is what we hold.
            dummy = np.full((1, 3, *self._input_hw), PAD_VALUE / 255.0, dtype=self._input_dtype)
            output = self._run(session, dummy)
            head = self._resolve(output.shape)
            k = head.num_keypoints
            names = self._keypoint_names_option or [f"kpt_{i}" for i in range(k)]
            if len(names) != k:
                raise _config_error(f"keypoint_names has {len(names)} names but the model has {k} keypoints")
        except BaseException:
            del session
            raise
        self._head = head
        self.keypoint_names = names
        self._session = session
        self._provider = session.get_providers()[0]
        self._load_delta_mib = 0.0
        if self._provider == "CUDAExecutionProvider" and used_before is not None:
            _, used_after = _nvml_usage(self.device_id)
            if used_after is not None:
                self._load_delta_mib = max(0.0, used_after - used_before)

    def _configure(self, session: Any) -> None:
        """Input name/size/dtype and ultralytics metadata, with clear errors for odd graphs."""
        inp, self._input_dtype = _image_input(session, self.model_path.name)
        shape = list(inp.shape)
        self._input_name = inp.name
        meta = session.get_modelmeta().custom_metadata_map or {}
        self._class_names = _class_names(meta)
        fixed = (shape[2], shape[3]) if all(isinstance(v, int) and v > 0 for v in shape[2:]) else None
        if fixed is not None:
            if self.input_size is not None and self.input_size != fixed:
                raise _config_error(
                    f"{self.model_path.name} has a fixed input of {fixed[0]}x{fixed[1]}; "
                    f"input_size {self.input_size[0]}x{self.input_size[1]} cannot apply"
                )
            self._input_hw = fixed
        else:
            default = (DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE)
            self._input_hw = self.input_size or _input_hw(_meta_imgsz(meta)) or default
        self._meta = meta

    def _resolve(self, shape: tuple[int, ...]) -> HeadSpec:
        meta = self._meta
        # Exports whose output would pass for a v5 or v8 tensor but means something else.
        if str(meta.get("end2end", "")).lower() in ("true", "1"):
            raise BackendUnavailable(
                f"{self.model_path.name} is an end-to-end export (NMS inside the model), which this backend "
                "does not read; export it again without NMS (ultralytics: end2end=False / nms=False)"
            )
        if meta.get("task") in ("segment", "classify", "obb"):
            raise BackendUnavailable(
                f"{self.model_path.name} is a {meta['task']!r} model; yolo-onnx reads detection and pose exports"
            )
        kpt_shape = _kpt_shape(meta, self.num_keypoints, self.keypoint_dims)
        num_classes = self.num_classes
        if num_classes is None and self._class_names:
            num_classes = len(self._class_names)
        return resolve_head(tuple(shape), layout=self.layout, num_classes=num_classes, kpt_shape=kpt_shape)

    def _run(self, session: Any, blob: np.ndarray) -> np.ndarray:
        try:
            outputs = session.run(None, {self._input_name: blob})
        except Exception as exc:  # a graph that loads but cannot run on a (1, 3, H, W) image
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendUnavailable(
                f"{self.model_path.name} failed to run on a {list(blob.shape)} input: {first}"
            ) from exc
        # Detection and pose exports have one output; should a model add more, the boxes are the first.
        return np.asarray(outputs[0])

    def _unload(self) -> None:
        # Dropping the only reference destroys the session, which frees its CUDA arena.
        self._session = None
        self._head = None
        self._provider = ""
        self._load_delta_mib = 0.0

    # -- detection ------------------------------------------------------------------------

    def _detect(self, image: Image.Image) -> list[Detection]:
        session, head = self._session, self._head
        if session is None or head is None:  # unloaded by another thread between load and here
            raise BackendUnavailable("the yolo-onnx model was unloaded; load it again")
        rgb = np.asarray(image.convert("RGB"))
        padded, geo = letterbox(rgb, self._input_hw)
        # HWC uint8 RGB -> NCHW in [0, 1], as ultralytics feeds its exports (fp16 models get fp16).
        chw = np.ascontiguousarray(padded.transpose(2, 0, 1)[None])
        blob = (chw.astype(np.float32) / 255.0).astype(self._input_dtype)
        output = self._run(session, blob)
        same_head = output.ndim == 3 and output.shape[0] == 1
        if not same_head or tuple(output.shape[1:]) != expected_tail(output.shape, head):
            head = self._resolve(output.shape)  # raises a clear error unless only the candidate count changed
        raw = decode(output, head, conf_threshold=self.conf_threshold, classes=self.classes)
        if len(raw.scores) > MAX_NMS_CANDIDATES:
            top = np.argsort(-raw.scores, kind="stable")[:MAX_NMS_CANDIDATES]
            kpts = None if raw.keypoints is None else raw.keypoints[top]
            raw = RawDetections(raw.boxes[top], raw.scores[top], raw.class_ids[top], kpts)
        return to_detections(raw, geo, self.iou_threshold, self.max_det, self.agnostic_nms, self._class_names)

    # -- reporting ------------------------------------------------------------------------

    @property
    def provider(self) -> str:
        """The execution provider the session actually runs on ("" when not loaded)."""
        return self._provider

    @property
    def uses_gpu(self) -> bool:
        """Loaded: whether the session runs on CUDA. Not loaded: whether the next load will, i.e. CUDA is
        both requested (the automatic choice or ``providers``) and available in this onnxruntime build —
        a coordinator asks before the first load, when there is no session to look at."""
        if self._loaded:
            return self._provider == "CUDAExecutionProvider"
        try:
            import onnxruntime as ort
        except ImportError:  # cannot load at all, so it will not hold VRAM either
            return False
        requested = {p[0] if isinstance(p, tuple) else p for p in self._choose_providers(ort)}
        return "CUDAExecutionProvider" in requested and "CUDAExecutionProvider" in ort.get_available_providers()

    def vram_mib(self) -> float:
        """MiB of GPU memory the session holds: NVML's figure for this process, else the device-wide
        increase measured around loading (containers hide our pid from NVML). 0 on CPU or unloaded."""
        if not self._loaded or self._provider != "CUDAExecutionProvider":
            return 0.0
        mine, _ = _nvml_usage(self.device_id)
        return float(mine) if mine is not None else self._load_delta_mib

    def describe(self) -> dict[str, object]:
        info = super().describe()
        info.update(
            {
                "model_path": str(self.model_path),
                "provider": self._provider or None,
                "input_size": list(self._input_hw) if self._loaded else (list(self.input_size or ()) or None),
                "layout": self._head.layout if self._head else self.layout,
                "num_classes": self._head.num_classes if self._head else self.num_classes,
                "class_names": self._class_names or None,
                "conf_threshold": self.conf_threshold,
                "iou_threshold": self.iou_threshold,
                "vram_mib": round(self.vram_mib(), 1),
            }
        )
        return info


def _kpt_shape(meta: dict[str, str], num_keypoints: int | None, keypoint_dims: int) -> tuple[int, int] | None:
    """(keypoints, dims per keypoint): the options' when given, else ultralytics' ``kpt_shape`` metadata."""
    if num_keypoints is not None:
        return (num_keypoints, keypoint_dims) if num_keypoints else None
    parsed = _parse_literal(meta.get("kpt_shape"))
    if isinstance(parsed, (list, tuple)) and len(parsed) == 2:
        return int(parsed[0]), int(parsed[1])
    return None


def _meta_imgsz(meta: dict[str, str]) -> list[int] | None:
    parsed = _parse_literal(meta.get("imgsz"))
    if isinstance(parsed, int):
        return [parsed]
    if isinstance(parsed, (list, tuple)) and parsed and all(isinstance(v, int) for v in parsed):
        return list(parsed)
    return None
