"""Avatar crop quality: does the round avatar hold a TRUE face at a good size?

Two labelled sets, each image one dry-run change with the embedded defaults (one candidate):

- the hand-labelled Ren'Py art with a face (``tests/labels/renpy.json``: sprites and band CGs);
- the generated scene sets (``make scenes`` -> ``.cache/scenes/{tune,test}``, bench/scenes.py): sprites
  composited onto backgrounds, one to four characters, faces 30-300 px wide, boxes known by construction.
  Parameters were chosen on ``tune``; ``test`` is the held-out number.

An avatar succeeds when a labelled face box lies wholly inside the circle inscribed in its square (all
four corners) at 20-75 % of the square's width; "target" asks that of the image's target character's face
(scene sets only). Methods, in the same run, all on the same detections where they use any:

- ours: the detect and crop stages as a change runs them: the default detector (animeface, in-process)
  with the detect stage's zoomed second look when it finds no usable face (``mikubot.detection``), then
  ``mikubot.pipeline.frame_best`` on the one picture, with the default settings (``MIKU_HAIR_COLOURS``:
  Miku's teal, which no character here has, so the face score decides — unless the hair read above a
  false-positive face, a drawn smiley on blue-green scenery, comes out teal);
- ours, target's hair: the same with ``hair_colours`` set to the target character's hair colour (as an
  operator configures it for their character); its *target* column is the target-pick rate: how often the
  avatar holds the target character's face when several characters are in the picture;
- ours, target's hair, detector's hair reading: the same choice going by animeface's own hair colour
  instead of ours (``mikubot.hair``, which the detect stage adds to every face), for comparison;
- face-centred square (peer): the same detections (second look included), the most confident box, a plain square centred on
  it at the same face share (42.5 %), shifted into the image (the image's shorter side at most); no
  detection: the centre crop;
- ours, hand-labelled faces: the crop fed the labels as detections (the crop logic without detector misses);
- ours, no detections: the saliency and top-centre fallbacks alone;
- centre crop: the largest centred square;
- smartcrop: ``smartcrop.SmartCrop().crop`` (PyPI smartcrop.py), the largest square it suggests.

"face→fallback" counts changes whose detections held a usable face but whose avatar was a saliency or
top-centre crop (the policy says: never).

**Banner** (``mikubot.banner``, MIKU_BANNER), scene sets only: each image's 5:2 profile banner, and
whether a labelled face box lies wholly inside it and clear of the avatar circle that Discord draws over
its lower left (``banner.face_visible``: the card's geometry); *target*: the target character's face.
Methods: ours (the avatar's framing as above, then ``crop_banner`` on its face and the same detections;
a picture too small for 600x240 counts as a miss), ours on the hand-labelled faces, the centre 5:2 crop
(the largest), smartcrop at 5:2 (``SmartCrop().crop(image, 500, 200)``, its top crop).

**Real art** (``--realart``, ``make realart`` -> ``.cache/realart/{tune,test}``, bench/realart.py): pictures by
many artists from public repositories, hand-labelled; the pictures with at least one labelled face are scored
the same way (no target character, no hair colour: the "target's hair" rows equal the defaults). *tune* is
in-sample for whatever was tuned on it; *test* is the held-out number. Their tables go to the
"crop-realart" section; ``--realart-only`` runs them alone (the Ren'Py and scene sections are left as they are).

Detections are kept in ``.cache/crop-detections.json`` (keyed by the detector's description and each
file's size and mtime), so a re-run after a crop change re-detects nothing; ``--fresh`` ignores it.

Usage: MIKU_TEST_ART=.cache/art/images .venv/bin/python bench/crop.py [--scenes .cache/scenes] [--realart .cache/realart]
       [--limit N] [--fresh] [--no-write] [--banner-only | --realart-only]
Writes the "crop", "banner" and "crop-realart" sections of bench/RESULTS.md (``--banner-only``: the banner's
alone; ``--realart-only``: "crop-realart" alone).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import smartcrop
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from results import table, write_section  # noqa: E402
from scenes import HAIR  # noqa: E402

from facedetect.backends import create_detector  # noqa: E402
from facedetect.backends._nvxs import ANALYZE_SEEDS  # noqa: E402
from facedetect.imageio import to_rgb  # noqa: E402
from facedetect.types import Detection  # noqa: E402
from mikubot.banner import NoBanner, crop_banner, face_visible  # noqa: E402
from mikubot.config import Settings  # noqa: E402
from mikubot.detection import detect_zoomed, needs_second_look  # noqa: E402
from mikubot.crop import TARGET_FACE_SHARE, face_in_circle, rank_faces  # noqa: E402
from mikubot.hair import with_hair  # noqa: E402
from mikubot.pipeline import Picture, frame_best  # noqa: E402

LABELS = ROOT / "tests" / "labels" / "renpy.json"
MIN_SHARE, MAX_SHARE = 0.20, 0.75
TARGET = 0.97
ZOOM = "#zoomed"  # the detection cache's key suffix for the second look

Box = tuple[int, int, int, int]


@dataclass
class Item:
    set: str
    name: str
    path: Path
    truths: list[list[float]]
    target: list[float] | None = None  # the target character's face (scene sets)
    target_hair: str | None = None  # its hair colour, #rrggbb


@dataclass
class Tally:
    hits: int = 0
    target_hits: int = 0
    targets: int = 0
    face_to_fallback: int = 0
    paths: Counter[str] = field(default_factory=Counter)
    ms: list[float] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)


class DetectionCache:
    """Detections per file, valid for one detector configuration and the file's size and mtime."""

    def __init__(self, path: Path, detector: str, *, fresh: bool = False) -> None:
        self.path, self.detector = path, detector
        stored = json.loads(path.read_text()) if path.exists() and not fresh else {}
        self.entries: dict[str, Any] = stored.get("images", {}) if stored.get("detector") == detector else {}

    @staticmethod
    def _stamp(path: Path) -> str:
        st = path.stat()
        return f"{st.st_size}:{st.st_mtime_ns}"

    def get(self, path: Path, variant: str = "") -> list[Detection] | None:
        entry = self.entries.get(str(path.resolve()) + variant)
        if entry is None or entry["stamp"] != self._stamp(path):
            return None
        return [Detection(bbox=tuple(d["bbox"]), confidence=d["confidence"], attributes=d["attributes"])
                for d in entry["faces"]]

    def put(self, path: Path, detections: list[Detection], variant: str = "") -> None:
        self.entries[str(path.resolve()) + variant] = {"stamp": self._stamp(path), "faces": [
            {"bbox": list(d.bbox), "confidence": d.confidence, "attributes": d.attributes} for d in detections]}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"detector": self.detector, "images": self.entries}))


