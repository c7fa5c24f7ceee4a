"""Face filter benchmark: the default scheme's faces before and after the learned false-positive filter.

The filter only removes faces, so it is measured on one run of the detector with its filter off: every set's
images are detected once (the boxes can be kept in ``--cache`` so a retrained model is re-scored without
detecting again), then scored as found and as the filter leaves them (R/P/F1 at IoU 0.5 and 0.3,
bench/metrics.py), with the filter's own CPU time per image. Sets as in bench/detect.py: the Ren'Py hand
labels, anime-grid tiles, scene-tune (the filter's training set: in-sample) and scene-test (out-of-sample).

    .venv/bin/python bench/facefilter.py [--sets ...] [--model FILE] [--cache DIR] [--limit N]
                                         [--art DIR] [--bench-data DIR] [--scenes DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from detect import SETS, Item, grid_items, renpy_items, scene_items
from metrics import Counts, match, percentile
from results import table

from facedetect.backends import create_detector
from facedetect.backends.facefilter import FaceFilter

SAMPLE = {"renpy": "not trained on; recipe checked on it", "grid": "other art, not trained on; recipe checked on it",
          "scene-tune": "**in-sample** (trained on)", "scene-test": "out-of-sample"}


def detections(items: list[Item], cache: Path | None, key: str) -> list[list[tuple[list[float], float]]]:
    """The unfiltered default scheme's (box, likelihood) per item, from ``cache`` when it holds them."""
    path = cache / f"{key}.json" if cache else None
    if path and path.exists():
        doc = json.loads(path.read_text())
        if doc.get("items") == [it.name for it in items]:
            return [[(b, c) for b, c in found] for found in doc["found"]]
    det = create_detector("animeface", face_filter=False)
    det.load()
    found = [[(list(d.bbox), d.confidence) for d in det.detect(it.load())] for it in items]
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"detector": det.describe(), "items": [it.name for it in items], "found": found}))
    return found


def score(items: list[Item], found: list[list[tuple[list[float], float]]], model: FaceFilter) -> dict:
    before50, before30, after50, after30 = Counts(), Counts(), Counts(), Counts()
    cpu: list[float] = []
    for it, boxes in zip(items, found):
        rgb = np.ascontiguousarray(np.asarray(it.load().convert("RGB")))
        c0 = time.process_time()
        keep = model.keep(rgb, [b for b, _ in boxes])
        cpu.append(time.process_time() - c0)
        kept = [bc for bc, k in zip(boxes, keep) if k]
        before50 += match(boxes, it.truth, 0.5)
        before30 += match(boxes, it.truth, 0.3)
        after50 += match(kept, it.truth, 0.5)
        after30 += match(kept, it.truth, 0.3)
    return {"before": (before50, before30), "after": (after50, after30), "cpu": cpu}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--art", type=Path, default=Path(os.environ.get("MIKU_TEST_ART", ROOT / ".cache/art/images")))
    ap.add_argument("--labels", type=Path, default=ROOT / "tests/labels/renpy.json")
    ap.add_argument("--bench-data", type=Path, default=Path(os.environ.get("MIKU_BENCH_DATA", ROOT.parent / "shared/bench")))
    ap.add_argument("--scenes", type=Path, default=ROOT / ".cache/scenes")
    ap.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    ap.add_argument("--model", type=Path, default=None, help="a face filter model (default: the committed one)")
    ap.add_argument("--cache", type=Path, default=None, help="keep the unfiltered detections here (JSON per set)")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args(argv)

    model = FaceFilter.load(args.model)
    rows = []
    for key in args.sets:
        if key == "renpy":
            items = renpy_items(args.art, args.labels)
        elif key == "grid":
            items = grid_items(args.bench_data / "anime-grid")
        else:
            items = scene_items(args.scenes / ("tune" if key == "scene-tune" else "test"))
        items = items[:args.limit] if args.limit else items
        r = score(items, detections(items, args.cache, f"{key}-{len(items)}"), model)
        for when in ("before", "after"):
            c50, c30 = r[when]
            rows.append([
                key, SAMPLE[key], "filter on" if when == "after" else "filter off",
                f"{c50.recall:.3f}", f"{c50.precision:.3f}", f"**{c50.f1:.3f}**", f"{c30.f1:.3f}",
                f"{c50.tp}/{c50.fp}/{c50.fn}",
                f"{1000 * percentile(r['cpu'], 50):.1f}" if when == "after" else "",
            ])
        print(f"{key}: done", flush=True)
    print(table(["set", "for the filter", "default scheme", "R@.5", "P@.5", "F1@.5", "F1@.3", "TP/FP/FN @.5",
                 "filter CPU p50 ms/image"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
