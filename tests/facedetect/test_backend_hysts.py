"""The ``hysts`` backend: hysts' anime-face-detector 0.1.0 (PyTorch), an optional install.

Where PyTorch and the package are installed (``make test-hysts``: .cache/hysts-venv) the backend runs the
package's own networks with weights built here (tests/hysts_models.py): a YOLOv3 whose weights make it find
red patches at known places, and a randomly initialised HRNetV2. Nothing is downloaded; the pretrained
weights' detection quality is not (cannot be) measured. Where they are not installed (the project's .venv)
those tests are skipped with the reason, and the backend's message for a missing install is checked instead.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facedetect.api import create_app
from facedetect.backends import BACKENDS, create_detector
from facedetect.backends.hysts import KEYPOINT_NAMES, HystsDetector, enlarge_box
from facedetect.cli import Backend
from facedetect.errors import BackendUnavailable
from facedetect.outputs import OutputStore
from facedetect.service import DetectionService
from facedetect.settings import BackendName, FaceDetectSettings
from facedetect.types import Detection
import loopback
from servers import free_port, serve_app, venv_bin

HAS_HYSTS = all(importlib.util.find_spec(m) is not None for m in ("torch", "anime_face_detector"))
needs_hysts = pytest.mark.skipif(
    not HAS_HYSTS,
    reason="PyTorch and anime-face-detector are not installed here (the `hysts` extra; "
    "`make test-hysts` runs these tests in .cache/hysts-venv)",
)
without_hysts = pytest.mark.skipif(
    HAS_HYSTS, reason="checks what an install without PyTorch says; this one has PyTorch and anime-face-detector"
)
ROOT = Path(__file__).resolve().parents[2]

# Pictures of the probe (width, height, stride-32 cells (row, col) with a red patch): the package's resize
# halves the first, and enlarges the second by different factors across and down (608/300, 345/170);
# cell (0, 0) gives a box reaching past the top-left corner, which comes back clipped.
DOWNSCALED = (1216, 760, [(5, 9)])
UPSCALED = (300, 170, [(0, 0), (3, 4)])


# --- everywhere: registration and options (no PyTorch needed) -------------------------------------------


def test_registered_as_a_backend_everywhere_a_backend_is_named():
    from typing import get_args

    from mikubot.vram import CPU_BACKENDS

    assert "hysts" in BACKENDS and "hysts" in get_args(BackendName) and Backend("hysts").value == "hysts"
    assert isinstance(create_detector("hysts"), HystsDetector)
    assert "hysts" not in CPU_BACKENDS  # it holds VRAM on CUDA hosts, so in-process use needs a reservation
    assert len(KEYPOINT_NAMES) == len(set(KEYPOINT_NAMES)) == 28


@pytest.mark.parametrize(
    "options, words",
    [
        ({"device": "gpu"}, "device 'gpu'"),
        ({"device": "cuda:x"}, "device 'cuda:x'"),
        ({"face_detector": "ssd"}, "face_detector 'ssd'"),
        ({"conf_threshold": 2.0}, "conf_threshold"),
        ({"max_det": 0}, "max_det"),
        ({"box_scale_factor": 0.5}, "box_scale_factor"),
    ],
)
def test_a_bad_option_is_a_400(options, words):
    with pytest.raises(BackendUnavailable, match=words) as err:
        create_detector("hysts", **options)
    assert err.value.status_code == 400


def test_model_path_is_a_directory_and_missing_checkpoints_are_503(tmp_path):
    a_file = tmp_path / "yolov3.safetensors"
    a_file.write_bytes(b"x")
    with pytest.raises(BackendUnavailable, match="is a directory of checkpoints") as err:
        create_detector("hysts", model_path=a_file)
    assert err.value.status_code == 400
    with pytest.raises(BackendUnavailable, match="no hrnetv2 checkpoint in") as err:
        create_detector("hysts", model_path=tmp_path)  # the face model's file is there, the landmarks' not
    assert err.value.status_code == 503
    with pytest.raises(BackendUnavailable, match="yolov3 checkpoint not found") as err:
        create_detector("hysts", detector_path=tmp_path / "missing.safetensors")
    assert err.value.status_code == 503


def test_enlarge_box_is_the_packages_arithmetic():
    # anime_face_detector 0.1.0 LandmarkDetector._update_pred_box: size = x1 - x0 + 1, about the centre.
    box = enlarge_box(np.array([10.0, 20.0, 29.0, 59.0, 0.7]), 1.5)
    assert box.tolist() == pytest.approx([4.5, 9.5, 34.5, 69.5, 0.7])


# --- without PyTorch: what to install ------------------------------------------------------------------


@without_hysts
def test_without_pytorch_loading_says_what_to_install(tmp_path):
    det = create_detector("hysts")
    assert det.uses_gpu is False and det.vram_mib() == 0.0
    with pytest.raises(BackendUnavailable) as err:
        det.load()
    assert err.value.status_code == 503
    assert "miku-discord[hysts]" in err.value.message and "anime-face-detector==0.1.0" in err.value.message
    assert not det.loaded


@without_hysts
def test_without_pytorch_the_api_answers_503_with_the_install_and_health_still_works(tmp_path):
    app = create_app(FaceDetectSettings(backend="hysts", preload=False, outputs=tmp_path / "out"))
    png = io.BytesIO()
    Image.new("RGB", (64, 48), (128, 128, 128)).save(png, format="PNG")
    with serve_app(app) as url:
        health = loopback.get(f"{url}/health").json()
        detect = loopback.post(f"{url}/detect", files={"file": ("grey.png", png.getvalue(), "image/png")}, timeout=60)
        load = loopback.post(f"{url}/load", timeout=60)
    assert health["backend"] == "hysts" and health["detector_loaded"] is False and health["uses_gpu"] is False
    assert health["keypoint_names"] == KEYPOINT_NAMES
    for r in (detect, load):
        assert r.status_code == 503, r.text
        assert "miku-discord[hysts]" in r.json()["detail"]


@without_hysts
def test_without_pytorch_the_cli_says_what_to_install(tmp_path):
    image = tmp_path / "grey.png"
    Image.new("RGB", (64, 48), (128, 128, 128)).save(image)
    env = {**os.environ, "FACEDETECT_OUTPUTS": str(tmp_path / "out")}
    serve = ["serve", "--backend", "hysts", "--port", str(free_port())]
    for args in (["detect", "--backend", "hysts", str(image)], serve):
        run = subprocess.run([venv_bin("facedetect"), *args], capture_output=True, text=True, timeout=120, env=env)
        assert run.returncode == 2, run.stdout + run.stderr
        message = " ".join(run.stderr.split())  # rich wraps long lines
        assert message.startswith("error: the hysts backend needs PyTorch") and "miku-discord[hysts]" in message
        assert "Traceback" not in run.stdout + run.stderr


# --- with PyTorch: the package's own networks, weights built here ---------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A model_path directory: the red-finding YOLOv3 probe and a random HRNetV2 (tests/hysts_models.py)."""
    import hysts_models

    out = tmp_path_factory.mktemp("hysts-weights")
    hysts_models.save(hysts_models.probe_yolov3(), out / "yolov3.safetensors")
    hysts_models.save(hysts_models.random_hrnetv2(), out / "hrnetv2.safetensors")
    return out


