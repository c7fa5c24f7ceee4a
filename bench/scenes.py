"""Labelled scene sets for face detection and avatar framing, composed from the fetched Ren'Py art.

Every Ren'Py character sprite and expression (the ``eileen``/``lucy``/``sylvie`` PNGs from ``make art``)
is placed on the Ren'Py backgrounds (``bg *.jpg``) with a fixed seed: mirrored or not, scaled so its face
is 30-300 px wide, rotated by up to 10 degrees either way, with colour/brightness/contrast jitter, one to
four characters per image (bodies may overlap; every labelled face stays at least ``MIN_VISIBLE`` visible
and wholly inside the image), plus face-like distractors that are not faces. The whole image is jittered
again and saved as JPEG at quality 60-95. Face boxes are not detected but carried by construction: each
sprite's hand-labelled face box (``tests/labels/renpy.json``) goes through the same flip, scale, rotation
and translation as its pixels.

Images are split once: index ``i`` belongs to *tune* when ``i % 3 == 0`` (one third) and to *test*
otherwise (two thirds). Choose parameters on tune only; report on test. Each image is drawn from its own
random stream (seed, index), so any image can be rebuilt alone and the sets do not change when ``--count``
grows.

    python bench/scenes.py [--art DIR] [--out DIR] [--count N] [--seed S]

``make scenes`` writes ``.cache/scenes/{tune,test}/`` (git-ignored): ``scene-NNNN.jpg`` files and one
``labels.json`` per split::

    {
      "generator": "bench/scenes.py", "seed": 9, "split": "tune", "count": 360,
      "convention": "...",                       # the box convention, in words
      "hair": {"eileen": "red", ...},            # the character -> hair colour table
      "images": {
        "scene-0000.jpg": {
          "size": [width, height],
          "background": {"kind": "full|crop|plain|busy", "source": ["bg uni.jpg", ...]},
          "jpeg_quality": 87,
          "faces": [                             # the truth: one entry per visible character face
            {"bbox": [x1, y1, x2, y2],           # output pixels, float, x2/y2 exclusive edges
             "character": "eileen", "hair": "red", "hair_rgb": [248, 127, 125],
             "sprite": "eileen happy.png", "mirrored": false, "angle": -3.5,
             "face_width": 84.0, "visible": 1.0}  # visible: share of the box not covered by later sprites
          ],
          "target": 0,                           # index in "faces" of the target character's face
          "distractors": [                       # face-like things that are NOT faces (never count them)
            {"kind": "smiley|faceless|body", "bbox": [x1, y1, x2, y2]}
          ]
        }
      }
    }

Box convention: the same as ``tests/labels/renpy.json`` (a tight square-ish box from the eyebrows region
to the chin). Under rotation a face keeps its own size: the box is the sprite's face box scaled by the
sprite's scale, centred on where the rotation takes the face's centre, axis-aligned (not the bounding box
of the rotated rectangle, which would grow by up to 16% at 10 degrees and describe no detector's box).
The *target* is the character of the image's first sprite (``i`` mod the sprite list, so every sprite is a
target in both splits); it appears exactly once per image, so "prefer the target's face" has one answer;
hair colours tell the characters apart (measured on the sprites' hair just above the face box).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from facedetect.types import iou

ROOT = Path(__file__).resolve().parent.parent
SEED = 9
COUNT = 360
FACE_MIN, FACE_MAX = 30.0, 300.0
MAX_ANGLE = 10.0
MIN_VISIBLE = 0.8  # a labelled face must keep this share of its box uncovered by sprites drawn over it
JPEG_QUALITY = (60, 95)
SIZES = [(1280, 720), (1024, 768), (960, 960), (800, 600), (720, 1080), (1600, 900), (1200, 800)]
# character -> (hair colour name, median RGB of the hair just above the face box, measured on the sprites)
HAIR = {
    "eileen": ("red", (248, 127, 125)),
    "lucy": ("black", (60, 61, 63)),
    "sylvie": ("orange", (208, 114, 85)),
}
CONVENTION = (
    "One box per labelled character face, [x1, y1, x2, y2] floats in output pixels (origin top-left, x2/y2 "
    "exclusive edges), in the style of tests/labels/renpy.json: the sprite's hand-labelled face box carried "
    "through the sprite's flip and scale; under rotation the box keeps the face's own scaled size and is "
    "centred on the rotated face centre (axis-aligned). Faces are 30-300 px wide, wholly inside the image and "
    f"at least {MIN_VISIBLE:.0%} uncovered by sprites drawn over them. Distractors are not faces."
)


def tune_split(index: int) -> bool:
    """The one split: every third image is for tuning, the rest for testing."""
    return index % 3 == 0


@dataclass(frozen=True)
class Sprite:
    name: str
    character: str
    rgba: np.ndarray  # H x W x 4, uint8
    face: tuple[float, float, float, float]


def load_sprites(art: Path, labels: Path) -> list[Sprite]:
    """Every labelled character sprite (RGBA PNG with one face box), sorted by name."""
    data = json.loads(labels.read_text())["images"]
    sprites = []
    for name in sorted(data):
        character = name.split()[0]
        if character not in HAIR or len(data[name]) != 1:
            continue
        rgba = np.asarray(Image.open(art / name).convert("RGBA"))
        sprites.append(Sprite(name, character, rgba, tuple(float(v) for v in data[name][0])))
    if not sprites:
        raise FileNotFoundError(f"no labelled character sprites in {art} (run `make art`)")
    return sprites


def load_backgrounds(art: Path) -> list[tuple[str, np.ndarray]]:
    found = [(p.name, np.asarray(Image.open(p).convert("RGB"))) for p in sorted(art.glob("bg *.jpg"))]
    if not found:
        raise FileNotFoundError(f"no 'bg *.jpg' backgrounds in {art} (run `make art`)")
    return found


# --- backgrounds -------------------------------------------------------------------------------------------


def _fit(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """Resize ``img`` to cover w x h keeping its aspect, then centre-crop."""
    ih, iw = img.shape[:2]
    s = max(w / iw, h / ih)
    nw, nh = max(w, round(iw * s)), max(h, round(ih * s))
    r = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
    x0, y0 = (nw - w) // 2, (nh - h) // 2
    return r[y0:y0 + h, x0:x0 + w]


def _crop(rng: np.random.Generator, img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    ih, iw = img.shape[:2]
    f = rng.uniform(lo, hi)
    cw, ch = max(16, int(iw * f)), max(16, int(ih * f))
    x0, y0 = int(rng.integers(0, iw - cw + 1)), int(rng.integers(0, ih - ch + 1))
    return img[y0:y0 + ch, x0:x0 + cw]


def background(rng: np.random.Generator, bgs: list[tuple[str, np.ndarray]], w: int, h: int) -> tuple[np.ndarray, dict]:
    kind = ["full", "crop", "plain", "busy"][int(rng.choice(4, p=[0.3, 0.3, 0.15, 0.25]))]
    pick = [bgs[int(i)] for i in rng.choice(len(bgs), size=4, replace=False)]
    if kind == "full":
        img = _fit(pick[0][1], w, h)
        used = [pick[0][0]]
    elif kind == "crop":
        img = _fit(_crop(rng, pick[0][1], 0.3, 0.8), w, h)
        used = [pick[0][0]]
    elif kind == "plain":
        # Little texture: a heavily blurred crop, or a two-colour gradient taken from one.
        src = _fit(_crop(rng, pick[0][1], 0.2, 0.5), w, h)
        if rng.random() < 0.5:
            k = int(max(w, h) // 8) | 1
            img = cv2.GaussianBlur(src, (k, k), 0)
        else:
            a, b = src[0, 0].astype(float), src[-1, -1].astype(float)
            t = np.linspace(0.0, 1.0, h)[:, None, None]
            img = np.broadcast_to(a * (1 - t) + b * t, (h, w, 3)).astype(np.uint8)
        used = [pick[0][0]]
    else:
        # Busy: a collage of crops of several backgrounds, with random strokes and shapes over it.
        img = np.empty((h, w, 3), np.uint8)
        cols, rows = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        cells = [(c, r) for r in range(rows) for c in range(cols)]
        used = []
        for k, (c, r) in enumerate(cells):
            x0, x1 = c * w // cols, (c + 1) * w // cols
            y0, y1 = r * h // rows, (r + 1) * h // rows
            name, src = pick[k % len(pick)]
            img[y0:y1, x0:x1] = _fit(_crop(rng, src, 0.25, 0.7), x1 - x0, y1 - y0)
            used.append(name)
        for _ in range(int(rng.integers(15, 50))):
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            shape = rng.random()
            if shape < 0.4:
                cv2.line(img, (x, y), (int(rng.integers(0, w)), int(rng.integers(0, h))), colour,
                         int(rng.integers(1, 8)), cv2.LINE_AA)
            elif shape < 0.7:
                cv2.rectangle(img, (x, y), (x + int(rng.integers(10, 150)), y + int(rng.integers(10, 150))),
                              colour, int(rng.choice([-1, 2, 4])))
            else:
                cv2.ellipse(img, (x, y), (int(rng.integers(5, 80)), int(rng.integers(5, 80))),
                            float(rng.uniform(0, 180)), 0, 360, colour, int(rng.choice([-1, 2, 4])), cv2.LINE_AA)
        used = sorted(set(used))
    return np.ascontiguousarray(img), {"kind": kind, "source": used}


# --- sprite transforms -------------------------------------------------------------------------------------


def jitter_colour(rng: np.random.Generator, rgb: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Brightness, contrast and saturation jitter (hue is left alone: hair colour identifies characters)."""
    f = rgb.astype(np.float32)
    grey = f @ np.array([0.299, 0.587, 0.114], np.float32)
    sat = 1.0 + strength * rng.uniform(-0.3, 0.3)
    f = grey[..., None] + (f - grey[..., None]) * sat
    contrast = 1.0 + strength * rng.uniform(-0.2, 0.2)
    f = (f - 128.0) * contrast + 128.0
    f = f * (1.0 + strength * rng.uniform(-0.25, 0.25))
    return np.clip(f, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Warp:
    """A sprite (or part of one) drawn on the canvas: premultiplied colour and coverage, canvas-sized."""

    colour: np.ndarray  # H x W x 3 float32, premultiplied
    alpha: np.ndarray  # H x W float32 in [0, 1]


def place(
    rgba: np.ndarray, box: tuple[float, float, float, float], scale: float, mirrored: bool, angle: float,
    centre: tuple[float, float], canvas: tuple[int, int],
) -> tuple[Warp, tuple[float, float, float, float]]:
    """Flip, scale and rotate ``rgba`` so the centre of ``box`` lands on ``centre``; return the warped
    layer and ``box`` carried along (same scaled size, centred on the rotated centre)."""
    h, w = rgba.shape[:2]
    x1, y1, x2, y2 = box
    if mirrored:
        rgba = rgba[:, ::-1]
        x1, x2 = w - x2, w - x1
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    sx, sy = nw / w, nh / h
    pre = rgba.astype(np.float32) / 255.0
    pre[..., :3] *= pre[..., 3:4]  # premultiply so resampling does not bleed transparent colour
    small = cv2.resize(pre, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    small = np.clip(small, 0.0, 1.0)
    # Face centre in the scaled sprite, as pixel-index coordinates (edge coordinate - 0.5).
    fcx, fcy = (x1 + x2) / 2 * sx - 0.5, (y1 + y2) / 2 * sy - 0.5
    cw, ch = canvas
    tx, ty = centre[0] - 0.5, centre[1] - 0.5
    # Rotate about the face centre, then move the face centre to (tx, ty).
    m = cv2.getRotationMatrix2D((fcx, fcy), angle, 1.0)
    m[0, 2] += tx - fcx
    m[1, 2] += ty - fcy
    out = cv2.warpAffine(small, m, (cw, ch), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    fw, fh = (x2 - x1) * sx, (y2 - y1) * sy
    face = (centre[0] - fw / 2, centre[1] - fh / 2, centre[0] + fw / 2, centre[1] + fh / 2)
    return Warp(out[..., :3] * 255.0, out[..., 3]), face


def composite(base: np.ndarray, layer: Warp) -> np.ndarray:
    a = layer.alpha[..., None]
    return base * (1.0 - a) + layer.colour


def covered(layers: list[Warp], box: tuple[float, float, float, float]) -> float:
    """Share of ``box`` that ``layers`` (drawn over it) cover, alpha-weighted."""
    x1, y1, x2, y2 = math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3])
    if not layers:
        return 0.0
    seen = np.ones((y2 - y1, x2 - x1), np.float32)
    for layer in layers:
        seen *= 1.0 - layer.alpha[y1:y2, x1:x2]
    return float(1.0 - seen.mean())


# --- distractors -------------------------------------------------------------------------------------------


def smiley(rng: np.random.Generator, size: int) -> np.ndarray:
    """A cartoon face-like disc (skin-coloured, two eyes, a mouth): face-like, not an anime face."""
    s = size
    img = np.zeros((s, s, 4), np.uint8)
    skin = (int(rng.integers(220, 256)), int(rng.integers(180, 225)), int(rng.integers(150, 200)), 255)
    cv2.ellipse(img, (s // 2, s // 2), (s // 2 - 1, int(s * 0.47)), 0, 0, 360, skin, -1, cv2.LINE_AA)
    eye = (int(rng.integers(0, 90)), int(rng.integers(0, 90)), int(rng.integers(40, 160)), 255)
    ey, ex, er = int(s * 0.42), int(s * 0.2), max(2, int(s * rng.uniform(0.06, 0.11)))
    for cx in (s // 2 - ex, s // 2 + ex):
        cv2.ellipse(img, (cx, ey), (er, int(er * 1.5)), 0, 0, 360, eye, -1, cv2.LINE_AA)
    cv2.ellipse(img, (s // 2, int(s * 0.66)), (int(s * 0.15), int(s * 0.07)), 0, 0, 180, (120, 40, 40, 255),
                max(1, s // 30), cv2.LINE_AA)
    if rng.random() < 0.6:  # a hair cap in a random colour
        hair = tuple(int(v) for v in rng.integers(0, 256, 3)) + (255,)
        cv2.ellipse(img, (s // 2, s // 2), (s // 2 - 1, int(s * 0.47)), 0, 180, 360, hair, -1, cv2.LINE_AA)
        cv2.ellipse(img, (s // 2, int(s * 0.42)), (s // 2 - 1, int(s * 0.12)), 0, 0, 360, skin, -1, cv2.LINE_AA)
        for cx in (s // 2 - ex, s // 2 + ex):
            cv2.ellipse(img, (cx, ey), (er, int(er * 1.5)), 0, 0, 360, eye, -1, cv2.LINE_AA)
    return img


def faceless(sprite: Sprite) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The sprite's head with the face painted over in its own skin colour: hair framing a blank face."""
    x1, y1, x2, y2 = (int(v) for v in sprite.face)
    fw, fh = x2 - x1, y2 - y1
    hx1, hy1 = max(0, x1 - fw // 2), max(0, y1 - fh // 2)
    hx2, hy2 = min(sprite.rgba.shape[1], x2 + fw // 2), min(sprite.rgba.shape[0], y2 + fh // 3)
    head = sprite.rgba[hy1:hy2, hx1:hx2].copy()
    region = sprite.rgba[y1:y2, x1:x2].reshape(-1, 4).astype(int)
    skinlike = region[(region[:, 3] > 200) & (region[:, 0] > 200) & (region[:, 0] >= region[:, 1])
                      & (region[:, 1] >= region[:, 2])]
    skin = tuple(int(v) for v in np.median(skinlike[:, :3], axis=0)) if len(skinlike) else (250, 220, 200)
    cx, cy = (x1 + x2) // 2 - hx1, (y1 + y2) // 2 - hy1 + fh // 10
    cv2.ellipse(head, (cx, cy), (int(fw * 0.42), int(fh * 0.42)), 0, 0, 360, skin + (255,), -1, cv2.LINE_AA)
    return head, (float(hx1), float(hy1), float(hx2), float(hy2))


def body(sprite: Sprite) -> np.ndarray:
    """The sprite below its chin: clothes, hands, hair ends, no face."""
    y2 = int(sprite.face[3] + 0.15 * (sprite.face[3] - sprite.face[1]))
    return np.ascontiguousarray(sprite.rgba[y2:])


def bbox_of_alpha(alpha: np.ndarray) -> list[float] | None:
    ys, xs = np.nonzero(alpha > 0.5)
    if not len(xs):
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


# --- one scene ---------------------------------------------------------------------------------------------


def _r(box: tuple[float, ...] | list[float]) -> list[float]:
    return [round(float(v), 1) for v in box]


def scene(index: int, sprites: list[Sprite], bgs: list[tuple[str, np.ndarray]], seed: int = SEED) -> tuple[Image.Image, dict]:
    """Compose image ``index``: (RGB image before JPEG encoding, its label entry)."""
    rng = np.random.default_rng([seed, index])
    w, h = SIZES[int(rng.integers(len(SIZES)))]
    bg, bg_info = background(rng, bgs, w, h)
    canvas = bg.astype(np.float32)

    # Distractors first: characters may be drawn over them.
    distractors = []
    for _ in range(int(rng.choice([0, 0, 1, 1, 2, 3]))):
        kind = ["smiley", "faceless", "body"][int(rng.integers(3))]
        spr = sprites[int(rng.integers(len(sprites)))]
        if kind == "smiley":
            size = int(rng.uniform(30, 220))
            rgba, anchor = smiley(rng, size), (0.0, 0.0, float(size), float(size))
            scale = 1.0
        elif kind == "faceless":
            rgba, _ = faceless(spr)
            fw = spr.face[2] - spr.face[0]
            scale = math.exp(rng.uniform(math.log(FACE_MIN), math.log(FACE_MAX))) / fw
            anchor = (0.0, 0.0, float(rgba.shape[1]), float(rgba.shape[0]))
        else:
            rgba = body(spr)
            scale = rng.uniform(0.3, 1.5)
            anchor = (0.0, 0.0, float(rgba.shape[1]), float(rgba.shape[0]))
        rgba = np.dstack([jitter_colour(rng, rgba[..., :3]), rgba[..., 3]])
        centre = (rng.uniform(0, w), rng.uniform(0, h))
        layer, _ = place(rgba, anchor, scale, bool(rng.random() < 0.5), rng.uniform(-MAX_ANGLE, MAX_ANGLE),
                         centre, (w, h))
        bb = bbox_of_alpha(layer.alpha)
        if bb is None:
            continue
        canvas = composite(canvas, layer)
        distractors.append({"kind": kind, "bbox": _r(bb)})

    # Characters: the target (sprite index mod the list) first, the others from other characters.
    n = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.3, 0.25, 0.15]))
    target_sprite = sprites[index % len(sprites)]
    # Each other sprite: a character other than the target's (uniformly), then one of its sprites.
    others = sorted({s.character for s in sprites} - {target_sprite.character})
    chosen = [target_sprite]
    for _ in range(n - 1):
        character = others[int(rng.integers(len(others)))]
        pool = [s for s in sprites if s.character == character]
        chosen.append(pool[int(rng.integers(len(pool)))])
    order = rng.permutation(n)  # drawing order: the target is not always at the back
    placed: list[tuple[int, Sprite, Warp, tuple[float, float, float, float], dict]] = []
    # The largest face that lets n faces sit side by side; sizes are log-uniform within [30, that].
    biggest = min(FACE_MAX, 0.9 * min(w / n, h * 0.6))
    for slot in order:
        spr = chosen[slot]
        fx1, fy1, fx2, fy2 = spr.face
        for _attempt in range(40):
            face_w = math.exp(rng.uniform(math.log(FACE_MIN), math.log(max(FACE_MIN + 1, biggest))))
            scale = face_w / (fx2 - fx1)
            fw, fh = face_w, (fy2 - fy1) * scale
            margin = 0.5 * math.hypot(fw, fh) + 1
            if w - 2 * margin <= 0 or h - 2 * margin <= 0:
                continue
            centre = (rng.uniform(margin, w - margin), rng.uniform(margin, h - margin))
            mirrored = bool(rng.random() < 0.5)
            angle = float(rng.uniform(-MAX_ANGLE, MAX_ANGLE))
            rgba = np.dstack([jitter_colour(rng, spr.rgba[..., :3]), spr.rgba[..., 3]])
            layer, face = place(rgba, spr.face, scale, mirrored, angle, centre, (w, h))
            # The new sprite may cover faces already drawn; keep it only if every face stays visible,
            # and only if its own face is not mostly on top of another face (two boxes in one place).
            layers = [p[2] for p in placed] + [layer]
            ok = all(1.0 - covered(layers[k + 1:], p[3]) >= MIN_VISIBLE for k, p in enumerate(placed))
            ok = ok and all(iou(face, p[3]) < 0.2 for p in placed)
            if ok:
                info = {"sprite": spr.name, "mirrored": mirrored, "angle": round(angle, 2),
                        "face_width": round(face_w, 1)}
                placed.append((int(slot), spr, layer, face, info))
                break
    faces = []
    layers = [p[2] for p in placed]
    for k, (slot, spr, layer, face, info) in enumerate(placed):
        canvas = composite(canvas, layer)
        hair, rgb = HAIR[spr.character]
        faces.append({
            "bbox": _r(face), "character": spr.character, "hair": hair, "hair_rgb": list(rgb), **info,
            "visible": round(1.0 - covered(layers[k + 1:], face), 3), "_slot": slot,
        })
    target = next((i for i, f in enumerate(faces) if f["_slot"] == 0), None)
    for f in faces:
        del f["_slot"]

    img = np.clip(canvas, 0, 255).astype(np.uint8)
    img = jitter_colour(rng, img, strength=0.5)
    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    entry = {"size": [w, h], "background": bg_info, "jpeg_quality": quality, "faces": faces, "target": target,
             "distractors": distractors}
    return Image.fromarray(img), entry

def generate(art: Path, out: Path, count: int = COUNT, seed: int = SEED, indices: list[int] | None = None,
             labels: Path = ROOT / "tests/labels/renpy.json") -> dict[str, dict]:
    """Write the scenes (all ``count``, or only ``indices``) under ``out``/{tune,test}; return the labels
    documents by split name."""
    sprites, bgs = load_sprites(art, labels), load_backgrounds(art)
    docs: dict[str, dict] = {}
    for split in ("tune", "test"):
        docs[split] = {"generator": "bench/scenes.py", "seed": seed, "split": split, "count": count,
                       "convention": CONVENTION, "hair": {c: v[0] for c, v in HAIR.items()}, "images": {}}
        (out / split).mkdir(parents=True, exist_ok=True)
        if indices is None:  # a full build replaces the split: no stale scenes from a larger --count
            for stale in (out / split).glob("scene-*.jpg"):
                stale.unlink()
    for i in (range(count) if indices is None else indices):
        split = "tune" if tune_split(i) else "test"
        image, entry = scene(i, sprites, bgs, seed)
        name = f"scene-{i:04d}.jpg"
        image.save(out / split / name, "JPEG", quality=entry["jpeg_quality"])
        docs[split]["images"][name] = entry
    for split, doc in docs.items():
        (out / split / "labels.json").write_text(json.dumps(doc, indent=1) + "\n")
    return docs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--art", type=Path, default=ROOT / ".cache/art/images")
    ap.add_argument("--labels", type=Path, default=ROOT / "tests/labels/renpy.json")
    ap.add_argument("--out", type=Path, default=ROOT / ".cache/scenes")
    ap.add_argument("--count", type=int, default=COUNT)
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args(argv)
    docs = generate(args.art, args.out, args.count, args.seed, labels=args.labels)
    for split, doc in docs.items():
        n_faces = sum(len(e["faces"]) for e in doc["images"].values())
        print(f"{split}: {len(doc['images'])} images, {n_faces} faces -> {args.out / split}")
    (args.out / ".complete").write_text(f"seed {args.seed} count {args.count}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
