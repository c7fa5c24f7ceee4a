"""A reproducible corpus of hostile ``POST /detect`` requests, for bench/hostile.py and its test.

Every request is built here down to the bytes on the wire (multipart bodies are assembled by hand, so
broken boundaries, many fields, hostile part headers and raw non-multipart bodies are all expressible),
and each carries the set of statuses a correct service may answer. ``HostileCorpus(face).uploads(n, seed)``
yields ``n`` of them lazily: the kinds are interleaved in shuffled rounds, so every stretch of a few
hundred uploads covers every kind, and upload ``i`` depends only on ``(seed, i)``.

``face`` is a small RGB image with one face (the eileen sprite); the valid and "weird but valid" kinds
are derived from it, so a 200 can be checked for a face where the image is still recognisable.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from PIL import Image

CLIENT_ERRORS = frozenset({400, 413, 415})
BOUNDARY = "hostile-corpus-boundary-7f3a"


@dataclass(frozen=True)
class Upload:
    """One request: ``content`` goes out as the body (chunked, without Content-Length, when ``chunked``)."""

    kind: str
    content: bytes
    headers: dict[str, str]
    params: list[tuple[str, str]] = field(default_factory=list)
    expect: frozenset[int] = CLIENT_ERRORS
    chunked: bool = False
    wants_face: bool = False  # a 200 must report at least one face

    def body(self) -> bytes | AsyncIterator[bytes]:
        """What an ``httpx.AsyncClient`` sends: the bytes, or an async stream (chunked, no length)."""
        if not self.chunked:
            return self.content

        async def stream() -> AsyncIterator[bytes]:
            for i in range(0, len(self.content), 65536):
                yield self.content[i:i + 65536]

        return stream()


Part = tuple[str, str | None, str | None, bytes]  # (field name, file name, part content type, data)


def multipart(parts: list[Part], boundary: str = BOUNDARY) -> bytes:
    """A multipart/form-data body; names are written raw (UTF-8), hostile ones included."""
    out = bytearray()
    for name, filename, ctype, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode("utf-8", "surrogateescape")
        if ctype is not None:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def form_headers(boundary: str = BOUNDARY) -> dict[str, str]:
    return {"content-type": f"multipart/form-data; boundary={boundary}"}


def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_raw(width: int, height: int, idat: bytes, *, depth: int = 8, colour: int = 2) -> bytes:
    """A PNG with the given header and already compressed IDAT (which need not match the header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def zeros_deflated(n: int) -> bytes:
    """``n`` zero bytes, deflated at level 9 (about 1000:1), streamed so ``n`` never sits in memory."""
    comp = zlib.compressobj(9)
    block = bytes(1 << 20)
    out = [comp.compress(block) for _ in range(n >> 20)]
    out.append(comp.compress(bytes(n & ((1 << 20) - 1))))
    out.append(comp.flush())
    return b"".join(out)


def gif_declaring(width: int, height: int) -> bytes:
    screen = struct.pack("<HHBBB", width, height, 0, 0, 0)
    descriptor = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return b"GIF89a" + screen + descriptor + b"\x02\x02\x44\x01\x00;"


def bmp_declaring(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    body = bytes(256)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + len(body), 0, 0, 54) + info + body


def webp_declaring(width: int, height: int) -> bytes:
    """An animated WebP whose canvas is ``width`` x ``height`` around two tiny frames (a valid file:
    libwebp composes every frame onto the full canvas, so the canvas size is what decoding costs)."""
    tiny = Image.new("RGB", (4, 4), (200, 30, 30))
    other = Image.new("RGB", (4, 4), (30, 30, 200))
    data = bytearray(encode(tiny, "WEBP", save_all=True, append_images=[other], lossless=True, duration=50))
    assert data[12:16] == b"VP8X"
    data[24:27] = (width - 1).to_bytes(3, "little")
    data[27:30] = (height - 1).to_bytes(3, "little")
    return bytes(data)


def jpeg_declaring(width: int, height: int, small_jpeg: bytes) -> bytes:
    """``small_jpeg`` with the dimensions in its SOF0 marker replaced."""
    data = bytearray(small_jpeg)
    at = data.find(b"\xff\xc0")
    if at < 0:
        at = data.find(b"\xff\xc2")
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def psd_header(width: int, height: int) -> bytes:
    return (b"8BPS" + struct.pack(">H", 1) + bytes(6) + struct.pack(">HIIHH", 3, height, width, 8, 3)
            + struct.pack(">I", 0) * 3 + struct.pack(">H", 0) + bytes(width * height * 3 // 64 + 64))


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n%%EndComments\n"
       b"newpath 0 0 moveto 100 100 lineto stroke\nshowpage\n%%EOF\n")
HOSTILE_NAMES = [
    "../../../../etc/passwd", "..\\..\\windows\\win.ini", "/abs/path.png", "a" * 5000, "ü☃😀 名前.png",
    "con", "nul.jpg", ".htaccess", "x.png\x00.exe", "semi;colon=1.png", "name with\ttab.png", "", ".",
    "....", "%2e%2e%2fetc.png", "$(rm -rf).png", "<script>alert(1)</script>.png",
]
JUNK_PARAMS: list[list[tuple[str, str]]] = [
    [("foo", "bar")], [("min_confidence", "0.5"), ("min_confidence", "0.9")], [("annotate", "false")],
    [("annotate", "0")], [("max_faces", "3")], [("x" * 1000, "y" * 3000)],
    [("file", "/etc/passwd")], [("max_faces", "1"), ("annotate", "no"), ("debug", "1"), ("__proto__", "{}")],
]
BAD_PARAMS: list[list[tuple[str, str]]] = [
    [("min_confidence", "2")], [("min_confidence", "nan")], [("min_confidence", "1e309")],
    [("min_confidence", "-inf")], [("max_faces", "0")], [("max_faces", "99999999999999999999999")],
    [("max_faces", "1.5")], [("annotate", "perhaps")], [("min_confidence", "")], [("min_confidence", "\x00")],
]


class HostileCorpus:
    """Builds hostile uploads around ``face`` (a small RGB image with one face) and the byte limit."""

    def __init__(self, face: Image.Image, *, max_bytes: int, max_pixels: int = 40_000_000):
        self.face = face.convert("RGB")
        self.small = self.face.resize((max(1, self.face.width // 2), max(1, self.face.height // 2)))
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.kinds: dict[str, Callable[[random.Random], Upload]] = {
            name[len("k_"):]: getattr(self, name) for name in sorted(dir(self)) if name.startswith("k_")
        }
        # decoded at (nearly) the pixel limit: legitimate but slow, so one round in eight carries it
        self.rare = {"valid_near_pixel_limit"}

    # ---- shared encoded material (built once) ----
    @cached_property
    def seeds(self) -> dict[str, bytes]:
        s = self.small
        return {
            "jpeg": encode(s, "JPEG", quality=90), "png": encode(s, "PNG"), "webp": encode(s, "WEBP"),
            "gif": encode(s, "GIF", save_all=True, append_images=[s.rotate(180)], loop=0),
            "bmp": encode(s, "BMP"),
        }

    @cached_property
    def valid(self) -> list[bytes]:
        f = self.face
        return [encode(f, "PNG"), encode(f, "JPEG", quality=92), encode(f, "WEBP", quality=90),
                encode(f, "BMP"), encode(f, "WEBP", lossless=True)]

    @cached_property
    def weird(self) -> list[tuple[str, bytes, bool]]:
        """(label, bytes, face still recognisable) images every decoder path must accept."""
        f, s = self.face, self.small
        grey16 = (np.asarray(f.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        rgba = f.convert("RGBA")
        rgba.putalpha(Image.fromarray((np.indices(f.size[::-1])[1] % 64 < 48).astype(np.uint8) * 255))
        pal = f.quantize(colors=200)
        exif_images = []
        for orientation, op in [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_90),
                                (8, Image.Transpose.ROTATE_270), (2, Image.Transpose.FLIP_LEFT_RIGHT)]:
            exif = Image.Exif()
            exif[0x0112] = orientation
            exif_images.append((f"exif-{orientation}", encode(f.transpose(op), "JPEG", exif=exif.tobytes()), True))
        blank = Image.new("RGB", f.size, "white")
        return [
            ("1x1-png", encode(Image.new("RGB", (1, 1), "red"), "PNG"), False),
            ("1x1-jpeg", encode(Image.new("L", (1, 1), 9), "JPEG"), False),
            ("1x1-gif", encode(Image.new("P", (1, 1)), "GIF"), False),
            ("1x1-bmp-1bit", encode(Image.new("1", (1, 1)), "BMP"), False),
            ("1xN-png", encode(s.resize((1, 2000)), "PNG"), False),
            ("Nx1-webp", encode(s.resize((2000, 1)), "WEBP"), False),
            ("16bit-png", encode(Image.fromarray(grey16), "PNG"), False),
            ("cmyk-jpeg", encode(f.convert("CMYK"), "JPEG", quality=92), True),
            ("grey-jpeg", encode(f.convert("L"), "JPEG"), False),
            ("progressive-jpeg", encode(f, "JPEG", progressive=True, quality=92), True),
            ("palette-alpha-png", encode(pal, "PNG", transparency=0), False),
            ("rgba-png", encode(rgba, "PNG"), False),
            ("la-png", encode(f.convert("LA"), "PNG"), False),
            ("1bit-png", encode(f.convert("1"), "PNG"), False),
            ("rgba-webp-lossless", encode(rgba, "WEBP", lossless=True), False),
            ("bmp-32bit", encode(rgba, "BMP"), False),
            ("bmp-palette", encode(pal, "BMP"), False),
            ("animated-gif", encode(f, "GIF", save_all=True, append_images=[blank, blank], duration=50, loop=0), True),
            ("animated-webp", encode(f, "WEBP", save_all=True, append_images=[blank], duration=50), True),
            ("apng", encode(f, "PNG", save_all=True, append_images=[blank], duration=50), True),
            ("junk-icc-jpeg", encode(f, "JPEG", icc_profile=b"\x00junk" * 4000), True),
            *exif_images,
        ]

    @cached_property
    def not_images(self) -> list[tuple[str, bytes]]:
        s = self.small
        out = [("eps", EPS), ("psd", psd_header(64, 64)), ("pdf", b"%PDF-1.7\n1 0 obj<<>>endobj\n%%EOF\n"),
               ("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>'),
               ("html", b"<!doctype html><img src=x onerror=alert(1)>"), ("zip", b"PK\x03\x04" + bytes(100)),
               ("elf", b"\x7fELF\x02\x01\x01" + bytes(120))]
        for fmt, kw in [("TIFF", {}), ("ICO", {}), ("PCX", {}), ("TGA", {}), ("PPM", {}),
                        ("SGI", {}), ("IM", {}), ("DDS", {}), ("JPEG2000", {}), ("TIFF", {"compression": "tiff_lzw"})]:
            try:
                out.append((fmt.lower(), encode(s.convert("RGBA") if fmt == "DDS" else s, fmt, **kw)))
            except (OSError, KeyError, ValueError):
                continue  # a writer this Pillow build lacks
        return out

    @cached_property
    def zlib_bomb_over_limit(self) -> bytes:
        side = 20_000  # 400 Mpx (1-bit grey) behind ~50 KB of deflated zeros: over the pixel limit
        return png_raw(side, side, zeros_deflated((side // 8 + 1) * side), depth=1, colour=0)

    @cached_property
    def zlib_bomb_overlong_idat(self) -> bytes:
        return png_raw(64, 64, zeros_deflated(64 << 20))  # 12 KB of pixels, 64 MB of inflated IDAT

    @cached_property
    def near_limit(self) -> bytes:
        side = int((self.max_pixels * 0.9) ** 0.5)  # 90 % of the pixel limit, all black, a few KB on the wire
        return png_raw(side, side, zeros_deflated((side + 1) * side), colour=0)

    # ---- helpers ----
    def _file(self, kind: str, data: bytes, rng: random.Random, *, expect: frozenset[int] = CLIENT_ERRORS,
              name: str | None = None, ctype: str | None = "application/octet-stream",
              params: list[tuple[str, str]] | None = None, wants_face: bool = False) -> Upload:
        filename = name if name is not None else rng.choice(["upload.png", "a.jpg", "image", "x.gif"])
        return Upload(kind, multipart([("file", filename, ctype, data)]), form_headers(),
                      params or [], expect, wants_face=wants_face)

    # ---- kinds: each method k_<name>(rng) -> Upload ----
    def k_empty(self, rng: random.Random) -> Upload:
        return self._file("empty", b"", rng, expect=frozenset({400}))

    def k_random_bytes(self, rng: random.Random) -> Upload:
        return self._file("random_bytes", rng.randbytes(rng.randrange(1, 16384)), rng)

    def _truncated(self, fmt: str, rng: random.Random) -> Upload:
        data = self.seeds[fmt]
        # a truncated GIF that still holds its first frame decodes fine: 200 is then correct
        return self._file(f"truncated_{fmt}", data[:rng.randrange(0, len(data))], rng,
                          expect=CLIENT_ERRORS | {200})

    def k_truncated_jpeg(self, rng: random.Random) -> Upload:
        return self._truncated("jpeg", rng)

    def k_truncated_png(self, rng: random.Random) -> Upload:
        return self._truncated("png", rng)

    def k_truncated_webp(self, rng: random.Random) -> Upload:
        return self._truncated("webp", rng)

    def k_truncated_gif(self, rng: random.Random) -> Upload:
        return self._truncated("gif", rng)

    def k_bitflip(self, rng: random.Random) -> Upload:
        fmt = rng.choice(sorted(self.seeds))
        data = bytearray(self.seeds[fmt])
        for _ in range(rng.randrange(1, 32)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return self._file("bitflip", bytes(data), rng, expect=CLIENT_ERRORS | {200})

    def k_garbage_inside(self, rng: random.Random) -> Upload:
        fmt = rng.choice(sorted(self.seeds))
        data = self.seeds[fmt]
        at = rng.randrange(8, max(9, len(data) // 2))
        junk = rng.randbytes(rng.randrange(1, 512))
        return self._file("garbage_inside", data[:at] + junk + data[at + len(junk):], rng,
                          expect=CLIENT_ERRORS | {200})

    def k_magic_then_noise(self, rng: random.Random) -> Upload:
        magic = rng.choice([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"GIF87a", b"BM",
                            b"RIFF\x00\x10\x00\x00WEBPVP8 ", b"RIFF\xff\xff\xff\xffWEBPVP8X"])
        return self._file("magic_then_noise", magic + rng.randbytes(rng.randrange(0, 2048)), rng)

    def k_bomb_png_header(self, rng: random.Random) -> Upload:
        w, h = rng.randrange(9000, 2**31 - 1), rng.randrange(9000, 2**31 - 1)
        return self._file("bomb_png_header", png_raw(w, h, zlib.compress(bytes(64))), rng,
                          expect=frozenset({413, 400}))

    def k_bomb_gif_header(self, rng: random.Random) -> Upload:
        return self._file("bomb_gif_header", gif_declaring(rng.randrange(20000, 65536), rng.randrange(20000, 65536)),
                          rng, expect=frozenset({413, 400}))

    def k_bomb_bmp_header(self, rng: random.Random) -> Upload:
        w, h = rng.randrange(20000, 2**31 - 1), rng.randrange(20000, 2**31 - 1) * rng.choice([1, -1])
        return self._file("bomb_bmp_header", bmp_declaring(w, h), rng, expect=frozenset({413, 400}))

    def k_bomb_webp_header(self, rng: random.Random) -> Upload:
        return self._file("bomb_webp_header", webp_declaring(rng.randrange(8000, 16384), rng.randrange(8000, 16384)),
                          rng, expect=frozenset({413, 400}))

    def k_bomb_jpeg_header(self, rng: random.Random) -> Upload:
        return self._file("bomb_jpeg_header", jpeg_declaring(rng.randrange(9000, 65536), rng.randrange(9000, 65536),
                                                             self.seeds["jpeg"]), rng, expect=frozenset({413, 400}))

    def k_bomb_zlib_png(self, rng: random.Random) -> Upload:
        return self._file("bomb_zlib_png", self.zlib_bomb_over_limit, rng, expect=frozenset({413}))

    def k_bomb_overlong_idat(self, rng: random.Random) -> Upload:
        return self._file("bomb_overlong_idat", self.zlib_bomb_overlong_idat, rng, expect=frozenset({200, 400}))

    def k_valid_near_pixel_limit(self, rng: random.Random) -> Upload:
        return self._file("valid_near_pixel_limit", self.near_limit, rng, expect=frozenset({200}),
                          params=[("annotate", "false")])

    def k_oversize(self, rng: random.Random) -> Upload:
        data = rng.randbytes(self.max_bytes + rng.randrange(1, 70_000))
        return self._file("oversize", data, rng, expect=frozenset({413}))

    def k_oversize_chunked(self, rng: random.Random) -> Upload:
        up = self.k_oversize(rng)
        return Upload("oversize_chunked", up.content, up.headers, expect=frozenset({413}), chunked=True)

    def k_just_under_limit(self, rng: random.Random) -> Upload:
        """A valid PNG padded by an ancillary chunk to just under the byte limit: accepted, not 413."""
        png = self.seeds["png"]
        pad = self.max_bytes - len(png) - 12 - rng.randrange(0, 1024)
        data = png[:33] + _chunk(b"zzZz", bytes(max(0, pad))) + png[33:]
        return self._file("just_under_limit", data, rng, expect=frozenset({200}))

    def k_chunked_valid(self, rng: random.Random) -> Upload:
        up = self._file("chunked_valid", rng.choice(self.valid), rng, expect=frozenset({200}), wants_face=True)
        return Upload(up.kind, up.content, up.headers, expect=up.expect, chunked=True, wants_face=True)

    def k_wrong_field(self, rng: random.Random) -> Upload:
        name = rng.choice(["image", "File", "files", "file[]", "", "upload", "fi\u200ble"])
        body = multipart([(name, "a.png", "image/png", rng.choice(self.valid))])
        return Upload("wrong_field", body, form_headers(), expect=frozenset({400}))

    def k_many_fields(self, rng: random.Random) -> Upload:
        parts: list[Part] = [(f"f{i}", None, None, b"v" * rng.randrange(0, 64)) for i in range(rng.randrange(17, 400))]
        parts.insert(rng.randrange(len(parts)), ("file", "a.png", "image/png", rng.choice(self.valid)))
        return Upload("many_fields", multipart(parts), form_headers(), expect=frozenset({400, 413}))

    def k_many_files(self, rng: random.Random) -> Upload:
        parts: list[Part] = [("file", f"{i}.png", "image/png", self.seeds["png"]) for i in range(rng.randrange(2, 40))]
        return Upload("many_files", multipart(parts), form_headers(), expect=frozenset({400, 413}))

    def k_text_field(self, rng: random.Random) -> Upload:
        body = multipart([("file", None, None, rng.choice([b"", b"hello", self.seeds["png"]]))])
        return Upload("text_field", body, form_headers(), expect=frozenset({400}))

    def k_hostile_filename(self, rng: random.Random) -> Upload:
        name = rng.choice(HOSTILE_NAMES)
        # a quote or line break inside the part header may break the multipart framing: 400 is fine then
        return self._file("hostile_filename", rng.choice(self.valid), rng, name=name,
                          expect=frozenset({200, 400}), ctype="image/png")

    def k_huge_part_header(self, rng: random.Random) -> Upload:
        name = "n" * rng.randrange(10_000, 200_000) + ".png"
        return self._file("huge_part_header", rng.choice(self.valid), rng, name=name, expect=frozenset({200, 400}))

    def k_wrong_part_type(self, rng: random.Random) -> Upload:
        ctype = rng.choice(["text/html", "image/svg+xml", "application/x-msdownload", "image/gif", None, "%%%"])
        return self._file("wrong_part_type", rng.choice(self.valid), rng, ctype=ctype,
                          expect=frozenset({200}), wants_face=True)

    def k_wrong_request_type(self, rng: random.Random) -> Upload:
        data = rng.choice(self.valid)
        ctype = rng.choice(["image/png", "application/json", "text/plain", "application/x-www-form-urlencoded",
                            "multipart/mixed; boundary=" + BOUNDARY, "", "multipart/form-dat"])
        headers = {"content-type": ctype} if ctype else {}
        return Upload("wrong_request_type", data, headers, expect=frozenset({415}))

    def k_broken_multipart(self, rng: random.Random) -> Upload:
        body = multipart([("file", "a.png", "image/png", rng.choice(self.valid))])
        variant = rng.randrange(6)
        headers = form_headers()
        if variant == 0:
            headers = {"content-type": "multipart/form-data"}  # no boundary
        elif variant == 1:
            headers = form_headers("other-boundary")
        elif variant == 2:
            body = body[: rng.randrange(len(body))]  # cut mid-part
        elif variant == 3:
            body = body.replace(b"\r\n", b"\n")
        elif variant == 4:
            body = rng.randbytes(rng.randrange(1, 4096))
        else:
            headers = form_headers("b" * rng.randrange(71, 2000))
        return Upload("broken_multipart", body, headers, expect=frozenset({400}))

    def k_not_an_image(self, rng: random.Random) -> Upload:
        label, data = rng.choice(self.not_images)
        return self._file("not_an_image", data, rng, name=f"x.{label}", ctype="image/png",
                          expect=frozenset({415}))

    def k_weird_valid(self, rng: random.Random) -> Upload:
        _, data, face = rng.choice(self.weird)
        return self._file("weird_valid", data, rng, expect=frozenset({200}), wants_face=face)

    def k_junk_query(self, rng: random.Random) -> Upload:
        return self._file("junk_query", rng.choice(self.valid), rng, params=rng.choice(JUNK_PARAMS),
                          expect=frozenset({200}))

    def k_bad_query(self, rng: random.Random) -> Upload:
        return self._file("bad_query", rng.choice(self.valid), rng, params=rng.choice(BAD_PARAMS),
                          expect=frozenset({422}))

    def k_valid(self, rng: random.Random) -> Upload:
        return self._file("valid", rng.choice(self.valid), rng, ctype="image/png", expect=frozenset({200}),
                          wants_face=True)

    def k_valid_jpeg(self, rng: random.Random) -> Upload:
        return self._file("valid_jpeg", self.valid[1], rng, ctype="image/jpeg", expect=frozenset({200}),
                          wants_face=True)

    # ---- the stream ----
    def uploads(self, n: int, seed: int = 0) -> Iterator[Upload]:
        """``n`` uploads, kinds interleaved in shuffled rounds; upload ``i`` depends only on (seed, i)."""
        common = [k for k in self.kinds if k not in self.rare]
        i = 0
        rnd = 0
        while i < n:
            order = common + (sorted(self.rare) if rnd % 8 == 0 else [])
            random.Random(f"{seed}:round:{rnd}").shuffle(order)
            for kind in order:
                if i >= n:
                    return
                yield self.kinds[kind](random.Random(f"{seed}:{i}"))
                i += 1
            rnd += 1