@pytest.fixture(scope="module")
def detector(weights) -> HystsDetector:
    det = create_detector("hysts", model_path=weights, device="cpu")
    det.load()
    return det


@pytest.fixture(scope="module")
def found(detector) -> dict[tuple[int, int], tuple[Image.Image, list[Detection]]]:
    """Each probe picture and what the backend found on it, detected once for the module."""
    import hysts_models

    out = {}
    for width, height, cells in (DOWNSCALED, UPSCALED):
        image = Image.fromarray(hysts_models.red_patch_image(width, height, cells))
        out[(width, height)] = (image, detector.detect(image))
    return out


def _png(image: Image.Image, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **params)
    return buf.getvalue()


def _enlarged(width: int, height: int, cell: tuple[int, int]) -> np.ndarray:
    """The probe's box for ``cell`` as the backend enlarges it before the landmarks (not yet clipped)."""
    import hysts_models

    return enlarge_box(np.array([*hysts_models.probe_box(width, height, *cell), 1.0]), 1.1)[:4]


def _clipped(box: np.ndarray, width: int, height: int) -> tuple[float, ...]:
    return tuple(float(v) for v in np.clip(box, 0, [width, height, width, height]))


@needs_hysts
@pytest.mark.parametrize("case", [DOWNSCALED, UPSCALED], ids=["downscaled", "upscaled"])
def test_the_probes_faces_come_back_in_the_pictures_pixels_with_28_keypoints(found, case):
    import hysts_models

    width, height, cells = case
    _, dets = found[(width, height)]
    assert len(dets) == len(cells), dets
    for cell in cells:
        box = _enlarged(width, height, cell)
        matches = [d for d in dets if d.bbox == pytest.approx(_clipped(box, width, height), abs=1e-3)]
        assert len(matches) == 1, f"no face at {_clipped(box, width, height)} for cell {cell}: {dets}"
        d = matches[0]
        assert d.confidence == pytest.approx(hysts_models.PROBE_SCORE, abs=1e-4)
        assert len(d.keypoints) == 28
        # HRNetV2 reads a square crop of 1.25x the box's longer side about its centre; its random landmarks
        # fall in it (in the picture's pixels, not the 256-px crop's or the 64-px heatmap's), but for the
        # heatmap decoding's sub-cell refinement, which may carry a point a little past it; clipped to the picture.
        centre = (box[:2] + box[2:]) / 2
        half = 1.25 * float(np.max(box[2:] - box[:2])) / 2 * 1.25
        lo = np.clip(centre - half, 0, None)
        hi = np.minimum(centre + half, [width, height])
        for x, y, score in d.keypoints:
            assert lo[0] <= x <= hi[0] and lo[1] <= y <= hi[1] and 0.0 <= score <= 1.0, (x, y, score)
    if (0, 0) in cells:  # the box past the corner came back clipped to it
        assert min(d.bbox[0] for d in dets) == 0.0 and min(d.bbox[1] for d in dets) == 0.0


