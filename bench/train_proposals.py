"""Train the two-stage detector's proposal classifier (src/facedetect/backends/models/proposals.json).

Trained on **scene-tune** (``make scenes``; bench/scenes.py) and, unless ``--no-realart``, the **real-art tune**
split (``bench/realart.py assemble --split tune``; ``--hold-out OWNER/NAME ...`` leaves some of its sources out,
to validate a choice on them): nothing of scene-test, real-art test, the Ren'Py labels or the anime-grid is
read, so those stay out-of-sample. The committed model was trained on scene-tune alone (``--no-realart``):
adding real-art tune did not help on held-out real-art sources (docs/detector-speed.md, "Real art"). Deterministic: one fixed seed, and the solver
(Newton steps of L2-regularised logistic regression on HOG features) has no randomness of its own.

* Positives: every labelled face's window (its box grown by ``CONTEXT``), plus augmented copies: mirrored,
  rescaled by 0.9-1.1, shifted by up to 6 % of the face, rotated by up to 8 degrees.
* Negatives: random windows (faces' sizes, 26-400 px) overlapping no face's window by IoU 0.3 or more, the
  generator's distractors (smileys, faceless heads, bodies), then ``--rounds`` of hard negatives: the
  windows the current model scores highest on the tune images away from every face.
* Operating point: the threshold at which ``--recall`` of the tune faces still have a window (proposal
  IoU >= 0.3 with the label) after the detector's own search, so the stage stays permissive.

    .venv/bin/python bench/train_proposals.py [--scenes .cache/scenes] [--realart .cache/realart/tune | --no-realart]
        [--hold-out OWNER/NAME ...] [--out PATH] [--seed 9]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from metrics import iou  # bench/metrics.py, beside this script

from facedetect.backends.proposals import CONTEXT, MODEL_PATH, WINDOW, make_hog, propose

AUGMENT = 6  # augmented copies per face, besides the face itself and its mirror
NEGATIVES_PER_IMAGE = 40
HARD_PER_IMAGE = 30
L2 = 1e-2
FLOOR = 0.0  # score (log-odds) from which windows are looked at when mining and choosing the threshold


def ious(boxes: np.ndarray, b) -> np.ndarray:
    """IoU of each row of ``boxes`` (N x 4) with ``b``."""
    iw = np.minimum(boxes[:, 2], b[2]) - np.maximum(boxes[:, 0], b[0])
    ih = np.minimum(boxes[:, 3], b[3]) - np.maximum(boxes[:, 1], b[1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / np.maximum(union, 1e-9)


def window_of(box, grow: float = CONTEXT) -> tuple[float, float, float]:
    """Centre and side of the square window around a face box."""
    x1, y1, x2, y2 = box
    return (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * grow


def cut(gray: np.ndarray, cx: float, cy: float, side: float, angle: float = 0.0, mirror: bool = False) -> np.ndarray:
    """The square window (centre, side, rotation) resampled to WINDOW x WINDOW, borders replicated."""
    s = WINDOW / side
    m = cv2.getRotationMatrix2D((cx, cy), angle, s)
    m[0, 2] += WINDOW / 2 - cx
    m[1, 2] += WINDOW / 2 - cy
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    out = cv2.warpAffine(gray, m, (WINDOW, WINDOW), flags=interp, borderMode=cv2.BORDER_REPLICATE)
    return out[:, ::-1].copy() if mirror else out


def features(hog: cv2.HOGDescriptor, windows: list[np.ndarray]) -> np.ndarray:
    return np.array([hog.compute(w).reshape(-1) for w in windows], dtype=np.float32)


def fit(x: np.ndarray, y: np.ndarray, l2: float = L2, iterations: int = 30) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method (exact, deterministic); classes weighted equally."""
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1), np.float32)]).astype(np.float64)
    sw = np.where(y > 0, 0.5 / max(1, (y > 0).sum()), 0.5 / max(1, (y <= 0).sum()))
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0
    w = np.zeros(d + 1)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(xb @ w)))
        grad = xb.T @ (sw * (p - y)) + reg * w
        hess = (xb * (sw * p * (1 - p))[:, None]).T @ xb + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-7:
            break
    return w[:-1].astype(np.float32), float(w[-1])


def tune_entries(split: Path, hold_out: frozenset[str] = frozenset()) -> list[tuple[Path, dict]]:
    """Each picture of a tune split (scene-tune, ``make scenes``, or real-art tune, ``bench/realart.py
    assemble``: the same labels format) with its labels entry, less the pictures of the ``hold_out``
    repositories (real art: left out to validate a choice on)."""
    try:
        labels = json.loads((split / "labels.json").read_text())
    except OSError as exc:
        raise SystemExit(f"cannot read {split}/labels.json ({exc.strerror}): build it first (`make scenes`; "
                         "`bench/realart.py assemble --split tune`), or pass --no-realart") from None
    if labels.get("split") != "tune":
        raise SystemExit(f"{split}/labels.json is not a tune split")
    return [(split / name, entry) for name, entry in sorted(labels["images"].items())
            if entry.get("repo", "").lower() not in hold_out]


def load_tune(split: Path, hold_out: frozenset[str] = frozenset()) -> list[tuple[np.ndarray, list, list]]:
    """The grey pictures, face boxes and distractor boxes of a tune split (see ``tune_entries``)."""
    out = []
    for path, entry in tune_entries(split, hold_out):
        bgr = cv2.imread(str(path))
        if bgr is None:
            raise SystemExit(f"cannot read {path}")
        out.append((cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), [f["bbox"] for f in entry["faces"]],
                    [d["bbox"] for d in entry.get("distractors", [])]))
    return out


