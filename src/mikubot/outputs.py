"""Files a change leaves behind: the avatar PNG (always kept under the data directory, so a failed
upload can be applied later) and, with ``MIKU_BANNER``, the banner PNG beside it, an annotated copy of the source (face box, crop square, round area),
and the JSON report — plus copies at ``--out`` when asked; and a thumbnail of every candidate (the
panel's Candidates view draws each one's faces on it), kept for the last ``MIKU_CANDIDATE_PICTURES_KEPT``
changes only (``prune_candidate_pictures``; the avatars are kept for good)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from facedetect.annotate import annotate, jpeg_ready
from facedetect.types import Detection
from mikubot import storage

CROP_COLOUR = (255, 120, 200)


@dataclass
class ChangeFiles:
    avatar: Path  # where the user asked for it (``--out``), else the kept copy
    report: Path
    annotated: Path | None
    kept: Path  # the copy under the data directory that the history points at (restore uses it)
    banner: Path | None = None  # the banner beside the avatar (``--out``'s copy, else the kept one)
    kept_banner: Path | None = None  # the banner's copy under the data directory (restore uses it)

    def to_json(self) -> dict[str, str | None]:
        out = {"avatar": str(self.avatar), "report": str(self.report),
               "annotated": str(self.annotated) if self.annotated else None, "kept": str(self.kept)}
        if self.banner is not None:
            out["banner"] = str(self.banner)
        return out


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file + rename: a reader never sees half an avatar. A full, read-only or failing
    disk raises ``mikubot.storage.StorageError`` (``StorageFull`` for no space), an ``OSError`` naming ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise (storage.from_os_error(exc, path) or exc) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and (mapped := storage.from_os_error(exc, path)) is not None:
            raise mapped from exc
        raise


def jpeg_bytes(image: Image.Image, quality: int = 85) -> bytes:
    """A JPEG of ``image`` (a side over 65 500 px is scaled first), ready for ``atomic_write``."""
    buf = io.BytesIO()
    jpeg_ready(image).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def annotated_source(image: Image.Image, detections: Sequence[Detection], crop_box: Sequence[float]) -> Image.Image:
    """The source with every face, the chosen crop square and the circle Discord will show."""
    out = annotate(image, detections)
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 300))
    x1, y1, x2, y2 = crop_box
    draw.rectangle((x1, y1, x2, y2), outline=CROP_COLOUR, width=width)
    draw.ellipse((x1, y1, x2, y2), outline=CROP_COLOUR, width=width)
    return out


def write_change_files(
    avatars_dir: Path,
    change_id: int,
    avatar_png: bytes,
    annotated: Image.Image | None,
    out: Path | None = None,
    banner_png: bytes | None = None,
) -> ChangeFiles:
    """Write the avatar (and annotated image, and banner) under ``avatars_dir`` and, if ``out`` is given,
    copies there. The report is written later (it includes the upload's outcome) by ``write_report``; its
    path is fixed here."""
    stem = f"change-{change_id:05d}"
    avatar = avatars_dir / f"{stem}.png"
    atomic_write(avatar, avatar_png)
    banner: Path | None = None
    if banner_png is not None:
        banner = banner_path(avatars_dir, change_id)
        atomic_write(banner, banner_png)
    ann_path: Path | None = None
    if annotated is not None:
        ann_path = avatars_dir / f"{stem}_annotated.jpg"
        atomic_write(ann_path, jpeg_bytes(annotated))
    report = avatars_dir / f"{stem}.json"
    if out is not None:
        out_avatar = out if out.suffix.lower() == ".png" else out.with_suffix(".png")
        atomic_write(out_avatar, avatar_png)
        if ann_path is not None:
            shutil.copyfile(ann_path, out_avatar.with_name(out_avatar.stem + "_annotated.jpg"))
            ann_path = out_avatar.with_name(out_avatar.stem + "_annotated.jpg")
        report = out_avatar.with_suffix(".json")
        out_banner: Path | None = None
        if banner_png is not None:
            out_banner = out_avatar.with_name(out_avatar.stem + "_banner.png")
            atomic_write(out_banner, banner_png)
        return ChangeFiles(out_avatar, report, ann_path, avatar, out_banner, banner)
    return ChangeFiles(avatar, report, ann_path, avatar, banner, banner)


def banner_path(avatars_dir: Path, change_id: int) -> Path:
    """Where a change's banner is kept: beside its avatar."""
    return avatars_dir / f"change-{change_id:05d}_banner.png"


CANDIDATE_THUMB_SIDE = 512  # enough for the panel's cards; the source stays wherever it came from


def candidate_picture_path(avatars_dir: Path, change_id: int, index: int) -> Path:
    return avatars_dir / f"change-{change_id:05d}_candidate-{index}.jpg"


def candidate_thumbnail(image: Image.Image, avatars_dir: Path, change_id: int, index: int) -> str | None:
    """A small JPEG of candidate ``index`` of a change, for the panel to draw its faces on; its file name
    (inside ``avatars_dir``), or None when it cannot be written (the change goes on without it)."""
    path = candidate_picture_path(avatars_dir, change_id, index)
    thumb = image.copy()
    thumb.thumbnail((CANDIDATE_THUMB_SIDE, CANDIDATE_THUMB_SIDE), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.convert("RGB").save(buf, "JPEG", quality=80)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, buf.getvalue())
    except OSError:
        return None
    return path.name


CANDIDATE_PICTURE = re.compile(r"^change-(\d{5,})_candidate-(\d+)\.jpg$")


def prune_candidate_pictures(avatars_dir: Path, newest_change: int, keep_changes: int) -> list[Path]:
    """Delete the candidate thumbnails of every change older than the last ``keep_changes`` (ids up to
    ``newest_change - keep_changes``); the deleted paths. Only files named as ``candidate_picture_path``
    names them are touched: avatars, annotated copies and reports are never deleted. A file that cannot
    be deleted is left for the next change to try."""
    oldest_kept = newest_change - keep_changes + 1
    removed = []
    try:
        names = [p for p in avatars_dir.iterdir() if CANDIDATE_PICTURE.match(p.name)]
    except OSError:
        return []
    for path in sorted(names):
        m = CANDIDATE_PICTURE.match(path.name)
        assert m is not None
        if int(m.group(1)) < oldest_kept:
            try:
                path.unlink()
            except OSError:
                continue
            removed.append(path)
    return removed


def write_report(path: Path, record: dict[str, Any]) -> None:
    atomic_write(path, (json.dumps(record, indent=2, default=str) + "\n").encode())
