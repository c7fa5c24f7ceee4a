"""ctypes binding to ``libnvxs``, the animeface-2009 library bundled inside the ``animeface`` wheel.

The wheel's own C glue reads Pillow's private image struct and silently finds nothing with Pillow >= 12.
Calling the library directly avoids that, lets us keep a current (patched) Pillow for untrusted uploads,
and exposes the search parameters (step, scale factor, minimum window) that decide speed.
Struct layouts follow nagadomi's animeface-2009 headers (nv_core_matrix.h, nv_face_detect.h,
nv_face_analyze.h); the layout of ``nv_matrix_t`` is checked at load time.
"""

from __future__ import annotations

import ctypes
import glob
import math
import os
import threading
from dataclasses import dataclass

import numpy as np

MAX_FACES = 1024
# nv_face_analyze reads the hair and skin colours by k-means with random starts, drawn from ONE
# process-wide generator (nv_rand): unseeded, and shared by every thread, the same face gave a different
# colour on every call (35 colours in 40 readings of one sprite). Each analysis therefore runs under one
# lock, once per seed below, with the generator reseeded first, and reports the medoid of its readings:
# the same pixels always give the same colour, and one unlucky k-means start cannot decide it.
ANALYZE_SEEDS = (1, 2, 3, 4, 5)
_ANALYZE_LOCK = threading.Lock()
# On some faces of grey art (a black-and-white manga page) nv_face_analyze never returns: its k-means runs
# until the labels stop changing (no epoch limit), and on colourless samples they never settle. A call
# cannot be stopped from Python, and it would hold the lock above for good. A face whose pixels carry no
# colour has no hair or skin colour to read anyway: for it the colours are read here (medians), not there.
GREY_CHROMA = 12  # the 99th percentile of a pixel's channel spread at or below this: a colourless face


class _Matrix(ctypes.Structure):
    _fields_ = [
        ("list", ctypes.c_int),
        ("list_step", ctypes.c_uint),
        ("n", ctypes.c_int),
        ("m", ctypes.c_int),
        ("rows", ctypes.c_int),
        ("cols", ctypes.c_int),
        ("step", ctypes.c_int),
        ("alias", ctypes.c_int),
        ("v", ctypes.POINTER(ctypes.c_float)),
    ]


class _Rect(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_int), ("width", ctypes.c_int), ("height", ctypes.c_int)]


class _FacePosition(ctypes.Structure):
    _fields_ = [("likelihood", ctypes.c_float)] + [
        (part, _Rect) for part in ("face", "left_eye", "right_eye", "nose", "mouth", "chin")
    ]


class _Color(ctypes.Structure):
    _fields_ = [("v", ctypes.c_float * 4)]


class _FaceFeature(ctypes.Structure):
    _fields_ = [
        ("eye_ratio", ctypes.c_float),
        ("face_ratio", ctypes.c_float),
        ("skin_bgr", _Color),
        ("skin_ec", _Color),
        ("hair_bgr", _Color),
        ("hair_ec", _Color),
        ("left_eye_bgr", _Color * 4),
        ("right_eye_bgr", _Color * 4),
        ("eye_bgr", _Color * 4),
        ("left_eye_ec", _Color * 4),
        ("right_eye_ec", _Color * 4),
        ("eye_ec", _Color * 4),
    ]


_MatP = ctypes.POINTER(_Matrix)
_VP = ctypes.c_void_p


@dataclass(frozen=True)
class RawFace:
    likelihood: float
    face: tuple[int, int, int, int]  # x, y, w, h
    left_eye: tuple[int, int, int, int]
    right_eye: tuple[int, int, int, int]
    nose: tuple[int, int]
    mouth: tuple[int, int, int, int]
    chin: tuple[int, int]
    hair_rgb: tuple[int, int, int]
    skin_rgb: tuple[int, int, int]


def find_library() -> str:
    """Path of the bundled libnvxs (auditwheel renames it into ``animeface.libs``)."""
    import animeface  # noqa: PLC0415 - only to locate the wheel

    root = os.path.dirname(os.path.dirname(os.path.abspath(animeface.__file__)))
    candidates = sorted(glob.glob(os.path.join(root, "animeface.libs", "libnvxs*.so*")))
    candidates += sorted(glob.glob(os.path.join(os.path.dirname(animeface.__file__), "libnvxs*.so*")))
    if not candidates:
        raise OSError("libnvxs not found inside the animeface wheel; reinstall 'animeface'")
    return candidates[0]


