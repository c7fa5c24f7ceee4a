"""The one interface every image source speaks: search for candidates, then download the chosen ones.

The pipeline asks a source for K candidates (never ones in the history, ``exclude``), verifies them, and
downloads what it needs. Sources differ wildly (a booru's JSON, a folder, one URL) but all return
``Candidate`` objects and raise ``SourceError`` with a message a person can act on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from facedetect.formats import EXTENSIONS
from mikubot.errors import MikubotError

# Still-image formats the rest of the pipeline decodes (facedetect/formats.py; GIF's first frame).
# Video (mp4, webm), Flash and Danbooru's "ugoira" zip archives are never candidates.
IMAGE_EXTS: frozenset[str] = EXTENSIONS


def normalise_ext(ext: str | None) -> str | None:
    """``.JPEG`` -> ``jpg``; ``None`` stays ``None``."""
    if not ext:
        return None
    ext = ext.lower().lstrip(".")
    return "jpg" if ext == "jpeg" else ext


@dataclass
class Candidate:
    """One picture a source offers: where it is, what it is, and (after ``download``) its bytes."""

    source: str  # "danbooru", "safebooru", "gelbooru", "local", "url", "file"
    key: str  # stable unique id that the history stores so a post is never used twice
    image_url: str | None
    page_url: str | None
    artist: str | None
    tags: list[str]
    rating: str | None  # Danbooru letters: g, s, q, e (None when the source has no rating)
    width: int | None  # of the image that download() fetches (the chosen variant), when known
    height: int | None
    file_ext: str | None
    filename: str | None
    data: bytes | None = None
    # Source-specific facts worth recording (post score, md5, which Danbooru variant was chosen, ...).
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Everything but the image bytes: what the history and the panel store and show."""
        return {
            "source": self.source,
            "key": self.key,
            "image_url": self.image_url,
            "page_url": self.page_url,
            "artist": self.artist,
            "tags": list(self.tags),
            "rating": self.rating,
            "width": self.width,
            "height": self.height,
            "file_ext": self.file_ext,
            "filename": self.filename,
            "size_bytes": len(self.data) if self.data is not None else None,
            "extra": dict(self.extra),
        }


class SourceError(MikubotError):
    """A source cannot deliver. ``message`` says what happened and what to do about it.

    ``retryable`` is True for conditions that may pass on their own (the site is down, rate limits,
    timeouts) and False for ones that need a person (bad login, a refused URL, a missing folder).

    ``unreachable`` is True when no answer came at all (the name does not resolve, the connection is
    refused or cut): then the network path or the configured URL is at fault, not the site.
    """

    def __init__(self, message: str, *, retryable: bool = False, unreachable: bool = False):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.unreachable = unreachable


@runtime_checkable
class Source(Protocol):
    name: str

    async def search(self, limit: int, exclude: set[str]) -> list[Candidate]:
        """Up to ``limit`` acceptable candidates, none whose ``key`` is in ``exclude``."""
        ...

    async def download(self, candidate: Candidate) -> Candidate:
        """The candidate with ``data`` filled (and width/height/ext corrected from the real bytes)."""
        ...
