"""bench/realart.py: the real-art sets rebuilt from git history, and the committed labels files.

The assembly runs on a tiny repository each test makes (a drawn picture committed with git), in every
layout the script documents: a checkout (DIR/owner+name), a nested checkout (DIR/owner/name) and a bare
mirror (DIR/owner+name/repo, what the `fetch` tooling writes). No network: --clone is not exercised.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import realart

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_SYSTEM": "/dev/null",
           "PATH": "/usr/bin:/bin:/usr/local/bin"}
REPO = "someone/anime-samples"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True).stdout.strip()


def drawn_picture() -> bytes:
    """A 200x120 RGBA picture: a transparent left half, coloured blocks to check crop and scale by."""
    im = Image.new("RGBA", (200, 120), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.rectangle([100, 0, 199, 119], fill=(200, 30, 30, 255))
    d.rectangle([120, 20, 159, 59], fill=(20, 20, 220, 255))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, bytes]:
    """A work-tree repository holding samples/girl.png in its first commit (deleted in the second, so only
    the recorded commit has it): (path, first commit, the file's bytes)."""
    work = tmp_path_factory.mktemp("src") / "anime-samples"
    (work / "samples").mkdir(parents=True)
    data = drawn_picture()
    (work / "samples" / "girl.png").write_bytes(data)
    git(work, "init", "-q", "-b", "main")
    git(work, "add", ".")
    git(work, "commit", "-qm", "samples")
    first = git(work, "rev-parse", "HEAD")
    git(work, "rm", "-q", "samples/girl.png")
    (work / "README").write_text("moved\n")
    git(work, "add", ".")
    git(work, "commit", "-qm", "drop samples")
    return work, first, data


def labels_dir(tmp: Path, rev: str, data: bytes, **overrides) -> Path:
    pic = {
        "id": "someone-anime-samples-girl", "repo": REPO, "commit": rev, "path": "samples/girl.png",
        "sha256": hashlib.sha256(data).hexdigest(), "licence": "MIT (LICENSE)",
        "crop": [100, 0, 200, 120], "scale": 0.5, "size": [50, 60], "kinds": ["illustration"],
        "faces": [{"bbox": [10, 10, 30, 30], "tags": ["small"]}],
    }
    pic.update(overrides)
    d = tmp / "labels"
    d.mkdir(exist_ok=True)
    (d / "tune.json").write_text(json.dumps({"split": "tune", "convention": "test boxes", "images": [pic]}))
    return d


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    rc = realart.main(argv)
    out = capsys.readouterr()
    return rc, out.out + out.err


@pytest.mark.parametrize("layout", ["checkout", "owner-slash-name", "bare-mirror"])
def test_assemble_from_every_layout(source, tmp_path: Path, layout: str, capsys) -> None:
    work, commit, data = source
    repos = tmp_path / "repos"
    repos.mkdir()
    if layout == "checkout":
        git(repos, "clone", "-q", str(work), "someone+anime-samples")
    elif layout == "owner-slash-name":
        (repos / "someone").mkdir()
        git(repos / "someone", "clone", "-q", str(work), "anime-samples")
    else:
        (repos / "someone+anime-samples").mkdir()
        git(repos / "someone+anime-samples", "clone", "-q", "--bare", str(work), "repo")
    out = tmp_path / "out"
    rc, text = run(["assemble", "--repos", str(repos), "--out", str(out), "--labels-dir",
                    str(labels_dir(tmp_path, commit, data)), "--split", "tune"], capsys)
    assert rc == 0, text
    built = Image.open(out / "tune" / "someone-anime-samples-girl.png")
    assert built.mode == "RGB" and built.size == (50, 60)
    # crop [100, 0, 200, 120] then x0.5: the blue block (120..159, 20..59) lands at (10..29, 10..29)
    assert built.getpixel((20, 20)) == (20, 20, 220)
    assert built.getpixel((40, 50)) == (200, 30, 30)
    doc = json.loads((out / "tune" / "labels.json").read_text())
    entry = doc["images"]["someone-anime-samples-girl.png"]
    assert entry["faces"] == [{"bbox": [10, 10, 30, 30], "tags": ["small"]}]
    assert entry["repo"] == REPO and entry["size"] == [50, 60] and doc["split"] == "tune"


def test_alpha_is_flattened_onto_white(source, tmp_path: Path, capsys) -> None:
    work, commit, data = source
    repos = tmp_path / "repos"
    repos.mkdir()
    git(repos, "clone", "-q", "--bare", str(work), "someone+anime-samples")
    out = tmp_path / "out"
    labels = labels_dir(tmp_path, commit, data, crop=None, scale=1.0, size=[200, 120])
    rc, text = run(["assemble", "--repos", str(repos), "--out", str(out), "--labels-dir", str(labels)], capsys)
    assert rc == 0, text
    assert "test.json not found; that split is skipped" in text  # --split all: a missing split is said, no error
    assert Image.open(out / "tune" / "someone-anime-samples-girl.png").getpixel((10, 10)) == (255, 255, 255)


def test_sha256_mismatch_names_the_file(source, tmp_path: Path, capsys) -> None:
    work, commit, data = source
    repos = tmp_path / "repos"
    repos.mkdir()
    git(repos, "clone", "-q", str(work), "someone+anime-samples")
    labels = labels_dir(tmp_path, commit, data, sha256="0" * 64)
    rc, text = run(["assemble", "--repos", str(repos), "--out", str(tmp_path / "out"), "--labels-dir", str(labels)], capsys)
    assert rc == 2
    assert "someone-anime-samples-girl" in text and "samples/girl.png" in text and "sha256" in text
    assert "Traceback" not in text


def test_missing_repository_says_which_and_how_to_get_it(source, tmp_path: Path, capsys) -> None:
    _, commit, data = source
    repos = tmp_path / "empty"
    repos.mkdir()
    rc, text = run(["assemble", "--repos", str(repos), "--out", str(tmp_path / "out"),
                    "--labels-dir", str(labels_dir(tmp_path, commit, data))], capsys)
    assert rc == 2
    assert REPO in text and f"git clone --bare https://github.com/{REPO}.git" in text and "--clone" in text
    assert not (tmp_path / "out").exists()  # nothing written before every repository is there


def test_missing_file_or_commit_is_named(source, tmp_path: Path, capsys) -> None:
    work, commit, data = source
    repos = tmp_path / "repos"
    repos.mkdir()
    git(repos, "clone", "-q", str(work), "someone+anime-samples")
    head = git(work, "rev-parse", "HEAD")
    labels = labels_dir(tmp_path, head, data)  # the file was deleted at HEAD
    rc, text = run(["assemble", "--repos", str(repos), "--out", str(tmp_path / "o1"), "--labels-dir", str(labels)], capsys)
    assert rc == 2 and "samples/girl.png does not exist at commit" in text
    labels = labels_dir(tmp_path, "f" * 40, data)
    rc, text = run(["assemble", "--repos", str(repos), "--out", str(tmp_path / "o2"), "--labels-dir", str(labels)], capsys)
    assert rc == 2 and f"commit {'f' * 40}" in text and "is not in" in text


@pytest.mark.parametrize("override, message", [
    ({"faces": [{"bbox": [10, 10, 60, 30], "tags": []}]}, "is not inside the 50x60 picture"),
    ({"faces": [{"bbox": [30, 10, 10, 30], "tags": []}]}, "empty or inverted"),
    ({"repo": "nagadomi/waifu2x"}, "reserved"),
    ({"commit": "abc"}, "commit"),
    ({"scale": 2.0}, "scale"),
])
def test_labels_schema_rejects(source, tmp_path: Path, override: dict, message: str) -> None:
    _, commit, data = source
    labels = labels_dir(tmp_path, commit, data, **override)
    with pytest.raises(realart.RealArtError, match=message):
        realart.load_labels(labels / "tune.json")


def test_duplicate_ids_and_shared_sources_are_rejected(source, tmp_path: Path) -> None:
    _, commit, data = source
    doc = json.loads((labels_dir(tmp_path, commit, data) / "tune.json").read_text())
    doc["images"].append(dict(doc["images"][0]))
    (tmp_path / "dup.json").write_text(json.dumps(doc))
    with pytest.raises(realart.RealArtError, match="appears twice"):
        realart.load_labels(tmp_path / "dup.json")
    tune = realart.LabelsFile.model_validate({**doc, "images": doc["images"][:1]})
    other = dict(doc["images"][0], id="another-id", repo=REPO.upper())
    test = realart.LabelsFile.model_validate({"split": "test", "convention": "c", "images": [other]})
    with pytest.raises(realart.RealArtError, match="both the tune and the test split"):
        realart.check_splits([tune, test])


# --- the committed labels files -------------------------------------------------------------------------

COMMITTED = [p for p in (realart.LABELS_DIR / f"{s}.json" for s in realart.SPLITS) if p.exists()]


def test_tune_labels_are_committed() -> None:
    assert realart.LABELS_DIR / "tune.json" in COMMITTED


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_committed_labels_are_valid(path: Path) -> None:
    doc = realart.load_labels(path)  # schema: boxes inside the pictures, unique ids, no reserved source
    assert doc.split == path.stem
    assert all(p.id.lower().startswith(p.repo.replace("/", "-").lower()) for p in doc.images), "ids start owner-name"
    for p in doc.images:
        if p.crop is not None:
            w, h = p.crop[2] - p.crop[0], p.crop[3] - p.crop[1]
            assert (round(w * p.scale), round(h * p.scale)) == tuple(p.size), p.id
    assert sum(len(p.faces) for p in doc.images) > 0


def test_committed_splits_share_no_source() -> None:
    realart.check_splits([realart.load_labels(p) for p in COMMITTED])


def test_detect_benchmark_reads_an_assembled_split(source, tmp_path: Path, capsys) -> None:
    """bench/detect.py's realart sets: the assembled pictures, their boxes and their source (the per-source rows)."""
    import detect
    from metrics import Counts

    work, commit, data = source
    repos = tmp_path / "repos"
    repos.mkdir()
    git(repos, "clone", "-q", "--bare", str(work), "someone+anime-samples")
    out = tmp_path / "out"
    rc, text = run(["assemble", "--repos", str(repos), "--out", str(out), "--labels-dir",
                    str(labels_dir(tmp_path, commit, data))], capsys)
    assert rc == 0, text
    (item,) = detect.realart_items(out / "tune")
    assert item.group == REPO and item.truth == [[10, 10, 30, 30]] and item.load().size == (50, 60)
    score = detect.Score(by_group={REPO: Counts(tp=1, fp=1, fn=0)})
    rendered = detect.by_source("realart-tune", {detect.OURS: score})
    assert f"| {REPO} | F1 0.67, R 1.00 (1/1/0) |" in rendered and "| source | ours |" in rendered


def test_detect_benchmark_runs_ours_with_other_options(tmp_path: Path) -> None:
    """``--ours-options``: ours is built with them, says so in its label, and keeps its short name per source."""
    import detect
    from metrics import Counts

    options = {"twostage": {"cascade_neighbours": 3}}
    ours, raw = detect.build_runners(tmp_path, None, ("ours", "raw"), options)
    assert ours.options == options and ours.name.startswith(detect.OURS) and '"cascade_neighbours": 3' in ours.name
    assert ours.describe()["twostage"]["cascade_neighbours"] == 3 and raw.name == detect.RAW
    rendered = detect.by_source("realart-tune", {ours.name: detect.Score(by_group={REPO: Counts(tp=1)})})
    assert "| source | ours |" in rendered


def test_detect_benchmark_counts_a_picture_past_its_time_limit_as_missed() -> None:
    """bench/detect.py runs each detector in a worker process with a time limit per picture: a detection still
    running at the limit is killed and counts as every face missed (in `timeouts` and the per-source cell),
    and the next picture gets a fresh worker that answers."""
    import numpy as np

    import detect

    # Raw animeface searches every window of a 9-Mpx picture: seconds of work, far past a 0.2 s limit.
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (3000, 3000, 3), dtype=np.uint8))
    small = Image.new("RGB", (64, 64), "white")
    items = [detect.Item("huge.png", lambda: noise, [[10, 10, 60, 60]], REPO),
             detect.Item("small.png", lambda: small, [], REPO)]
    runner = detect.Runner(detect.RAW, "animeface", {"mode": "full"}, 1)
    try:
        scores = detect.run_set(items, [runner], 1, 0.2, lambda *_: None)
        score = scores[detect.RAW]
        assert score.timed_out == ["huge.png"] and score.timeouts_by_group == {REPO: 1}
        assert score.at50 == detect.Counts(tp=0, fp=0, fn=1) and score.wall[0] == 0.2
        assert runner.process is not None and runner.process.is_alive(), "a fresh worker answered the next picture"
        assert "1 timed out" in detect.by_source("realart-tune", scores)
    finally:
        runner.stop()
    assert runner.process is None
