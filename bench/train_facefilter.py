"""Train the face filter (src/facedetect/backends/facefilter.py) on scene-tune (and, with ``--realart``, real-art tune).

Recipe (deterministic: no random numbers anywhere):

1. *Candidates*: a detector (``--detector``/``--options``; default the default animeface mode, the two-stage
   one, with its filter off; ``lone_likelihood`` 0 keeps every cluster leader when the options choose the
   fast scheme) runs on every scene-tune image, and with ``--realart DIR`` on every picture of the real-art
   tune split too (``bench/realart.py assemble --split tune``; ``--hold-out OWNER/NAME ...`` leaves sources
   out, to validate on them). A candidate is a face when it
   overlaps a labelled face at IoU >= 0.5, not a face when its best IoU with every labelled face is < 0.3;
   in between (a real face, badly placed box) it is left out: the filter judges faces, not box placement.
2. *Boxes from the labels*, because a detector makes few false positives (about 20 on the 120 images):
   every labelled face as a positive (at the label's size and at animeface's ~1.2x box), every smiley and
   faceless head as a negative (its box and its central 0.7), and each of those rotated by -25, -15, 15
   and 25 degrees about its centre (the scenes tilt faces by at most 10 degrees; without rotated faces
   the filter dropped tilted faces of other art).
3. *Model*: logistic regression on standardised features, L2 penalty ``--l2``, classes weighted equally,
   fitted by Newton's method (a convex problem: one optimum, no random start, so the same candidates give
   the same model bytes).
4. *Threshold*: out-of-fold probabilities (``--folds`` folds by image, image i in fold i mod k) give the
   highest threshold that keeps ``--keep`` (0.99) of the faces on images the model had not seen; it is then
   lowered by ``--margin`` (3) in log-odds, because the folds hold the same three characters and art the
   filter never saw scores lower (docs/detector-speed.md: the margin was set so that no face of the
   anime-grid or the Ren'Py labels is dropped, which makes those two sets in-sample for the threshold).

    .venv/bin/python bench/train_facefilter.py [--scenes .cache/scenes] [--out src/.../models/facefilter.json]
                                               [--detector animeface] [--options JSON] [--limit N]
                                               [--realart .cache/realart/tune [--hold-out OWNER/NAME ...]]

``make facefilter`` runs it (after ``make scenes``). scene-test and real-art test are never read here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from metrics import iou

from facedetect.backends import create_detector
from facedetect.backends.base import Detector
from facedetect.backends.facefilter import (
    FEATURES_VERSION,
    FaceFilter,
    default_model_path,
    features,
)
from facedetect.imageio import load_image

FACE_IOU, NOT_FACE_IOU = 0.5, 0.3
SYNTHETIC_FACE_SCALE = 1.2  # animeface's boxes are ~1.2x the labels' width (docs/detector-speed.md)
SYNTHETIC_DISTRACTORS = ("smiley", "faceless")
ROTATIONS = (-25.0, -15.0, 15.0, 25.0)
DEFAULT_OPTIONS = {"face_filter": False, "lone_likelihood": 0.0}


@dataclass
class Sample:
    """One candidate's features, label (1 face, 0 not), which image it came from, and what proposed it
    (``detector``, or from the labels: ``label``, ``distractor``)."""

    x: np.ndarray
    y: int
    image: int
    source: str = "detector"
    repo: str = ""  # the real-art picture's source repository ("" for a scene)


def label(box: Sequence[float], truth: Sequence[Sequence[float]]) -> int | None:
    best = max((iou(box, t) for t in truth), default=0.0)
    if best >= FACE_IOU:
        return 1
    if best < NOT_FACE_IOU:
        return 0
    return None


def _scaled(box: Sequence[float], factor: float) -> list[float]:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hw, hh = (box[2] - box[0]) * factor / 2, (box[3] - box[1]) * factor / 2
    return [cx - hw, cy - hh, cx + hw, cy + hh]


def _mirrored(box: Sequence[float], width: int) -> list[float]:
    return [width - box[2], box[1], width - box[0], box[3]]


def _rotated(rgb: np.ndarray, box: Sequence[float], angle: float) -> np.ndarray:
    """The image rotated by ``angle`` degrees about the box's centre (the box then frames the same thing)."""
    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    m = cv2.getRotationMatrix2D(centre, angle, 1.0)
    return cv2.warpAffine(rgb, m, (rgb.shape[1], rgb.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def synthetic_samples(rgb: np.ndarray, entry: dict, index: int) -> list[Sample]:
    """Boxes a detector could have proposed, from the labels: every labelled face (at the label's size and
    at animeface's ~1.2x larger box) and every smiley/faceless-head distractor (its box and its central
    0.7), each also rotated by ``ROTATIONS`` (the scenes tilt faces by at most 10 degrees; drawn faces in
    other art tilt more)."""
    truth = [f["bbox"] for f in entry["faces"]]
    made: list[tuple[list[float], int]] = []
    for t in truth:
        made += [(list(t), 1), (_scaled(t, SYNTHETIC_FACE_SCALE), 1)]
    for q in entry.get("distractors", []):
        if q["kind"] in SYNTHETIC_DISTRACTORS:
            made += [(b, 0) for b in (_scaled(q["bbox"], 1.0), _scaled(q["bbox"], 0.7)) if label(b, truth) == 0]
    out = [Sample(x, y, index, "label" if y else "distractor")
           for x, (_, y) in zip(features(rgb, [b for b, _ in made]), made)]
    for b, y in made[::2]:  # the label-size face box / the whole distractor box
        for angle in ROTATIONS:
            x = features(_rotated(rgb, b, angle), [_scaled(b, SYNTHETIC_FACE_SCALE) if y else b])[0]
            out.append(Sample(x, y, index, "label" if y else "distractor"))
    return out


def image_samples(detector: Detector, image: Image.Image, entry: dict, index: int) -> list[Sample]:
    """The labelled candidates of one scene: the detector's own, and :func:`synthetic_samples`."""
    rgb = np.ascontiguousarray(np.asarray(image.convert("RGB")))
    truth = [f["bbox"] for f in entry["faces"]]
    found = [(d.bbox, label(d.bbox, truth)) for d in detector.detect(image)]
    found = [(b, y) for b, y in found if y is not None]
    rows = features(rgb, [b for b, _ in found])
    return [Sample(x, y, index) for x, (_, y) in zip(rows, found)] + synthetic_samples(rgb, entry, index)


def collect(detector: Detector, split_dir: Path, limit: int | None = None,
            progress: Callable[[str], None] | None = None, first_index: int = 0,
            hold_out: frozenset[str] = frozenset()) -> list[Sample]:
    """The labelled candidates of every image of ``split_dir`` (a `make scenes` split or a real-art split,
    less the pictures of the ``hold_out`` repositories), in name order; images are numbered from
    ``first_index`` (the folds go by that number)."""
    doc = json.loads((split_dir / "labels.json").read_text())["images"]
    names = [n for n in sorted(doc) if doc[n].get("repo", "").lower() not in hold_out]
    names = names[:limit] if limit else names
    samples: list[Sample] = []
    for n, name in enumerate(names, start=1):
        image = load_image((split_dir / name).read_bytes())[0]
        for sample in image_samples(detector, image, doc[name], first_index + n - 1):
            sample.repo = doc[name].get("repo", "")
            samples.append(sample)
        if progress and n % 20 == 0:
            progress(f"{n}/{len(names)} images, {len(samples)} candidates")
    return samples


def fit(x: np.ndarray, y: np.ndarray, l2: float, iterations: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Class-balanced, L2-penalised logistic regression by Newton's method: (mean, scale, weights, bias)."""
    x = x.astype(np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    pos = max(1, int(y.sum()))
    neg = max(1, len(y) - pos)
    sw = np.where(y == 1, len(y) / (2.0 * pos), len(y) / (2.0 * neg))
    penalty = np.full(z.shape[1], l2)
    penalty[-1] = 0.0  # the bias is not penalised
    w = np.zeros(z.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -60, 60)))
        grad = z.T @ (sw * (p - y)) + penalty * w
        hess = (z * (sw * p * (1 - p))[:, None]).T @ z + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return mean, scale, w[:-1], float(w[-1])


def out_of_fold(samples: list[Sample], l2: float, folds: int) -> np.ndarray:
    """Each sample's probability from a model fitted without its image's fold."""
    x = np.stack([s.x for s in samples])
    y = np.asarray([s.y for s in samples], np.float64)
    fold = np.asarray([s.image % folds for s in samples])
    probs = np.zeros(len(samples))
    for k in range(folds):
        test = fold == k
        if not test.any() or test.all():
            continue
        mean, scale, w, b = fit(x[~test], y[~test], l2)
        probs[test] = 1.0 / (1.0 + np.exp(-np.clip(((x[test] - mean) / scale) @ w + b, -60, 60)))
    return probs


def choose_threshold(probs: np.ndarray, y: np.ndarray, keep: float, margin: float) -> float:
    """The highest threshold that keeps ``keep`` of the faces, moved ``margin`` towards 0 in log-odds."""
    faces = np.sort(probs[y == 1])
    if not len(faces):
        return 0.5
    allowed = int(np.floor(len(faces) * (1.0 - keep)))  # faces the threshold may drop
    t = float(faces[allowed])
    t = min(max(t, 1e-6), 1 - 1e-6)
    logit = np.log(t / (1 - t)) - margin
    return float(1.0 / (1.0 + np.exp(-logit)))


def train(samples: list[Sample], *, l2: float, folds: int, keep: float, margin: float,
          meta: dict | None = None) -> tuple[FaceFilter, dict]:
    """The model and a report of its out-of-fold and in-sample behaviour on ``samples``."""
    x = np.stack([s.x for s in samples])
    y = np.asarray([s.y for s in samples], np.float64)
    probs = out_of_fold(samples, l2, folds)
    threshold = choose_threshold(probs, y, keep, margin)
    mean, scale, w, b = fit(x, y, l2)
    model = FaceFilter(mean=mean, scale=scale, weights=w, bias=b, threshold=threshold, meta=dict(meta or {}))
    fitted = model.predict(x)

    def counts(p: np.ndarray) -> dict:
        kept = p >= threshold
        return {"faces_kept": int((kept & (y == 1)).sum()), "faces": int((y == 1).sum()),
                "non_faces_dropped": int((~kept & (y == 0)).sum()), "non_faces": int((y == 0).sum())}

    return model, {"threshold": threshold, "out_of_fold": counts(probs), "in_sample": counts(fitted)}


def leave_one_source_out(samples: list[Sample], committed: FaceFilter, **fit_args) -> str:
    """For each real-art source: the filter trained on every other picture judges that source's detector
    candidates, beside the ``committed`` filter; faces kept and non-faces dropped, per source and summed."""
    lines, sums = [], np.zeros(6, int)
    for repo in sorted({s.repo for s in samples if s.repo}, key=str.lower):
        held = [s for s in samples if s.repo == repo and s.source == "detector"]
        if not held:
            continue
        model, _ = train([s for s in samples if s.repo != repo], **fit_args)
        x, y = np.stack([s.x for s in held]), np.asarray([s.y for s in held])
        new, old = model.predict(x) >= model.threshold, committed.predict(x) >= committed.threshold
        row = np.array([(new & (y == 1)).sum(), (old & (y == 1)).sum(), (y == 1).sum(),
                        (~new & (y == 0)).sum(), (~old & (y == 0)).sum(), (y == 0).sum()])
        sums += row
        lines.append(f"  {repo}: faces kept {row[0]} (committed {row[1]}) of {row[2]}; "
                     f"non-faces dropped {row[3]} (committed {row[4]}) of {row[5]}")
    lines.append(f"  all held out: faces kept {sums[0]} (committed {sums[1]}) of {sums[2]}; "
                 f"non-faces dropped {sums[3]} (committed {sums[4]}) of {sums[5]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=Path, default=ROOT / ".cache/scenes", help="`make scenes` output (tune/ is read)")
    ap.add_argument("--out", type=Path, default=default_model_path())
    ap.add_argument("--detector", default="animeface", help="the backend whose candidates are filtered")
    ap.add_argument("--options", default=json.dumps(DEFAULT_OPTIONS),
                    help=f"its options as JSON (default {json.dumps(DEFAULT_OPTIONS)}); keep its own filter off")
    ap.add_argument("--limit", type=int, default=None, help="only the first N scene-tune images")
    ap.add_argument("--realart", type=Path, default=None,
                    help="also the real-art tune split (bench/realart.py assemble --split tune), e.g. .cache/realart/tune")
    ap.add_argument("--no-realart", action="store_true", help="scene-tune alone (the default without --realart)")
    ap.add_argument("--hold-out", nargs="*", default=[], metavar="OWNER/NAME",
                    help="real-art repositories left out of training (to validate on them)")
    ap.add_argument("--loso", action="store_true",
                    help="with --realart: first report, per real-art source, the filter trained without it on that "
                         "source's candidates against the committed filter (leave-one-source-out)")
    ap.add_argument("--l2", type=float, default=100.0, help="L2 penalty on the standardised weights")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--keep", type=float, default=0.99, help="share of faces the threshold keeps out of fold")
    ap.add_argument("--margin", type=float, default=3.0, help="log-odds the threshold is lowered by after that")
    args = ap.parse_args(argv)

    tune = args.scenes / "tune"
    if not (tune / "labels.json").exists():
        print(f"{tune / 'labels.json'} not found: run `make scenes` first", file=sys.stderr)
        return 2
    options = json.loads(args.options)
    detector = create_detector(args.detector, **options)
    detector.load()
    samples = collect(detector, tune, args.limit, progress=lambda m: print(m, flush=True))
    trained_on = "scene-tune (bench/scenes.py)"
    if args.realart is not None and not args.no_realart:
        real = json.loads((args.realart / "labels.json").read_text()) if (args.realart / "labels.json").exists() else {}
        if real.get("split") != "tune":
            print(f"{args.realart}: not a real-art tune split (bench/realart.py assemble --split tune)", file=sys.stderr)
            return 2
        hold_out = frozenset(r.lower() for r in args.hold_out)
        samples += collect(detector, args.realart, None, lambda m: print(m, flush=True),
                           first_index=1 + max(s.image for s in samples), hold_out=hold_out)
        trained_on += " + real-art tune" + (f" less {', '.join(sorted(hold_out))}" if hold_out else "")
    if not any(s.y for s in samples) or all(s.y for s in samples):
        print("need both faces and non-faces among the candidates", file=sys.stderr)
        return 1
    meta = {"trained_on": trained_on, "detector": args.detector, "options": options,
            "images": len({s.image for s in samples}), "candidates": len(samples),
            "l2": args.l2, "folds": args.folds, "keep": args.keep, "margin": args.margin,
            "features_version": FEATURES_VERSION}
    fit_args = dict(l2=args.l2, folds=args.folds, keep=args.keep, margin=args.margin)
    if args.loso:
        print("leave-one-source-out on real-art tune (the detector's candidates, IoU >= .5 face, < .3 not):")
        print(leave_one_source_out(samples, FaceFilter.load(default_model_path()), **fit_args), flush=True)
    model, report = train(samples, l2=args.l2, folds=args.folds, keep=args.keep, margin=args.margin, meta=meta)
    model.meta["report"] = report
    model.save(args.out)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()[:16]
    print(json.dumps(report, indent=1))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, sha256 {digest}...)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