def windows_box(cx: float, cy: float, side: float) -> tuple[float, float, float, float]:
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def train(scenes: Path, realart: Path | None, seed: int, rounds: int, recall: float,
          hold_out: frozenset[str] = frozenset()) -> dict:
    rng = np.random.default_rng(seed)
    hog = make_hog()
    images = load_tune(scenes / "tune")
    if realart is not None:
        images += load_tune(realart, hold_out)
    pos, neg = [], []
    for gray, faces, distractors in images:
        h, w = gray.shape
        face_windows = [windows_box(*window_of(f)) for f in faces]
        for f in faces:
            cx, cy, side = window_of(f)
            pos += [cut(gray, cx, cy, side), cut(gray, cx, cy, side, mirror=True)]
            for _ in range(AUGMENT):
                s = side * rng.uniform(0.9, 1.1)
                dx, dy = rng.uniform(-0.06, 0.06, 2) * side / CONTEXT
                pos.append(cut(gray, cx + dx, cy + dy, s, rng.uniform(-8, 8), bool(rng.integers(2))))
        for d in distractors:
            cx, cy, side = window_of(d)
            neg += [cut(gray, cx, cy, side), cut(gray, cx, cy, side, mirror=True)]
        taken = 0
        for _ in range(NEGATIVES_PER_IMAGE * 20):
            if taken >= NEGATIVES_PER_IMAGE:
                break
            side = math.exp(rng.uniform(math.log(26 * CONTEXT), math.log(min(400.0, min(h, w)))))
            cx, cy = rng.uniform(side / 2, w - side / 2), rng.uniform(side / 2, h - side / 2)
            if any(iou(windows_box(cx, cy, side), fw) >= 0.3 for fw in face_windows):
                continue
            neg.append(cut(gray, cx, cy, side, mirror=bool(rng.integers(2))))
            taken += 1
    xp, xn = features(hog, pos), features(hog, neg)
    weights, bias = fit(np.vstack([xp, xn]), np.r_[np.ones(len(xp)), np.zeros(len(xn))])
    print(f"round 0: {len(xp)} positives, {len(xn)} negatives")
    for r in range(1, rounds + 1):
        detector = make_hog()
        detector.setSVMDetector(np.append(weights, np.float32(bias)).astype(np.float32))
        hard = []
        for gray, faces, _ in images:
            found = propose(detector, gray, FLOOR)
            boxes = np.array([p.box for p in found]).reshape(-1, 4)
            near = np.zeros(len(found), bool)
            for f in faces:
                near |= ious(boxes, f) >= 0.3
            bad = sorted((p for p, n in zip(found, near) if not n), key=lambda p: -p.score)
            for p in bad[:HARD_PER_IMAGE]:
                cx, cy = (p.box[0] + p.box[2]) / 2, (p.box[1] + p.box[3]) / 2
                hard.append(cut(gray, cx, cy, (p.box[2] - p.box[0]) * CONTEXT))
        xn = np.vstack([xn, features(hog, hard)])
        weights, bias = fit(np.vstack([xp, xn]), np.r_[np.ones(len(xp)), np.zeros(len(xn))])
        print(f"round {r}: {len(hard)} hard negatives, {len(xn)} negatives in all")
    detector = make_hog()
    detector.setSVMDetector(np.append(weights, np.float32(bias)).astype(np.float32))
    best = []  # per face: the best score of a proposal that is that face (IoU >= .3)
    for gray, faces, _ in images:
        found = propose(detector, gray, FLOOR)
        boxes = np.array([p.box for p in found]).reshape(-1, 4)
        scores = np.array([p.score for p in found])
        for f in faces:
            hit = scores[ious(boxes, f) >= 0.3]
            best.append(hit.max() if hit.size else -np.inf)
    threshold = float(np.quantile(np.array(best), 1.0 - recall, method="lower"))
    print(f"threshold {threshold:.3f}: {np.mean(np.array(best) >= threshold):.3f} of {len(best)} tune faces proposed")
    return {
        "trained_by": "bench/train_proposals.py", "trained_on": trained_on(realart, hold_out), "seed": seed,
        "rounds": rounds,
        "window": WINDOW, "context": CONTEXT, "threshold": round(threshold, 4),
        "bias": round(bias, 6), "weights": [round(float(v), 6) for v in weights],
    }


def trained_on(realart: Path | None, hold_out: frozenset[str]) -> str:
    if realart is None:
        return "scene-tune"
    return "scene-tune + real-art tune" + (f" less {', '.join(sorted(hold_out))}" if hold_out else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=Path, default=ROOT / ".cache" / "scenes")
    ap.add_argument("--realart", type=Path, default=ROOT / ".cache" / "realart" / "tune",
                    help="real-art tune split (bench/realart.py assemble --split tune)")
    ap.add_argument("--no-realart", action="store_true", help="train on scene-tune alone")
    ap.add_argument("--hold-out", nargs="*", default=[], metavar="OWNER/NAME",
                    help="real-art repositories left out of training (to validate on them)")
    ap.add_argument("--out", type=Path, default=MODEL_PATH)
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--rounds", type=int, default=1, help="hard-negative rounds")
    ap.add_argument("--recall", type=float, default=0.99, help="share of tune faces the default threshold keeps")
    args = ap.parse_args(argv)
    realart = None if args.no_realart else args.realart
    model = train(args.scenes, realart, args.seed, args.rounds, args.recall,
                  frozenset(r.lower() for r in args.hold_out))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(model, separators=(",", ":")) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
