"""``/docs`` served from this machine: Swagger UI's files come from the ``fastapi-offline`` package (which
ships a current Swagger UI, one that reads OpenAPI 3.1 as FastAPI writes it), not a CDN, so the page needs no third-party script and works with a strict ``Content-Security-Policy``
(no inline script either: the start-up code is a file of its own). Both the detector and the panel use
this. Without that package ``/docs`` answers 404 saying so; ``/openapi.json`` is always there.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"
INIT_JS = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis], layout: "BaseLayout"});
});
"""


def swagger_ui_dir() -> Path | None:
    try:
        import fastapi_offline  # only its static files are used: the apps stay plain FastAPI
    except ImportError:
        return None
    path = Path(fastapi_offline.__file__).parent / "static"
    return path if (path / "swagger-ui-bundle.js").is_file() else None


def install_local_docs(app: FastAPI, title: str) -> None:
    """Add ``/docs`` (and its assets under ``/docs-assets``). Build the app with ``docs_url=None``."""
    folder = swagger_ui_dir()
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} — API</title>
<link rel="stylesheet" href="{ASSETS}/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="{ASSETS}/swagger-ui-bundle.js"></script>
<script src="{ASSETS}/init.js"></script></body></html>
"""

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        if folder is None:
            return PlainTextResponse("the API docs page needs the fastapi-offline package; "
                                     "the OpenAPI document is at /openapi.json", status_code=404)
        return HTMLResponse(page)

    @app.get(f"{ASSETS}/init.js", include_in_schema=False)
    async def init_js() -> Response:
        return Response(INIT_JS, media_type="text/javascript")

    if folder is not None:
        app.mount(ASSETS, StaticFiles(directory=folder), name="docs-assets")
