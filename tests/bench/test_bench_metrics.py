"""bench/metrics.py: the matching rule every detection number in bench/RESULTS.md rests on."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from metrics import Counts, iou, match, percentile  # noqa: E402


def test_iou_hand_computed() -> None:
    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    # 5x10 overlap = 50; union 100 + 100 - 50 = 150
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0  # touching edges share no area
    assert iou([0, 0, 10, 10], [2, 2, 4, 4]) == pytest.approx(4 / 100)


def test_greedy_matching_by_confidence() -> None:
    truth = [[0, 0, 10, 10]]
    # Both overlap the one face; the more confident claims it, the other is a false positive.
    low = ([0, 0, 10, 10], 0.6)  # IoU 1.0
    high = ([1, 0, 11, 10], 0.9)  # IoU 90/110 = 0.818
    c = match([low, high], truth, 0.5)
    assert (c.tp, c.fp, c.fn) == (1, 1, 0)


def test_threshold_decides_and_each_truth_is_claimed_once() -> None:
    truth = [[0, 0, 10, 10], [100, 100, 110, 110]]
    det = [([5, 0, 15, 10], 0.9)]  # IoU 1/3 with the first face
    assert match(det, truth, 0.5) == Counts(tp=0, fp=1, fn=2)
    assert match(det, truth, 0.3) == Counts(tp=1, fp=0, fn=1)


def test_rates_and_f1_hand_computed() -> None:
    c = Counts(tp=3, fp=1, fn=2) + Counts(tp=1, fp=0, fn=0)  # 4 / 1 / 2
    assert c.precision == pytest.approx(4 / 5)
    assert c.recall == pytest.approx(4 / 6)
    assert c.f1 == pytest.approx(2 * 0.8 * (2 / 3) / (0.8 + 2 / 3))
    assert Counts(tp=0, fp=3, fn=0).f1 == 0.0
    assert Counts().f1 == 1.0  # nothing to find, nothing found: a background image done right


def test_percentile() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 100) == 5.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_box_calibration_scales_about_the_centre_and_shifts_down() -> None:
    from detect import Calibration

    assert Calibration().apply((10, 20, 30, 60)) == (10, 20, 30, 60)
    # centre (20, 40) moves down by 0.1 of the 40-px height to y 44; half sizes 10x0.5, 20x0.5
    assert Calibration(scale=0.5, dy=0.1).apply((10, 20, 30, 60)) == pytest.approx((15, 34, 25, 54))
