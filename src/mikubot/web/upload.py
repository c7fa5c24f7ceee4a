"""A custom image from the panel: bounded intake, the crop preview, then "apply" as an ordinary change.

The upload is read by the detector's streaming multipart reader (``facedetect.multipart``), with a hard
byte limit *while it streams in* (a missing or lying Content-Length cannot make the server buffer more)
and never buffered whole to be parsed again, decoded by the detector's own ``load_image`` (the same 400/413/415
answers as ``POST /detect``) and kept under ``<data dir>/uploads/<sha256>/image/<its name>`` (the name
cleaned to plain characters, so the history shows what the owner uploaded), beside ``preview.png`` and
``annotated.jpg``. The preview runs the pipeline's own detect and crop stage functions
(``pipeline.detect.detect_one``, ``pipeline.framing.frame``) — the detector reservation included, so a
preview never collides with the vision model on the GPU — and "apply" starts a normal change with the
``file:`` source, which records, uploads and can be restored like any other.

Previews are bounded like the detector's requests (``PreviewGate``): ``PREVIEW_WORKERS`` run at once and
``MIKU_UPLOAD_PREVIEW_QUEUE`` more may wait — past that, 503 with ``Retry-After`` before a byte of the upload is
read — and the running ones decode at most ``MIKU_UPLOAD_PREVIEW_MPX`` megapixels together (an image's
size comes from its header before it is decoded; one bigger than the budget runs alone). Stored uploads
are pruned after each new one: only the newest ``MIKU_UPLOADS_KEPT``, none older than
``MIKU_UPLOADS_MAX_AGE_H``. A full disk is a 507 naming the data directory (``mikubot.storage``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request

from facedetect import formats
from facedetect.api import AdmissionGate, Busy
from facedetect.errors import FaceDetectError
from facedetect.imageio import Limits, image_size, load_image
from facedetect.memory import map_large_blocks, release_after
from facedetect.multipart import read_file_field
from mikubot.config import Settings
from mikubot.crop import CropError, avatar_png
from mikubot.outputs import annotated_source, atomic_write, jpeg_bytes
from mikubot.pipeline import AvatarPipeline, NoRoomForDetector, Picture
from mikubot.pipeline.detect import detect_one
from mikubot.pipeline.framing import frame

log = logging.getLogger(__name__)

UPLOAD_ID = re.compile(r"^[0-9a-f]{64}$")
UNSAFE_NAME = re.compile(r"[^A-Za-z0-9 ._()-]+")
PREVIEW_WORKERS = 2  # previews at work at once; the pixel budget decides how big they may be together


class PixelBudget:
    """Megapixels in decoding and cropping at once, shared by the running previews: a preview holds its
    image's pixel count (at most the whole budget) from before its decode until it is done."""

    def __init__(self, pixels: int) -> None:
        self.total = max(1, pixels)
        self.used = 0
        self._freed = asyncio.Condition()

    @asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        need = max(1, min(pixels, self.total))
        async with self._freed:
            await self._freed.wait_for(lambda: self.used + need <= self.total)
            self.used += need
        try:
            yield
        finally:
            async with self._freed:
                self.used -= need
                self._freed.notify_all()