class NvxsLibrary:
    """The loaded library with typed entry points."""

    def __init__(self, path: str | None = None):
        self.path = path or find_library()
        lib = ctypes.CDLL(self.path)
        lib.nv_matrix3d_alloc.restype = _MatP
        lib.nv_matrix3d_alloc.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.nv_matrix_free.restype = None
        lib.nv_matrix_free.argtypes = [ctypes.POINTER(_MatP)]
        lib.nv_matrix_zero.restype = None
        lib.nv_matrix_zero.argtypes = [_MatP]
        lib.nv_gray.restype = None
        lib.nv_gray.argtypes = [_MatP, _MatP]
        lib.nv_gaussian5x5.restype = None
        lib.nv_gaussian5x5.argtypes = [_MatP, ctypes.c_int, _MatP, ctypes.c_int]
        lib.nv_laplacian1.restype = None
        lib.nv_laplacian1.argtypes = [_MatP, _MatP, ctypes.c_float]
        lib.nv_integral.restype = None
        lib.nv_integral.argtypes = [_MatP, _MatP, ctypes.c_int]
        lib.nv_face_detect.restype = ctypes.c_int
        lib.nv_face_detect.argtypes = [
            ctypes.POINTER(_FacePosition), ctypes.c_int, _MatP, _MatP, ctypes.POINTER(_Rect),
            _VP, _VP, ctypes.POINTER(_VP), ctypes.c_int, _VP,
            ctypes.c_float, ctypes.c_float, ctypes.c_float,
        ]
        lib.nv_face_analyze.restype = None
        lib.nv_face_analyze.argtypes = [ctypes.POINTER(_FaceFeature), ctypes.POINTER(_FacePosition), _MatP]
        lib.nv_srand.restype = None
        lib.nv_srand.argtypes = [ctypes.c_ulong]
        self._lib = lib
        self._dir = self._symbol("nv_face_mlp_dir")
        self._detector = self._symbol("nv_face_mlp_face_00")
        self._bagging = (_VP * 3)(self._symbol("nv_face_mlp_face_01"), self._symbol("nv_face_mlp_face_02"), None)
        self._parts = self._symbol("nv_face_mlp_parts")
        self._check_layout()

    def _symbol(self, name: str) -> int:
        return ctypes.addressof(ctypes.c_char.in_dll(self._lib, name))

    def _check_layout(self) -> None:
        m = self._lib.nv_matrix3d_alloc(3, 5, 7)
        try:
            c = m.contents
            if (c.n, c.m, c.rows, c.cols, c.step) != (3, 35, 5, 7, 3):
                raise OSError(f"unexpected nv_matrix_t layout in {self.path}; this animeface build is not supported")
        finally:
            self._lib.nv_matrix_free(ctypes.byref(m))

    def _matrix(self, channels: int, rows: int, cols: int) -> ctypes._Pointer:
        m = self._lib.nv_matrix3d_alloc(channels, rows, cols)
        if not m:
            raise MemoryError("nv_matrix3d_alloc failed")
        self._lib.nv_matrix_zero(m)
        return m

    def _view(self, m: ctypes._Pointer) -> np.ndarray:
        c = m.contents
        return np.ctypeslib.as_array(c.v, shape=(c.rows, c.cols, c.step))

    def prepare(self, rgb: np.ndarray) -> "PreparedImage":
        """``rgb`` (HxWx3 uint8) turned into what libnvxs searches; use as a context manager."""
        return PreparedImage(self, rgb)

    def detect(
        self,
        rgb: np.ndarray,
        *,
        step: float = 4.0,
        scale_factor: float = 1.095,
        min_window: float = 42.592,
        analyze: bool = True,
    ) -> list[RawFace]:
        """Run animeface on an HxWx3 uint8 RGB array. Defaults are the animeface wheel's own."""
        with self.prepare(rgb) as prepared:
            return prepared.detect(step=step, scale_factor=scale_factor, min_window=min_window, analyze=analyze)


