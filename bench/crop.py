"""Avatar crop quality: does the round avatar hold a TRUE face at a good size?

For every hand-labelled Ren'Py image that has a face (tests/labels/renpy.json), each method picks a
square; it succeeds when at least one labelled face box lies wholly inside the circle inscribed in
that square (all four corners) with a width of 20-75 % of the square's. Methods, in the same run:

- ours: ``mikubot.crop.crop_avatar`` fed by the default detector (animeface, in-process), the way the
  pipeline runs it. A ``FaceTooSmall`` is answered as the pipeline's last resort does: the same image
  again with no detections (saliency, then top-centre).
- ours, hand-labelled faces: the same crop fed the labels as detections: the crop logic alone,
  without detector misses.
- ours, no detections: the same crop given no faces, i.e. the saliency and top-centre fallbacks alone.
- centre crop: the largest centred square.
- smartcrop: ``smartcrop.SmartCrop().crop`` (PyPI smartcrop.py), largest square it suggests.

Usage: MIKU_TEST_ART=.cache/art/images .venv/bin/python bench/crop.py [--no-write]
Writes the "crop" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import smartcrop
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from results import table, write_section  # noqa: E402

from facedetect.backends import create_detector  # noqa: E402
from facedetect.imageio import to_rgb  # noqa: E402
from facedetect.types import Detection  # noqa: E402
from mikubot.crop import FaceTooSmall, crop_avatar, face_in_circle  # noqa: E402

LABELS = ROOT / "tests" / "labels" / "renpy.json"
MIN_SHARE, MAX_SHARE = 0.20, 0.75
TARGET = 0.97

Box = tuple[int, int, int, int]


def holds_true_face(crop_box: Box, truths: list[list[float]]) -> tuple[bool, float | None]:
    """Success, and the share of the best-placed true face (None when no true face is in the circle)."""
    shares = []
    for t in truths:
        inside, share = face_in_circle(tuple(t), crop_box)  # type: ignore[arg-type]
        if inside:
            shares.append(share)
            if MIN_SHARE <= share <= MAX_SHARE:
                return True, share
    return False, (shares[0] if shares else None)


def ours(image: Image.Image, detections: list[Detection]) -> tuple[Box, str]:
    try:
        result = crop_avatar(image, detections)
    except FaceTooSmall:
        result = crop_avatar(image, [])
    return result.box, result.method


def centre_crop(image: Image.Image) -> Box:
    w, h = image.size
    s = min(w, h)
    x, y = (w - s) // 2, (h - s) // 2
    return (x, y, x + s, y + s)


def smart_crop(image: Image.Image) -> Box:
    c = smartcrop.SmartCrop().crop(image, 100, 100)["top_crop"]
    return (c["x"], c["y"], c["x"] + c["width"], c["y"] + c["height"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-write", action="store_true", help="print the table; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    art = Path(os.environ.get("MIKU_TEST_ART", ROOT / ".cache" / "art" / "images"))
    labels: dict[str, list[list[float]]] = json.loads(LABELS.read_text())["images"]
    names = sorted(n for n, boxes in labels.items() if boxes)
    if not names or not (art / names[0]).exists():
        sys.exit(f"no labelled art in {art}; run `make art`")

    detector = create_detector("animeface")
    detector.load()
    methods: dict[str, Callable[[Image.Image, str], tuple[Box, str]]] = {}
    detect_ms: list[float] = []

    def ours_detected(im: Image.Image, name: str) -> tuple[Box, str]:
        t0 = time.perf_counter()
        dets = detector.detect(im)
        detect_ms.append((time.perf_counter() - t0) * 1000)
        return ours(im, dets)

    methods["ours (animeface detections)"] = ours_detected
    methods["ours (hand-labelled faces)"] = lambda im, n: ours(
        im, [Detection(bbox=tuple(b), confidence=1.0) for b in labels[n]]  # type: ignore[arg-type]
    )
    # What the fallbacks alone achieve: the avatar a change gets when the detector finds nothing.
    methods["ours, no detections (saliency/top-centre)"] = lambda im, n: ours(im, [])
    methods["centre crop"] = lambda im, n: (centre_crop(im), "centre")
    methods["smartcrop"] = lambda im, n: (smart_crop(im), "smartcrop")

    hits: dict[str, int] = Counter()
    paths: dict[str, Counter[str]] = {m: Counter() for m in methods}
    crop_ms: dict[str, list[float]] = {m: [] for m in methods}
    misses: dict[str, list[str]] = {m: [] for m in methods}
    for name in names:
        image = to_rgb(Image.open(art / name))
        for method, fn in methods.items():
            t0 = time.perf_counter()
            box, path = fn(image, name)
            crop_ms[method].append((time.perf_counter() - t0) * 1000)
            ok, share = holds_true_face(box, labels[name])
            hits[method] += ok
            paths[method][path] += 1
            if not ok:
                why = "no true face inside the circle" if share is None else f"true face at {share:.0%} of the width"
                misses[method].append(f"{name} ({why})")
        print(name, {m: hits[m] for m in methods}, flush=True)

    # The detector's time is reported apart: it is the detect stage's cost, not the crop's.
    ours_key = "ours (animeface detections)"
    crop_ms[ours_key] = [t - d for t, d in zip(crop_ms[ours_key], detect_ms)]
    n = len(names)
    rows = []
    for method in methods:
        share = hits[method] / n
        path_note = ", ".join(f"{k} {v}" for k, v in sorted(paths[method].items()))
        rows.append([
            method,
            f"{hits[method]}/{n}",
            f"**{share:.1%}**" if method.startswith("ours") else f"{share:.1%}",
            path_note,
            f"{statistics.median(crop_ms[method]):.0f}",
        ])
    md = [
        "## Avatar crop (bench/crop.py)",
        "",
        f"Labelled Ren'Py art with at least one face ({n} images: sprites and band CGs). Success: a hand-labelled",
        f"face box wholly inside the round avatar (all four corners in the inscribed circle) at {MIN_SHARE:.0%}-"
        f"{MAX_SHARE:.0%} of its width. Target ≥ {TARGET:.0%}. Crop time excludes detection "
        f"(animeface p50 {statistics.median(detect_ms):.0f} ms/image here).",
        "",
        table(["method", "hits", "share", "path taken", "crop p50 ms"], rows),
        "",
    ]
    for method in methods:
        if misses[method] and method.startswith("ours"):
            md.append(f"- misses, {method}: " + "; ".join(misses[method]))
    text = "\n".join(md)
    print(text)
    if not args.no_write:
        write_section("crop", text)


if __name__ == "__main__":
    main()
