from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # tests/servers.py and tests/emulators/ import as top-level helpers


def _art_dir() -> Path:
    return Path(os.environ.get("MIKU_TEST_ART", ROOT / ".cache" / "art" / "images"))


@pytest.fixture(scope="session")
def art_dir() -> Path:
    """The Ren'Py character art (`make art`). Missing art is a failure, not a skip: tests must not pass empty."""
    d = _art_dir()
    if not (d / "eileen happy.png").exists():
        pytest.fail(f"test art not found in {d}; run `make art` (or `make test`, which fetches it)")
    return d


@pytest.fixture(scope="session")
def peer() -> Path:
    """The public anime-face cascade (lbpcascade_animeface.xml), named by ``MIKU_TEST_CASCADE``; ``make test``
    sets it from ``BENCH_DATA``. Missing, it is a failure, not a skip, like missing art."""
    named = os.environ.get("MIKU_TEST_CASCADE")
    if not named or not Path(named).is_file():
        pytest.fail(f"the peer cascade lbpcascade_animeface.xml was not found (MIKU_TEST_CASCADE={named!r}); run "
                    "`make test`, which sets it from BENCH_DATA, or point MIKU_TEST_CASCADE at the file")
    return Path(named)


@pytest.fixture(scope="session")
def face_labels() -> dict[str, list[list[float]]]:
    """Hand-labelled face boxes [x1, y1, x2, y2] per Ren'Py image file name (tests/labels/renpy.json)."""
    data = json.loads((ROOT / "tests" / "labels" / "renpy.json").read_text())
    return data["images"]
