"""The detector's HTTP API (a fixed contract that clients rely on): POST /detect, GET /health, GET /ready
(200 only while the model is loaded: llama-swap's checkEndpoint), POST /load, POST /unload, GET /metrics.

A request to ``/detect`` first takes a place at the admission gate (N workers + a bounded queue); past
it the API answers 503 with ``Retry-After`` *before reading the upload*, so bytes in flight stay bounded.
The upload is then read by ``facedetect.multipart`` with the byte cap applied while it streams in.

``/load`` and ``/unload`` change what the service holds in VRAM: with ``FACEDETECT_TOKEN`` set they need
``Authorization: Bearer <token>``. Every POST that a browser marks as cross-site (an ``Origin`` naming
another host, or ``Sec-Fetch-Site: cross-site``) is refused, and a request naming a host other than a
loopback one or ``FACEDETECT_ALLOWED_HOSTS`` gets 400 (a DNS-rebinding page sends its own name with a
matching ``Origin``), so no web page can unload the model.
"""

from __future__ import annotations

import hmac
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facedetect import __version__
from facedetect.contract import errors, multipart_file_body
from facedetect.docs import install_local_docs
from facedetect.errors import FaceDetectError
from facedetect.metrics import Metrics
from facedetect.multipart import read_file_field
from facedetect.service import DetectionService
from facedetect.settings import FaceDetectSettings
from httpserve import HostGuard

log = logging.getLogger("facedetect.api")
T = TypeVar("T")
ENDPOINTS = ("/", "/detect", "/health", "/ready", "/load", "/unload", "/metrics")


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

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold a place (running or queued) or raise ``Busy`` at once. Taken *before* an upload is read,
        so a refused request costs no memory, and the bytes in flight are at most (workers + queue)
        uploads."""
        if self.admitted >= self.workers + self.queue_limit:
            raise Busy(
                f"the detector is busy ({self.running} running, {self.waiting} queued, queue limit "
                f"{self.queue_limit}); retry after the Retry-After seconds",
                self.retry_after(),
            )
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    @asynccontextmanager
    async def working(self) -> AsyncIterator[None]:
        """Hold a worker (inside ``admit()``), waiting for one to be free; the time held feeds ``retry_after``."""
        async with self._limiter:
            self.running += 1
            start = time.perf_counter()
            try:
                yield
            finally:
                self.running -= 1
                spent = time.perf_counter() - start
                self._mean_s = spent if self._mean_s is None else 0.8 * self._mean_s + 0.2 * spent

    async def run_admitted(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a worker thread once a worker is free (inside ``admit()``)."""
        async with self.working():
            return await anyio.to_thread.run_sync(fn)

    async def run(self, fn: Callable[[], T]) -> T:
        async with self.admit():
            return await self.run_admitted(fn)

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


def refuse_cross_site(request: Request) -> None:
    """403 for a request a web page of another site made (a "simple" cross-site POST needs no CORS)."""
    if request.headers.get("sec-fetch-site", "").lower() == "cross-site":
        raise FaceDetectError("cross-site request refused (Sec-Fetch-Site: cross-site)", status_code=403)
    origin = request.headers.get("origin")
    if origin is None:
        return  # curl, scripts, vramctl: no browser, no forgery
    host = request.headers.get("host", "").lower()
    if origin == "null" or urlsplit(origin).netloc.lower() != host:
        raise FaceDetectError(f"cross-site request refused: Origin {origin!r} is not this service ({host!r})",
                              status_code=403)


def bearer_guard(settings: FaceDetectSettings) -> Callable[[Request], None]:
    """The dependency of ``/load`` and ``/unload``: cross-site refused; the token when one is set."""
    token = settings.token.get_secret_value().strip() if settings.token is not None else ""

    def check(request: Request) -> None:
        refuse_cross_site(request)
        if not token:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise FaceDetectError("this endpoint needs Authorization: Bearer <FACEDETECT_TOKEN>", status_code=401)

    return check


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
        docs_url=None,  # served from local files below, never from a CDN
        redoc_url=None,
    )
    install_local_docs(app, "facedetect")
    app.state.settings, app.state.service, app.state.gate, app.state.metrics = settings, service, gate, metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    # Outermost: a DNS-rebinding page reaches the API under its own host name; it gets 400 before any route.
    app.add_middleware(HostGuard, allowed=settings.allowed_hosts, setting="FACEDETECT_ALLOWED_HOSTS")
    _install_error_handlers(app)

    def health() -> dict[str, Any]:
        return {**service.health(), "version": __version__, "queue": gate.describe()}

    @app.get("/", include_in_schema=False)
    async def index() -> dict[str, Any]:
        return {"service": "facedetect", "version": __version__, "endpoints": list(ENDPOINTS[1:]), "docs": "/docs"}

    @app.post("/detect", responses=errors(400, 403, 413, 415, 422, 503),
              openapi_extra=multipart_file_body("the image: JPEG, PNG, WebP, GIF or BMP"))
    async def detect(
        request: Request,
        _: Annotated[None, Depends(refuse_cross_site)],
        min_confidence: Annotated[float | None, Query(ge=0.0, le=1.0, allow_inf_nan=False,
                                                      description="drop faces below this confidence")] = None,
        max_faces: Annotated[int | None, Query(ge=1, le=10_000, description="keep the N most confident")] = None,
        annotate: Annotated[bool, Query(description="draw and save the annotated image")] = True,
    ) -> dict[str, Any]:
        async with gate.admit():  # a place first, then the bytes: a busy detector reads no upload
            data, filename = await read_file_field(request, settings.max_bytes)
            outcome = await gate.run_admitted(lambda: service.detect_bytes(
                data, filename, min_confidence=min_confidence, max_faces=max_faces, annotate=annotate))
        metrics.faces.inc(outcome.result.count)
        return outcome.to_json()

    needs_token = Depends(bearer_guard(settings))

    @app.get("/health")
    async def get_health() -> dict[str, Any]:
        return health()

    @app.get("/ready", responses={503: {"description": "the model is not loaded"}})
    async def get_ready() -> Response:
        # 200 only while the model is loaded: llama-swap's `checkEndpoint` for the detector as a llama-swap
        # model (docs/vramctl.md), which must not route a request before the hold command has loaded it.
        body = health()
        return JSONResponse(body, status_code=200 if body.get("detector_loaded") else 503)

    @app.post("/load", dependencies=[needs_token], responses=errors(401, 403, 503))
    async def load() -> dict[str, Any]:
        seconds = await anyio.to_thread.run_sync(service.load)
        return {**health(), "elapsed_ms": round(seconds * 1000, 1)}

    @app.post("/unload", dependencies=[needs_token], responses=errors(401, 403, 503))
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
