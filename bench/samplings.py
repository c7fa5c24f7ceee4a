"""How far animeface alone can go on the scene sets: recall of single samplings and of their union.

Each *sampling* is one raw libnvxs call on the image resized by a factor (``s0.8``: 0.8x), optionally
mirrored (``m``) or with a smaller minimum window (``mw32``: 32 px, the model's own size, instead of the
wheel's 42.6). The union of all samplings, with any box counted, bounds what a scheme that votes
between or re-places these samplings can find. Boxes are scored as they come (animeface's box
convention) and scaled about their centre by ``--box-scale`` (the labels' convention is tighter; see
docs/detector-speed.md). Reports recall at IoU 0.5 by face width and CPU seconds per call.

    .venv/bin/python bench/samplings.py [--scenes .cache/scenes] [--split tune] [--limit N] [--box-scale 0.82]

Prints a markdown table; writes nothing. Run it on scene-tune: it is a tuning tool.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from metrics import Counts, iou, match
from results import table

from facedetect.backends._nvxs import NvxsLibrary
from facedetect.imageio import load_image

# name -> (resize factor, minimum window, mirrored); the plain full-resolution call is bench/detect.py's raw peer
SAMPLINGS = {
    "s1.0 mw32": (1.0, 32.0, False),
    "m1.0": (1.0, 42.592, True),
    "s0.9": (0.9, 42.592, False),
    "s0.8": (0.8, 42.592, False),
    "s0.64": (0.64, 42.592, False),
    "s0.5": (0.5, 42.592, False),
}
SIZE_BINS = [30, 42, 55, 75, 100, 150, 200]


def sample(lib: NvxsLibrary, rgb: np.ndarray, factor: float, min_window: float, mirrored: bool) -> tuple[list, float]:
    """Boxes (original coordinates, likelihood) of one call, and its CPU seconds."""
    h, w = rgb.shape[:2]
    img = rgb[:, ::-1] if mirrored else rgb
    if factor != 1.0:
        img = cv2.resize(img, (round(w * factor), round(h * factor)), interpolation=cv2.INTER_AREA)
    img = np.ascontiguousarray(img)
    sx, sy = img.shape[1] / w, img.shape[0] / h
    c0 = time.process_time()
    faces = lib.detect(img, min_window=min_window, analyze=False)
    cpu = time.process_time() - c0
    out = []
    for f in faces:
        x, y, fw, fh = f.face
        b = [x / sx, y / sy, (x + fw) / sx, (y + fh) / sy]
        if mirrored:
            b = [w - b[2], b[1], w - b[0], b[3]]
        out.append((tuple(b), f.likelihood))
    return out, cpu


def scaled(b: tuple[float, ...], k: float) -> tuple[float, float, float, float]:
    cx, cy, hw, hh = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, (b[2] - b[0]) * k / 2, (b[3] - b[1]) * k / 2
    return (cx - hw, cy - hh, cx + hw, cy + hh)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=Path, default=ROOT / ".cache/scenes")
    ap.add_argument("--split", default="tune", choices=["tune", "test"])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--box-scale", type=float, default=1.0)
    args = ap.parse_args(argv)
    doc = json.loads((args.scenes / args.split / "labels.json").read_text())["images"]
    names = list(doc)[: args.limit] if args.limit else list(doc)
    lib = NvxsLibrary()
    counts = {k: Counts() for k in SAMPLINGS}
    cpu: dict[str, list[float]] = defaultdict(list)
    by_size: dict[str, dict[int, list[int]]] = {k: defaultdict(lambda: [0, 0]) for k in [*SAMPLINGS, "union"]}
    for name in names:
        entry = doc[name]
        rgb = np.ascontiguousarray(np.asarray(load_image((args.scenes / args.split / name).read_bytes())[0]))
        truth = [f["bbox"] for f in entry["faces"]]
        found_all = []
        for key, (factor, mw, mirrored) in SAMPLINGS.items():
            found, c = sample(lib, rgb, factor, mw, mirrored)
            found = [(scaled(b, args.box_scale), lk) for b, lk in found]
            cpu[key].append(c)
            counts[key] += match(found, truth, 0.5)
            found_all += found
            for f in entry["faces"]:
                b = max(x for x in SIZE_BINS if x <= max(f["face_width"], SIZE_BINS[0]))
                by_size[key][b][1] += 1
                by_size[key][b][0] += any(iou(d, f["bbox"]) >= 0.5 for d, _ in found)
        for f in entry["faces"]:
            b = max(x for x in SIZE_BINS if x <= max(f["face_width"], SIZE_BINS[0]))
            by_size["union"][b][1] += 1
            by_size["union"][b][0] += any(iou(d, f["bbox"]) >= 0.5 for d, _ in found_all)
    ranges = [f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(SIZE_BINS)] + [f"{SIZE_BINS[-1]}+"]
    headers = ["sampling", "TP/FP/FN @.5", "recall", "CPU p50 s", *[f"found {r} px" for r in ranges]]
    rows = []
    for key in [*SAMPLINGS, "union"]:
        c = counts.get(key)
        rows.append([
            key, f"{c.tp}/{c.fp}/{c.fn}" if c else "-", f"{c.recall:.3f}" if c else
            f"{sum(v[0] for v in by_size[key].values()) / max(1, sum(v[1] for v in by_size[key].values())):.3f}",
            f"{np.median(cpu[key]):.3f}" if key in cpu else "-",
            *[f"{by_size[key][b][0]}/{by_size[key][b][1]}" for b in SIZE_BINS],
        ])
    print(f"scene-{args.split}, {len(names)} images, boxes x{args.box_scale}\n")
    print(table(headers, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
