"""Train the two-stage detector's proposal verifier on scene-tune and real-art tune; write models/verifier.{onnx,json}.

    make verifier            # a separate venv with PyTorch for the CPU, then this script
    python bench/train_verifier.py --scenes .cache/scenes [--realart .cache/realart/tune | --no-realart]
        [--hold-out OWNER/NAME ...] [--proposals PATH] [--epochs 20] [--seed 9] [--out PATH]

The committed network was trained on scene-tune and the whole real-art tune split (``bench/realart.py
assemble --split tune``: pictures of 37 sources, many artists), whose windows are drawn ``REAL_WEIGHT`` times
as often as the scenes'; ``--hold-out`` leaves some of its sources out to validate on them, ``--no-realart``
trains on the scenes alone (the network committed before 2026-12-08). docs/detector-speed.md, "Real art",
says what each recipe scored on held-out sources.

Recipe (docs/detector-speed.md, "The verifier"): the proposal stage (``models/proposals.json``) runs on every
tune image at a permissive setting (score >= -1, a denser lattice than detection's: stride 4 px and
pyramid scale 1.08 against 8 and 1.1, non-maximum suppression at IoU 0.5, at most 48 windows), so the
verifier learns from windows like those it will be shown, placed a little more variously, hard negatives
included; lbpcascade_animeface's boxes (one grouped hit, from 24 px) join them, since the detector ranks
those too, and every labelled face adds ``OWN_WINDOWS`` windows of its own, moved and resized at random, so
faces no proposal reaches still teach it (every distractor of the scenes, a head with its face painted out
or a smiley, adds as many negatives). A window is a
positive when it overlaps a labelled face at IoU >= 0.4, a negative under 0.25 (in between: not used); the
regression target is the labelled box relative to the window. Training augments every window: mirror,
scale 0.9-1.1, shift <= 5 % of the window, rotation <= 15 degrees, a random hue rotation over the whole
circle, saturation 0.5-1.3x, then grey 35 % of the time or redrawn as line art (dark edges on white, like
manga and sketches) 15 %, blur 20 %, brightness and contrast. The hue is randomised because the three
characters' hair colours would otherwise be the easiest thing to learn. Positives are drawn four times as
often as negatives. Adam, 20 epochs, the learning rate quartered after two thirds of them. Seeded (NumPy and
PyTorch), on the CPU; two runs on other machines may differ in the last digits.

Needs PyTorch (``make verifier`` installs the CPU build in .cache/train-venv); the exported network is run
by OpenCV, and this script checks that OpenCV's outputs match PyTorch's before writing anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from bench.metrics import iou  # noqa: E402
from bench.train_proposals import tune_entries  # noqa: E402
from facedetect.backends.proposals import CascadeProposer, ProposalModel, default_model, grey, propose  # noqa: E402
from facedetect.backends.twostage import suppress  # noqa: E402
from facedetect.backends.verifier import CONTEXT, CROP, INPUT, blob, model_paths, windows  # noqa: E402

POSITIVE, NEGATIVE = 0.4, 0.25  # IoU with a labelled face
# Real-art windows are drawn this many times as often as scene windows: they are the art the detector meets,
# from many artists instead of three characters (374 faces of 37 sources against the scenes' 283 faces).
REAL_WEIGHT = 3
PERMISSIVE = dict(threshold=-1.0, stride=4, scale=1.08, nms_iou=0.5, limit=48)
# The detector's second proposal source, at its most permissive (one grouped hit, from its smallest window):
# the verifier ranks the cascade's boxes too, so it learns from them.
CASCADE = dict(min_neighbours=1, min_size=24)
# Every labelled face (and every distractor of the scenes) also gives this many windows of its own, moved and
# resized at random: faces neither proposal source reaches on the tune pictures still teach the network what a
# face is and where its box is.
OWN_WINDOWS, OWN_SHIFT, OWN_SCALE = 3, 0.12, 0.15
GREY, LINE_ART, BLUR = 0.35, 0.15, 0.2  # shares of training windows drawn in grey, as ink lines, blurred
ROTATION = 15.0  # degrees, either way


def collect(splits: list[Path], hold_out: frozenset[str] = frozenset(),
            proposals: Path | None = None) -> dict[str, np.ndarray]:
    """Proposal windows of every picture of the tune ``splits`` (scene-tune; real-art tune, less the pictures
    of the ``hold_out`` repositories), with their best IoU with a labelled face and the regression target.
    Real-art windows are marked (``real``) so training can draw them more often: they are fewer."""
    pictures = [picture for split in splits for picture in tune_entries(split, hold_out)]
    hog = (ProposalModel.load(proposals) if proposals else default_model()).detector()
    cascade = CascadeProposer(CASCADE["min_neighbours"], CASCADE["min_size"])
    rng = np.random.default_rng(3)
    crops, overlap, target, real = [], [], [], []
    for path, entry in pictures:
        bgr = cv2.imread(str(path))
        if bgr is None:
            raise SystemExit(f"cannot read {path}")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        gray = grey(rgb)
        truth = [f["bbox"] for f in entry["faces"]]
        found = propose(hog, gray, PERMISSIVE["threshold"], stride=PERMISSIVE["stride"], scale=PERMISSIVE["scale"])
        boxes = [p.box for p in suppress(found, PERMISSIVE["nms_iou"], PERMISSIVE["limit"])]
        # The scenes' distractors (heads with the face painted out, smileys) get windows of their own too: hard
        # negatives, which line art and grey make look more like faces.
        distractors = [d["bbox"] for d in entry.get("distractors", [])]
        boxes += [p.box for p in cascade.propose(gray)] + own_windows(rng, truth) + own_windows(rng, distractors)
        if not boxes:
            continue
        crops.append(windows(rgb, boxes))
        real += [bool(entry.get("repo"))] * len(boxes)
        for b in boxes:
            ious = [iou(b, t) for t in truth]
            best = int(np.argmax(ious)) if ious else -1
            overlap.append(ious[best] if ious else 0.0)
            if best < 0:
                target.append((0.0, 0.0, 0.0))
                continue
            t, w = truth[best], b[2] - b[0]
            target.append((((t[0] + t[2]) - (b[0] + b[2])) / 2 / w, ((t[1] + t[3]) - (b[1] + b[3])) / 2 / w,
                           float(np.log((t[2] - t[0]) / w))))
    return {"crops": np.concatenate(crops) if crops else np.zeros((0, CROP, CROP, 3), np.uint8),
            "iou": np.array(overlap, np.float32), "target": np.array(target, np.float32), "real": np.array(real, bool)}


def own_windows(rng: np.random.Generator, boxes: list) -> list[tuple[float, float, float, float]]:
    """``OWN_WINDOWS`` windows about each labelled box (a face, or a scene's distractor), its centre moved and
    its side scaled at random."""
    out = []
    for x1, y1, x2, y2 in boxes:
        w = x2 - x1
        for _ in range(OWN_WINDOWS):
            side = w * rng.uniform(1 - OWN_SCALE, 1 + OWN_SCALE)
            cx = (x1 + x2) / 2 + rng.uniform(-OWN_SHIFT, OWN_SHIFT) * w
            cy = (y1 + y2) / 2 + rng.uniform(-OWN_SHIFT, OWN_SHIFT) * w
            out.append((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
    return out


def line_art(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A window (float RGB in [0, 1]) redrawn as dark lines on white where its grey image has edges: manga,
    sketches and line art look like this, and the scenes hold none."""
    gray = cv2.GaussianBlur(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), (3, 3), 0)
    ink = 1.0 - np.clip(np.abs(cv2.Laplacian(gray, cv2.CV_32F, ksize=3)) * rng.uniform(2.0, 6.0), 0, 1)
    return np.repeat(ink[..., None], 3, 2)


