"""mikubot.colour: the one #rrggbb parser and the one hair-colour metric."""

from __future__ import annotations

import math

import pytest

from mikubot.colour import colour_matches, hair_difference, hair_nearness, hair_rank, is_hex, lab, parse_hex, to_hex


def test_parse_hex_takes_rrggbb_and_nothing_else() -> None:
    assert parse_hex("#39c5bb") == parse_hex("39C5BB") == (0x39, 0xC5, 0xBB)
    assert to_hex(parse_hex("#39C5BB")) == "#39c5bb"
    for bad in ("", "#39c5b", "#39c5bbb", "#39c5bg", " #39c5bb", "#39c5bb\n", "teal"):
        with pytest.raises(ValueError):
            parse_hex(bad)
    assert is_hex("#00a0a0") and not is_hex("00a0a0") and not is_hex(None)


def test_lab_is_cie_lab_d65() -> None:
    assert lab("#ffffff") == pytest.approx((100, 0, 0), abs=0.02)
    assert lab("#000000") == pytest.approx((0, 0, 0), abs=1e-9)
    assert lab("#ff0000") == pytest.approx((53.24, 80.09, 67.20), abs=0.05)  # the published sRGB red


def test_hair_difference_counts_hue_and_chroma_over_lightness() -> None:
    assert hair_difference("#39c5bb", "#39C5BB") == 0
    assert hair_difference("#39c5bb", "#137a7f") == pytest.approx(hair_difference("#137a7f", "#39c5bb"))
    shade = hair_difference("#c8392f", "#7a221c")  # the same red, in shadow
    other = hair_difference("#c8392f", "#2f8fc8")  # a blue as light as it
    assert shade < other / 3
    assert hair_difference("#535353", "#137a7f") > hair_difference("#1a8a8a", "#137a7f") * 4  # grey is no teal


def test_nearness_and_rank() -> None:
    miku = ["#39c5bb", "#137a7f"]
    assert hair_nearness("#137a7f", miku) == 0 and math.isinf(hair_nearness(None, miku))
    assert math.isinf(hair_nearness("#137a7f", [])) and math.isinf(hair_nearness("nope", miku))
    assert hair_rank("#39c5bb", miku) > hair_rank("#1a8a8a", miku) > hair_rank("#535353", miku) == (False, 0)
    assert colour_matches("#1a8a8a", miku) and not colour_matches("#1a8a8a", miku, tolerance=1.0)