def framed(crop_box: Box, truth: list[float]) -> tuple[bool, float | None]:
    inside, share = face_in_circle(tuple(truth), crop_box)  # type: ignore[arg-type]
    return inside and MIN_SHARE <= share <= MAX_SHARE, (share if inside else None)


def holds_true_face(crop_box: Box, truths: list[list[float]]) -> tuple[bool, float | None]:
    """Success, and the share of the best-placed true face (None when no true face is in the circle)."""
    shares = []
    for t in truths:
        ok, share = framed(crop_box, t)
        if ok:
            return True, share
        if share is not None:
            shares.append(share)
    return False, (shares[0] if shares else None)


def ours(image: Image.Image, detections: list[Detection], settings: Settings,
         hair: list[str] | None = None) -> tuple[Box, str]:
    framing = frame_best([Picture(image, detections, 1.0)], output_size=settings.output_size,
                         max_upscale=settings.max_upscale,
                         hair_colours=settings.hair_colours if hair is None else hair,
                         hair_tolerance=settings.hair_tolerance)
    return framing.crop.box, framing.crop.method


def detectors_reading(detections: list[Detection]) -> list[Detection]:
    """The detections without our hair read: the choice then goes by animeface's own ``hair_color``."""
    return [Detection(bbox=d.bbox, confidence=d.confidence,
                      attributes={k: v for k, v in d.attributes.items() if k != "hair"}) for d in detections]


