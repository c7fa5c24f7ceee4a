"""Detection-quality arithmetic shared by bench/detect.py and the tests.

The matching rule is the public anime-grid benchmark's own (its README, read where ``--bench-data`` points),
so our numbers compare with the peers': detections are taken in descending confidence; each claims the still-unclaimed truth box it
overlaps most, if that overlap reaches the IoU threshold. Unclaimed detections are false positives,
unclaimed truth boxes are misses.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from facedetect.types import iou  # the one IoU; bench scripts and tests import it from here too

Box = Sequence[float]  # x1, y1, x2, y2


@dataclass(frozen=True)
class Counts:
    """True positives, false positives, false negatives; adds up across images."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def recall(self) -> float:
        # No faces to find and none missed counts as perfect recall.
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def precision(self) -> float:
        # No detections at all cannot be wrong.
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def match(
    detections: Iterable[tuple[Box, float]], truth: Sequence[Box], threshold: float = 0.5
) -> Counts:
    """Greedy matching of (box, confidence) detections to truth boxes at ``threshold`` IoU."""
    claimed = [False] * len(truth)
    tp = fp = 0
    for box, _conf in sorted(detections, key=lambda d: -d[1]):
        best, best_iou = -1, threshold
        for i, t in enumerate(truth):
            if claimed[i]:
                continue
            v = iou(box, t)
            if v >= best_iou:
                best, best_iou = i, v
        if best >= 0:
            claimed[best] = True
            tp += 1
        else:
            fp += 1
    return Counts(tp=tp, fp=fp, fn=claimed.count(False))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) without numpy, for small timing lists."""
    if not values:
        raise ValueError("no values")
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)
