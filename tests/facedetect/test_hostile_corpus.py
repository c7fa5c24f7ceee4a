"""bench/hostile.py in small: a couple of hundred generated hostile uploads against the real
``facedetect serve`` process, then a saturation burst. Counts only, no timing: 0 answers >= 500 except
503 + Retry-After, every answer within its kind's statuses, and the server still detects afterwards.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from servers import free_port, run_command, venv_bin

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import hostile  # noqa: E402
from hostile_corpus import HostileCorpus, encode  # noqa: E402

MAX_BYTES = 256 * 1024
WORKERS, QUEUE = 1, 6


@pytest.fixture(scope="module")
def sprite(art_dir) -> Image.Image:
    return Image.open(art_dir / hostile.FACE_FILE).convert("RGB")


@pytest.fixture(scope="module")
def corpus(sprite) -> HostileCorpus:
    return HostileCorpus(sprite.resize(hostile.FACE_SIZE), max_bytes=MAX_BYTES)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile-serve")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"FACEDETECT_WORKERS": str(WORKERS), "FACEDETECT_QUEUE": str(QUEUE),
           "FACEDETECT_MAX_BYTES": str(MAX_BYTES), "FACEDETECT_OUTPUTS": str(out / "outputs")}
    with run_command([venv_bin("facedetect"), "serve", "--host", "127.0.0.1", "--port", str(port)],
                     url=f"{url}/health", env=env) as proc:
        yield url, proc


def test_the_corpus_is_reproducible_and_covers_every_kind(corpus):
    first = [(u.kind, u.content, u.headers, u.params) for u in corpus.uploads(120, seed=3)]
    again = [(u.kind, u.content, u.headers, u.params) for u in corpus.uploads(120, seed=3)]
    other = [(u.kind, u.content) for u in corpus.uploads(120, seed=4)]
    assert first == again and [(k, c) for k, c, _, _ in first] != other
    kinds = Counter(kind for kind, *_ in first)
    assert set(kinds) == set(corpus.kinds)  # the rare kind rides in round 0
    assert max(kinds.values()) - min(kinds.values()) <= 3
    oversize = next(u for u in corpus.uploads(120, seed=3) if u.kind == "oversize_chunked")
    assert oversize.chunked and len(oversize.content) > MAX_BYTES


async def test_two_hundred_hostile_uploads_then_a_burst_get_no_5xx(server, corpus, sprite, art_dir):
    url, proc = server
    tally = await hostile.fire(url, corpus.uploads(200, seed=11), concurrency=8)
    assert len(tally.outcomes) == 200
    assert not tally.server_errors, tally.server_errors[:5]
    assert not tally.problems, tally.problems[:5]
    statuses = Counter(o.status for o in tally.outcomes)
    assert {200, 400, 413, 415, 422} <= set(statuses), statuses

    burst = 3 * (WORKERS + QUEUE)
    sat = await hostile.saturate(url, encode(sprite, "PNG"), burst)
    sat_statuses = Counter(o.status for o in sat.outcomes)
    assert set(sat_statuses) == {200, 503} and sum(sat_statuses.values()) == burst, sat_statuses
    assert not sat.problems and not sat.server_errors  # every 503 carried Retry-After and a message

    server_view = hostile.Server(url, proc, Path("/dev/null"), WORKERS, QUEUE, MAX_BYTES)
    after = hostile.check_after(server_view, art_dir)
    assert after["alive"] and after["idle"] and after["detector_loaded"], after
    assert after["face_status"] == 200 and after["face_iou"] >= 0.5, after
    assert after["metrics_5xx"] == [], after