class PreviewGate:
    """The bound on upload previews: the detector's admission gate (workers + a queue, 503 past it) and a
    decode-pixel budget."""

    def __init__(self, settings: Settings) -> None:
        self.admission = AdmissionGate(PREVIEW_WORKERS, settings.upload_preview_queue)
        self.pixels = PixelBudget(int(settings.upload_preview_mpx * 1_000_000))
        map_large_blocks()  # a preview's big buffers go back to the system when freed, as in the detector

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """A place (running or waiting) or 503 with ``Retry-After`` at once: taken before the upload is read."""
        try:
            async with self.admission.admit():
                yield
        except Busy as exc:
            raise HTTPException(503, f"too many upload previews at once: {exc.message}",
                                headers={"Retry-After": str(exc.retry_after)}) from exc

    @asynccontextmanager
    async def run(self, data: bytes) -> AsyncIterator[None]:
        """A worker and the image's pixels from the budget (its header's size; the decode checks the rest)."""
        size = await asyncio.to_thread(image_size, data)
        async with self.admission.working(), self.pixels.hold(size[0] * size[1] if size else 1):
            yield


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
    """Decode, store, detect and crop one uploaded image. ``FaceDetectError`` for a bad image (4xx),
    ``mikubot.storage.StorageError`` when it cannot be stored. Run it inside ``PreviewGate.run``."""
    image, info = await asyncio.to_thread(load_image, data, limits(pipeline))
    try:
        return await _preview(pipeline, image, info.width, info.height, info.format, data, filename)
    finally:
        del image
        release_after(info.width * info.height)  # the decoded pixels go back to the system, not the heap


async def _preview(pipeline: AvatarPipeline, image: Any, width: int, height: int, fmt: str | None, data: bytes,
                   filename: str) -> Preview:
    s = pipeline.settings
    upload_id = hashlib.sha256(data).hexdigest()
    folder = uploads_dir(pipeline) / upload_id
    try:
        path = stored_upload(pipeline, upload_id)  # the same picture again: keep its first name
        await asyncio.to_thread(os.utime, folder)  # and count it as new when pruning
    except HTTPException:
        path = folder / "image" / clean_name(filename, formats.extension(fmt))
        await asyncio.to_thread(atomic_write, path, data)
    await asyncio.to_thread(prune_uploads, uploads_dir(pipeline), s.uploads_kept, s.uploads_max_age_h * 3600,
                            keep=upload_id)
    notes: list[str] = []

    def note(to: str, why: str) -> None:
        notes.append(why)

    try:  # the pipeline's detect stage for one picture: its reservation rule and detector chain
        found = await detect_one(pipeline.services, image, data, path.name, note="upload preview", on_fallback=note)
    except NoRoomForDetector as exc:
        raise HTTPException(503, str(exc)) from exc
    if found.error:
        notes.append(found.error)

    def crop_and_write() -> Any:  # a worker thread: cropping and drawing on a 40-Mpx picture take seconds
        try:  # the pipeline's crop choice, for one picture the owner chose (confidence 1)
            framing = frame(s, [Picture(image, found.detections, 1.0)])
        except CropError as exc:
            raise HTTPException(422, f"cannot crop this image: {exc}") from exc
        notes.extend(why for _, why in framing.refused)
        atomic_write(folder / "preview.png", avatar_png(framing.crop))
        atomic_write(folder / "annotated.jpg", jpeg_bytes(annotated_source(image, found.detections, framing.crop.box)))
        return framing.crop

    result = await asyncio.to_thread(crop_and_write)
    return Preview(upload_id, path, (width, height), result.to_json(),
                   [d.to_json() for d in found.detections], found.via, notes)


def prune_uploads(folder: Path, keep_count: int, max_age_s: float, *, keep: str | None = None,
                  now: float | None = None) -> list[str]:
    """Delete stored uploads beyond the newest ``keep_count`` and those older than ``max_age_s`` (by the
    folder's time, renewed when the same picture is uploaded again); never ``keep``. The ids deleted. Only
    folders named by an upload id are touched; one that cannot be deleted is left for the next time."""
    now = time.time() if now is None else now
    try:
        entries = [(e.stat().st_mtime, e.name) for e in os.scandir(folder)
                   if UPLOAD_ID.match(e.name) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return []
    entries.sort(reverse=True)  # newest first
    removed = []
    for rank, (mtime, name) in enumerate(entries):
        if name == keep or (rank < keep_count and now - mtime <= max_age_s):
            continue
        try:
            shutil.rmtree(folder / name)
        except OSError as exc:
            log.warning("cannot delete the stored upload %s: %s", folder / name, exc)
            continue
        removed.append(name)
    return removed


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
