"""Drawing aid for labelling the real-art sets by eye (draws only; never writes labels).

For each assembled picture (``bench/realart.py assemble``) it runs three detectors and draws their boxes,
numbered, over the picture together with a coordinate grid and the boxes the labels file already holds:

* red: raw animeface (one full-resolution call);
* blue: lbpcascade_animeface, boxes re-mapped by the benchmark's calibration (scale about the centre,
  vertical shift; ``--cascade-scale``/``--cascade-dy``, defaults as bench/detect.py fits them on scene-tune);
* green: our default detector, ``create_detector("animeface")``;
* yellow (thick): the labelled faces.

The boxes are also printed, so a proposal can be copied into the labels file, corrected by eye on the
drawing, and the drawing made again to check. ``--zoom x1,y1,x2,y2`` draws only that region, enlarged,
for small faces.

    python bench/label_realart.py [--realart .cache/realart] [--split tune] [--only ID ...]
                                  [--zoom x1,y1,x2,y2] [--out .cache/realart-label]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from detect import Calibration

from facedetect.backends import create_detector

COLOURS = {"raw": (230, 30, 30), "cascade": (40, 90, 255), "ours": (20, 190, 60)}
LABEL = (255, 215, 0)


def grid_step(extent: int) -> int:
    for step in (25, 50, 100, 200, 250, 500):
        if extent / step <= 16:
            return step
    return 1000


def draw(image: Image.Image, proposals: dict[str, list[tuple[float, float, float, float]]],
         labelled: list[list[int]], zoom: tuple[int, int, int, int] | None) -> Image.Image:
    x0, y0 = (zoom[0], zoom[1]) if zoom else (0, 0)
    region = image.crop(zoom) if zoom else image
    factor = max(1.0, 900 / max(region.size)) if zoom else 1.0
    canvas = region.resize((round(region.width * factor), round(region.height * factor)), Image.NEAREST)
    canvas = Image.blend(canvas, Image.new("RGB", canvas.size, "white"), 0.25)
    d = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(12, round(max(canvas.size) / 90)))
    step = grid_step(max(region.size))
    for gx in range((x0 // step) * step, x0 + region.width + 1, step):
        px = (gx - x0) * factor
        d.line([(px, 0), (px, canvas.height)], fill=(150, 150, 150), width=1)
        d.text((px + 2, 2), str(gx), fill=(90, 90, 90), font=font)
    for gy in range((y0 // step) * step, y0 + region.height + 1, step):
        py = (gy - y0) * factor
        d.line([(0, py), (canvas.width, py)], fill=(150, 150, 150), width=1)
        d.text((2, py + 2), str(gy), fill=(90, 90, 90), font=font)

    def rect(b, colour, width, text=None):
        r = [(b[0] - x0) * factor, (b[1] - y0) * factor, (b[2] - x0) * factor, (b[3] - y0) * factor]
        d.rectangle(r, outline=colour, width=width)
        if text:
            d.text((r[0] + 2, r[3] + 1), text, fill=colour, font=font)

    for b in labelled:
        rect(b, LABEL, 4)
    for name, boxes in proposals.items():
        for i, b in enumerate(boxes):
            rect(b, COLOURS[name], 2, f"{name[0]}{i}")
    return canvas


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--realart", type=Path, default=ROOT / ".cache" / "realart", help="bench/realart.py's --out")
    ap.add_argument("--split", default="tune")
    ap.add_argument("--only", nargs="*", default=None, help="picture ids (without .png)")
    ap.add_argument("--zoom", default=None, help="x1,y1,x2,y2: draw only this region, enlarged")
    bench_data = Path(os.environ.get("MIKU_BENCH_DATA", ROOT.parent / "shared" / "bench"))
    ap.add_argument("--cascade", type=Path, default=bench_data / "peers" / "lbpcascade_animeface.xml",
                    help="lbpcascade_animeface.xml (default: $MIKU_BENCH_DATA or ../shared/bench, peers/)")
    ap.add_argument("--cascade-scale", type=float, default=0.63)
    ap.add_argument("--cascade-dy", type=float, default=0.0)
    ap.add_argument("--no-detect", action="store_true", help="draw the labels and the grid only")
    ap.add_argument("--out", type=Path, default=ROOT / ".cache" / "realart-label")
    args = ap.parse_args(argv)

    split_dir = args.realart / args.split
    doc = json.loads((split_dir / "labels.json").read_text())["images"]
    names = [n for n in doc if args.only is None or n.removesuffix(".png") in args.only]
    zoom = tuple(int(v) for v in args.zoom.split(",")) if args.zoom else None
    detectors = {}
    if not args.no_detect:
        detectors["raw"] = create_detector("animeface", mode="full")
        if args.cascade.exists():
            detectors["cascade"] = create_detector("cascade", model_path=str(args.cascade), scale_factor=1.1,
                                                   min_neighbors=5, min_size=24, equalize=True)
        else:
            print(f"lbpcascade skipped: {args.cascade} not found")
        detectors["ours"] = create_detector("animeface")
        for det in detectors.values():
            det.load()
    cal = Calibration(scale=args.cascade_scale, dy=args.cascade_dy)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        image = Image.open(split_dir / name).convert("RGB")
        proposals = {}
        for key, det in detectors.items():
            found = [d.bbox for d in det.detect(image)]
            proposals[key] = [cal.apply(b) for b in found] if key == "cascade" else found
        labelled = [f["bbox"] for f in doc[name]["faces"]]
        print(f"{name} {image.size[0]}x{image.size[1]} labelled {labelled}")
        for key, boxes in proposals.items():
            print(f"  {key}: " + " ".join(f"{key[0]}{i}=[{','.join(str(round(v)) for v in b)}]" for i, b in enumerate(boxes)))
        suffix = f"-zoom-{'-'.join(map(str, zoom))}" if zoom else ""
        draw(image, proposals, labelled, zoom).save(args.out / f"{name.removesuffix('.png')}{suffix}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