@needs_hysts
def test_same_faces_and_landmarks_as_the_packages_own_landmark_detector(weights, found):
    from anime_face_detector import LandmarkDetector

    image, dets = found[DOWNSCALED[:2]]
    reference = LandmarkDetector(weights / "hrnetv2.safetensors", face_detector_name="yolov3",
                                 face_detector_checkpoint_path=weights / "yolov3.safetensors", device="cpu")
    theirs = reference(np.ascontiguousarray(np.asarray(image)[:, :, ::-1]))  # the package reads BGR
    assert len(theirs) == len(dets) == 1
    assert dets[0].bbox == pytest.approx(tuple(float(v) for v in theirs[0]["bbox"][:4]), abs=1e-3)
    assert dets[0].confidence == pytest.approx(float(theirs[0]["bbox"][4]), abs=1e-6)
    ours = np.array(dets[0].keypoints)
    np.testing.assert_allclose(ours[:, :2], theirs[0]["keypoints"][:, :2], atol=1e-2)
    np.testing.assert_allclose(ours[:, 2], np.clip(theirs[0]["keypoints"][:, 2], 0, 1), atol=1e-5)


@needs_hysts
def test_the_api_serves_it_from_the_settings_exif_turned_and_reloads_after_unload(weights, found, tmp_path):
    """FACEDETECT_BACKEND=hysts FACEDETECT_MODEL_PATH=DIR, over real HTTP: a picture stored on its side with
    an EXIF orientation comes back in its upright pixels, and /unload then /detect loads the models again."""
    width, height, _ = UPSCALED
    upright, dets = found[(width, height)]
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": stored turned a quarter anticlockwise
    stored_on_its_side = _png(upright.transpose(Image.Transpose.ROTATE_90), exif=exif)
    app = create_app(FaceDetectSettings(backend="hysts", model_path=weights, outputs=tmp_path / "out"))
    with serve_app(app) as url:
        health = loopback.get(f"{url}/health").json()
        r = loopback.post(f"{url}/detect", files={"file": ("turned.png", stored_on_its_side, "image/png")}, timeout=300)
        unloaded = loopback.post(f"{url}/unload", timeout=60).json()
        again = loopback.post(f"{url}/detect", files={"file": ("upright.png", _png(upright), "image/png")},
                           params={"annotate": "false"}, timeout=300)
    assert health["backend"] == "hysts" and health["detector_loaded"] is True
    assert health["uses_gpu"] is False and health["vram_mib"] == 0.0  # a host without CUDA: the CPU
    assert health["keypoint_names"] == KEYPOINT_NAMES
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image"]["width"] == width and body["image"]["height"] == height
    assert body["backend"] == "hysts" and body["keypoint_names"] == KEYPOINT_NAMES
    want = sorted((d.to_json() for d in dets), key=lambda d: d["bbox"])
    for got in (sorted(body["detections"], key=lambda d: d["bbox"]),
                sorted(again.json()["detections"], key=lambda d: d["bbox"])):
        assert len(got) == len(want) == 2
        for g, w in zip(got, want):
            assert g["bbox"] == pytest.approx(w["bbox"], abs=0.02)
            assert len(g["keypoints"]) == 28
            assert np.asarray(g["keypoints"]) == pytest.approx(np.asarray(w["keypoints"]), abs=0.02)
    assert Path(body["annotated_image"]).is_file()
    assert unloaded["detector_loaded"] is False
    assert again.status_code == 200 and "load" in again.json()["timings_ms"]  # loaded again, lazily


