"""load_image: every format a user throws at the detector becomes RGB in display orientation, or a clear error."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from facedetect.errors import BadImage, ImageTooLarge, UnsupportedImage
from facedetect.imageio import Limits, load_image, to_rgb
from images import encode, png_declaring


@pytest.fixture(scope="module")
def sprite(art_dir) -> Image.Image:
    return Image.open(art_dir / "eileen happy.png").convert("RGBA")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
def test_every_allowed_format_decodes_to_rgb(sprite, fmt):
    src = to_rgb(sprite) if fmt in ("JPEG", "BMP") else sprite
    image, info = load_image(encode(src, fmt))
    assert image.mode == "RGB"
    assert image.size == sprite.size == (info.width, info.height)
    assert info.format == fmt


def test_alpha_is_flattened_onto_white():
    im = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    im.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black must come out white, not black
    image, info = load_image(encode(im, "PNG"))
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((5, 5)) == (255, 0, 0)
    assert info.mode == "RGBA"


def test_palette_with_transparency_index_becomes_white():
    im = Image.new("P", (8, 8), 1)
    im.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    im.putpixel((2, 2), 0)
    data = encode(im, "PNG", transparency=0)
    image, info = load_image(data)
    assert info.mode == "P"
    assert image.getpixel((2, 2)) == (255, 255, 255)
    assert image.getpixel((4, 4)) == (0, 0, 255)


def test_cmyk_jpeg(sprite):
    image, info = load_image(encode(to_rgb(sprite).convert("CMYK"), "JPEG"))
    assert info.mode == "CMYK" and image.mode == "RGB" and image.size == sprite.size
    # the white background stays light after the CMYK round trip
    assert min(image.getpixel((2, 2))) > 200


def test_16_bit_png_is_scaled_not_clipped():
    arr = np.zeros((4, 4), dtype=np.uint16)
    arr[0, 0] = 65535
    arr[1, 1] = 32768
    image, info = load_image(encode(Image.fromarray(arr), "PNG"))
    assert info.mode.startswith("I")
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert 120 <= image.getpixel((1, 1))[0] <= 135
    assert image.getpixel((3, 3)) == (0, 0, 0)


def test_greyscale():
    image, info = load_image(encode(Image.new("L", (5, 3), 77), "PNG"))
    assert info.mode == "L" and image.getpixel((1, 1)) == (77, 77, 77)


def test_exif_orientation_is_applied():
    upright = Image.new("RGB", (40, 20), (255, 255, 255))
    upright.paste((255, 0, 0), (0, 0, 5, 5))  # red marker top-left when displayed
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # orientation 6: display = rotate 90 clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    image, _ = load_image(encode(stored, "JPEG", exif=exif.tobytes(), quality=95))
    assert image.size == (40, 20)
    r, g, b = image.getpixel((1, 1))
    assert r > 200 and g < 60 and b < 60


def test_gif_animation_uses_first_frame():
    frames = [Image.new("RGB", (6, 6), (255, 0, 0)), Image.new("RGB", (6, 6), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    image, info = load_image(buf.getvalue())
    assert info.format == "GIF"
    assert image.getpixel((3, 3)) == (255, 0, 0)


def test_empty():
    with pytest.raises(BadImage, match="empty"):
        load_image(b"")


def test_byte_limit():
    with pytest.raises(ImageTooLarge, match="limit"):
        load_image(encode(Image.new("RGB", (64, 64)), "BMP"), Limits(max_bytes=1000))


def test_pixel_limit():
    with pytest.raises(ImageTooLarge, match="Mpx"):
        load_image(encode(Image.new("1", (3000, 3000)), "PNG"), Limits(max_pixels=1_000_000))


@pytest.mark.parametrize("size", [(9000, 9000), (30000, 30000)])
def test_decompression_bomb_header_is_refused_before_decoding(size):
    # 81 Mpx is under Pillow's own guard (our explicit limit catches it); 900 Mpx trips Pillow's guard.
    with pytest.raises(ImageTooLarge):
        load_image(png_declaring(*size))


def test_not_an_image():
    with pytest.raises(UnsupportedImage, match="JPEG, PNG"):
        load_image(b"#!/bin/sh\necho this is not a picture\n")


def test_formats_outside_the_allow_list_are_not_parsed():
    with pytest.raises(UnsupportedImage):
        load_image(encode(Image.new("RGB", (4, 4)), "TIFF"))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated(sprite, fmt):
    data = encode(to_rgb(sprite), fmt)
    with pytest.raises(BadImage):
        load_image(data[: len(data) // 2])


def test_to_rgb_round_trips_through_png():
    im = to_rgb(Image.new("LA", (3, 3), (10, 0)))
    assert im.mode == "RGB" and im.getpixel((0, 0)) == (255, 255, 255)
    again, _ = load_image(encode(im, "PNG"))
    assert again.getpixel((1, 1)) == (255, 255, 255)
