"""Choosing the two-stage mode's proposal pool on real-art tune, by leave-one-source-out cross-validation.

Every picture of a labelled set is searched once, generously, and everything the two-stage mode could
decide about it is cached (``collect``): the HOG proposal windows down to a low score, the lbpcascade_animeface
boxes with their neighbour counts (mapped to the labels' convention by the benchmark's scene-tune
calibration), and for every window either pool could send on, the verifier's probability and box,
animeface's confirmation on its crop (the same ``confirm`` the detector runs) and the face filter's
probability of each box that could come out. ``cv`` then replays the two-stage decisions for a grid of
pool policies (which sources, the HOG floor, ranking by HOG score or by the verifier, the cap, the verifier's
bars, the filter) exactly as ``search_twostage`` makes them, scores them at IoU 0.5 per source, and picks
the policy by leave-one-source-out: for each source, the policy best on the others is scored on it, and
the held-out counts are summed. Work per picture (animeface crop searches) is counted beside.

    .venv/bin/python bench/twostage_cv.py collect [--realart .cache/realart] [--split tune] [--scenes DIR]
    .venv/bin/python bench/twostage_cv.py cv [--split tune] [--fixed]
"""

from __future__ import annotations

import argparse
import itertools
import pickle
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from detect import Calibration, calibrate, realart_items, scene_items  # noqa: E402
from metrics import Counts, match  # noqa: E402

from facedetect.backends import create_detector  # noqa: E402
from facedetect.backends._nvxs import NvxsLibrary  # noqa: E402
from facedetect.backends.facefilter import FaceFilter  # noqa: E402
from facedetect.backends.proposals import CASCADE_BOX_SCALE, Proposal, default_model, grey  # noqa: E402
from facedetect.backends.scheme import iou  # noqa: E402
from facedetect.backends.twostage import TwoStage, animeface_convention, confirm, propose_bounded, suppress  # noqa: E402
from facedetect.backends.verifier import Verifier  # noqa: E402

CACHE = ROOT / ".cache" / "twostage-cv"
HOG_FLOOR = -1.0  # the lowest HOG score collected
WIDE_NMS, WIDE_CAP = 0.7, 64  # the wide pool before ranking: light suppression, this many at most
VERIFY_FLOOR = 1e-4  # windows the verifier scores under this are never confirmed (no policy below uses them)
MAX_ACCEPT = 0.99  # ... nor those at or over the highest keep bar tried
Box = tuple[float, float, float, float]


@dataclass
class Window:
    box: Box  # labels' convention
    hog: float | None  # HOG score (None: a cascade box only)
    neighbours: int  # lbpcascade neighbours (0: a HOG window only)
    probability: float
    accepted_box: Box  # the verifier's regressed box in animeface's convention
    accepted_filter: float
    confirmed: tuple[Box, float] | None  # animeface's box and likelihood on the crop, if it confirmed
    confirmed_filter: float
    confirm_s: float  # CPU seconds of the confirmation
    confirm_done: bool = False  # animeface searched its crop (only windows some policy sends to it)


@dataclass
class Picture:
    name: str
    source: str
    truth: list[list[float]]
    default: list[int]  # window indices of today's pool (HOG >= 0.3, NMS 0.3, cap 16)
    windows: list[Window] = field(default_factory=list)
    fixed_s: float = 0.0  # CPU seconds of HOG + cascade + verifier on the wide pool


