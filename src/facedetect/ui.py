"""Gradio UI: upload an image, see the faces drawn on it and the JSON the API would answer.

It detects in-process through the same ``DetectionService`` as the API, or, when ``FACEDETECT_API_URL``
is set, through the API itself. The container uses the second mode so the model (and its VRAM) exists
once, in the API process, where ``/unload`` can free it.

``ui_app`` is what ``facedetect ui`` serves: the Blocks mounted in a FastAPI app behind the same guards as
the API (Host allow-list, cross-site POSTs refused, a body cap checked before a byte is read) and run by
the same uvicorn policy (httpserve). Gradio's own ``max_file_size`` caps each uploaded file, and its
``delete_cache`` removes uploaded and drawn files after ``FACEDETECT_UI_CACHE_S`` (and all of them when
the UI stops), so uploads no longer pile up in Gradio's temporary directory.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

# A self-hosted tool must not phone home: Gradio's usage analytics are off before Gradio is imported
# (it reads the variable at import and at launch), and every Blocks is built with analytics_enabled=False.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr
from fastapi import FastAPI
from PIL import Image
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from facedetect.annotate import annotate
from facedetect.api import refuse_cross_site
from facedetect.backends import BACKENDS
from facedetect.client import FaceDetectClient
from facedetect.errors import FaceDetectError
from facedetect.imageio import Limits, load_image
from facedetect.multipart import body_cap
from facedetect.service import DetectionService
from facedetect.settings import FaceDetectSettings
from httpserve import HostGuard

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CACHE_SWEEP_S = 60  # how often Gradio looks for files older than FACEDETECT_UI_CACHE_S


class UiDetector:
    """What the UI's button calls. One service per backend, built on first use and then reused."""

    def __init__(self, settings: FaceDetectSettings):
        self.settings = settings
        self.client = FaceDetectClient(settings.api_url) if settings.api_url else None
        self._services: dict[str, DetectionService] = {}
        self._lock = threading.Lock()

    def _service(self, backend: str) -> DetectionService:
        with self._lock:
            if backend not in self._services:
                configured = self.settings.model_copy(update={"backend": backend})
                self._services[backend] = DetectionService.from_settings(configured)
            return self._services[backend]

    def __call__(
        self, image_path: str | None, backend: str, min_confidence: float, max_faces: float
    ) -> tuple[Image.Image | None, dict[str, Any]]:
        """(annotated image, result JSON); problems come back as ``{"error": ...}`` instead of raising."""
        if not image_path:
            return None, {"error": "upload an image first"}
        limit = int(max_faces) if max_faces and max_faces > 0 else None
        try:
            data = Path(image_path).read_bytes()
            name = Path(image_path).name
            if self.client is not None:
                remote = self.client.detect_full(data, name, min_confidence=min_confidence, max_faces=limit)
                # The server's annotated file may live on another disk; draw the same boxes here.
                image, _ = load_image(data, Limits(self.settings.max_bytes, self.settings.max_pixels))
                return annotate(image, remote.result.detections), remote.raw
            outcome = self._service(backend).detect_bytes(
                data, name, min_confidence=min_confidence, max_faces=limit, annotate=True, save=False
            )
            return outcome.annotated, outcome.to_json()
        except FaceDetectError as exc:
            return None, {"error": exc.message, "status": exc.status_code}
        except OSError as exc:
            return None, {"error": f"cannot read the upload: {exc}"}


def build_ui(settings: FaceDetectSettings | None = None) -> gr.Blocks:
    """The Blocks app; ``.launch()`` it, or mount it. ``blocks.detector`` is the function the button runs."""
    settings = settings or FaceDetectSettings()
    detector = UiDetector(settings)
    sweep = min(CACHE_SWEEP_S, settings.ui_cache_s)
    with gr.Blocks(title="facedetect", analytics_enabled=False, delete_cache=(sweep, settings.ui_cache_s)) as blocks:
        gr.Markdown("# Anime face detection\nUpload an image; faces are boxed with their confidence and "
                    "keypoints (left eye, right eye, nose, mouth, chin for animeface).")
        if settings.api_url:
            gr.Markdown(f"Detecting through the API at `{settings.api_url}` (its backend is configured there).")
        with gr.Row():
            with gr.Column():
                # image_mode=None and type="filepath": Gradio hands over the file untouched, so the UI
                # decodes exactly like the API (EXIF, alpha onto white) instead of Gradio's RGB convert.
                upload = gr.Image(type="filepath", image_mode=None, label="image", sources=["upload", "clipboard"])
                backend = gr.Dropdown(list(BACKENDS), value=settings.backend, label="backend",
                                      interactive=settings.api_url is None)
                threshold = gr.Slider(0.0, 1.0, value=settings.min_confidence, step=0.01, label="min confidence")
                max_faces = gr.Slider(0, 50, value=0, step=1, label="max faces (0 = all)")
                button = gr.Button("Detect faces", variant="primary")
            with gr.Column():
                annotated = gr.Image(type="pil", label="faces", format="jpeg")
                result = gr.JSON(label="result")
        button.click(detector, inputs=[upload, backend, threshold, max_faces], outputs=[annotated, result],
                     api_name="detect")
    blocks.detector = detector  # type: ignore[attr-defined]
    return blocks


class UploadGuard:
    """Before Gradio sees a request that can change something (an upload, a queued call): a cross-site one
    (another ``Origin``, or ``Sec-Fetch-Site: cross-site``) gets 403, a body without ``Content-Length``
    411, and one over the cap 413, all before a byte of the body is read."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        try:
            refuse_cross_site(request)
        except FaceDetectError as exc:
            await JSONResponse({"detail": exc.message}, status_code=exc.status_code)(scope, receive, send)
            return
        declared = request.headers.get("content-length")
        chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
        if chunked or (declared is not None and not declared.isdigit()):
            await JSONResponse({"detail": "send the body with a Content-Length"}, status_code=411)(scope, receive, send)
            return
        if declared is not None and int(declared) > self.max_body:
            await JSONResponse({"detail": f"the request body is {int(declared) / 1e6:.1f} MB; the limit here is "
                                          f"{self.max_body / 1e6:.1f} MB (FACEDETECT_MAX_BYTES)"},
                               status_code=413)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def ui_app(settings: FaceDetectSettings | None = None) -> FastAPI:
    """What ``facedetect ui`` serves: the Blocks at ``/``, behind the Host rule and ``UploadGuard``, each
    uploaded file capped at ``FACEDETECT_MAX_BYTES``. ``app.state.blocks`` is the Blocks."""
    settings = settings or FaceDetectSettings()
    blocks = build_ui(settings)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(UploadGuard, max_body=body_cap(settings.max_bytes))
    app.add_middleware(HostGuard, allowed=settings.allowed_hosts, setting="FACEDETECT_ALLOWED_HOSTS")
    app.state.blocks = blocks
    return gr.mount_gradio_app(app, blocks, path="/", max_file_size=settings.max_bytes)
