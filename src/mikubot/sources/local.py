"""``local:DIR`` - images from a folder the owner filled: the embedded default (the sample art).

The folder is searched recursively (sub-folders are a natural way to sort art), skipping hidden files and
folders and not following symbolic links to folders (no loops, no escaping the folder). Files are taken
in random order. A file's key is the SHA-256 of its content, so a renamed or copied picture still counts
as used. Only JPEG, PNG, WebP and GIF files (by extension, then by content) are candidates; the booru
``min_side``/rating/solo filters do not apply, because the owner chose these pictures.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from pathlib import Path

from facedetect import formats
from mikubot.sources.base import Candidate, SourceError
from mikubot.sources.imagefile import ImageBomb, sniff
from mikubot.sources.options import SourceOptions
from mikubot.sources.report import SearchReport

SUFFIXES = formats.SUFFIXES  # the formats the detector reads, no other


def image_files(directory: Path) -> list[Path]:
    """Image files under ``directory``, recursively, hidden entries skipped, sorted for determinism."""
    found: list[Path] = []
    for root, dirs, files in os.walk(directory, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in SUFFIXES:
                found.append(Path(root) / name)
    return sorted(found)


def read_limited(path: Path, limit: int) -> bytes:
    """The bytes of the *regular file* at ``path`` (symlinks followed), at most ``limit`` of them.

    ``SourceError`` when it is over ``limit``, unreadable, or not a regular file: a FIFO would block the
    read forever and ``/dev/zero`` (say, through a symlink) would never end, so both are refused from
    an ``fstat`` of the opened file — opened non-blocking, so even opening a FIFO cannot hang.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as f:
        try:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise SourceError(f"{path} is not a regular file (a FIFO, device or socket); skipped")
            if info.st_size > limit:
                raise SourceError(f"{path} is {info.st_size / 1e6:.1f} MB; the limit is {limit / 1e6:.1f} MB (max_download_bytes)")
            data = f.read(limit + 1)  # bounded even if the file grows while it is read
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise SourceError(f"{path} grew past the limit of {limit / 1e6:.1f} MB while it was read")
    return data


class LocalFolderSource:
    name = "local"

    def __init__(self, directory: str | os.PathLike[str], options: SourceOptions):
        self.directory = Path(directory).expanduser()
        self.options = options
        self.last_search = SearchReport()

    def _check_dir(self) -> None:
        if not self.directory.exists():
            raise SourceError(f"the image folder {self.directory} does not exist; check the local:DIR source")
        if not self.directory.is_dir():
            raise SourceError(f"{self.directory} is not a folder; use file:PATH for a single image")

    def _scan(self, limit: int, exclude: set[str]) -> list[Candidate]:
        self._check_dir()
        report = SearchReport(query=f"local:{self.directory}")
        self.last_search = report
        files = image_files(self.directory)
        self.options.rng.shuffle(files)
        found: dict[str, Candidate] = {}
        for path in files:
            if len(found) >= limit:
                break
            report.seen += 1
            try:
                data = read_limited(path, self.options.max_download_bytes)
                header = sniff(data, what=str(path))
            except ImageBomb:
                report.reject("too many pixels (a decompression bomb)")
                continue
            except SourceError:
                report.reject("not a readable image")
                continue
            key = "local:" + hashlib.sha256(data).hexdigest()
            if key in exclude:
                report.reject("used before")
                continue
            if key in found:
                report.reject("duplicate file")
                continue
            found[key] = Candidate(
                source=self.name,
                key=key,
                image_url=None,
                page_url=None,
                artist=None,
                tags=[],
                rating=None,
                width=header.width,
                height=header.height,
                file_ext=header.ext,
                filename=path.name,
                extra={"path": str(path)},
            )
        report.accepted = len(found)
        return list(found.values())

    async def search(self, limit: int, exclude: set[str]) -> list[Candidate]:
        if limit < 1:
            return []
        return await asyncio.to_thread(self._scan, limit, exclude)

    async def download(self, candidate: Candidate) -> Candidate:
        path = Path(candidate.extra["path"])
        data = await asyncio.to_thread(read_limited, path, self.options.max_download_bytes)
        if "local:" + hashlib.sha256(data).hexdigest() != candidate.key:
            raise SourceError(f"{path} changed since it was chosen; search again", retryable=True)
        header = sniff(data, what=str(path))
        candidate.data = data
        candidate.file_ext, candidate.width, candidate.height = header.ext, header.width, header.height
        return candidate