def collect(items, cal: Calibration, cascade_xml: Path) -> list[Picture]:
    lib = NvxsLibrary()
    model = default_model()
    hog = model.detector()
    verifier = Verifier()
    face_filter = FaceFilter.load()
    classifier = cv2.CascadeClassifier(str(cascade_xml))
    params = TwoStage()
    out = []
    for n, it in enumerate(items):
        rgb = np.ascontiguousarray(np.asarray(it.load().convert("RGB")))
        c0 = time.process_time()
        g = grey(rgb)
        found = propose_bounded(hog, g, HOG_FLOOR, params)
        default = suppress([p for p in found if p.score >= 0.3], params.nms_iou, params.max_proposals)
        wide = suppress(found, WIDE_NMS, WIDE_CAP)
        rects, counts = classifier.detectMultiScale2(cv2.equalizeHist(g), scaleFactor=1.1, minNeighbors=1,
                                                     minSize=(24, 24))
        boxes: dict[Box, Window] = {}
        for p in [*default, *wide]:
            boxes.setdefault(p.box, Window(p.box, p.score, 0, 0, p.box, 0, None, 0, 0))
        for (x, y, w, h), k in zip(np.asarray(rects).reshape(-1, 4), np.asarray(counts).reshape(-1)):
            b = cal.apply((float(x), float(y), float(x + w), float(y + h)))
            boxes.setdefault(b, Window(b, None, int(k), 0, b, 0, None, 0, 0)).neighbours = int(k)
        windows = list(boxes.values())
        verdicts = verifier.judge(rgb, [w.box for w in windows])
        fixed = time.process_time() - c0
        h, w_ = rgb.shape[:2]
        for win, v in zip(windows, verdicts):
            win.probability = v.probability
            win.accepted_box = animeface_convention(v.box, w_, h)
        index = {win.box: i for i, win in enumerate(windows)}
        pic = Picture(it.name, it.group, it.truth, [index[p.box] for p in default], windows, fixed)
        needed = set()
        for pol in pools():
            needed.update(chosen(pic, pol))
        for i in sorted(needed):
            win = windows[i]
            if VERIFY_FLOOR <= win.probability < MAX_ACCEPT:
                win.confirm_done = True
                c1 = time.process_time()
                placed = confirm(lib.detect, rgb, Proposal(win.box, win.hog or 0.0), params)
                win.confirm_s = time.process_time() - c1
                if placed is not None:
                    win.confirmed = (placed.box, float(min(1.0, max(0.0, placed.face.likelihood))))
        probe = [win.accepted_box for win in windows] + [win.confirmed[0] for win in windows if win.confirmed]
        probs = list(face_filter.probabilities(rgb, probe)) if probe else []
        for win in windows:
            win.accepted_filter = float(probs.pop(0))
        for win in windows:
            if win.confirmed:
                win.confirmed_filter = float(probs.pop(0))
        out.append(pic)
        print(f"{n + 1}/{len(items)} {it.name}: {len(windows)} windows, {len(needed)} in some pool, "
              f"{sum(1 for w in windows if w.confirm_done)} searched, {sum(1 for w in windows if w.confirmed)} confirmed",
              flush=True)
    return out


@dataclass(frozen=True)
class Policy:
    pool: str  # "default" | "hog" | "hog+cascade" | "default+cascade"
    hog_floor: float = 0.3
    rank: str = "hog"  # "hog" | "verifier"
    cap: int = 16
    neighbours: int = 5  # cascade boxes with at least this many neighbours
    cascade_min: int = 24  # ... and at least this wide (px, the cascade's own box: its minSize)
    reject: float = 1e-4
    accept: float = 0.9
    filter: bool = True

    def label(self) -> str:
        s = f"{self.pool}, rank {self.rank}, cap {self.cap}, drop<{self.reject:g}, keep>={self.accept:g}"
        if self.pool != "default":
            s += f", HOG>={self.hog_floor:g}"
        if "cascade" in self.pool:
            s += f", cascade n>={self.neighbours} w>={self.cascade_min}"
        return s + ("" if self.filter else ", no filter")


FILTER_THRESHOLD = 0.0  # set from the committed model in main()