def face_centred(image: Image.Image, detections: list[Detection]) -> tuple[Box, str]:
    """The peer: the detector's most confident box, a plain centred square at the same face share."""
    if not detections:
        return centre_crop(image), "centre"
    best = max(detections, key=lambda d: d.confidence)
    w, h = image.size
    side = min(round(best.width / TARGET_FACE_SHARE), w, h)
    cx, cy = (best.bbox[0] + best.bbox[2]) / 2, (best.bbox[1] + best.bbox[3]) / 2
    x = min(max(round(cx - side / 2), 0), w - side)
    y = min(max(round(cy - side / 2), 0), h - side)
    return (x, y, x + side, y + side), "face-centred"


def banner_ours(image: Image.Image, detections: list[Detection], settings: Settings) -> tuple[Box | None, str]:
    """The change's banner: the avatar's framing chooses the face, the banner is framed on it."""
    framing = frame_best([Picture(image, detections, 1.0)], output_size=settings.output_size,
                         max_upscale=settings.max_upscale, hair_colours=settings.hair_colours,
                         hair_tolerance=settings.hair_tolerance)
    try:
        banner = crop_banner(image, framing.crop.face, detections, max_upscale=settings.max_upscale)
    except NoBanner:
        return None, "no banner"
    return banner.box, banner.method + (" padded" if banner.padded else "")


def centre_banner(image: Image.Image) -> Box:
    w, h = image.size
    bw = min(w, math.floor(h * 2.5))
    bh = round(bw / 2.5)
    x, y = (w - bw) // 2, (h - bh) // 2
    return (x, y, x + bw, y + bh)


def smart_banner(image: Image.Image) -> Box:
    c = smartcrop.SmartCrop().crop(image, 500, 200)["top_crop"]
    return (c["x"], c["y"], c["x"] + c["width"], c["y"] + c["height"])


def shows(box: Box | None, truth: list[float]) -> bool:
    return box is not None and face_visible(tuple(truth), box)  # type: ignore[arg-type]


def centre_crop(image: Image.Image) -> Box:
    w, h = image.size
    s = min(w, h)
    x, y = (w - s) // 2, (h - s) // 2
    return (x, y, x + s, y + s)


def smart_crop(image: Image.Image) -> Box:
    c = smartcrop.SmartCrop().crop(image, 100, 100)["top_crop"]
    return (c["x"], c["y"], c["x"] + c["width"], c["y"] + c["height"])


