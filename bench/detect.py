"""Detection benchmark: our default detector against raw animeface (full resolution) and lbpcascade.

Datasets: the hand-labelled Ren'Py art (tests/labels/renpy.json, images from `make art`) and, when
present, ../shared/bench/anime-grid (a 6x6 grid of 512-px tiles; run tile by tile, timed per tile).
Quality: recall / precision / F1 with greedy matching by confidence at IoU 0.5 and 0.3 (bench/metrics.py,
the grid README's rule). Speed: wall-clock p50 and max per image (per tile for the grid), plus CPU seconds
(process time, all threads) per image, which a busy shared machine distorts less than wall time.
Each image is run by every detector in turn before the next image, so load spikes hit them alike.

    .venv/bin/python bench/detect.py [--art DIR] [--bench-data DIR] [--repeat N] [--no-write]

Writes the "detect" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from metrics import Counts, match, percentile  # noqa: E402
from results import table, write_section  # noqa: E402

from facedetect.backends import create_detector  # noqa: E402
from facedetect.backends.base import Detector  # noqa: E402
from facedetect.imageio import load_image  # noqa: E402

GRID_TILE = 512
TARGET_F1, TARGET_P50 = 0.97, 0.3


@dataclass
class Score:
    """Running totals for one detector on one dataset."""

    at50: Counts = field(default_factory=Counts)
    at30: Counts = field(default_factory=Counts)
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


Boxes = list[tuple[tuple[float, float, float, float], float]]


def timed(det: Detector, image: Image.Image, repeat: int) -> tuple[Boxes, float, float]:
    """Detections and the best-of-``repeat`` wall and CPU seconds of ``det.detect(image)``."""
    best_wall = best_cpu = float("inf")
    found: Boxes = []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        dets = det.detect(image)
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
        found = [(d.bbox, d.confidence) for d in dets]
    return found, best_wall, best_cpu


def build_detectors(bench_data: Path) -> dict[str, Detector]:
    dets: dict[str, Detector] = {
        "ours: animeface (default scheme)": create_detector("animeface"),
        "animeface raw, full resolution": create_detector("animeface", mode="full"),
    }
    xml = bench_data / "peers" / "lbpcascade_animeface.xml"
    if xml.exists():
        dets["lbpcascade_animeface (1.1, 5, 24 px, equalised)"] = create_detector(
            "cascade", model_path=str(xml), scale_factor=1.1, min_neighbors=5, min_size=24, equalize=True
        )
    else:
        print(f"lbpcascade peer skipped: {xml} not found")
    for d in dets.values():
        d.load()
    return dets


def run_dataset(
    items: list[tuple[str, Image.Image, list[list[float]], tuple[float, float]]],
    dets: dict[str, Detector],
    repeat: int,
    on_miss: Callable[[str, str, Counts], None] | None = None,
) -> dict[str, Score]:
    """``items``: (name, image, truth boxes in that image's frame, offset added to detections)."""
    scores = {n: Score() for n in dets}
    for name, image, truth, (ox, oy) in items:
        for dname, det in dets.items():
            det.detect(image) if not scores[dname].wall else None  # first call: warm caches/threads
            found, wall, cpu = timed(det, image, repeat)
            found = [((b[0] + ox, b[1] + oy, b[2] + ox, b[3] + oy), c) for b, c in found]
            truth_shifted = [[t[0] + ox, t[1] + oy, t[2] + ox, t[3] + oy] for t in truth]
            c50 = match(found, truth_shifted, 0.5)
            s = scores[dname]
            s.at50 += c50
            s.at30 += match(found, truth_shifted, 0.3)
            s.wall.append(wall)
            s.cpu.append(cpu)
            if on_miss and (c50.fp or c50.fn):
                on_miss(dname, name, c50)
    return scores


def render(title: str, unit: str, scores: dict[str, Score]) -> str:
    rows = []
    for name, s in scores.items():
        rows.append([
            name,
            f"{s.at50.recall:.3f}", f"{s.at50.precision:.3f}", f"**{s.at50.f1:.3f}**",
            f"{s.at30.recall:.3f}", f"{s.at30.precision:.3f}", f"{s.at30.f1:.3f}",
            f"**{percentile(s.wall, 50):.3f}**", f"{max(s.wall):.3f}", f"{percentile(s.cpu, 50):.3f}",
            f"{s.at50.tp}/{s.at50.fp}/{s.at50.fn}",
        ])
    headers = [
        "detector", "R@.5", "P@.5", "F1@.5", "R@.3", "P@.3", "F1@.3",
        f"p50 s/{unit}", f"max s/{unit}", f"CPU p50 s/{unit}", "TP/FP/FN @.5",
    ]
    return f"### {title}\n\n" + table(headers, rows)


def verdict(scores: dict[str, Score]) -> str:
    ours = next(iter(scores.values()))
    f1, p50 = ours.at50.f1, percentile(ours.wall, 50)
    ok_f1, ok_t = f1 >= TARGET_F1, p50 <= TARGET_P50
    return (
        f"Target F1@.5 ≥ {TARGET_F1} and p50 ≤ {TARGET_P50} s: ours F1 {f1:.3f} "
        f"({'met' if ok_f1 else 'NOT met'}), p50 {p50:.3f} s ({'met' if ok_t else 'NOT met'})."
    )


def renpy_items(art: Path, labels: Path) -> list:
    data = json.loads(labels.read_text())["images"]
    items = []
    for name, boxes in data.items():
        image, _ = load_image((art / name).read_bytes())
        items.append((name, image, boxes, (0.0, 0.0)))
    return items


def grid_items(grid_dir: Path) -> list:
    image, _ = load_image((grid_dir / "input.jpg").read_bytes())
    truth = json.loads((grid_dir / "truth.json").read_text())["input.jpg"]
    items = []
    for r in range(image.height // GRID_TILE):
        for c in range(image.width // GRID_TILE):
            x0, y0 = c * GRID_TILE, r * GRID_TILE
            tile = image.crop((x0, y0, x0 + GRID_TILE, y0 + GRID_TILE))
            # Truth boxes belong to the tile holding their centre; matched in the tile's own frame.
            mine = [
                [t[0] - x0, t[1] - y0, t[2] - x0, t[3] - y0]
                for t in truth
                if x0 <= (t[0] + t[2]) / 2 < x0 + GRID_TILE and y0 <= (t[1] + t[3]) / 2 < y0 + GRID_TILE
            ]
            items.append((f"tile r{r} c{c}", tile, mine, (float(x0), float(y0))))
    return items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--art", type=Path, default=Path(os.environ.get("MIKU_TEST_ART", ROOT / ".cache/art/images")))
    ap.add_argument("--labels", type=Path, default=ROOT / "tests/labels/renpy.json")
    ap.add_argument("--bench-data", type=Path, default=ROOT.parent / "shared" / "bench")
    ap.add_argument("--repeat", type=int, default=1, help="time each image N times, keep the best (default 1)")
    ap.add_argument("--no-write", action="store_true", help="print the tables, leave bench/RESULTS.md alone")
    args = ap.parse_args(argv)

    started = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    load0 = os.getloadavg()[0]
    dets = build_detectors(args.bench_data)
    misses: list[str] = []

    def note(det: str, item: str, c: Counts) -> None:
        misses.append(f"{det} — {item}: {c.fp} FP, {c.fn} missed")

    sections = []
    if (args.art / "eileen happy.png").exists() and args.labels.exists():
        scores = run_dataset(renpy_items(args.art, args.labels), dets, args.repeat, note)
        n = len(next(iter(scores.values())).wall)
        sections.append(render(f"Ren'Py art, hand labels ({n} images; time per image)", "image", scores))
        sections.append(verdict(scores))
    else:
        print(f"Ren'Py dataset skipped: art in {args.art} or labels {args.labels} missing (run `make art`)")
    grid_dir = args.bench_data / "anime-grid"
    if (grid_dir / "input.jpg").exists():
        scores = run_dataset(grid_items(grid_dir), dets, args.repeat, note)
        sections.append(render("anime-grid (36 tiles of 512 px, run tile by tile; time per tile)", "tile", scores))
        sections.append(verdict(scores))
    else:
        print(f"anime-grid dataset skipped: {grid_dir} not found (pass --bench-data DIR)")
    if not sections:
        print("nothing to benchmark")
        return 1
    load1 = os.getloadavg()[0]
    ours = next(iter(dets.values())).describe().get("search", {})
    md = "\n\n".join([
        "## Face detection (bench/detect.py)",
        f"Run {started} on {platform.machine()} with {os.cpu_count()} CPU cores, Python {platform.python_version()}; "
        f"load average {load0:.1f} at start, {load1:.1f} at end (other work shared the machine: wall times "
        "above 2 cores' worth of load are inflated; CPU seconds count all threads of a detector). "
        f"Best of {args.repeat} timing(s) per image. Matching: greedy by confidence (bench/metrics.py). "
        f"Our scheme's search parameters: `{json.dumps(ours, sort_keys=True)}` (docs/detector-speed.md).",
        *sections,
        "<details><summary>Images with errors at IoU 0.5</summary>\n\n"
        + "\n".join(f"- {m}" for m in misses) + "\n</details>",
    ])
    print(md)
    if not args.no_write:
        write_section("detect", md)
        print("\nwritten to bench/RESULTS.md (section 'detect')")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
