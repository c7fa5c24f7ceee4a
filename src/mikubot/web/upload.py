"""A custom image from the panel: bounded intake, the crop preview, then "apply" as an ordinary change.

The upload is read with a hard byte limit *while it streams in* (a missing or lying Content-Length
cannot make the server buffer more), decoded by the detector's own ``load_image`` (the same 400/413/415
answers as ``POST /detect``) and kept under ``<data dir>/uploads/<sha256>/image/<its name>`` (the name
cleaned to plain characters, so the history shows what the owner uploaded), beside ``preview.png`` and
``annotated.jpg``. The preview runs
exactly what the pipeline's detect and crop stages run — the detector reservation included, so a
preview never collides with the vision model on the GPU — and "apply" starts a normal change with the
``file:`` source, which records, uploads and can be restored like any other.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile

from facedetect import formats
from facedetect.errors import FaceDetectError
from facedetect.imageio import Limits, load_image
from mikubot.crop import CropError, avatar_png
from mikubot.detection import FaceFinder
from mikubot.outputs import annotated_source, atomic_write
from mikubot.pipeline import AvatarPipeline, NoRoomForDetector, Picture, frame_best

UPLOAD_ID = re.compile(r"^[0-9a-f]{64}$")
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and headers around the file
UNSAFE_NAME = re.compile(r"[^A-Za-z0-9 ._()-]+")


def clean_name(filename: str, ext: str) -> str:
    """A file name safe to store and show: no folders, no odd characters, the real format's extension."""
    stem = UNSAFE_NAME.sub("_", Path(filename.replace("\\", "/")).stem).strip(" ._")[:80] or "upload"
    return f"{stem}.{ext}"


def uploads_dir(pipeline: AvatarPipeline) -> Path:
    return pipeline.settings.data_dir / "uploads"


def limits(pipeline: AvatarPipeline) -> Limits:
    return Limits(max_bytes=int(pipeline.settings.max_download_mib * 1024 * 1024))


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, str]:
    """The ``file`` field of a multipart upload, refusing more than ``max_bytes`` as it arrives."""
    cap = max_bytes + FORM_OVERHEAD
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise HTTPException(413, f"the upload is {int(declared) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.1f} MB")
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise HTTPException(400, "send the image as multipart/form-data in a field named 'file'")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise HTTPException(413, f"the upload is over the limit of {max_bytes / 1e6:.1f} MB")
        chunks.append(chunk)
    body = b"".join(chunks)

    async def replay() -> dict[str, Any]:
        nonlocal body
        data, body = body, b""
        return {"type": "http.request", "body": data, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
    except HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - python-multipart's parse errors have no common base we can rely on
        raise HTTPException(400, f"cannot read the multipart form: {exc}") from None
    item = form.get("file")
    if not isinstance(item, UploadFile):
        raise HTTPException(400, "no file in the form: send the image in a field named 'file'")
    data = await item.read()
    if not data:
        raise HTTPException(400, "the uploaded file is empty")
    if len(data) > max_bytes:
        raise HTTPException(413, f"the file is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.1f} MB")
    return data, Path(item.filename or "upload").name


@dataclass
class Preview:
    upload_id: str
    path: Path
    size: tuple[int, int]
    crop: dict[str, Any]
    faces: list[dict[str, Any]]
    detected_via: str
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "upload_id": self.upload_id,
            "size": list(self.size),
            "crop_box": self.crop["box"],
            "face_box": self.crop["face"]["bbox"] if self.crop.get("face") else None,
            "crop_method": self.crop["method"],
            "crop": self.crop,
            "faces": self.faces,
            "detected_via": self.detected_via,
            "notes": self.notes,
            "preview_url": f"/profile-picture/upload/{self.upload_id}/preview.png",
            "annotated_url": f"/profile-picture/upload/{self.upload_id}/annotated.jpg",
            "apply_url": f"/profile-picture/upload/{self.upload_id}/apply",
        }


async def make_preview(pipeline: AvatarPipeline, data: bytes, filename: str = "upload") -> Preview:
    """Decode, store, detect and crop one uploaded image. ``FaceDetectError`` for a bad image (4xx)."""
    s = pipeline.settings
    image, info = await asyncio.to_thread(load_image, data, limits(pipeline))
    upload_id = hashlib.sha256(data).hexdigest()
    folder = uploads_dir(pipeline) / upload_id
    try:
        path = stored_upload(pipeline, upload_id)  # the same picture again: keep its first name
    except HTTPException:
        path = folder / "image" / clean_name(filename, formats.extension(info.format))
        await asyncio.to_thread(atomic_write, path, data)
    notes: list[str] = []

    def note(to: str, why: str) -> None:
        notes.append(why)

    async with AsyncExitStack() as room:  # the pipeline's own reservation rule and detector chain
        try:
            service, _ = await pipeline.reserve_detector(room, "upload preview", note)
        except NoRoomForDetector as exc:
            raise HTTPException(503, str(exc)) from None
        async with FaceFinder(service, pipeline.local_detector, note) as finder:
            found = await finder.find(image, data, path.name)
    if found.error:
        notes.append(found.error)
    try:  # the pipeline's own crop choice, for one picture the owner chose (confidence 1)
        framing = frame_best([Picture(image, found.detections, 1.0)], output_size=s.output_size,
                             max_upscale=s.max_upscale, hair_colours=s.hair_colours, hair_tolerance=s.hair_tolerance)
    except CropError as exc:
        raise HTTPException(422, f"cannot crop this image: {exc}") from None
    notes.extend(why for _, why in framing.refused)
    result = framing.crop
    png = avatar_png(result)
    annotated = annotated_source(image, found.detections, result.box)
    await asyncio.to_thread(atomic_write, folder / "preview.png", png)
    await asyncio.to_thread(annotated.save, folder / "annotated.jpg", "JPEG", quality=85)
    return Preview(upload_id, path, (info.width, info.height), result.to_json(),
                   [d.to_json() for d in found.detections], found.via, notes)


def stored_upload(pipeline: AvatarPipeline, upload_id: str) -> Path:
    """The stored original of an upload, or 404. The id is a hex digest: it cannot name another file."""
    if not UPLOAD_ID.match(upload_id):
        raise HTTPException(404, "no such upload")
    folder = uploads_dir(pipeline) / upload_id / "image"
    found = sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
    if found:
        return found[0]
    raise HTTPException(404, "no such upload (upload the image again)")


def bad_image(exc: FaceDetectError) -> HTTPException:
    return HTTPException(exc.status_code, exc.message)
