"""`uses_gpu`: every backend says whether it runs on the GPU, and GET /health reports it.

vramctl plans a detector reservation by this field (a CPU detector needs no VRAM), so it must be right
before the first load as well as after: the service may start unloaded, or have lent its memory away.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import onnxruntime as ort
import pytest

from facedetect.api import create_app
from facedetect.backends import create_detector
from facedetect.backends.yolo_onnx import YoloOnnxDetector
from facedetect.settings import FaceDetectSettings
import loopback
from onnx_models import probe_model
from servers import serve_app

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
CUDA_FIRST = ["CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture(scope="module")
def v8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return probe_model(tmp_path_factory.mktemp("onnx") / "v8.onnx", layout="v8")


def _health(url: str) -> dict:
    r = loopback.get(f"{url}/health")
    assert r.status_code == 200, r.text
    return r.json()


def test_animeface_service_reports_cpu_loaded_and_unloaded(tmp_path: Path) -> None:
    with serve_app(create_app(FaceDetectSettings(outputs=tmp_path / "out"))) as url:
        health = _health(url)
        # every field the original service and the earlier versions report is still there
        assert {"status", "detector_loaded", "backend", "vram_mib", "keypoint_names", "queue", "version"} <= set(health)
        assert health["backend"] == "animeface" and health["uses_gpu"] is False
        loopback.post(f"{url}/unload").raise_for_status()
        health = _health(url)
        assert health["detector_loaded"] is False and health["uses_gpu"] is False
        assert loopback.post(f"{url}/load").json()["uses_gpu"] is False  # /load and /unload answer the health body


def test_cascade_is_a_cpu_backend() -> None:
    det = create_detector("cascade", model_path=Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml")
    assert det.uses_gpu is False
    det.load()
    assert det.uses_gpu is False


def test_yolo_on_cpu_provider_does_not_use_the_gpu(v8: Path) -> None:
    det = YoloOnnxDetector(model_path=v8, providers=["CPUExecutionProvider"])
    assert det.uses_gpu is False  # before the first load: the request alone decides
    det.load()
    assert det.provider == "CPUExecutionProvider" and det.uses_gpu is False
    det.unload()
    assert det.uses_gpu is False


def test_yolo_automatic_choice_uses_the_gpu_exactly_when_cuda_is_there(v8: Path) -> None:
    det = YoloOnnxDetector(model_path=v8)
    assert det.uses_gpu is HAS_CUDA  # predicted before loading ...
    det.load()
    assert det.uses_gpu is (det.provider == "CUDAExecutionProvider") is HAS_CUDA  # ... and true once loaded
    det.unload()
    assert det.uses_gpu is HAS_CUDA


@pytest.mark.skipif(HAS_CUDA, reason="checks the fallback of an onnxruntime build without CUDA")
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available provider names")
def test_yolo_asking_for_cuda_without_it_runs_on_cpu_and_says_so(v8: Path) -> None:
    det = YoloOnnxDetector(model_path=v8, providers=CUDA_FIRST)
    assert det.uses_gpu is False, "requested but not available: the load will fall back to the CPU"
    det.load()
    assert det.provider == "CPUExecutionProvider" and det.uses_gpu is False


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason=f"CUDAExecutionProvider not available (providers: {ort.get_available_providers()})")
def test_yolo_on_cuda_uses_the_gpu_before_and_after_loading(v8: Path) -> None:
    det = YoloOnnxDetector(model_path=v8, providers=CUDA_FIRST)
    assert det.uses_gpu is True
    det.load()
    assert det.provider == "CUDAExecutionProvider" and det.uses_gpu is True
    det.unload()
    assert det.uses_gpu is True  # unloaded, it still needs VRAM to come back


def test_yolo_service_health_reports_its_provider(tmp_path: Path, v8: Path) -> None:
    settings = FaceDetectSettings(backend="yolo-onnx", model_path=v8, outputs=tmp_path / "out", preload=False)
    with serve_app(create_app(settings)) as url:
        health = _health(url)
        assert health["backend"] == "yolo-onnx" and health["detector_loaded"] is False
        assert health["uses_gpu"] is HAS_CUDA
        loaded = loopback.post(f"{url}/load").json()
        assert loaded["detector_loaded"] is True and loaded["uses_gpu"] is HAS_CUDA
