"""``file:PATH`` - one image the owner names (or uploads through the panel: ``FileSource.from_bytes``).

The key is ``file:<sha256 of the content>``; a picture used before is not offered again, like every
other source. The file is checked to be a JPEG, PNG, WebP or GIF within ``max_download_bytes``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from mikubot.sources.base import Candidate, SourceError
from mikubot.sources.imagefile import sniff
from mikubot.sources.local import read_limited
from mikubot.sources.options import SourceOptions


class FileSource:
    name = "file"

    def __init__(self, path: str | os.PathLike[str] | None, options: SourceOptions, *,
                 data: bytes | None = None, filename: str | None = None):
        self.path = Path(path).expanduser() if path is not None else None
        self.options = options
        self._data = data
        self._filename = filename or (self.path.name if self.path else "upload")

    @classmethod
    def from_bytes(cls, data: bytes, filename: str, options: SourceOptions) -> FileSource:
        """An uploaded file (the panel's form): bytes already in memory."""
        if len(data) > options.max_download_bytes:
            raise SourceError(
                f"the upload is {len(data) / 1e6:.1f} MB; the limit is {options.max_download_bytes / 1e6:.1f} MB"
            )
        return cls(None, options, data=data, filename=Path(filename).name or "upload")

    def _read(self) -> bytes:
        if self._data is not None:
            return self._data
        assert self.path is not None
        if not self.path.exists():
            raise SourceError(f"the file {self.path} does not exist; check the file:PATH source")
        if not self.path.is_file():
            raise SourceError(f"{self.path} is not a file; use local:DIR for a folder")
        return read_limited(self.path, self.options.max_download_bytes)

    async def search(self, limit: int, exclude: set[str]) -> list[Candidate]:
        if limit < 1:
            return []
        data = await asyncio.to_thread(self._read)
        header = sniff(data, what=str(self.path or self._filename))
        key = "file:" + hashlib.sha256(data).hexdigest()
        if key in exclude:
            return []
        return [Candidate(
            source=self.name, key=key, image_url=None, page_url=None, artist=None, tags=[], rating=None,
            width=header.width, height=header.height, file_ext=header.ext, filename=self._filename,
            extra={"path": str(self.path)} if self.path else {},
        )]

    async def download(self, candidate: Candidate) -> Candidate:
        data = await asyncio.to_thread(self._read)
        if "file:" + hashlib.sha256(data).hexdigest() != candidate.key:
            raise SourceError(f"{self.path or self._filename} changed since it was chosen; search again",
                              retryable=True)
        header = sniff(data, what=str(self.path or self._filename))
        candidate.data = data
        candidate.file_ext, candidate.width, candidate.height = header.ext, header.width, header.height
        return candidate
