"""The ``mikubot`` command line with a clean environment: in-process through typer's ``CliRunner`` (an
interpreter start and ``import mikubot.pipeline`` per call would cost seconds), and once as the installed console
script in a real subprocess (``make demo``, at the end)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from cli_runner import run_cli
from emulators.danbooru import create_dapi_app
from emulators.discord import create_app as create_discord
from facedetect.api import create_app as create_facedetect
from facedetect.settings import FaceDetectSettings
from mikubot.cli import app as mikubot_app
from servers import free_port, serve_app


def mikubot(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MIKU_", "FACE_DETECTOR"))}
    return run_cli(mikubot_app, *args, env={**clean, **env}, cwd=cwd)


@pytest.fixture(scope="module")
def folder(art_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("local-art")
    for name in ("eileen happy.png", "eileen vhappy.png"):
        shutil.copy(art_dir / name, d / name)
    return d


def test_change_dry_run_json_history_restore(folder, tmp_path):
    out = tmp_path / "out" / "avatar.png"
    r = mikubot("pfp", "change", "--dry-run", "--source", f"local:{folder}", "--candidates", "2", "--out", str(out),
                "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["status"] == "dry-run" and record["source"]["name"] == "local"
    assert len(record["face_box"]) == 4 and len(record["crop_box"]) == 4
    assert record["crop_method"] == "face" and record["fallbacks"] == []
    assert set(record["timings_ms"]) >= {"search", "download", "verify", "reserve", "detect", "crop", "upload", "record"}
    assert record["files"]["avatar"] == str(out) and out.is_file()
    assert Path(record["report_path"]) == out.with_suffix(".json") and json.loads(out.with_suffix(".json").read_text())["id"] == 1
    assert Path(record["files"]["annotated"]).is_file()
    assert (tmp_path / "data" / "history.sqlite3").is_file(), "state defaults to ./data"
    with Image.open(out) as im:
        assert im.size[0] == im.size[1] and im.format == "PNG"

    r = mikubot("pfp", "history", "--json", cwd=tmp_path)
    rows = json.loads(r.stdout)
    assert r.returncode == 0 and [row["status"] for row in rows] == ["dry-run"]
    human = mikubot("pfp", "history", cwd=tmp_path)
    assert human.returncode == 0 and "dry-run" in human.stdout

    r = mikubot("pfp", "restore", "1", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    restored = json.loads(r.stdout)
    assert restored["id"] == 2 and restored["status"] == "dry-run" and restored["crop_box"] == record["crop_box"]
    r = mikubot("pfp", "restore", "99", cwd=tmp_path)
    assert r.returncode == 1 and "no change with id 99" in r.stderr

    # the second change never reuses the first one's picture; the third finds nothing new
    r = mikubot("pfp", "change", "--source", f"local:{folder}", "--json", cwd=tmp_path)
    second = json.loads(r.stdout)
    assert r.returncode == 0 and second["source"]["key"] != record["source"]["key"]
    r = mikubot("pfp", "change", "--source", f"local:{folder}", cwd=tmp_path)
    assert r.returncode == 1 and "no new candidates" in r.stdout and "❌" in r.stdout


def test_human_output_says_where_avatar_and_report_are(folder, tmp_path):
    r = mikubot("pfp", "change", "--dry-run", "--source", f"local:{folder}", "-k", "1", "--out", "demo/avatar.png",
                cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "✅ avatar written (dry run" in r.stdout and "demo/avatar.png" in r.stdout
    assert "report:" in r.stdout and "demo/avatar.json" in r.stdout
    for stage in ("search", "verify", "detect", "crop", "upload", "record"):
        assert stage in r.stdout


def test_config_show_masks_secrets(tmp_path):
    cfg = tmp_path / "miku.yaml"
    cfg.write_text("candidates: 3\nhair_colours: ['#39c5bb']\n")
    r = mikubot("config", "show", "--json", cwd=tmp_path, MIKU_CONFIG=str(cfg), MIKU_DISCORD_TOKEN="super-secret-token",
                MIKU_DANBOORU_API_KEY="another-secret", FACE_DETECTOR_URL="http://detector:6078")
    assert r.returncode == 0, r.stderr
    values = json.loads(r.stdout)
    assert values["candidates"] == 3 and values["face_detector_url"] == "http://detector:6078"
    assert values["discord_token"] == "**********" and values["danbooru_api_key"] == "**********"
    human = mikubot("config", "show", cwd=tmp_path, MIKU_DISCORD_TOKEN="super-secret-token")
    assert "super-secret" not in human.stdout + human.stderr and "MIKU_DISCORD_TOKEN" in human.stdout


def test_bad_configuration_is_a_clear_error(tmp_path):
    r = mikubot("config", "show", cwd=tmp_path, MIKU_CANDIDATES="many")
    assert r.returncode == 2 and "invalid configuration" in r.stderr and "candidates" in r.stderr
    assert "Traceback" not in r.stderr
    r = mikubot("config", "show", cwd=tmp_path, MIKU_CONFIG=str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = mikubot("pfp", "change", "--source", "ftp:x", cwd=tmp_path)
    assert r.returncode == 1 and "unknown source" in r.stdout


def test_doctor_embedded_default_is_healthy(folder, tmp_path):
    r = mikubot("doctor", cwd=tmp_path, MIKU_SOURCE=f"local:{folder}")
    assert r.returncode == 0, r.stdout
    assert "✅ Anime face detector in-process (animeface)" in r.stdout
    assert "➖ No Discord token" in r.stdout and "➖ No vision model" in r.stdout and "➖ No GPU probe" in r.stdout
    assert "➖ Gelbooru off: no API credentials" in r.stdout


def test_doctor_reports_failures_with_fixes(folder, tmp_path):
    app, _ = create_discord(token="right")
    with serve_app(create_facedetect(FaceDetectSettings(outputs=tmp_path / "fd")), health="/health") as det, \
            serve_app(app) as discord:
        r = mikubot("doctor", cwd=tmp_path, MIKU_SOURCE=f"local:{folder}", FACE_DETECTOR_URL=det,
                    MIKU_DISCORD_API=f"{discord}/api/v10", MIKU_DISCORD_TOKEN="wrong",
                    MIKU_LLAMA_SWAP_URL=f"http://127.0.0.1:{free_port()}")
        assert r.returncode == 1
        assert "✅ Anime face detector API connected" in r.stdout
        assert "❌ Discord token check failed" in r.stdout and "Developer" in r.stdout
        assert "❌ llama-swap not reachable" in r.stdout and "fix: start llama-swap" in r.stdout
        assert "wrong" not in r.stdout.replace("went wrong", "")
        ok = mikubot("doctor", "--json", cwd=tmp_path, MIKU_SOURCE=f"local:{folder}",
                     MIKU_DISCORD_API=f"{discord}/api/v10", MIKU_DISCORD_TOKEN="right")
        checks = {c["name"]: c for c in json.loads(ok.stdout)}
        assert ok.returncode == 0 and checks["discord"]["state"] == "ok" and "Miku" in checks["discord"]["message"]
    r = mikubot("doctor", cwd=tmp_path, MIKU_SOURCE=f"local:{folder}", FACE_DETECTOR_URL=f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 1 and "❌ Anime face detector API not reachable" in r.stdout and "facedetect serve" in r.stdout


GELBOORU_USER, GELBOORU_KEY = "1234", "gel-secret-key"


def test_gelbooru_that_demands_credentials_end_to_end(art_dir, tmp_path):
    """Gelbooru answers 401 to anonymous API calls: doctor says what to set, a change says why it failed,
    and with MIKU_GELBOORU_USER_ID/MIKU_GELBOORU_API_KEY the dry-run change works; the key is never shown."""
    app = create_dapi_app(art_dir=art_dir, flavour="gelbooru")
    app.state.control.add_user(GELBOORU_USER, GELBOORU_KEY)
    with serve_app(app) as gelbooru:
        # the heuristic verifier's hair check is not what this test is about: Sylvie's sprites stand in for Miku
        env = {"MIKU_GELBOORU_URL": gelbooru, "MIKU_MIN_SIDE": "300", "MIKU_MIN_CONFIDENCE": "0",
               "MIKU_SOURCE": "gelbooru"}
        r = mikubot("doctor", "--json", cwd=tmp_path, **env)
        source = {c["name"]: c for c in json.loads(r.stdout)}["source"]
        assert r.returncode == 1 and source["state"] == "fail" and "lacks API credentials" in source["message"]
        assert "MIKU_GELBOORU_USER_ID" in source["fix"] and "MIKU_GELBOORU_API_KEY" in source["fix"]
        r = mikubot("pfp", "change", "--source", "gelbooru", "--dry-run", "--json", cwd=tmp_path, **env)
        record = json.loads(r.stdout)
        assert r.returncode == 1 and record["status"] == "failed" and "401" in record["error"]
        assert "MIKU_GELBOORU_API_KEY" in record["error"]

        half = mikubot("doctor", "--json", cwd=tmp_path, **{**env, "MIKU_SOURCE": "local:.", "MIKU_GELBOORU_USER_ID": "1"})
        gel = {c["name"]: c for c in json.loads(half.stdout)}["gelbooru"]
        assert gel["state"] == "warn" and "half" in gel["message"] and "MIKU_GELBOORU_API_KEY" in gel["fix"]

        env.update(MIKU_GELBOORU_USER_ID=GELBOORU_USER, MIKU_GELBOORU_API_KEY=GELBOORU_KEY)
        r = mikubot("doctor", "--json", cwd=tmp_path, **env)
        checks = {c["name"]: c for c in json.loads(r.stdout)}
        source = checks["source"]
        assert source["state"] == "ok" and f"Gelbooru at {gelbooru} answers" in source["message"], source
        assert "gelbooru" not in checks  # the source check speaks for Gelbooru when it is the source
        out = tmp_path / "gelbooru.png"
        r = mikubot("pfp", "change", "--source", "gelbooru", "--dry-run", "-k", "2", "--out", str(out), "--json",
                    cwd=tmp_path, **env)
        assert r.returncode == 0, r.stdout + r.stderr
        record = json.loads(r.stdout)
        assert record["status"] == "dry-run" and record["source"]["name"] == "gelbooru" and out.is_file()
        shown = mikubot("config", "show", "--json", cwd=tmp_path, **env)
        values = json.loads(shown.stdout)
        assert values["gelbooru_api_key"] == "**********" and values["gelbooru_user_id"] == GELBOORU_USER
    searches = app.state.control.searches()
    assert searches[-1].params["user_id"] == GELBOORU_USER and searches[-1].params["api_key"] == "***"
    stored = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert GELBOORU_KEY.encode() not in stored, "the API key reached a file (history, report, log)"
    assert GELBOORU_KEY not in r.stdout + r.stderr + shown.stdout


def test_stage_board_lists_stages_in_the_order_the_flow_runs_them(tmp_path):
    # The flow decides the order (stage_order): without a vision model detect runs before verify (the
    # heuristic reads the detect stage's faces), with one verify comes first. The live table lists the stages
    # in that order from the start, as their events come. (The real runs' order: test_web_api, test_e2e.)
    from mikubot.cli import StageBoard
    from mikubot.config import Settings
    from mikubot.events import ProgressEvent
    from mikubot.pipeline import stage_order

    heuristic = stage_order(Settings(data_dir=tmp_path, llama_swap_url=None))
    vision = stage_order(Settings(data_dir=tmp_path, llama_swap_url="http://127.0.0.1:9"))
    assert heuristic == ("search", "download", "reserve", "detect", "verify", "crop", "upload", "record")
    assert vision == ("search", "download", "verify", "reserve", "detect", "crop", "upload", "record")
    board = StageBoard(heuristic)
    for t, stage in enumerate(heuristic[:5]):
        board.on_event(ProgressEvent(change_id=1, stage=stage, status="start", t=float(t)))
    assert [cell for cell in board.render().columns[0]._cells] == list(heuristic)


def test_make_demo_reads_true_from_top_to_bottom(art_dir, tmp_path):
    """`make demo` on the sample art: the art shows Eileen, so the demo is Eileen's bot and every line agrees —
    each picture accepted as Eileen because her hair matches, never "does not match" and then accepted."""
    repo = Path(__file__).resolve().parents[2]
    r = subprocess.run(["make", "-s", "demo", f"OUT={tmp_path / 'demo'}", f"ART={art_dir.parent}"], cwd=repo,
                       capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "160"}, check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "3 of 3 candidates accepted as Eileen (heuristic)" in out
    assert "matches Eileen's colours" in out and "does not match" not in out and "Miku" not in out
    assert "faces in 3 of 3 candidates (1, 1, 1)" in out and "chose eileen " in out
    assert (tmp_path / "demo" / "avatar.png").is_file()
