from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import types
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # tests/servers.py and tests/emulators/ import as top-level helpers


def _art_dir() -> Path:
    return Path(os.environ.get("MIKU_TEST_ART", ROOT / ".cache" / "art" / "images")).resolve()


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


def run_shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder every pytest-xdist worker of this run sees (their base temp folders share a parent), so that
    deterministic data is made once per run, not once per worker."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name


@pytest.fixture(scope="session")
def first_tune_dir(art_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first twelve scene-tune images (bench/scenes.py, indices 0, 3, ... 33) and their labels, generated
    once per run for every test that scores a detector on them (the first worker to ask makes them)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import scenes

    out = run_shared_dir(tmp_path_factory, "first-tune")
    out.mkdir(exist_ok=True)
    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the others wait here until the maker is done
        if not (out / ".complete").is_file():
            scenes.generate(art_dir, out, indices=list(range(0, 36, 3)))
            (out / ".complete").touch()
    doc = json.loads((out / "tune" / "labels.json").read_text())
    assert len(doc["images"]) == 12
    return out


@pytest.fixture(scope="session")
def first_tune_scenes(first_tune_dir: Path) -> list[tuple[str, object, list]]:
    """(file name, PIL image, labelled face boxes) of :func:`first_tune_dir`, in name order."""
    from facedetect.imageio import load_image

    doc = json.loads((first_tune_dir / "tune" / "labels.json").read_text())
    return [
        (name, load_image((first_tune_dir / "tune" / name).read_bytes())[0], [f["bbox"] for f in entry["faces"]])
        for name, entry in sorted(doc["images"].items())
    ]


@pytest.fixture(scope="session")
def first_tune_found(first_tune_scenes, tmp_path_factory: pytest.TempPathFactory):
    """``found(**options)``: what ``create_detector("animeface", **options)`` finds on each of
    :func:`first_tune_scenes`, as (box, confidence) lists in name order. The detector is deterministic, and
    several tests score the same one on these images (the default two-stage mode, the raw full mode as the
    baseline to beat): each is run once per run, by the first worker to ask, and read back by the others."""
    from facedetect.backends import create_detector

    def found(*, every_other: bool = False, **options) -> list[list[tuple[tuple[float, ...], float]]]:
        """``every_other``: on the second, fourth ... twelfth image only (``first_tune_scenes[1::2]``)."""
        key = hashlib.sha256(json.dumps([every_other, options], sort_keys=True).encode()).hexdigest()[:12]
        path = run_shared_dir(tmp_path_factory, f"first-tune-found-{key}.json")
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # the others wait here until the first is done
            if not path.is_file():
                detector = create_detector("animeface", **options)
                scenes = first_tune_scenes[1::2] if every_other else first_tune_scenes
                rows = [[(list(d.bbox), d.confidence) for d in detector.detect(image)]
                        for _name, image, _truth in scenes]
                part = path.with_suffix(".part")
                part.write_text(json.dumps(rows))
                part.replace(path)
        return [[(tuple(box), confidence) for box, confidence in row] for row in json.loads(path.read_text())]

    return found


# Five of the first twelve scene-tune images whose faces and smiley/faceless distractors sit close together.
SMALL_TUNE = ("scene-0000.jpg", "scene-0015.jpg", "scene-0018.jpg", "scene-0027.jpg", "scene-0033.jpg")


@pytest.fixture(scope="session")
def small_tune_dir(first_tune_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scene-tune split (``tune/labels.json`` and its pictures) for the tests of the training scripts' code
    paths (determinism, a seed's effect, labelled windows, held-out sources), not of a model's quality:
    :data:`SMALL_TUNE` cut down to their faces and smiley/faceless distractors, 48 px around them (13 faces, 4
    such distractors, 0.1-0.4 Mpx each: a ninth of the twelve images' pixels, which is what training time
    follows). Boxes are moved with the cut; distractors not wholly inside it are dropped."""
    from PIL import Image

    source = first_tune_dir / "tune"
    doc = json.loads((source / "labels.json").read_text())
    out = tmp_path_factory.mktemp("small-tune") / "tune"
    out.mkdir()
    images = {}
    for name in SMALL_TUNE:
        entry = doc["images"][name]
        width, height = entry["size"]
        boxes = [f["bbox"] for f in entry["faces"]] + [q["bbox"] for q in entry["distractors"] if q["kind"] != "body"]
        x1, y1 = max(0, int(min(b[0] for b in boxes)) - 48), max(0, int(min(b[1] for b in boxes)) - 48)
        x2, y2 = min(width, int(max(b[2] for b in boxes)) + 48), min(height, int(max(b[3] for b in boxes)) + 48)

        def moved(box: list[float]) -> list[float]:
            return [round(box[0] - x1, 1), round(box[1] - y1, 1), round(box[2] - x1, 1), round(box[3] - y1, 1)]

        with Image.open(source / name) as image:
            image.crop((x1, y1, x2, y2)).save(out / name, quality=95)
        images[name] = {
            **entry, "size": [x2 - x1, y2 - y1],
            "faces": [{**f, "bbox": moved(f["bbox"])} for f in entry["faces"]],
            "distractors": [{**q, "bbox": moved(q["bbox"])} for q in entry["distractors"]
                            if q["bbox"][0] >= x1 and q["bbox"][1] >= y1 and q["bbox"][2] <= x2 and q["bbox"][3] <= y2],
        }
    (out / "labels.json").write_text(json.dumps({**doc, "images": images}))
    return out.parent


class SmallDisk:
    """A tmpfs of ``size`` mounted under .cache/, and a file that fills it to the last byte."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / ".filler"

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (1 << 16, 4096, 1):  # big steps, then the last page byte by byte
                while True:
                    try:
                        os.write(fd, b"\0" * chunk)
                    except OSError as exc:
                        assert exc.errno == errno.ENOSPC, exc
                        break
        finally:
            os.close(fd)
        assert shutil.disk_usage(self.path).free == 0

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture
def small_disk() -> Iterator[SmallDisk]:
    mount = Path(__file__).resolve().parent.parent / ".cache" / f"small-disk-{uuid.uuid4().hex[:8]}"
    mount.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        mount.rmdir()
        pytest.skip(f"cannot mount a small tmpfs here (needs root and CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield SmallDisk(mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
        mount.rmdir()


# `make test` hands whole files to its workers in collection order (pytest-xdist's --dist loadfile with
# --no-loadscope-reorder), and a file's tests run one after another: a long file started last keeps one worker
# busy while the others idle. So the longest files (measured: 7-40 s each in a 4-worker run on 2 cores, most of
# it detection on generated scenes, training runs, or real processes waiting for each other) are collected
# first, longest first; the others (most under 5 s) keep their order and fill in behind them. A renamed or
# removed file must leave this list too.
LONGEST_FIRST = (
    "tests/facedetect/test_proposals.py",
    "tests/vramctl/test_llama_swap_detector.py",
    "tests/facedetect/test_verifier.py",
    "tests/facedetect/test_ui.py",
    "tests/mikubot/test_browser.py",
    "tests/vramctl/test_vramctl_coordinator.py",
    "tests/mikubot/test_guild_looks.py",
    "tests/bench/test_scenes.py",
    "tests/facedetect/test_facefilter.py",
    "tests/httpserve/test_slow_clients.py",
    "tests/test_openapi_contract.py",
    "tests/mikubot/test_pipeline_faults.py",
    "tests/vramctl/test_llama_swap_real.py",
    "tests/facedetect/test_detect_scenes.py",
    "tests/mikubot/test_bot_commands.py",
    "tests/mikubot/test_e2e.py",
    "tests/mikubot/test_web_security.py",
    "tests/facedetect/test_wide_images.py",
    "tests/vramctl/test_vramctl_lease.py",
    "tests/mikubot/test_bot_run.py",
    "tests/facedetect/test_api.py",
    "tests/mikubot/test_pipeline_overlap.py",
    "tests/mikubot/test_banner.py",
    "tests/facedetect/test_memory.py",
    "tests/facedetect/test_hostile_inputs.py",
    "tests/vramctl/test_vramctl_emulator.py",
    "tests/mikubot/test_upload.py",
    "tests/mikubot/test_candidate_pictures.py",
    "tests/facedetect/test_backend_animeface.py",
    "tests/mikubot/test_browser_banner.py",
    "tests/mikubot/test_web_deployment.py",
    "tests/facedetect/test_hostile_corpus.py",
    "tests/deploy/test_dockerfiles_facedetect.py",
    "tests/mikubot/test_crop.py",
    "tests/mikubot/test_cli_mikubot.py",
)


def _rewrite_asserts_once(config: pytest.Config) -> None:
    """Write pytest's rewritten bytecode of every test file and conftest.py that lacks it, in this process.
    Each pytest-xdist worker imports every test file to collect it, and where the rewritten bytecode is
    missing (a fresh clone, an edited file) each rewrites the asserts itself: 83 files cost about 4 s of CPU,
    once per worker. Rewritten here, ahead of the workers, it is done once. This leans on pytest's private
    rewrite helpers (the same calls its import hook makes); where they moved, the workers rewrite as before."""
    try:
        from _pytest.assertion.rewrite import PYC_TAIL, _read_pyc, _rewrite_test, _write_pyc, get_cache_dir, try_makedirs
    except ImportError:
        return
    quiet = types.SimpleNamespace(trace=lambda message: None)
    for source in sorted((ROOT / "tests").rglob("*.py")):
        if not (source.name.startswith("test_") or source.name == "conftest.py"):
            continue
        cache = get_cache_dir(source)
        pyc = cache / (source.name[:-3] + PYC_TAIL)
        if _read_pyc(source, pyc) is None and try_makedirs(cache):
            try:
                source_hash, code = _rewrite_test(source, config)
            except (SyntaxError, OSError):
                continue  # the worker that imports it reports the error, as a collection error
            _write_pyc(quiet, code, source_hash, pyc)  # atomic: a worker reads a whole file or none


_rewriting: threading.Thread | None = None


def pytest_sessionstart(session: pytest.Session) -> None:
    """In the pytest-xdist controller, before its workers start (its own hook runs last): rewrite the test files'
    asserts once (:func:`_rewrite_asserts_once`), in a thread, while the workers start up."""
    global _rewriting
    config = session.config
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None) or sys.dont_write_bytecode:
        return
    _rewriting = threading.Thread(target=_rewrite_asserts_once, args=(config,), name="rewrite-asserts", daemon=True)
    _rewriting.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _rewriting is not None:
        _rewriting.join()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first (:data:`LONGEST_FIRST`). And schemathesis names each API operation's test (``test_x[GET /health]``) but gives all of them one node id;
    pytest-xdist schedules by node id and would run only the first. Each such test gets the id its name says
    (schemathesis 4 sets the private ``_nodeid`` of pytest < 9; pytest 9 keeps the id in ``_id``)."""
    seen = Counter(item.nodeid for item in items)
    for item in items:
        if seen[item.nodeid] > 1 and item.name != item.nodeid.rpartition("::")[2]:
            own = f"{item.nodeid.rpartition('::')[0]}::{item.name}"
            try:
                from _pytest.nodeid import coerce_node_id
            except ImportError:  # pytest < 9
                item._nodeid = own
            else:
                item._id = coerce_node_id(own)
    missing = [name for name in LONGEST_FIRST if not (ROOT / name).is_file()]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py LONGEST_FIRST names files that do not exist: {missing}")
    rank = {str(ROOT / name): i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(str(item.path), len(rank)))  # a stable sort: the others keep their order