@needs_hysts
def test_checkpoints_by_their_hub_or_release_names_and_the_faster_rcnn(weights, tmp_path):
    import hysts_models
    import torch

    # The original release's .pth files (a state_dict under "state_dict", as mmcv saved them).
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    torch.save({"state_dict": hysts_models.random_hrnetv2().state_dict()}, legacy / "mmpose_anime-face_hrnetv2.pth")
    (legacy / "yolov3.safetensors").symlink_to(weights / "yolov3.safetensors")
    det = create_detector("hysts", model_path=legacy, device="cpu")
    assert det.describe()["landmark_path"] == str(legacy / "mmpose_anime-face_hrnetv2.pth")
    det.load()
    assert det.loaded and det.device == "cpu"
    det.unload()

    rcnn = tmp_path / "rcnn"
    rcnn.mkdir()
    hysts_models.save(hysts_models.random_faster_rcnn(), rcnn / "faster-rcnn.safetensors")
    det = create_detector("hysts", face_detector="faster-rcnn", model_path=rcnn,
                          landmark_path=weights / "hrnetv2.safetensors", device="cpu")
    det.load()
    info = det.describe()
    assert info["face_detector"] == "faster-rcnn" and info["detector_path"] == str(rcnn / "faster-rcnn.safetensors")
    assert info["landmark_path"] == str(weights / "hrnetv2.safetensors") and info["device"] == "cpu"
    det.unload()
    assert not det.loaded and det.describe()["device"] is None


