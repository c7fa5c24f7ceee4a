"""The detector's HTTP API (a fixed contract that clients rely on): POST /detect, GET /health, POST /load,
POST /unload, GET /metrics.

Uploads are parsed here by hand rather than through FastAPI's ``UploadFile`` parameter so the byte limit
applies *while* the body streams in: an oversize upload is refused after ``max_bytes`` have arrived, never
buffered whole. Detection runs in worker threads behind an admission gate (N workers + a bounded queue);
past it the API answers 503 with ``Retry-After`` instead of piling up memory and latency.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facedetect import __version__
from facedetect.errors import FaceDetectError, ImageTooLarge
from facedetect.metrics import Metrics
from facedetect.service import DetectionService
from facedetect.settings import FaceDetectSettings

log = logging.getLogger("facedetect.api")
T = TypeVar("T")
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file itself
ENDPOINTS = ("/", "/detect", "/health", "/load", "/unload", "/metrics")


class Busy(FaceDetectError):
    """Every worker is busy and the queue is full."""

    status_code = 503

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class AdmissionGate:
    """``workers`` detections run at once, ``queue`` more may wait; anything beyond is refused at once.

    All bookkeeping happens on the event loop thread, so plain integers suffice.
    """

    def __init__(self, workers: int, queue: int):
        self.workers = workers
        self.queue_limit = queue
        self._limiter = anyio.CapacityLimiter(workers)
        self.admitted = 0
        self.running = 0
        self._mean_s: float | None = None  # moving average of a detection's run time

    @property
    def waiting(self) -> int:
        return self.admitted - self.running

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the queue ahead, drained by the workers."""
        mean = self._mean_s if self._mean_s is not None else 1.0
        return max(1, min(120, math.ceil(mean * (self.waiting + 1) / self.workers)))

    async def run(self, fn: Callable[[], T]) -> T:
        if self.admitted >= self.workers + self.queue_limit:
            raise Busy(
                f"the detector is busy ({self.running} running, {self.waiting} queued, queue limit "
                f"{self.queue_limit}); retry after the Retry-After seconds",
                self.retry_after(),
            )
        self.admitted += 1
        try:
            async with self._limiter:
                self.running += 1
                start = time.perf_counter()
                try:
                    return await anyio.to_thread.run_sync(fn)
                finally:
                    self.running -= 1
                    spent = time.perf_counter() - start
                    self._mean_s = spent if self._mean_s is None else 0.8 * self._mean_s + 0.2 * spent
        finally:
            self.admitted -= 1

    def describe(self) -> dict[str, int]:
        return {"workers": self.workers, "running": self.running, "waiting": self.waiting,
                "queue_limit": self.queue_limit}


