"""Recognise downloaded bytes as one of the still-image formats the pipeline accepts.

Only the header is parsed (Pillow's lazy open): the real decode, with its pixel limits, happens once in
``facedetect.imageio.load_image`` later. Here we only need to refuse an HTML error page, a video or a
zip before it is recorded as a candidate, and learn the true size and type.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from facedetect.formats import BY_PILLOW, MIME_TYPES, PILLOW_NAMES, names
from mikubot.sources.base import SourceError

CONTENT_TYPES = MIME_TYPES  # the formats the detector decodes (facedetect/formats.py), no other


class ImageBomb(SourceError):
    """The header claims more pixels than Pillow will ever decode (a decompression bomb): skip the file."""


@dataclass(frozen=True)
class ImageHeader:
    ext: str
    width: int
    height: int


def sniff(data: bytes, *, what: str) -> ImageHeader:
    """Type and size of ``data``; ``SourceError`` when it is not one of the formats the detector reads."""
    if not data:
        raise SourceError(f"{what} is empty")
    try:
        with Image.open(io.BytesIO(data), formats=PILLOW_NAMES) as im:
            fmt, (width, height) = im.format, im.size
    except Image.DecompressionBombError as exc:
        # Not OSError: without this clause one such file would end the whole change instead of itself.
        raise ImageBomb(f"{what} claims too many pixels to decode safely (a decompression bomb): {exc}") from exc
    except UnidentifiedImageError as exc:
        head = data[:64].lstrip().lower()
        kind = "a web page" if head.startswith((b"<!doctype", b"<html")) else f"not a {names()} image"
        raise SourceError(f"{what} is {kind}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise SourceError(f"{what} is a damaged image ({exc})") from exc
    if fmt not in BY_PILLOW or width < 1 or height < 1:
        raise SourceError(f"{what} is not a usable image")
    return ImageHeader(BY_PILLOW[fmt].ext, width, height)
