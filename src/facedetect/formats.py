"""The one table of image formats: what is read at all, under which file extension and MIME type.

Every reader of untrusted pictures uses it — the detector's decoder (``imageio``), the sources' header
check, the local folder's scan and the panel's upload store — so a picture one of them takes, the others
take too. It lives in facedetect, the lowest layer, so that every package can import it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageFormat:
    pillow: str  # Pillow's name for it (``Image.format``)
    label: str  # how a person writes it
    ext: str  # the file extension it is stored under
    mime: str
    aliases: tuple[str, ...] = ()  # other extensions files of this format are found under
    variants: tuple[str, ...] = ()  # other Pillow names for files of this format (read as this format)


FORMATS: tuple[ImageFormat, ...] = (
    # MPO (multi-picture JPEG: what many phones and 3D cameras write) is a JPEG with more pictures after the
    # first. Pillow's JPEG opener returns it as format "MPO"; everything here reads its first picture as the
    # JPEG it is.
    ImageFormat("JPEG", "JPEG", "jpg", "image/jpeg", aliases=("jpeg", "mpo"), variants=("MPO",)),
    ImageFormat("PNG", "PNG", "png", "image/png"),
    ImageFormat("WEBP", "WebP", "webp", "image/webp"),
    ImageFormat("GIF", "GIF", "gif", "image/gif"),  # read: its first frame
    ImageFormat("BMP", "BMP", "bmp", "image/bmp"),
)
BY_PILLOW = {name: f for f in FORMATS for name in (f.pillow, *f.variants)}  # every Pillow name -> its format
PILLOW_NAMES: tuple[str, ...] = tuple(f.pillow for f in FORMATS)  # the openers Image.open(formats=...) may use
EXTENSIONS: frozenset[str] = frozenset(f.ext for f in FORMATS)
MIME_TYPES: tuple[str, ...] = tuple(f.mime for f in FORMATS)
SUFFIXES: frozenset[str] = frozenset(f".{e}" for f in FORMATS for e in (f.ext, *f.aliases))  # file names


def names(formats: tuple[ImageFormat, ...] = FORMATS) -> str:
    """``JPEG, PNG, WebP, GIF or BMP`` — for messages."""
    labels = [f.label for f in formats]
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " or " + labels[-1]


def extension(pillow_format: str | None, default: str = "img") -> str:
    f = BY_PILLOW.get(pillow_format or "")
    return f.ext if f else default


def canonical(pillow_format: str | None) -> str | None:
    """The table's name for what Pillow reports (``MPO`` -> ``JPEG``); other names unchanged."""
    f = BY_PILLOW.get(pillow_format or "")
    return f.pillow if f else pillow_format