def chosen(p: Picture, pol: Policy) -> list[int]:
    """The windows ``pol`` sends to the verifier's gate, in order (suppression and cap applied)."""
    ws = p.windows
    if pol.pool == "default":
        return list(p.default)
    else:
        if pol.pool.startswith("default"):
            pool = list(p.default)
        else:
            pool = [i for i, w in enumerate(ws) if w.hog is not None and w.hog >= pol.hog_floor]
        if "cascade" in pol.pool:
            pool += [i for i, w in enumerate(ws) if w.neighbours >= pol.neighbours and w.hog is None
                     and (w.box[2] - w.box[0]) / CASCADE_BOX_SCALE >= pol.cascade_min]

        def key(i: int) -> float:
            if pol.rank == "verifier":
                return -ws[i].probability
            return -(ws[i].hog if ws[i].hog is not None else 0.3 + ws[i].neighbours / 100)

    out: list[int] = []
    for i in sorted(pool, key=key):
        if all(iou(ws[i].box, ws[k].box) < 0.3 for k in out):
            out.append(i)
            if len(out) == pol.cap:
                break
    return out


def decide(p: Picture, pol: Policy) -> tuple[list[tuple[Box, float]], int, float]:
    """The two-stage mode's faces on ``p`` under ``pol`` (search_twostage's rules), the number of animeface
    crop searches it needed and their CPU seconds."""
    ws = p.windows
    chosen_ = chosen(p, pol)
    assert all(ws[i].confirm_done for i in chosen_ if pol.reject <= ws[i].probability < pol.accept)
    accepted = sorted((i for i in chosen_ if ws[i].probability >= pol.accept), key=lambda i: -ws[i].probability)
    to_confirm = [i for i in chosen_ if ws[i].probability < pol.accept and ws[i].probability >= pol.reject]
    kept: list[int] = []
    for i in accepted:
        if all(iou(ws[i].accepted_box, ws[k].accepted_box) < 0.5 for k in kept):
            kept.append(i)
    faces = [(ws[i].accepted_box, ws[i].probability, ws[i].accepted_filter) for i in kept]
    taken = [f[0] for f in faces]
    for i in to_confirm:
        c = ws[i].confirmed
        if c is not None and all(iou(c[0], t) < 0.5 for t in taken):
            faces.append((c[0], c[1], ws[i].confirmed_filter))
            taken.append(c[0])
    if pol.filter:
        faces = [f for f in faces if f[2] >= FILTER_THRESHOLD]
    cost = sum(ws[i].confirm_s for i in to_confirm)
    return [(f[0], f[1]) for f in faces], len(to_confirm), cost


def score(pics: list[Picture], pol: Policy) -> tuple[dict[str, Counts], list[int], list[float]]:
    by: dict[str, Counts] = {}
    crops, cpu = [], []
    for p in pics:
        found, n, s = decide(p, pol)
        by[p.source] = by.get(p.source, Counts()) + match(found, p.truth, 0.5)
        crops.append(n)
        cpu.append(p.fixed_s + s)
    return by, crops, cpu


def total(by: dict[str, Counts], skip: str | None = None) -> Counts:
    out = Counts()
    for k, c in by.items():
        if k != skip:
            out += c
    return out


def pools() -> list[Policy]:
    """The proposal pools tried (the gate's bars and the filter at their defaults)."""
    out = [Policy("default"), Policy("hog", 0.3, "hog", 24)]
    out += [Policy("hog", floor, "verifier", cap) for floor in (0.3, -0.5, -1.0) for cap in (16, 24)]
    out += [Policy("hog+cascade", floor, "verifier", cap, nb, cmin)
            for floor in (0.3, -0.5) for cap in (16, 24) for nb in (3, 5) for cmin in (24, 48)]
    out += [Policy("default+cascade", 0.3, rank, cap, nb, cmin)
            for rank in ("hog", "verifier") for cap in (16, 24) for nb in (3, 5) for cmin in (24, 48)]
    return out


def policies() -> list[Policy]:
    """Every pool with every pair of the gate's bars, filter on and off."""
    return [replace(pol, reject=r, accept=a, filter=f) for pol in pools()
            for r, a, f in itertools.product((1e-4, 1e-3, 1e-2), (0.9, 0.99), (True, False))]


