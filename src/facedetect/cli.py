"""``facedetect``: detect faces in files, serve the API, or open the UI.

Examples::

    facedetect detect "art/eileen happy.png" concert1.png --annotate out/
    facedetect detect *.png --json --min-confidence 0.5
    facedetect serve --port 6078
    facedetect ui --port 7860
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from facedetect.errors import FaceDetectError
from facedetect.outputs import OutputStore
from facedetect.service import DetectionOutcome, DetectionService
from facedetect.settings import FaceDetectSettings
from httpserve import is_loopback, uvicorn_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Anime face detection: CLI, HTTP API and UI.")
err = Console(stderr=True, soft_wrap=True)


class Backend(str, Enum):
    animeface = "animeface"
    yolo_onnx = "yolo-onnx"
    cascade = "cascade"
    hysts = "hysts"


BackendOpt = Annotated[Backend | None, typer.Option("--backend", help="detector (default: $FACEDETECT_BACKEND or animeface)")]
ModelOpt = Annotated[Path | None, typer.Option("--model", help="weights file for yolo-onnx (.onnx) or cascade (.xml); "
                                                             "for hysts a directory of its checkpoints")]


def _settings(**overrides: Any) -> FaceDetectSettings:
    """Environment settings with the command-line options that were given laid over them."""
    given = {k: (v.value if isinstance(v, Enum) else v) for k, v in overrides.items() if v is not None}
    try:
        return FaceDetectSettings(**given)
    except ValueError as exc:
        _fail(f"invalid setting: {exc}")


def _fail(message: str, code: int = 2) -> Any:
    # Messages are text, not markup: "pip install 'miku-discord[hysts]'" keeps its brackets.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


@app.command()
def detect(
    images: Annotated[list[Path], typer.Argument(help="image files (JPEG, PNG, WebP, GIF, BMP)", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list of {file, detections, count}")] = False,
    annotate: Annotated[Path | None, typer.Option("--annotate", metavar="DIR",
                                                  help="write <stem>_annotated.jpg and <stem>_results.json here")] = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    min_confidence: Annotated[float | None, typer.Option("--min-confidence", min=0.0, max=1.0,
                                                         help="drop faces below this confidence")] = None,
    max_faces: Annotated[int | None, typer.Option("--max-faces", min=1, help="keep the N most confident")] = None,
) -> None:
    """Detect faces in IMAGES. A file that cannot be read is reported and the exit status is 1."""
    settings = _settings(backend=backend, model_path=model, min_confidence=min_confidence)
    store = OutputStore(annotate, unique=False) if annotate is not None else None
    try:
        service = DetectionService.from_settings(settings, outputs=store)
        service.load()
    except FaceDetectError as exc:
        _fail(exc.message)

    rows: list[dict[str, Any]] = []
    failed = 0
    for path in images:
        try:
            data = path.read_bytes()
            outcome = service.detect_bytes(data, path.name, max_faces=max_faces, annotate=store is not None,
                                           save=store is not None)
        except (OSError, FaceDetectError) as exc:
            failed += 1
            message = exc.message if isinstance(exc, FaceDetectError) else (exc.strerror or str(exc))
            err.print(f"[bold red]error:[/] {escape(f'{path}: {message}')}", highlight=False)
            rows.append({"file": str(path), "detections": [], "count": 0, "error": message})
            continue
        rows.append(_row(path, outcome))

    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        _print_table(rows)
        if store is not None:
            for row in rows:
                if "error" not in row:
                    typer.echo(f"{row['file']}: annotated image {row['annotated_image']}, JSON {row['json_file']}")
            written = sum("error" not in r for r in rows)
            typer.echo(f"Wrote {written} annotated image(s) and results JSON to {annotate.resolve()}")
    if failed:
        raise typer.Exit(1)


def _row(path: Path, outcome: DetectionOutcome) -> dict[str, Any]:
    body = outcome.to_json()
    row: dict[str, Any] = {"file": str(path), "detections": body["detections"], "count": body["count"]}
    if outcome.paths is not None:
        row["annotated_image"] = body["annotated_image"]
        row["json_file"] = body["json_file"]
    row["timings_ms"] = body["timings_ms"]
    return row


def _print_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title="Faces found", show_lines=False)
    table.add_column("file", overflow="fold")
    table.add_column("faces", justify="right")
    table.add_column("confidence", overflow="fold")
    table.add_column("boxes [x1, y1, x2, y2]", overflow="fold")
    table.add_column("ms", justify="right")
    for row in rows:
        if "error" in row:
            table.add_row(Path(row["file"]).name, "-", "", f"[red]{row['error']}[/]", "")
            continue
        dets = row["detections"]
        table.add_row(
            Path(row["file"]).name,
            str(row["count"]),
            " ".join(f"{d['confidence']:.2f}" for d in dets),
            " ".join("[" + ", ".join(f"{v:.0f}" for v in d["bbox"]) + "]" for d in dets),
            f"{row['timings_ms'].get('total', 0):.0f}",
        )
    Console(soft_wrap=False).print(table)


def bind_refusal(settings: FaceDetectSettings, insecure_no_token: bool) -> str | None:
    """Why ``serve`` must not listen where it was asked, or None: anything but loopback needs
    ``FACEDETECT_TOKEN``, since /load and /unload would otherwise be open to the network."""
    token = settings.token.get_secret_value().strip() if settings.token is not None else ""
    if is_loopback(settings.host) or token or insecure_no_token or settings.published_on_loopback:
        return None
    return (f"refusing to listen on {settings.host}: the detector's /load and /unload would be reachable from the "
            f"network without a token. Set FACEDETECT_TOKEN to a long random secret (e.g. `python -c 'import "
            f"secrets; print(secrets.token_urlsafe(32))'`; vramctl sends the same variable), or bind 127.0.0.1, "
            f"or pass --insecure-no-token (FACEDETECT_PUBLISHED_ON_LOOPBACK=true where only the host's loopback and "
            f"a private container network reach the port).")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (default: $FACEDETECT_HOST or 127.0.0.1; "
                                                             "the container sets 0.0.0.0); anything but loopback "
                                                             "needs FACEDETECT_TOKEN")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: $FACEDETECT_PORT or 6078)")] = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    workers: Annotated[int | None, typer.Option(help="detections at once (default 1)")] = None,
    queue: Annotated[int | None, typer.Option(help="detections allowed to wait before 503 (default 8)")] = None,
    insecure_no_token: Annotated[bool, typer.Option("--insecure-no-token",
                                                    help="listen beyond loopback without FACEDETECT_TOKEN "
                                                         "(anyone who reaches the port can /unload)")] = False,
) -> None:
    """Run the HTTP API (POST /detect, GET /health, GET /ready, POST /load, POST /unload, GET /metrics)."""
    import uvicorn

    from facedetect.api import create_app

    settings = _settings(host=host, port=port, backend=backend, model_path=model, workers=workers, queue=queue)
    refusal = bind_refusal(settings, insecure_no_token)
    if refusal is not None:
        _fail(refusal)
    if insecure_no_token and not is_loopback(settings.host):
        err.print(f"[yellow]warning:[/] listening on {settings.host} without FACEDETECT_TOKEN: anyone who reaches "
                  "this port can load and unload the model", highlight=False)
    try:
        application = create_app(settings)
        if settings.preload:  # here rather than in the app's start-up, so a model that cannot load is a message
            application.state.service.load()
    except FaceDetectError as exc:
        _fail(exc.message)
    server = uvicorn.Server(uvicorn_config(application, host=settings.host, port=settings.port,
                                           limits=settings.serve_limits(), log_level="info"))
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the captured SIGINT once it has shut down
        return
    if not server.started:  # the port was taken or the socket could not be opened: uvicorn logged why
        raise typer.Exit(1)


@app.command()
def ui(
    host: Annotated[str | None, typer.Option(help="bind address (default: $FACEDETECT_UI_HOST or 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: $FACEDETECT_UI_PORT or 7860)")] = None,
    api_url: Annotated[str | None, typer.Option("--api-url", help="detect through this API instead of in-process "
                                                 "(default: $FACEDETECT_API_URL)")] = None,
) -> None:
    """Open the Gradio UI: upload an image, see the annotated faces and the JSON."""
    import uvicorn

    try:
        from facedetect.ui import ui_app
    except ImportError as exc:
        _fail(f"the UI needs Gradio ({exc}); install with: pip install 'miku-discord[ui]'")
    settings = _settings(ui_host=host, ui_port=port, api_url=api_url)
    server = uvicorn.Server(uvicorn_config(ui_app(settings), host=settings.ui_host, port=settings.ui_port,
                                           limits=settings.serve_limits(), log_level="warning"))
    shown = f"[{settings.ui_host}]" if ":" in settings.ui_host else settings.ui_host
    # Gradio is mounted, not launched: its banner (and its advice to open a public `share=True` link, which
    # this self-hosted tool never does) is not printed; where the UI is, is.
    err.print(f"facedetect UI on http://{shown}:{settings.ui_port}/ (Ctrl-C to stop)", highlight=False)
    try:
        server.run()
    except KeyboardInterrupt:
        return
    if not server.started:
        raise typer.Exit(1)


def main() -> None:
    app(prog_name="facedetect")


if __name__ == "__main__":
    sys.exit(main())