class PreparedImage:
    """An image ready for searching: its BGR matrix (for colour analysis) and the grey and edge integral
    images that ``nv_face_detect`` scans. Preparing a large image costs as much as a fraction of a search
    (0.28 s for 2400x1530 here), so a scheme that searches one image several times prepares it once.
    ``detect`` only reads the matrices, so several threads may search one prepared image at once."""

    def __init__(self, library: NvxsLibrary, rgb: np.ndarray):
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError("expected an HxWx3 RGB array")
        self._library = library
        lib = library._lib
        h, w, _ = rgb.shape
        self.width, self.height = w, h
        self._owned: list[ctypes._Pointer] = []
        try:
            self._bgr = self._keep(library._matrix(3, h, w))
            library._view(self._bgr)[:] = rgb[:, :, ::-1]
            self._gray_ii = self._keep(library._matrix(1, h + 1, w + 1))
            self._edge_ii = self._keep(library._matrix(1, h + 1, w + 1))
            scratch = [library._matrix(1, h, w) for _ in range(3)]
            try:
                gray, smooth, edge = scratch
                lib.nv_gray(gray, self._bgr)
                lib.nv_gaussian5x5(smooth, 0, gray, 0)
                lib.nv_laplacian1(edge, smooth, 4.0)
                lib.nv_integral(self._gray_ii, gray, 0)
                lib.nv_integral(self._edge_ii, edge, 0)
            finally:
                for m in scratch:
                    lib.nv_matrix_free(ctypes.byref(m))
        except BaseException:
            self.close()
            raise

    def _keep(self, m: ctypes._Pointer) -> ctypes._Pointer:
        self._owned.append(m)
        return m

    def detect(
        self, *, step: float = 4.0, scale_factor: float = 1.095, min_window: float = 42.592, analyze: bool = True
    ) -> list[RawFace]:
        if not self._owned:
            raise ValueError("this prepared image was closed")
        lib, L = self._library._lib, self._library
        size = _Rect(0, 0, self.width, self.height)
        faces = (_FacePosition * MAX_FACES)()
        n = lib.nv_face_detect(
            faces, MAX_FACES, self._gray_ii, self._edge_ii, ctypes.byref(size),
            L._dir, L._detector, L._bagging, 2, L._parts,
            step, scale_factor, min_window,
        )
        out = []
        for i in range(n):
            f = faces[i]
            hair = skin = (0, 0, 0)
            if analyze:
                hair, skin = self._analyze(f)
            out.append(
                RawFace(
                    likelihood=float(f.likelihood),
                    face=_rect(f.face),
                    left_eye=_rect(f.left_eye),
                    right_eye=_rect(f.right_eye),
                    nose=(f.nose.x, f.nose.y),
                    mouth=_rect(f.mouth),
                    chin=(f.chin.x, f.chin.y),
                    hair_rgb=hair,
                    skin_rgb=skin,
                )
            )
        return out

    def _analyze(self, face: _FacePosition) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """(hair, skin) RGB of one face: the medoid of one seeded reading per ``ANALYZE_SEEDS`` entry; for a
        colourless face, the median colours of its hair band and its cheeks (``grey_colours``)."""
        grey = grey_colours(self._library._view(self._bgr), _rect(face.face), _rect(face.left_eye),
                            _rect(face.right_eye), _rect(face.mouth))
        if grey is not None:
            return grey
        lib = self._library._lib
        hairs, skins = [], []
        with _ANALYZE_LOCK:
            for seed in ANALYZE_SEEDS:
                feat = _FaceFeature()
                lib.nv_srand(seed)
                lib.nv_face_analyze(ctypes.byref(feat), ctypes.byref(face), self._bgr)
                hairs.append(_rgb(feat.hair_bgr))
                skins.append(_rgb(feat.skin_bgr))
        return medoid(hairs), medoid(skins)

    def close(self) -> None:
        for m in self._owned:
            self._library._lib.nv_matrix_free(ctypes.byref(m))
        self._owned = []

    def __enter__(self) -> "PreparedImage":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def grey_colours(
    bgr: np.ndarray, face: tuple[int, int, int, int], left_eye: tuple[int, int, int, int],
    right_eye: tuple[int, int, int, int], mouth: tuple[int, int, int, int],
) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """(hair, skin) RGB of a colourless face read from its pixels, or None when the face has colour. The
    face box and the band of its height above it (where nv_face_analyze samples hair) decide; hair is the
    median of that band down to the eyes, skin the median between the eyes and the mouth."""
    x, y, w, h = face
    rows, cols = bgr.shape[:2]
    top, left, right, bottom = max(0, y - h // 2), max(0, x), min(cols, x + w), min(rows, y + h)
    area = bgr[top:bottom, left:right, :3]
    if area.size == 0:
        return None
    spread = area.max(axis=2) - area.min(axis=2)
    if float(np.percentile(spread, 99)) > GREY_CHROMA:
        return None
    eyes_top = max(top + 1, min(left_eye[1], right_eye[1]))
    eyes_bottom = max(left_eye[1] + left_eye[3], right_eye[1] + right_eye[3])
    hair = bgr[top:eyes_top, left:right, :3].reshape(-1, 3)
    cheeks = bgr[eyes_bottom:max(eyes_bottom + 1, mouth[1]), left:right, :3].reshape(-1, 3)
    if cheeks.size == 0:
        cheeks = area.reshape(-1, 3)

    def median(pixels: np.ndarray) -> tuple[int, int, int]:
        b, g, r = (int(round(float(v))) for v in np.median(pixels, axis=0))
        return (r, g, b)

    return median(hair), median(cheeks)


def medoid(colours: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    """The colour closest (summed RGB distance) to all the others; the first such on a tie."""
    return min(colours, key=lambda c: sum(math.dist(c, o) for o in colours))


def _rect(r: _Rect) -> tuple[int, int, int, int]:
    return (r.x, r.y, r.width, r.height)


def _rgb(c: _Color) -> tuple[int, int, int]:
    b, g, r = (int(max(0.0, min(255.0, c.v[i]))) for i in range(3))
    return (r, g, b)