def median(xs: list[float]) -> float:
    return float(np.median(xs)) if xs else 0.0


def main(argv: list[str] | None = None) -> int:
    global FILTER_THRESHOLD
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--realart", type=Path, default=ROOT / ".cache/realart")
    c.add_argument("--scenes", type=Path, default=ROOT / ".cache/scenes")
    c.add_argument("--split", default="tune")
    c.add_argument("--calibration", type=float, nargs=2, metavar=("SCALE", "DY"),
                   help="lbpcascade's box calibration (default: fitted on scene-tune, as bench/detect.py does)")
    c.add_argument("--cascade", type=Path, default=ROOT.parent / "shared/bench/peers/lbpcascade_animeface.xml")
    v = sub.add_parser("cv")
    v.add_argument("--split", default="tune")
    args = ap.parse_args(argv)
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{args.split}.pkl"
    if args.cmd == "collect":
        cascade = create_detector("cascade", model_path=str(args.cascade), scale_factor=1.1, min_neighbors=5,
                                  min_size=24, equalize=True)
        cascade.load()
        cal = calibrate(cascade, scene_items(args.scenes / "tune")) if not args.calibration else Calibration(*args.calibration)
        print(f"lbpcascade calibration on scene-tune: x{cal.scale:.3f}, dy {cal.dy:+.3f}")
        split_dir = args.realart / args.split if (args.realart / args.split).exists() else args.scenes / args.split
        items = realart_items(split_dir) if "scene" not in str(split_dir) else scene_items(split_dir)
        for it in items:
            it.group = it.group or "scenes"
        pics = collect(items, cal, args.cascade)
        path.write_bytes(pickle.dumps(pics))
        print(f"written {path}")
        return 0
    FILTER_THRESHOLD = FaceFilter.load().threshold
    pics: list[Picture] = pickle.loads(path.read_bytes())
    pols = policies()
    results = {pol: score(pics, pol) for pol in pols}
    sources = sorted({p.source for p in pics}, key=str.lower)
    base = results[pols[0]]
    print(f"{len(pics)} pictures, {sum(len(p.truth) for p in pics)} faces, {len(sources)} sources, {len(pols)} policies")

    def line(pol: Policy, by: dict[str, Counts], crops: list[int], cpu: list[float]) -> str:
        t = total(by)
        return (f"F1 {t.f1:.3f} R {t.recall:.3f} P {t.precision:.3f} ({t.tp}/{t.fp}/{t.fn}); crops p50 "
                f"{median(crops):.0f} mean {np.mean(crops):.1f}; CPU p50 {median(cpu):.2f} s | {pol.label()}")

    print("today's default:", line(pols[0], *base))
    print("\nbest on all of the split (in-sample):")
    ranked = sorted(pols, key=lambda q: -total(results[q][0]).f1)
    for pol in ranked[:12]:
        print("  ", line(pol, *results[pol]))
    # leave one source out
    held = Counts()
    print("\nleave-one-source-out: the policy best on the other sources, scored on the held-out one")
    chosen_count: dict[Policy, int] = {}
    for s in sources:
        best = max(pols, key=lambda q: (total(results[q][0], skip=s).f1, -np.mean(results[q][1])))
        chosen_count[best] = chosen_count.get(best, 0) + 1
        c = results[best][0].get(s, Counts())
        d = base[0].get(s, Counts())
        held += c
        print(f"  {s}: {c.tp}/{c.fp}/{c.fn} (default {d.tp}/{d.fp}/{d.fn}) with {best.label()}")
    d = total(base[0])
    print(f"held-out sum: F1 {held.f1:.3f} R {held.recall:.3f} P {held.precision:.3f} ({held.tp}/{held.fp}/{held.fn}); "
          f"today's default F1 {d.f1:.3f} R {d.recall:.3f} ({d.tp}/{d.fp}/{d.fn})")
    for pol, k in sorted(chosen_count.items(), key=lambda x: -x[1]):
        print(f"  chosen {k}x: {pol.label()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