@needs_hysts
def test_a_file_that_is_not_the_checkpoint_is_a_503_naming_it(weights, tmp_path):
    garbage = tmp_path / "yolov3.safetensors"
    garbage.write_bytes(b"not a checkpoint at all")
    for face_file in (weights / "hrnetv2.safetensors", garbage):  # the wrong network's weights; no weights
        det = create_detector("hysts", detector_path=face_file, landmark_path=weights / "hrnetv2.safetensors",
                              device="cpu")
        with pytest.raises(BackendUnavailable, match="cannot load the hysts checkpoints") as err:
            det.load()
        assert err.value.status_code == 503 and str(face_file) in err.value.message
        assert not det.loaded


@needs_hysts
def test_cuda_asked_for_on_a_host_without_it_is_a_503(weights):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has a CUDA GPU")
    det = create_detector("hysts", model_path=weights, device="cuda")
    assert det.uses_gpu is False
    with pytest.raises(BackendUnavailable, match="sees no CUDA GPU") as err:
        det.load()
    assert err.value.status_code == 503 and not det.loaded


@needs_hysts
def test_by_default_the_weights_come_from_the_hugging_face_cache(weights, tmp_path):
    """No model_path: the package's own download (hf_hub_download) into the Hub's cache. Run offline
    (HF_HUB_OFFLINE=1, an empty HF_HOME), the first load says it cannot get them; once the cache holds them
    in the Hub client's layout, the same backend loads them from there."""
    script = textwrap.dedent("""
        import json, sys
        from pathlib import Path
        from facedetect.backends import create_detector
        from facedetect.errors import BackendUnavailable

        weights, hub = Path(sys.argv[1]), Path(sys.argv[2]) / "hub"
        det, out = create_detector("hysts", device="cpu"), {}
        try:
            det.load()
        except BackendUnavailable as exc:
            out["empty"] = [exc.status_code, exc.message]
        for repo, name in (("anime-face-detector-yolov3", "yolov3"), ("anime-face-detector-hrnetv2", "hrnetv2")):
            commit = "0" * 40
            cached = hub / f"models--hysts--{repo}"
            (cached / "refs").mkdir(parents=True)
            (cached / "refs" / "main").write_text(commit)
            (cached / "snapshots" / commit).mkdir(parents=True)
            (cached / "snapshots" / commit / "model.safetensors").symlink_to(weights / f"{name}.safetensors")
        det.load()
        info = det.describe()
        out["cached"] = [info["detector_path"], info["landmark_path"]]
        print(json.dumps(out))
    """)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", script, str(weights), str(tmp_path / "hf")],
                         capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    status, message = out["empty"]
    assert status == 503
    assert "cannot get the yolov3 weights from the Hugging Face Hub (hysts/anime-face-detector-yolov3)" in message
    hub = tmp_path / "hf" / "hub"
    assert out["cached"] == [
        str(hub / "models--hysts--anime-face-detector-yolov3" / "snapshots" / ("0" * 40) / "model.safetensors"),
        str(hub / "models--hysts--anime-face-detector-hrnetv2" / "snapshots" / ("0" * 40) / "model.safetensors"),
    ]


@needs_hysts
@pytest.mark.gpu
def test_on_cuda_it_holds_vram_and_unload_gives_it_back(weights, found):
    import torch

    if not torch.cuda.is_available():
        pytest.skip(f"no CUDA GPU for PyTorch {torch.__version__} (CUDA {torch.version.cuda})")
    det = create_detector("hysts", model_path=weights, device="auto")
    assert det.uses_gpu is True
    det.load()
    assert det.device == "cuda:0" and det.vram_mib() > 100  # ~70 M parameters in float32 and their workspace
    image, cpu_dets = found[DOWNSCALED[:2]]
    gpu_dets = det.detect(image)
    assert len(gpu_dets) == len(cpu_dets) == 1
    assert gpu_dets[0].bbox == pytest.approx(cpu_dets[0].bbox, abs=0.05)
    det.unload()
    assert det.vram_mib() == 0.0 and torch.cuda.memory_reserved(0) == 0
