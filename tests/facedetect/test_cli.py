"""``facedetect detect`` as a user runs it: the console script in a subprocess (the first test), and its
options, output and exit codes through the same command in-process (tests/cli_runner.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_runner import run_cli
from servers import venv_bin

from facedetect.cli import app

ENV = {"PATH": "/usr/bin:/bin", "COLUMNS": "160"}


def facedetect_process(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([venv_bin("facedetect"), *args], capture_output=True, text=True, timeout=120, env=ENV)


def facedetect(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(app, *args, env=ENV)


@pytest.fixture
def sprites(art_dir, tmp_path) -> list[Path]:
    """Two sprites whose names contain spaces, plus a copy under the same stem in another folder."""
    names = ["eileen happy.png", "lucy mad.png"]
    for n in names:
        shutil.copy(art_dir / n, tmp_path / n)
    (tmp_path / "again").mkdir()
    shutil.copy(art_dir / "eileen happy.png", tmp_path / "again" / "eileen happy.png")
    return [tmp_path / n for n in names] + [tmp_path / "again" / "eileen happy.png"]


def test_annotate_writes_pairs_named_after_the_files_and_says_where(sprites, tmp_path):
    out = tmp_path / "out dir"
    proc = facedetect_process("detect", *map(str, sprites), "--annotate", str(out))
    assert proc.returncode == 0, proc.stderr
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted([
        "eileen happy_annotated.jpg", "eileen happy_results.json",
        "eileen happy-2_annotated.jpg", "eileen happy-2_results.json",
        "lucy mad_annotated.jpg", "lucy mad_results.json",
    ])
    assert str(out / "lucy mad_annotated.jpg") in proc.stdout
    assert str(out.resolve()) in proc.stdout
    assert "eileen happy.png" in proc.stdout  # the table
    result = json.loads((out / "lucy mad_results.json").read_text())
    assert result["count"] == 1 and result["annotated_image"] == str(out / "lucy mad_annotated.jpg")


def test_json_output(sprites):
    proc = facedetect("detect", *map(str, sprites[:2]), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["file"] for r in rows] == [str(p) for p in sprites[:2]]
    assert all(r["count"] == len(r["detections"]) == 1 for r in rows)
    assert set(rows[0]) >= {"file", "detections", "count"}
    assert len(rows[0]["detections"][0]["bbox"]) == 4


def test_min_confidence_filters(art_dir):
    # The least certain face of the sprites (the verifier keeps most at a probability that rounds to 1.0 in
    # the four decimals the API reports): a bar just above its score drops it.
    sylvie = str(art_dir / "sylvie green giggle.png")
    loose = facedetect("detect", sylvie, "--json")
    assert loose.returncode == 0, loose.stderr
    (conf,) = [d["confidence"] for d in json.loads(loose.stdout)[0]["detections"]]
    assert conf < 1.0
    proc = facedetect("detect", sylvie, "--json", "--min-confidence", str((conf + 1.0) / 2))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["count"] == 0


def test_bad_files_are_reported_per_file_with_a_nonzero_exit(sprites, tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    proc = facedetect("detect", str(sprites[0]), str(junk), str(tmp_path / "missing file.png"), "--json")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert f"{junk}: not an image" in proc.stderr
    assert "missing file.png: No such file" in proc.stderr
    rows = json.loads(proc.stdout)
    assert rows[0]["count"] == 1 and "error" in rows[1] and "error" in rows[2]


def test_backend_needing_a_model_explains_itself(sprites):
    proc = facedetect("detect", str(sprites[0]), "--backend", "yolo-onnx")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    # It names the option this command has (--model), and the service's variable, not only a Python keyword.
    assert "--model PATH" in proc.stderr and "FACEDETECT_MODEL_PATH" in proc.stderr, proc.stderr


def test_unknown_backend_is_a_usage_error(sprites):
    proc = facedetect("detect", str(sprites[0]), "--backend", "magic")
    assert proc.returncode == 2 and "magic" in proc.stderr and "Traceback" not in proc.stderr
