"""The panel's JSON API: ``POST /profile-picture/change`` (change the avatar now) and everything around it.

State-changing routes depend on ``write_access`` (the token, see auth.py). A change runs in the shared
``ChangeRunner``'s task, so a client that disconnects — or never waits (the default answer is 202 with
the change id) — never cancels it; ``?wait=true`` answers with the finished record instead.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from facedetect.contract import errors, multipart_file_body
from facedetect.errors import FaceDetectError
from mikubot.history import HistoryError
from mikubot.outputs import candidate_picture_path
from mikubot.record import ChangeRecord
from mikubot.runner import ChangeBusy, RunningChange
from mikubot.sources import SourceError
from mikubot.storage import StorageError
from mikubot.web import upload as uploads
from mikubot.web.auth import client_of
from mikubot.web.jsonsafe import is_text
from mikubot.web.sse import ClaimedStream, change_events, last_event_id
from mikubot.web.state import Panel, panel
from mikubot.web.status import gather
from mikubot.web.views import annotated_path, change_view, inside

router = APIRouter(responses=errors(400, 413, 422, 503))  # any route: a foreign Host, a big body, a bad value
WRITE = errors(401, 403, 409, 415, 429, 507)  # and a state-changing one: the token, CSRF, a running change, a full disk
WAITED = {200: {"model": ChangeRecord, "description": "the finished change record (with ?wait=true)"}}
SQLITE_MAX_INT = 2**63 - 1  # ids and offsets past SQLite's integer range are answered 422, never 500
ChangeId = Annotated[int, PathParam(ge=1, le=SQLITE_MAX_INT, description="a change's id (see the history)")]


def write_access(request: Request) -> str:
    """Dependency of every state-changing route: the bearer token or a logged-in session + CSRF token."""
    return panel(request).auth.require_write(request)


class ChangeRequest(BaseModel):
    """Optional JSON body of ``POST /profile-picture/change``; the same names work as query parameters."""

    model_config = ConfigDict(extra="forbid")
    source: str | None = Field(None, max_length=2048, description="danbooru | safebooru | gelbooru | local:DIR | url:URL | file:PATH")
    candidates: int | None = Field(None, ge=1, le=20, description="K candidates to fetch and verify")
    dry_run: bool | None = Field(None, description="true: write the avatar, never call Discord")


async def busy_response(p: Panel, exc: ChangeBusy) -> JSONResponse:
    p.metrics.busy.inc()
    running_id = exc.running_id
    cur = p.runner.current
    if running_id is None and cur is not None:
        # Refused in the instant between the running change's start and its id: wait for the id, so
        # every 409 says which change to follow.
        waiter = asyncio.ensure_future(cur.id_known.wait())
        await asyncio.wait({waiter, cur.task}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        running_id = cur.change_id
    return JSONResponse(status_code=409, headers={"Retry-After": "5"}, content={
        "detail": str(ChangeBusy(running_id, exc.kind)), "running_change_id": running_id, "kind": exc.kind,
        "events_url": f"/profile-picture/changes/{running_id}/events" if running_id is not None else None,
    })


async def started(p: Panel, handle: RunningChange, wait: bool) -> JSONResponse:
    if wait:
        record = await handle.result()
        if record.insufficient_storage:  # no room to write: what a disk-full 507 says, with the record
            return JSONResponse(status_code=507, content={
                "detail": f"change #{record.id} failed: the data directory {p.settings.data_dir} is out of space: "
                          f"{record.error}", "change_id": record.id, "record": record.to_json()})
        return JSONResponse(status_code=200, content=record.to_json())
    cid = handle.change_id
    return JSONResponse(status_code=202, content={
        "change_id": cid, "kind": handle.kind, "status": "running",
        "url": f"/profile-picture/changes/{cid}", "events_url": f"/profile-picture/changes/{cid}/events",
    })


@router.post("/profile-picture/change", status_code=202, tags=["profile picture"],
             responses={**WAITED, **WRITE})
async def change(
    request: Request,
    body: ChangeRequest | None = Body(None),
    source: str | None = Query(None, max_length=2048),
    candidates: int | None = Query(None, ge=1, le=20),
    dry_run: bool | None = Query(None),
    wait: bool = Query(False, description="answer when the change has finished, with its record"),
    _: str = Depends(write_access),
) -> JSONResponse:
    """Change the avatar now (``curl -X POST localhost:3939/profile-picture/change``)."""
    p = panel(request)
    b = body or ChangeRequest()
    spec = (b.source if b.source is not None else source) or None
    k = b.candidates if b.candidates is not None else candidates
    dry = b.dry_run if b.dry_run is not None else dry_run
    if spec is not None:
        spec = spec.strip() or None
    if spec is not None and not is_text(spec):  # a NUL or a lone surrogate can name no file or URL
        raise HTTPException(422, "the source must be plain text: it holds a NUL or a lone UTF-16 surrogate")
    if spec is not None:
        try:
            p.runner.pipeline.services.make_source(spec)
        except SourceError as exc:
            raise HTTPException(400, f"bad source: {exc.message}") from exc
    try:
        handle = await p.runner.start_change(source=spec, candidates=k, dry_run=dry)
    except ChangeBusy as exc:
        return await busy_response(p, exc)
    return await started(p, handle, wait)


@router.get("/profile-picture/changes/{change_id}", tags=["profile picture"], responses=errors(404))
async def get_change(request: Request, change_id: ChangeId) -> dict[str, Any]:
    """One change: its history row (status ``running`` until it ends), its events so far, file links."""
    p = panel(request)
    row = await asyncio.to_thread(p.history.get, change_id)
    if row is None:
        raise HTTPException(404, f"no change with id {change_id}")
    handle = p.runner.get(change_id)
    if row.status == "running" and handle is not None:
        row.events = list(handle.events)
    return change_view(row, p.settings.avatars_dir)


@router.get("/profile-picture/changes/{change_id}/events", tags=["profile picture"],
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "progress events, then `end`"},
                       **errors(401, 404, 429)})
async def events(request: Request, change_id: ChangeId) -> StreamingResponse:
    """Server-Sent Events: the change's events so far, then live ones; ``event: end`` closes the stream.
    Needs a login or the token; at most ``MIKU_WEB_MAX_STREAMS_PER_CLIENT`` per client (429) and
    ``MIKU_WEB_MAX_STREAMS`` in all (503)."""
    p = panel(request)
    p.auth.require_viewer(request)
    release = p.streams.claim(client_of(request))
    try:
        # A change this process runs (or ran lately) exists without asking the history, which a full disk
        # may make unreadable: its stream then comes from memory.
        if p.runner.get(change_id) is None and await asyncio.to_thread(p.history.get, change_id) is None:
            raise HTTPException(404, f"no change with id {change_id}")
        last_seen = last_event_id(request.headers.get("last-event-id"))
        return ClaimedStream(change_events(p.runner, p.watch, change_id, last_seen), release,
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    except BaseException:
        release()
        raise


@router.get("/profile-picture/history", tags=["profile picture"])
async def history(request: Request, limit: int = Query(20, ge=1, le=200), offset: int = Query(0, ge=0, le=SQLITE_MAX_INT),
                  profile: str | None = Query(None, pattern=r"^(global|[1-9][0-9]{0,18})$",
                                              description="only the global profile's changes (`global`) or one "
                                              "server's (its id); unset: all")) -> dict[str, Any]:
    """The latest changes, newest first (without their event logs)."""
    p = panel(request)
    if profile is not None and profile != "global" and int(profile) > SQLITE_MAX_INT:
        raise HTTPException(422, f"{profile} is not a Discord server id")
    rows = await asyncio.to_thread(p.history.list, limit, offset, scope="all" if profile is None else None if profile == "global" else int(profile))
    return {"changes": [change_view(r, p.settings.avatars_dir, with_events=False) for r in rows],
            "limit": limit, "offset": offset}


@router.post("/profile-picture/restore/{change_id}", status_code=202, tags=["profile picture"],
             responses={**WAITED, **WRITE, **errors(404)})
async def restore(request: Request, change_id: ChangeId, wait: bool = Query(False), dry_run: bool | None = Query(None),
                  _: str = Depends(write_access)) -> JSONResponse:
    """Apply an earlier change's avatar again (recorded as a new change)."""
    p = panel(request)
    if await asyncio.to_thread(p.history.get, change_id) is None:
        raise HTTPException(404, f"no change with id {change_id}")
    try:
        handle = await p.runner.start_restore(change_id, dry_run=dry_run)
    except ChangeBusy as exc:
        return await busy_response(p, exc)
    except HistoryError as exc:
        raise HTTPException(422, str(exc)) from exc
    return await started(p, handle, wait)


