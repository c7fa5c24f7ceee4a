"""A custom image from the panel: bounded intake, the crop preview, then "apply" as an ordinary change.

The upload is read by the detector's streaming multipart reader (``facedetect.multipart``), with a hard
byte limit *while it streams in* (a missing or lying Content-Length cannot make the server buffer more)
and never buffered whole to be parsed again, decoded by the detector's own ``load_image`` (the same 400/413/415
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

from facedetect import formats
from facedetect.annotate import jpeg_ready
from facedetect.errors import FaceDetectError
from facedetect.imageio import Limits, load_image
from facedetect.multipart import read_file_field
from mikubot.crop import CropError, avatar_png
from mikubot.outputs import annotated_source, atomic_write
from mikubot.pipeline import AvatarPipeline, NoRoomForDetector, Picture, frame_best

UPLOAD_ID = re.compile(r"^[0-9a-f]{64}$")
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
    """The ``file`` field of a multipart upload, read by the detector's own streaming reader (the byte cap
    applies as the body arrives). ``FaceDetectError`` (400/413/415) for a bad upload."""
    data, filename = await read_file_field(request, max_bytes)
    return data, Path(filename or "upload").name


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
        async with pipeline.face_finder(service, note) as finder:
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
    await asyncio.to_thread(lambda: jpeg_ready(annotated).save(folder / "annotated.jpg", "JPEG", quality=85))
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
