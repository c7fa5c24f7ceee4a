"""Turn untrusted upload bytes into an RGB image, or a clear error.

Every format a user will throw at the detector lands here: JPEG (an MPO's first picture too)/PNG/WebP/GIF
(first frame)/BMP, EXIF
orientation applied, alpha flattened onto white, palette/CMYK/16-bit/greyscale converted. Only these
formats are parsed at all: Pillow's other decoders (EPS through Ghostscript, say) never see an upload.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facedetect.errors import BadImage, ImageTooLarge, UnsupportedImage
from facedetect.formats import PILLOW_NAMES, canonical, names
from facedetect.types import ImageInfo

Image.init()  # registers every plugin before the allow-list below is checked
ALLOWED_FORMATS = PILLOW_NAMES  # formats.py: the one table
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000  # 8000 x 5000; Pillow's own bomb guard starts at ~89 Mpx
# What Pillow's parsers raise on damaged bytes: not only OSError/SyntaxError, but also the index and
# unpacking errors of plugins that read past the end of a truncated block (bench/hostile.py found both).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, LookupError, struct.error, ArithmeticError, TypeError)


@dataclass(frozen=True)
class Limits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header alone (nothing is decoded), for budgeting before ``load_image``;
    None when the header is not one of ours or unreadable (``load_image`` then says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as im:
                return im.size
    except (UnidentifiedImageError, Image.DecompressionBombError, *DECODE_ERRORS):
        return None


def load_image(data: bytes, limits: Limits = Limits()) -> tuple[Image.Image, ImageInfo]:
    """Decode ``data`` into an RGB ``PIL.Image`` in display orientation.

    Raises ``BadImage`` (400), ``ImageTooLarge`` (413) or ``UnsupportedImage`` (415).
    """
    if not data:
        raise BadImage("the file is empty")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(
            f"the file is {len(data) / 1e6:.1f} MB; the limit is {limits.max_bytes / 1e6:.1f} MB"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError as exc:
        raise UnsupportedImage(
            f"not an image this service reads; send {names()}"
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"the image has too many pixels ({exc})") from exc
    except DECODE_ERRORS as exc:
        raise BadImage(f"the image header cannot be read: {exc or type(exc).__name__}") from exc

    width, height = im.size
    if width <= 0 or height <= 0:
        raise BadImage("the image has no pixels")
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"the image is {width}x{height} = {width * height / 1e6:.1f} Mpx; "
            f"the limit is {limits.max_pixels / 1e6:.1f} Mpx"
        )
    fmt = canonical(im.format)  # an MPO is the JPEG it starts with
    mode = im.mode
    try:
        # Opening leaves an animation on its first frame. Counting frames (``n_frames``) would parse every
        # later frame too, and Pillow's GIF parser raises IndexError / struct.error on a truncated one.
        im.load()
        # in_place: without an Orientation tag Pillow would otherwise return a full copy of the pixels.
        ImageOps.exif_transpose(im, in_place=True)
        rgb = to_rgb(im)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"the image has too many pixels ({exc})") from exc
    except DECODE_ERRORS as exc:
        raise BadImage(f"the image data is damaged or truncated: {exc or type(exc).__name__}") from exc
    return rgb, ImageInfo(width=rgb.width, height=rgb.height, format=fmt, mode=mode)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is flattened onto white."""
    if im.mode == "RGB":
        return im
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8), "L")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=1))
        scale = 255.0 / (hi - lo) if hi > lo else 1.0
        im = Image.fromarray(((arr - lo) * scale).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