@router.post("/profile-picture/upload", tags=["profile picture"], responses={**WRITE, **errors(404)},
             openapi_extra=multipart_file_body("the image (JPEG, PNG, WebP, GIF or BMP) in the field `file`"))
async def upload(request: Request, _: str = Depends(write_access)) -> dict[str, Any]:
    """A custom image (multipart field ``file``): stored, face-detected and cropped; answers with the crop
    box, the faces and the preview PNG's URL. ``POST .../upload/{upload_id}/apply`` then makes it the avatar."""
    p = panel(request)
    pipeline = p.runner.pipeline
    try:
        async with p.previews.admit():  # 503 + Retry-After past the queue, before the upload is read
            data, name = await uploads.read_upload(request, uploads.limits(pipeline).max_bytes)
            async with p.previews.run(data):
                preview = await uploads.make_preview(pipeline, data, name)
    except (HTTPException, FaceDetectError, StorageError) as exc:  # a StorageError is answered 507/503 by the app
        p.metrics.uploads.labels(str(exc.status_code)).inc()
        if isinstance(exc, FaceDetectError):
            raise uploads.bad_image(exc) from exc
        raise
    p.metrics.uploads.labels("ok").inc()
    return preview.to_json()


@router.get("/profile-picture/upload/{upload_id}/preview.png", tags=["profile picture"], response_class=FileResponse, responses=errors(404))
async def upload_preview(request: Request, upload_id: str) -> FileResponse:
    return _upload_file(request, upload_id, "preview.png", "image/png")


