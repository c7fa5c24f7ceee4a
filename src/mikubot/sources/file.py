"""``file:PATH`` - one image the owner names, or one uploaded through the panel (stored under the data
directory's ``uploads/`` and applied as ``file:<that path>``).

The key is ``file:<sha256 of the content>``; a picture used before is not offered again, like every
other source. The file must be one of the formats the detector reads (facedetect/formats.py) and within
``max_download_bytes``.
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

    def __init__(self, path: str | os.PathLike[str], options: SourceOptions):
        self.path = Path(path).expanduser()
        self.options = options

    def _read(self) -> bytes:
        if not self.path.exists():
            raise SourceError(f"the file {self.path} does not exist; check the file:PATH source")
        if not self.path.is_file():
            raise SourceError(f"{self.path} is not a file; use local:DIR for a folder")
        return read_limited(self.path, self.options.max_download_bytes)

    async def search(self, limit: int, exclude: set[str]) -> list[Candidate]:
        if limit < 1:
            return []
        data = await asyncio.to_thread(self._read)
        header = sniff(data, what=str(self.path))
        key = "file:" + hashlib.sha256(data).hexdigest()
        if key in exclude:
            return []
        return [Candidate(
            source=self.name, key=key, image_url=None, page_url=None, artist=None, tags=[], rating=None,
            width=header.width, height=header.height, file_ext=header.ext, filename=self.path.name,
            extra={"path": str(self.path)},
        )]

    async def download(self, candidate: Candidate) -> Candidate:
        data = await asyncio.to_thread(self._read)
        if "file:" + hashlib.sha256(data).hexdigest() != candidate.key:
            raise SourceError(f"{self.path} changed since it was chosen; search again",
                              retryable=True)
        header = sniff(data, what=str(self.path))
        candidate.data = data
        candidate.file_ext, candidate.width, candidate.height = header.ext, header.width, header.height
        return candidate