class MetricsMiddleware:
    """Counts every response by endpoint and status and times it; unknown paths share one label."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status = {"code": 500}
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.requests.labels(endpoint=endpoint, status=str(status["code"])).inc()
            self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - start)


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, str | None]:
    """The bytes and file name of the multipart field ``file``, reading at most ~``max_bytes``."""
    how = "send the image as multipart/form-data in the field 'file', e.g. curl -F file=@picture.png"
    if "multipart/form-data" not in request.headers.get("content-type", "").lower():
        raise FaceDetectError(f"expected a multipart/form-data upload; {how}", status_code=415)
    limit = max_bytes + MULTIPART_OVERHEAD
    too_large = ImageTooLarge(f"the upload is larger than the limit of {max_bytes / 1e6:.1f} MB")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large  # refused before a byte of the body is read

    async def limited() -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                raise too_large
            yield chunk

    try:
        form = await MultiPartParser(request.headers, limited(), max_files=1, max_fields=16).parse()
    except MultiPartException as exc:
        # Starlette says only "Invalid multipart data." for every parser failure; the parser's own reason
        # (e.g. "Maximum header size exceeded" for a file name of several KB) is what the sender can act on.
        why = exc.message.rstrip(".")
        if exc.__cause__ is not None and str(exc.__cause__):
            why += f": {exc.__cause__}"
        raise FaceDetectError(f"the multipart body cannot be parsed ({why}); {how}") from None
    try:
        upload = form.get("file")
        if upload is None:
            sent = ", ".join(repr(k) for k in form.keys()) or "none"
            raise FaceDetectError(f"no field 'file' in the upload (fields sent: {sent}); {how}")
        if not isinstance(upload, UploadFile):
            raise FaceDetectError(f"the field 'file' holds text, not a file; {how}")
        data = await upload.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise too_large
        return data, upload.filename
    finally:
        await form.close()


def create_app(settings: FaceDetectSettings | None = None, *, service: DetectionService | None = None) -> FastAPI:
    """Build the API. ``service`` defaults to one built from ``settings`` (i.e. the environment)."""
    settings = settings or FaceDetectSettings()
    service = service or DetectionService.from_settings(settings)
    gate = AdmissionGate(settings.workers, settings.queue)
    metrics = Metrics(model_loaded=lambda: float(service.loaded), queue_depth=lambda: float(gate.waiting))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if settings.preload:
            await anyio.to_thread.run_sync(service.load)
        yield
        await anyio.to_thread.run_sync(service.unload)

    app = FastAPI(
        title="facedetect",
        version=__version__,
        description="Anime face detection. POST an image to /detect as multipart field `file`.",
        lifespan=lifespan,
    )
    app.state.settings, app.state.service, app.state.gate, app.state.metrics = settings, service, gate, metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    _install_error_handlers(app)

    def health() -> dict[str, Any]:
        return {**service.health(), "version": __version__, "queue": gate.describe()}

    @app.get("/", include_in_schema=False)
    async def index() -> dict[str, Any]:
        return {"service": "facedetect", "version": __version__, "endpoints": list(ENDPOINTS[1:]), "docs": "/docs"}

    @app.post(
        "/detect",
        openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary"}}}}}}},
    )
    async def detect(
        request: Request,
        min_confidence: Annotated[float | None, Query(ge=0.0, le=1.0, allow_inf_nan=False,
                                                      description="drop faces below this confidence")] = None,
        max_faces: Annotated[int | None, Query(ge=1, le=10_000, description="keep the N most confident")] = None,
        annotate: Annotated[bool, Query(description="draw and save the annotated image")] = True,
    ) -> dict[str, Any]:
        data, filename = await read_upload(request, settings.max_bytes)
        outcome = await gate.run(lambda: service.detect_bytes(
            data, filename, min_confidence=min_confidence, max_faces=max_faces, annotate=annotate))
        metrics.faces.inc(outcome.result.count)
        return outcome.to_json()

    @app.get("/health")
    async def get_health() -> dict[str, Any]:
        return health()

    @app.post("/load")
    async def load() -> dict[str, Any]:
        seconds = await anyio.to_thread.run_sync(service.load)
        return {**health(), "elapsed_ms": round(seconds * 1000, 1)}

    @app.post("/unload")
    async def unload() -> dict[str, Any]:
        before = service.detector.vram_mib()
        seconds = await anyio.to_thread.run_sync(service.unload)
        released = max(0.0, before - service.detector.vram_mib())
        return {**health(), "released_mib": round(released, 1), "elapsed_ms": round(seconds * 1000, 1)}

    @app.get("/metrics", include_in_schema=False)
    async def get_metrics() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Every failure is JSON ``{"detail": "..."}`` a person can act on; 4xx for anything the client sent."""

    async def on_facedetect_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, FaceDetectError)
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Busy) else None
        if isinstance(exc, Busy):
            app.state.metrics.rejected.inc()
        return JSONResponse({"detail": exc.message}, status_code=exc.status_code, headers=headers)

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = []
        for err in exc.errors():
            where = " ".join(str(p) for p in err.get("loc", ()))
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return JSONResponse({"detail": "invalid request: " + "; ".join(problems)}, status_code=422)

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error (a bug): %s", exc)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); this is a bug, please report it"},
                            status_code=500)

    handlers: dict[type[Exception], Callable[[Request, Exception], Awaitable[JSONResponse]]] = {
        FaceDetectError: on_facedetect_error,
        RequestValidationError: on_validation_error,
        Exception: on_unexpected,
    }
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, handler)