def augment(rng: np.random.Generator, crop: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One augmented copy of a ``CROP``-px window and its regression target, moved with it."""
    img = crop.astype(np.float32) / 255.0
    t = target.copy()
    if rng.random() < 0.5:
        img, t[0] = img[:, ::-1], -t[0]
    s, (dx, dy), angle = rng.uniform(0.9, 1.1), rng.uniform(-0.05, 0.05, 2), rng.uniform(-ROTATION, ROTATION)
    c = CROP / 2
    m = cv2.getRotationMatrix2D((c + dx * CROP, c + dy * CROP), angle, s)
    m[:, 2] -= (dx * CROP, dy * CROP)
    img = cv2.warpAffine(np.ascontiguousarray(img), m, (CROP, CROP), borderMode=cv2.BORDER_REPLICATE)
    # The window moved by d * CROP px = d * CONTEXT proposal widths and shrank by s: the target follows.
    t[0], t[1], t[2] = (t[0] - CONTEXT * dx) * s, (t[1] - CONTEXT * dy) * s, t[2] + np.log(s)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(0, 360)) % 360
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.3), 0, 1)
    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    drawn = rng.random()
    if drawn < LINE_ART:
        img = line_art(img, rng)
    elif drawn < LINE_ART + GREY:
        img = np.repeat(img.mean(2, keepdims=True), 3, 2)
    if rng.random() < BLUR:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.2))
    img = np.clip((img - 0.5) * rng.uniform(0.7, 1.3) + 0.5 + rng.uniform(-0.15, 0.15), 0, 1)
    return blob((img * 255).astype(np.uint8)[None])[0], t


def build_network():
    import torch.nn as nn

    class Verifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(64, 32, 3, padding=1), nn.ReLU(), nn.Flatten(),
            )
            self.head = nn.Sequential(nn.Linear(32 * (INPUT // 8) ** 2, 64), nn.ReLU(), nn.Linear(64, 4))

        def forward(self, x):
            return self.head(self.features(x))

    return Verifier()


def train(data: dict[str, np.ndarray], epochs: int, seed: int, real_weight: int = REAL_WEIGHT):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    rng = np.random.default_rng(seed)
    keep = (data["iou"] >= POSITIVE) | (data["iou"] < NEGATIVE)
    crops, target, real = data["crops"][keep], data["target"][keep], data["real"][keep]
    label = (data["iou"][keep] >= POSITIVE).astype(np.float32)
    regress = (data["iou"][keep] >= 0.3).astype(np.float32)  # every positive
    positives, negatives = np.flatnonzero(label > 0), np.flatnonzero(label == 0)
    print(f"{len(crops)} windows: {len(positives)} positives, {len(negatives)} negatives", flush=True)
    net = build_network()
    opt = torch.optim.Adam(net.parameters(), 2e-3, weight_decay=1e-4)
    start = time.monotonic()
    for epoch in range(epochs):
        if epoch == epochs * 2 // 3:
            for group in opt.param_groups:
                group["lr"] /= 4
        order = np.concatenate([negatives, np.repeat(negatives[real[negatives]], real_weight - 1),
                                np.repeat(positives, 4), np.repeat(positives[real[positives]], 4 * (real_weight - 1))])
        rng.shuffle(order)
        total = 0.0
        for b in range(0, len(order), 128):
            batch = order[b:b + 128]
            xs, ts = zip(*(augment(rng, crops[i], target[i]) for i in batch))
            x, t = torch.tensor(np.stack(xs)), torch.tensor(np.stack(ts))
            y, r = torch.tensor(label[batch]), torch.tensor(regress[batch])
            out = net(x)
            box_loss = F.smooth_l1_loss(out[:, 1:], t, reduction="none", beta=0.1).sum(1)
            loss = F.binary_cross_entropy_with_logits(out[:, 0], y) + 2.0 * (box_loss * r).sum() / r.sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(batch)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(order):.4f} ({time.monotonic() - start:.0f} s)", flush=True)
    return net.eval()


def export(net, data: dict[str, np.ndarray], out: Path) -> None:
    import torch

    torch.onnx.export(net, torch.zeros(1, 3, INPUT, INPUT), str(out), input_names=["windows"],
                      output_names=["logit_and_box"], dynamic_axes={"windows": {0: "n"}, "logit_and_box": {0: "n"}},
                      opset_version=13, dynamo=False)
    sample = blob(data["crops"][:64])
    with torch.no_grad():
        expected = net(torch.tensor(sample)).numpy()
    cv_net = cv2.dnn.readNetFromONNX(str(out))
    cv_net.setInput(sample)
    got = cv_net.forward()
    if not np.allclose(got, expected, atol=1e-3):
        raise SystemExit(f"OpenCV's outputs differ from PyTorch's by {np.abs(got - expected).max():.4g}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=Path, default=ROOT / ".cache" / "scenes")
    ap.add_argument("--realart", type=Path, default=ROOT / ".cache" / "realart" / "tune",
                    help="real-art tune split (bench/realart.py assemble --split tune)")
    ap.add_argument("--no-realart", action="store_true", help="train on scene-tune alone")
    ap.add_argument("--hold-out", nargs="*", default=[], metavar="OWNER/NAME",
                    help="real-art repositories left out of training (to validate on them)")
    ap.add_argument("--proposals", type=Path, default=None,
                    help="proposal model whose windows it learns from (default: the committed one)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--out", type=Path, default=None, help="the .onnx to write (default: the committed model)")
    args = ap.parse_args(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SystemExit("PyTorch is needed to train the verifier: `make verifier` installs it in .cache/train-venv")
    model, description = model_paths()
    if args.out is not None:
        model, description = args.out, args.out.with_suffix(".json")
    hold_out = frozenset(r.lower() for r in args.hold_out)
    splits = [args.scenes / "tune"] + ([] if args.no_realart else [args.realart])
    data = collect(splits, hold_out, args.proposals)
    net = train(data, args.epochs, args.seed)
    export(net, data, model)
    keep = (data["iou"] >= POSITIVE) | (data["iou"] < NEGATIVE)
    description.write_text(json.dumps({
        "trained_by": "bench/train_verifier.py",
        "trained_on": "scene-tune" + ("" if args.no_realart else " + real-art tune")
        + (f" less {', '.join(sorted(hold_out))}" if hold_out else ""), "seed": args.seed,
        "epochs": args.epochs, "context": CONTEXT, "crop": CROP, "input": INPUT,
        "positives": int((data["iou"][keep] >= POSITIVE).sum()), "negatives": int((data["iou"] < NEGATIVE).sum()),
        "outputs": "logit of face; dx, dy, log width ratio of the labelled box, in proposal widths",
    }, indent=1) + "\n")
    print(f"wrote {model} ({model.stat().st_size // 1024} KiB) and {description}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