@router.get("/profile-picture/upload/{upload_id}/annotated.jpg", tags=["profile picture"], response_class=FileResponse, responses=errors(404))
async def upload_annotated(request: Request, upload_id: str) -> FileResponse:
    return _upload_file(request, upload_id, "annotated.jpg", "image/jpeg")


def _upload_file(request: Request, upload_id: str, suffix: str, media: str) -> FileResponse:
    pipeline = panel(request).runner.pipeline
    if not uploads.UPLOAD_ID.match(upload_id):
        raise HTTPException(404, "no such upload")
    folder = uploads.uploads_dir(pipeline)
    path = folder / upload_id / suffix
    if not inside(path, folder):
        raise HTTPException(404, "no such upload")
    return FileResponse(path, media_type=media, headers={"Cache-Control": "no-cache"})


@router.post("/profile-picture/upload/{upload_id}/apply", status_code=202, tags=["profile picture"],
             responses={**WAITED, **WRITE, **errors(404)})
async def upload_apply(request: Request, upload_id: str, wait: bool = Query(False), dry_run: bool | None = Query(None),
                       _: str = Depends(write_access)) -> JSONResponse:
    """Make an uploaded image the avatar: an ordinary change with the ``file:`` source."""
    p = panel(request)
    path = uploads.stored_upload(p.runner.pipeline, upload_id)
    try:
        handle = await p.runner.start_change(source=f"file:{path}", candidates=1, dry_run=dry_run)
    except ChangeBusy as exc:
        return await busy_response(p, exc)
    return await started(p, handle, wait)


@router.get("/avatars/{change_id}.png", tags=["files"], response_class=FileResponse, responses=errors(404))
async def avatar(request: Request, change_id: ChangeId) -> FileResponse:
    """The avatar a change produced (only files inside the data directory's avatars folder are served)."""
    return await change_png(request, change_id, "avatar")


@router.get("/avatars/{change_id}/banner.png", tags=["files"], response_class=FileResponse, responses=errors(404))
async def banner(request: Request, change_id: ChangeId) -> FileResponse:
    """The profile banner a change made or restored (MIKU_BANNER; only files inside the data directory's
    avatars folder are served)."""
    return await change_png(request, change_id, "banner")


async def change_png(request: Request, change_id: int, kind: str) -> FileResponse:
    """The change's ``{kind}_path`` PNG, or 404 when it has none or the file is outside the avatars folder."""
    p = panel(request)
    row = await asyncio.to_thread(p.history.get, change_id)
    stored = None if row is None else {"avatar": row.avatar_path, "banner": row.banner_path}[kind]
    if not stored:
        raise HTTPException(404, f"change {change_id} has no {kind}")
    path = Path(stored)
    if not inside(path, p.settings.avatars_dir):
        raise HTTPException(404, f"the {kind} of change {change_id} is not in the data directory")
    return FileResponse(path, media_type="image/png")


@router.get("/avatars/{change_id}/annotated.jpg", tags=["files"], response_class=FileResponse, responses=errors(404))
async def annotated(request: Request, change_id: ChangeId) -> FileResponse:
    """The change's source image with the faces, the crop square and the round avatar area drawn on it."""
    p = panel(request)
    row = await asyncio.to_thread(p.history.get, change_id)
    if row is None:
        raise HTTPException(404, f"no change with id {change_id}")
    path = annotated_path(p.settings.avatars_dir, row)
    if not inside(path, p.settings.avatars_dir):
        raise HTTPException(404, f"change {change_id} has no annotated image")
    return FileResponse(path, media_type="image/jpeg")


@router.get("/avatars/{change_id}/candidates/{index}.jpg", tags=["files"], response_class=FileResponse, responses=errors(404))
async def candidate_picture(request: Request, change_id: ChangeId, index: int = PathParam(ge=0, le=99)) -> FileResponse:
    """A thumbnail of candidate ``index`` of a change (its place in the record's ``candidates``), for
    drawing its faces on; 404 for a candidate that was never downloaded."""
    p = panel(request)
    if await asyncio.to_thread(p.history.get, change_id) is None:
        raise HTTPException(404, f"no change with id {change_id}")
    path = candidate_picture_path(p.settings.avatars_dir, change_id, index)
    if not path.is_file():
        raise HTTPException(404, f"change {change_id} has no picture of candidate {index}")
    return FileResponse(path, media_type="image/jpeg")


@router.get("/health", tags=["service"])
async def health(request: Request) -> dict[str, Any]:
    p = panel(request)
    cur = p.runner.current
    return {"status": "ok", "change_running": cur is not None, "running_change_id": cur.change_id if cur else None,
            "dry_run": p.settings.effective_dry_run}


@router.get("/metrics", tags=["service"], response_class=Response)
async def metrics(request: Request) -> Response:
    p = panel(request)
    p.metrics.running.set(1 if p.runner.busy else 0)
    return Response(p.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/status", tags=["service"])
async def status(request: Request) -> dict[str, Any]:
    """Detector, llama-swap and its loaded models, GPU memory, the running change."""
    return await gather(panel(request).runner)
