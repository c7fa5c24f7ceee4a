"""Draw detections onto a copy of the image: boxes, confidence labels and numbered keypoints."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from facedetect.types import Detection

JPEG_MAX_SIDE = 65_500  # libjpeg refuses a side over 65 535 px; annotated copies are for people, so scale
BOX_COLOUR = (57, 197, 187)  # Miku teal, readable on both light sprites and dark CGs
KEYPOINT_COLOURS = [(255, 64, 64), (64, 128, 255), (255, 200, 0), (255, 64, 200), (120, 220, 80)]


def annotate(image: Image.Image, detections: Sequence[Detection]) -> Image.Image:
    """Return an RGB copy of ``image`` with every detection drawn; the input is left untouched.

    Line widths and dot sizes scale with the image so boxes stay visible on 2400 px CGs and 64 px icons.
    """
    out = image.copy() if image.mode == "RGB" else image.convert("RGB")  # convert() already copies
    draw = ImageDraw.Draw(out)
    base = max(1, round(max(out.size) / 400))
    font = _font(max(10, 6 * base))
    for det in detections:
        x1, y1, x2, y2 = det.bbox
        draw.rectangle((x1, y1, x2, y2), outline=BOX_COLOUR, width=base)
        label = f"{det.confidence:.2f}"
        tx, ty = x1, max(0.0, y1 - font.size - 2 * base)
        text_box = draw.textbbox((tx, ty), label, font=font)
        draw.rectangle(text_box, fill=BOX_COLOUR)
        draw.text((tx, ty), label, fill=(0, 0, 0), font=font)
        r = base + 1
        for i, (kx, ky, _score) in enumerate(det.keypoints):
            colour = KEYPOINT_COLOURS[i % len(KEYPOINT_COLOURS)]
            draw.ellipse((kx - r, ky - r, kx + r, ky + r), fill=colour)
    return out


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # Pillow >= 10.1 ships a scalable default font; no system fonts are needed in the slim image.
    return ImageFont.load_default(size=size)


def jpeg_ready(image: Image.Image) -> Image.Image:
    """``image`` as RGB, scaled down (aspect kept) when a side is over what a JPEG can hold.

    A 70 000 x 500 px banner is a valid upload; its annotated copy is saved at 65 500 px wide instead of
    failing the whole request with an encoder error.
    """
    image = image if image.mode == "RGB" else image.convert("RGB")
    longest = max(image.size)
    if longest <= JPEG_MAX_SIDE:
        return image
    scale = JPEG_MAX_SIDE / longest
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.BILINEAR)
