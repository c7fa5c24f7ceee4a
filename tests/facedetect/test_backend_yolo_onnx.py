"""yolo-onnx backend against small ONNX graphs with known answers (tests/onnx_models.py).

The probe graph reports where the image content and a bright square sit *in the tensor it is fed*,
so these tests check the letterbox and the mapping back to original pixels, not just our arithmetic
against itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from facedetect.backends import create_detector
from facedetect.backends.yolo_onnx import YoloOnnxDetector, letterbox, letterbox_geometry, nms, resolve_head
from facedetect.errors import BackendUnavailable
from facedetect.types import Detection
from onnx_models import CONTENT_SCORE, KPT_VIS, SQUARE_SCORE, constant_model, probe_model

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
needs_cuda = pytest.mark.skipif(
    not HAS_CUDA,
    reason=f"CUDAExecutionProvider not available in onnxruntime (providers: {ort.get_available_providers()})",
)

# (width, height, bright square x1, y1, x2, y2). Upscaled cases may land anywhere; downscaled ones
# put the square's edges on the resize grid, where bilinear resampling leaves them exactly in place.
CASES = [
    (200, 120, (50, 30, 110, 70)),  # wide, x1.6
    (120, 260, (17, 41, 93, 200)),  # tall, different x/y scale after rounding
    (200, 118, (33, 20, 151, 97)),  # odd padding: 65 px above, 66 below
    (256, 256, (64, 64, 192, 160)),  # square
    (1280, 640, (200, 100, 400, 300)),  # 2:1, /4
    (960, 1920, (300, 600, 600, 1200)),  # 1:2, /6
]


def _image(width: int, height: int, square: tuple[int, int, int, int]) -> Image.Image:
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    rgb[:, :] = (10, 40, 90)  # dark, never the pad grey, never "bright"
    x1, y1, x2, y2 = square
    rgb[y1:y2, x1:x2] = 255
    return Image.fromarray(rgb)


def _by_conf(dets: list[Detection], conf: float) -> Detection:
    found = [d for d in dets if abs(d.confidence - conf) < 1e-4]
    assert len(found) == 1, f"expected one detection at confidence {conf}, got {dets}"
    return found[0]


def _assert_close(got: tuple[float, ...], want: tuple[float, ...], tol: float) -> None:
    err = max(abs(a - b) for a, b in zip(got, want))
    assert err < tol, f"box {got} differs from {want} by {err:.4f} px (tolerance {tol})"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("onnx")
    return {
        "v8": probe_model(d / "v8.onnx", layout="v8"),
        "v5": probe_model(d / "v5.onnx", layout="v5"),
        "pose": probe_model(d / "pose.onnx", layout="v8", keypoints=True, metadata={"kpt_shape": "[2, 3]"}),
        "dynamic": probe_model(d / "dyn.onnx", layout="v8", input_hw=None),
        "fp16": probe_model(d / "fp16.onnx", layout="v5", fp16=True),
    }


# -- letterbox ----------------------------------------------------------------------------------


def test_letterbox_geometry_follows_ultralytics() -> None:
    # 2400x1530 into 640: gain 640/2400, 408 rows, 116 grey rows above and below.
    geo = letterbox_geometry(2400, 1530, (640, 640))
    assert (geo.new_w, geo.new_h, geo.pad_left, geo.pad_top) == (640, 408, 0, 116)
    # Odd padding: the extra row goes below (round(dh - 0.1) above, round(dh + 0.1) below).
    geo = letterbox_geometry(200, 118, (320, 320))
    assert (geo.new_w, geo.new_h, geo.pad_left, geo.pad_top) == (320, 189, 0, 65)
    # Tall into a non-square input.
    geo = letterbox_geometry(300, 900, (384, 640))
    assert (geo.new_w, geo.new_h, geo.pad_left, geo.pad_top) == (128, 384, 256, 0)


def test_letterbox_pixels_are_centred_on_grey() -> None:
    rgb = np.full((118, 200, 3), 7, dtype=np.uint8)
    out, geo = letterbox(rgb, (320, 320))
    assert out.shape == (320, 320, 3) and out.dtype == np.uint8
    assert (out[:65] == 114).all() and (out[65 + 189 :] == 114).all()
    assert (out[65 : 65 + 189] == 7).all()


# -- exact coordinate mapping -------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["v8", "v5"])
@pytest.mark.parametrize(("width", "height", "square"), CASES, ids=[f"{w}x{h}" for w, h, _ in CASES])
def test_boxes_map_back_exactly(models: dict[str, Path], layout: str, width: int, height: int, square: tuple) -> None:
    det = create_detector("yolo-onnx", model_path=models[layout])
    dets = det.detect(_image(width, height, square))
    assert len(dets) == 2

    geo = letterbox_geometry(width, height, (320, 320))
    inset_x, inset_y = 2.0 / geo.scale_x, 2.0 / geo.scale_y
    content = _by_conf(dets, CONTENT_SCORE)
    _assert_close(content.bbox, (inset_x, inset_y, width - inset_x, height - inset_y), 1e-3)

    found = _by_conf(dets, SQUARE_SCORE)
    _assert_close(found.bbox, tuple(float(v) for v in square), 0.5)
    assert found.attributes == {"class_id": 0}


def test_dynamic_input_uses_input_size_option(models: dict[str, Path]) -> None:
    # 150x200 into a 384-high, 256-wide input: x1.71, 21 grey rows above and 22 below.
    square = (40, 50, 100, 150)
    det = create_detector("yolo-onnx", model_path=models["dynamic"], input_size="384x256")
    dets = det.detect(_image(150, 200, square))
    assert det.describe()["input_size"] == [384, 256]
    _assert_close(_by_conf(dets, SQUARE_SCORE).bbox, square, 0.5)
    geo = letterbox_geometry(150, 200, (384, 256))
    assert (geo.new_w, geo.new_h, geo.pad_left, geo.pad_top) == (256, 341, 0, 21)
    ix, iy = 2.0 / geo.scale_x, 2.0 / geo.scale_y
    _assert_close(_by_conf(dets, CONTENT_SCORE).bbox, (ix, iy, 150 - ix, 200 - iy), 1e-3)


def test_dynamic_input_falls_back_to_metadata_then_640(tmp_path: Path) -> None:
    with_meta = probe_model(tmp_path / "m.onnx", input_hw=None, metadata={"imgsz": "[224, 288]"})
    det = YoloOnnxDetector(model_path=with_meta)
    det.load()
    assert det.describe()["input_size"] == [224, 288]
    plain = YoloOnnxDetector(model_path=probe_model(tmp_path / "p.onnx", input_hw=None))
    plain.load()
    assert plain.describe()["input_size"] == [640, 640]


def test_fp16_input(models: dict[str, Path]) -> None:
    square = (50, 30, 110, 70)
    dets = create_detector("yolo-onnx", model_path=models["fp16"]).detect(_image(200, 120, square))
    _assert_close(_by_conf(dets, SQUARE_SCORE).bbox, square, 0.5)


def test_pose_keypoints_map_back(models: dict[str, Path]) -> None:
    det = create_detector("yolo-onnx", model_path=models["pose"], keypoint_names=["top_left", "bottom_right"])
    square = (17, 41, 93, 200)
    dets = det.detect(_image(120, 260, square))
    assert det.keypoint_names == ["top_left", "bottom_right"]
    found = _by_conf(dets, SQUARE_SCORE)
    (ax, ay, av), (bx, by, bv) = found.keypoints
    _assert_close((ax, ay, bx, by), square, 0.5)
    assert av == pytest.approx(KPT_VIS) and bv == pytest.approx(KPT_VIS)
    # The content keypoints lie on the image border; they are clipped into the image.
    (cx1, cy1, _), (cx2, cy2, _) = _by_conf(dets, CONTENT_SCORE).keypoints
    assert 0.0 <= cx1 < cx2 <= 120 and 0.0 <= cy1 < cy2 <= 260


def test_pose_needs_kpt_shape_or_option(tmp_path: Path) -> None:
    bare = probe_model(tmp_path / "pose.onnx", keypoints=True)
    square = (50, 30, 110, 70)
    # Without metadata the keypoint channels would pass for classes: with num_classes the
    # mismatch is caught, with num_keypoints the model reads correctly.
    with pytest.raises(BackendUnavailable, match="not 4\\+nc"):
        YoloOnnxDetector(model_path=bare, num_classes=1).load()
    det = YoloOnnxDetector(model_path=bare, num_keypoints=2)
    found = _by_conf(det.detect(_image(200, 120, square)), SQUARE_SCORE)
    assert len(found.keypoints) == 2 and det.keypoint_names == ["kpt_0", "kpt_1"]


# -- thresholds, NMS, classes -------------------------------------------------------------------


def _fixed_detector(tmp_path: Path, fixed: list, layout: str = "v8", num_classes: int = 2, **opts) -> YoloOnnxDetector:
    model = probe_model(tmp_path / f"{layout}.onnx", layout=layout, num_classes=num_classes, fixed=fixed, computed=False)
    return YoloOnnxDetector(model_path=model, **opts)


def test_confidence_threshold(tmp_path: Path) -> None:
    fixed = [(60, 60, 40, 40, 0, 0.30), (200, 200, 40, 40, 0, 0.20), (260, 60, 40, 40, 1, 0.25)]
    dets = _fixed_detector(tmp_path, fixed).detect(Image.new("RGB", (320, 320)))
    assert sorted(round(d.confidence, 2) for d in dets) == [0.25, 0.30]
    dets = _fixed_detector(tmp_path, fixed, conf_threshold=0.26).detect(Image.new("RGB", (320, 320)))
    assert [round(d.confidence, 2) for d in dets] == [0.30]


def test_v5_confidence_is_objectness_times_class(tmp_path: Path) -> None:
    model = probe_model(tmp_path / "v5.onnx", layout="v5", v5_objectness=0.5)
    dets = YoloOnnxDetector(model_path=model).detect(_image(200, 120, (50, 30, 110, 70)))
    assert sorted(round(d.confidence, 3) for d in dets) == [0.4, 0.45]
    dets = YoloOnnxDetector(model_path=model, conf_threshold=0.42).detect(_image(200, 120, (50, 30, 110, 70)))
    assert [round(d.confidence, 3) for d in dets] == [0.45]


def test_nms_is_class_aware(tmp_path: Path) -> None:
    # Two same-class boxes with IoU 0.74, one of the other class on top of them, one apart.
    fixed = [
        (100, 100, 100, 100, 0, 0.9),
        (115, 100, 100, 100, 0, 0.8),
        (100, 102, 100, 100, 1, 0.7),
        (250, 250, 40, 40, 0, 0.6),
    ]
    image = Image.new("RGB", (320, 320))
    dets = _fixed_detector(tmp_path, fixed).detect(image)
    assert [(round(d.confidence, 2), d.attributes["class_id"]) for d in dets] == [(0.9, 0), (0.7, 1), (0.6, 0)]
    agnostic = _fixed_detector(tmp_path, fixed, agnostic_nms=True).detect(image)
    assert [round(d.confidence, 2) for d in agnostic] == [0.9, 0.6]
    loose = _fixed_detector(tmp_path, fixed, iou_threshold=0.75).detect(image)
    assert len(loose) == 4
    capped = _fixed_detector(tmp_path, fixed, max_det=2).detect(image)
    assert [round(d.confidence, 2) for d in capped] == [0.9, 0.7]


def test_classes_filter_and_names(tmp_path: Path) -> None:
    fixed = [(60, 60, 40, 40, 0, 0.9), (200, 200, 40, 40, 1, 0.8)]
    model = probe_model(
        tmp_path / "m.onnx", num_classes=2, fixed=fixed, computed=False, metadata={"names": "{0: 'face', 1: 'head'}"}
    )
    det = YoloOnnxDetector(model_path=model, classes=[1])
    dets = det.detect(Image.new("RGB", (320, 320)))
    assert [d.attributes for d in dets] == [{"class_id": 1, "class_name": "head"}]
    assert det.describe()["class_names"] == {0: "face", 1: "head"}


def test_nms_helper_keeps_best_first() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], dtype=np.float32)
    keep = nms(boxes, np.array([0.5, 0.9, 0.7]), np.array([0, 0, 0]), 0.45)
    assert keep.tolist() == [1, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=int), 0.45).tolist() == []


def test_boxes_in_the_padding_are_dropped(tmp_path: Path) -> None:
    # A 320x160 image sits in rows 80..240; a box wholly in the top padding has nothing in the image.
    fixed = [(160, 30, 40, 40, 0, 0.9), (160, 160, 40, 40, 0, 0.8)]
    dets = _fixed_detector(tmp_path, fixed).detect(Image.new("RGB", (320, 160)))
    assert [round(d.confidence, 2) for d in dets] == [0.8]
    assert dets[0].bbox == pytest.approx((140.0, 60.0, 180.0, 100.0))


# -- layout detection ---------------------------------------------------------------------------


def test_auto_layout_rule() -> None:
    assert resolve_head((1, 5, 8400)).layout == "v8"
    assert resolve_head((1, 25200, 6)).layout == "v5"
    assert resolve_head((1, 25200, 85)).num_classes == 80
    assert resolve_head((1, 56, 8400), kpt_shape=(17, 3)).num_keypoints == 17
    with pytest.raises(BackendUnavailable, match="layout='v8' or layout='v5'"):
        resolve_head((1, 6, 6))
    # Explicit layout wins where the rule would guess wrong (fewer candidates than attributes).
    assert resolve_head((1, 6, 3), layout="v8").num_classes == 2


def test_small_model_needs_explicit_layout(tmp_path: Path) -> None:
    # 3 candidates, 5 attributes: auto reads it as v5 (1, N=5, 3 attributes) and says it makes no sense.
    model = probe_model(tmp_path / "few.onnx", candidates=3, fixed=[(100, 100, 40, 40, 0, 0.9)])
    with pytest.raises(BackendUnavailable, match="layout v5"):
        YoloOnnxDetector(model_path=model).load()
    dets = YoloOnnxDetector(model_path=model, layout="v8").detect(_image(200, 120, (50, 30, 110, 70)))
    assert len(dets) == 3


# -- bad models and options ---------------------------------------------------------------------


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="not found") as err:
        create_detector("yolo-onnx", model_path=tmp_path / "nope.onnx")
    assert err.value.status_code == 503
    with pytest.raises(BackendUnavailable, match="model_path"):
        create_detector("yolo-onnx")


def test_not_an_onnx_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf \x00\x01\x02")
    det = create_detector("yolo-onnx", model_path=bad)
    with pytest.raises(BackendUnavailable, match="cannot load ONNX model"):
        det.detect(Image.new("RGB", (32, 32)))
    assert not det.loaded


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((1, 100), "unexpected YOLO output shape"),
        ((2, 5, 100), "unexpected YOLO output shape"),
        ((1, 4, 100), "leaves 0 class scores"),
        ((1, 1, 5, 100), "unexpected YOLO output shape"),
        ((1, 7, 7), "cannot be told"),
    ],
)
def test_unexpected_output_shapes(tmp_path: Path, shape: tuple[int, ...], match: str) -> None:
    model = constant_model(tmp_path / "c.onnx", np.zeros(shape, dtype=np.float32))
    with pytest.raises(BackendUnavailable, match=match):
        YoloOnnxDetector(model_path=model).load()


@pytest.mark.parametrize(
    ("shape", "metadata", "match"),
    [
        ((1, 300, 6), {"end2end": "True", "names": "{0: 'face'}"}, "end-to-end export"),
        ((1, 37, 8400), {"task": "segment", "names": "{0: 'face'}"}, "'segment' model"),
    ],
)
def test_exports_we_do_not_read_are_refused(tmp_path: Path, shape: tuple, metadata: dict, match: str) -> None:
    model = constant_model(tmp_path / "m.onnx", np.zeros(shape, dtype=np.float32), metadata=metadata)
    with pytest.raises(BackendUnavailable, match=match):
        YoloOnnxDetector(model_path=model).load()


def test_bad_inputs(tmp_path: Path) -> None:
    out = np.zeros((1, 5, 100), dtype=np.float32)
    two = constant_model(tmp_path / "two.onnx", out, extra_input=True)
    with pytest.raises(BackendUnavailable, match="one image input"):
        YoloOnnxDetector(model_path=two).load()
    grey = constant_model(tmp_path / "grey.onnx", out, input_shape=(1, 1, 64, 64))
    with pytest.raises(BackendUnavailable, match=r"expected \(1, 3, height, width\)"):
        YoloOnnxDetector(model_path=grey).load()
    fixed = constant_model(tmp_path / "fixed.onnx", out, input_shape=(1, 3, 64, 64))
    with pytest.raises(BackendUnavailable, match="fixed input of 64x64") as err:
        YoloOnnxDetector(model_path=fixed, input_size=320).load()
    assert err.value.status_code == 400


@pytest.mark.parametrize(
    "opts",
    [
        {"layout": "v9"},
        {"conf_threshold": 1.5},
        {"iou_threshold": -0.1},
        {"max_det": 0},
        {"input_size": "big"},
        {"keypoint_dims": 4},
    ],
)
def test_bad_options_are_400(models: dict[str, Path], opts: dict) -> None:
    with pytest.raises(BackendUnavailable) as err:
        YoloOnnxDetector(model_path=models["v8"], **opts)
    assert err.value.status_code == 400


def test_num_classes_mismatch(models: dict[str, Path]) -> None:
    with pytest.raises(BackendUnavailable, match="for 3 classes"):
        YoloOnnxDetector(model_path=models["v8"], num_classes=3).load()


# -- lifecycle and reporting --------------------------------------------------------------------


def test_unload_releases_session_and_reloads(models: dict[str, Path]) -> None:
    det = YoloOnnxDetector(model_path=models["v8"])
    assert det.describe()["provider"] is None
    det.load()
    info = det.describe()
    assert info["loaded"] is True and info["layout"] == "v8" and info["num_classes"] == 1
    expected = "CUDAExecutionProvider" if HAS_CUDA else "CPUExecutionProvider"
    assert info["provider"] == expected
    det.unload()
    assert not det.loaded and det._session is None and det.vram_mib() == 0.0
    # detect() loads again lazily.
    assert len(det.detect(_image(200, 120, (50, 30, 110, 70)))) == 2


def test_cpu_provider_reports_no_vram(models: dict[str, Path]) -> None:
    det = YoloOnnxDetector(model_path=models["v8"], providers=["CPUExecutionProvider"])
    det.load()
    assert det.provider == "CPUExecutionProvider"
    assert det.vram_mib() == 0.0 and det.describe()["vram_mib"] == 0.0


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("layout", ["v8", "v5"])
def test_cuda_provider_maps_exactly_and_reports_vram(models: dict[str, Path], layout: str) -> None:
    det = YoloOnnxDetector(model_path=models[layout])
    for width, height, square in CASES:
        dets = det.detect(_image(width, height, square))
        _assert_close(_by_conf(dets, SQUARE_SCORE).bbox, tuple(float(v) for v in square), 0.5)
    assert det.provider == "CUDAExecutionProvider"
    assert det.vram_mib() > 0.0
    det.unload()
    assert det.vram_mib() == 0.0
