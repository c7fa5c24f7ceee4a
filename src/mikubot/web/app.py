"""``create_app(settings, *, runner=None)``: the :3939 panel and API as a FastAPI app.

Standing alone (``mikubot web``) the app builds its own pipeline and ``ChangeRunner`` at start-up and
closes them at shutdown. Inside the bot (``mikubot run``) the bot passes *its* runner, so slash
commands, the schedule and the panel share one "one change at a time" and one event bus; the app then
leaves the runner's lifetime to its owner.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from facedetect.docs import install_local_docs
from facedetect.errors import FaceDetectError
from mikubot.config import Settings
from mikubot.redact import scrub, strip_userinfo
from mikubot.runner import ChangeRunner
from mikubot.storage import StorageError, StorageFull
from mikubot.web import api, pages
from mikubot.web.auth import Auth, resolve_token
from mikubot.web.guard import RequestGuard
from mikubot.web.jsonsafe import json_safe
from mikubot.web.metrics import PanelMetrics
from mikubot.web.state import PanelState

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    # Scripts and styles only from our own /static: an injected <script> or inline handler cannot run.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
}


def create_app(settings: Settings, *, runner: ChangeRunner | None = None) -> FastAPI:
    token, token_source = resolve_token(settings.web_token, settings.data_dir)
    state = PanelState(settings=settings, auth=Auth(token, token_source), metrics=PanelMetrics(), runner=runner)
    if runner is not None:
        runner.add_listener(state.metrics.on_change)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state.runner is not None:
            yield
            return
        from mikubot.pipeline import AvatarPipeline  # heavy (OpenCV, detectors): only when the app starts

        pipeline = AvatarPipeline(settings)
        state.runner = ChangeRunner(pipeline)
        state.runner.add_listener(state.metrics.on_change)
        try:
            yield
        finally:
            cur = state.runner.current
            if cur is not None:
                log.warning("shutting down while change #%s runs: cancelling it (its history row is closed as failed)",
                            cur.change_id)
                cur.task.cancel()
            await pipeline.aclose()
            state.runner = None

    app = FastAPI(
        title="miku-bot panel",
        version="0.1.0",
        description="Change Miku's Discord avatar, follow a change live, browse and restore earlier ones. "
                    "State-changing requests need `Authorization: Bearer <MIKU_WEB_TOKEN>` (or a login session).",
        lifespan=lifespan,
        docs_url=None,  # /docs is served from local files (install_local_docs), under the same CSP as every page
        redoc_url=None,
    )
    install_local_docs(app, "miku-bot panel")
    app.state.panel = state
    app.add_middleware(RequestGuard, state=state)  # innermost of the middlewares: see the order note below
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=str(Path(__file__).parent / "static")), name="static")

    @app.exception_handler(FaceDetectError)
    async def face_error(request: Request, exc: FaceDetectError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content={"detail": json_safe(strip_userinfo(exc.message))})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # A message may quote what was sent or configured (a source URL): never with its credentials.
        return JSONResponse(status_code=exc.status_code, content={"detail": json_safe(scrub(exc.detail))},
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_value(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own 422 list, with what it quotes made JSON-safe (NaN, Infinity, lone surrogates).
        return JSONResponse(status_code=422, content={"detail": json_safe(scrub(jsonable_encoder(exc.errors())))})

    @app.exception_handler(StorageError)
    async def no_room(request: Request, exc: StorageError) -> JSONResponse:
        what = "is out of space" if isinstance(exc, StorageFull) else "cannot be written"
        log.warning("refused %s %s: the data directory %s %s: %s", request.method, request.url.path,
                    settings.data_dir, what, exc)
        return JSONResponse(status_code=exc.status_code, content={
            "detail": json_safe(f"the data directory {settings.data_dir} {what}: {exc}")})

    @app.middleware("http")
    async def headers_and_metrics(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        route = request.scope.get("route")
        state.metrics.requests.labels(request.method, getattr(route, "path", "(unmatched)"),
                                      str(response.status_code)).inc()
        return response

    # Added last, so outermost: the client's address and scheme come from a trusted proxy's headers before
    # the guard (attempt limits per client) and the login (Secure cookie behind https) look at them.
    if settings.web_trusted_proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.web_trusted_proxies)
    return app