def _hex(rgb: list[int] | tuple[int, ...]) -> str:
    r, g, b = (int(v) for v in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def renpy_items(art: Path) -> list[Item]:
    labels: dict[str, list[list[float]]] = json.loads(LABELS.read_text())["images"]
    items = []
    for name in sorted(n for n, boxes in labels.items() if boxes):
        character = name.split()[0]
        items.append(Item("Ren'Py labels", name, art / name, labels[name],
                          target_hair=_hex(HAIR[character][1]) if character in HAIR else None))
    return items


def scene_items(root: Path, split: str, limit: int | None) -> list[Item]:
    path = root / split / "labels.json"
    if not path.exists():
        return []
    images = json.loads(path.read_text())["images"]
    items = []
    for name in sorted(images)[:limit]:
        entry = images[name]
        faces = entry["faces"]
        target = faces[entry["target"]]
        items.append(Item(f"scenes {split}", name, root / split / name, [f["bbox"] for f in faces],
                          target["bbox"], _hex(target["hair_rgb"])))
    return items


def realart_items(root: Path, split: str, limit: int | None) -> list[Item]:
    """An assembled real-art split's pictures that hold at least one labelled face."""
    path = root / split / "labels.json"
    if not path.exists():
        return []
    images = json.loads(path.read_text())["images"]
    names = sorted(n for n in images if images[n]["faces"])[:limit]
    return [Item(f"realart {split}", n, root / split / n, [f["bbox"] for f in images[n]["faces"]]) for n in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=Path, default=ROOT / ".cache" / "scenes", help="make scenes' output")
    parser.add_argument("--limit", type=int, default=None, help="at most N images per scene split")
    parser.add_argument("--fresh", action="store_true", help="detect again, ignoring the detection cache")
    parser.add_argument("--no-write", action="store_true", help="print the table; leave bench/RESULTS.md alone")
    parser.add_argument("--banner-only", action="store_true", help="the banner section alone (scene sets)")
    parser.add_argument("--realart", type=Path, default=ROOT / ".cache" / "realart", help="make realart's output")
    parser.add_argument("--realart-only", action="store_true", help="the real-art section alone")
    args = parser.parse_args()
    art = Path(os.environ.get("MIKU_TEST_ART", ROOT / ".cache" / "art" / "images"))
    items = [] if args.banner_only or args.realart_only else renpy_items(art)
    if not (args.banner_only or args.realart_only) and (not items or not items[0].path.exists()):
        sys.exit(f"no labelled art in {art}; run `make art`")
    if not args.realart_only:
        scenes = scene_items(args.scenes, "tune", args.limit) + scene_items(args.scenes, "test", args.limit)
        if not scenes:
            print(f"no scene sets in {args.scenes}; run `make scenes` (reporting the Ren'Py labels only)", file=sys.stderr)
        items += scenes
    realart = [] if args.banner_only else (
        realart_items(args.realart, "tune", args.limit) + realart_items(args.realart, "test", args.limit))
    if not realart and not args.banner_only:
        print(f"no real-art sets in {args.realart}; run `make realart REALART_REPOS=DIR`", file=sys.stderr)
        if args.realart_only:
            sys.exit(1)
    items += realart

    settings = Settings(_env_file=None)  # the embedded defaults, whatever this shell's MIKU_* say
    detector = create_detector(settings.detector_backend, model_path=settings.detector_model_path)
    detector.load()
    described = json.dumps(detector.describe(), sort_keys=True) + f" analyze-seeds={ANALYZE_SEEDS}"
    cache = DetectionCache(ROOT / ".cache" / "crop-detections.json", described, fresh=args.fresh)
    methods: dict[str, Callable[[Image.Image, Item, list[Detection]], tuple[Box, str]]] = {
        "ours (animeface, defaults)": lambda im, it, d: ours(im, d, settings),
        "ours, target's hair colour": lambda im, it, d: ours(im, d, settings, [it.target_hair] if it.target_hair else []),
        "ours, target's hair colour, detector's hair reading": lambda im, it, d: ours(
            im, detectors_reading(d), settings, [it.target_hair] if it.target_hair else []),
        "face-centred square (same detections)": lambda im, it, d: face_centred(im, d),
        "ours, hand-labelled faces": lambda im, it, d: ours(
            im, [Detection(bbox=tuple(b), confidence=1.0) for b in it.truths], settings),  # type: ignore[arg-type]
        "ours, no detections (saliency/top-centre)": lambda im, it, d: ours(im, [], settings),
        "centre crop": lambda im, it, d: (centre_crop(im), "centre"),
        "smartcrop": lambda im, it, d: (smart_crop(im), "smartcrop"),
    }
    if args.banner_only:
        methods = {}
    banner_methods: dict[str, Callable[[Image.Image, Item, list[Detection]], tuple[Box | None, str]]] = {
        "ours (the avatar's face, same detections)": lambda im, it, d: banner_ours(im, d, settings),
        "ours, hand-labelled faces": lambda im, it, d: banner_ours(
            im, [Detection(bbox=tuple(b), confidence=1.0) for b in it.truths], settings),  # type: ignore[arg-type]
        "centre 5:2 crop": lambda im, it, d: (centre_banner(im), "centre"),
        "smartcrop 5:2": lambda im, it, d: (smart_banner(im), "smartcrop"),
    }
    sets = list(dict.fromkeys(it.set for it in items))
    tallies = {s: {m: Tally() for m in methods} for s in sets}
    banner_tallies = {s: {m: Tally() for m in banner_methods} for s in sets if s.startswith("scenes")}
    detect_ms: list[float] = []
    second_looks: Counter[str] = Counter()
    for n, item in enumerate(items, 1):
        image = to_rgb(Image.open(item.path))
        detections = cache.get(item.path)
        if detections is None:
            t0 = time.perf_counter()
            detections = detector.detect(image)
            detect_ms.append((time.perf_counter() - t0) * 1000)
            cache.put(item.path, detections)
        if needs_second_look(detections, image):  # the detect stage's second look, zoomed 2x
            zoomed = cache.get(item.path, ZOOM)
            if zoomed is None:
                zoomed = detect_zoomed(detector.detect, image)
                cache.put(item.path, zoomed, ZOOM)
            if rank_faces(zoomed, image.size):
                detections = zoomed
                second_looks[item.set] += 1
        detections = with_hair(image, detections)  # the detect stage's own hair read (mikubot.hair)
        usable = bool(rank_faces(detections, image.size))
        for method, fn in methods.items():
            tally = tallies[item.set][method]
            t0 = time.perf_counter()
            box, path = fn(image, item, detections)
            tally.ms.append((time.perf_counter() - t0) * 1000)
            ok, share = holds_true_face(box, item.truths)
            tally.hits += ok
            tally.paths[path] += 1
            if item.target is not None:
                tally.targets += 1
                tally.target_hits += framed(box, item.target)[0]
            if usable and path in ("saliency", "top-centre") and method.startswith("ours ("):
                tally.face_to_fallback += 1
            if not ok:
                why = "no true face inside the circle" if share is None else f"true face at {share:.0%} of the width"
                tally.misses.append(f"{item.name} ({why}, {path})")
        for method, banner_fn in banner_methods.items() if item.set in banner_tallies else ():
            tally = banner_tallies[item.set][method]
            t0 = time.perf_counter()
            banner_box, path = banner_fn(image, item, detections)
            tally.ms.append((time.perf_counter() - t0) * 1000)
            ok = any(shows(banner_box, t) for t in item.truths)
            tally.hits += ok
            tally.paths[path] += 1
            if item.target is not None:
                tally.targets += 1
                tally.target_hits += shows(banner_box, item.target)
            if not ok:
                tally.misses.append(f"{item.name} ({path})")
        if n % 20 == 0 or n == len(items):
            cache.save()
            print(f"{n}/{len(items)}", {s: (tallies[s]["ours (animeface, defaults)"].hits if methods else None,
                                            banner_tallies[s][next(iter(banner_methods))].hits
                                            if s in banner_tallies else None) for s in sets}, flush=True)

    banner_md = banner_section(banner_tallies, banner_methods)
    if args.banner_only:
        print(banner_md)
        if not args.no_write:
            write_section("banner", banner_md)
        return

    realart_sets = [s for s in sets if s.startswith("realart")]
    md = [
        "## Avatar crop (bench/crop.py)",
        "",
        f"Each image is one dry-run change with the embedded defaults (one candidate). Success: a labelled face box "
        f"wholly inside the round avatar (all four corners in the inscribed circle) at {MIN_SHARE:.0%}-{MAX_SHARE:.0%} "
        f"of its width; *target pick*: the same for the scene's target character. Target ≥ {TARGET:.0%}. "
        f"face→fallback: changes whose detections held a usable face but that ended in a saliency or top-centre crop. "
        "Crop time excludes detection" + (f" (animeface p50 {statistics.median(detect_ms):.0f} ms/image here). "
                                          if detect_ms else " (detections from the cache). ") +
        "Scenes: parameters were chosen on *tune*; *test* is held out.",
        "",
    ]
    realart_md: list[str] = []
    for s in sets:
        into = realart_md if s in realart_sets else md
        rows = []
        for method in methods:
            t = tallies[s][method]
            count = len(t.ms)
            share = t.hits / count
            rows.append([
                method,
                f"{t.hits}/{count}",
                f"**{share:.1%}**" if method.startswith("ours (") else f"{share:.1%}",
                f"{t.target_hits}/{t.targets} ({t.target_hits / t.targets:.1%})" if t.targets else "–",
                t.face_to_fallback if method.startswith("ours (") else "–",
                ", ".join(f"{k} {v}" for k, v in sorted(t.paths.items())),
                f"{statistics.median(t.ms):.0f}",
            ])
        into += [f"### {s} ({len(tallies[s]['centre crop'].ms)} images; the second look found the faces in "
                 f"{second_looks[s]})", "",
                 table(["method", "hits", "share", "target pick", "face→fallback", "path taken", "crop p50 ms"], rows), ""]
        misses = tallies[s]["ours (animeface, defaults)"].misses
        if misses:
            shown = misses[:12]
            into.append("Misses, ours (defaults): " + "; ".join(shown) + (f"; … {len(misses) - len(shown)} more" if len(misses) > len(shown) else ""))
            into.append("")
    if realart_md:
        realart_md = [
            "## Avatar crop on real art (bench/crop.py, bench/realart.py)",
            "",
            f"The pictures of the real-art sets with at least one labelled face, each one dry-run change as above. "
            f"Success: a labelled face wholly inside the round avatar at {MIN_SHARE:.0%}-{MAX_SHARE:.0%} of its width. "
            "Goal (on *test*, which nothing was tuned on): a face-framed avatar for ≥ 97 % of pictures, face→fallback 0. "
            "*tune* is in-sample for whatever was tuned on it.",
            "",
            *realart_md,
        ]
    text = "\n".join(md)
    if not args.realart_only:
        print(text)
        print(banner_md)
    if realart_md:
        print("\n".join(realart_md))
    if not args.no_write:
        if not args.realart_only:
            write_section("crop", text)
            write_section("banner", banner_md)
        if realart_md:
            write_section("crop-realart", "\n".join(realart_md))


def banner_section(tallies: dict[str, dict[str, Tally]], methods: dict[str, Any]) -> str:
    md = [
        "## Profile banner (bench/crop.py)",
        "",
        "Each scene image's 5:2 banner. Success: a labelled face box wholly inside the banner and clear of the "
        "avatar circle Discord draws over its lower left (80-px circle with its 6-px ring at x 16..96 of a "
        "340-px card, centred on the banner's bottom edge); *target*: the same for the scene's target character. "
        f"Goal ≥ {TARGET:.0%} for ours. Ours uses the avatar's face and detections (no second detection); a "
        "picture too small for 600x240 counts as a miss. Parameters were chosen on *tune*; *test* is held out.",
        "",
    ]
    for s, by_method in tallies.items():
        rows = []
        for method in methods:
            t = by_method[method]
            count = len(t.ms)
            if not count:
                continue
            share = t.hits / count
            rows.append([
                method, f"{t.hits}/{count}", f"**{share:.1%}**" if method.startswith("ours (") else f"{share:.1%}",
                f"{t.target_hits}/{t.targets} ({t.target_hits / t.targets:.1%})" if t.targets else "–",
                ", ".join(f"{k} {v}" for k, v in sorted(t.paths.items())), f"{statistics.median(t.ms):.0f}",
            ])
        md += [f"### {s} ({len(next(iter(by_method.values())).ms)} images)", "",
               table(["method", "hits", "share", "target", "path taken", "p50 ms"], rows), ""]
        misses = by_method[next(iter(methods))].misses
        if misses:
            shown = misses[:12]
            md += ["Misses, ours: " + "; ".join(shown) + (f"; … {len(misses) - len(shown)} more"
                                                          if len(misses) > len(shown) else ""), ""]
    return "\n".join(md)


if __name__ == "__main__":
    main()
