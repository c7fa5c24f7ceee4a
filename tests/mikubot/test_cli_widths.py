"""The CLI's tables at the terminal's width (rich measures it; nothing is cut at a fixed width): the live
stage table, `mikubot pfp history` and `mikubot config show`, each at 80 and 160 columns."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from typer.testing import CliRunner

from mikubot.cli import StageBoard, app
from mikubot.events import ProgressEvent, Verdict
from mikubot.history import History

LONG = ("danbooru post tagged eileen_(ren'py); hair #f87f7d matches Eileen's colours, and this description goes "
        "on well past sixty characters so that a fixed cut would show")


def rendered(board: StageBoard, width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(board.render())
    return console.export_text()


@pytest.mark.parametrize("width", [80, 160])
def test_the_verify_detail_is_whole_at_any_width(width: int) -> None:
    board = StageBoard()
    board.on_event(ProgressEvent(change_id=7, stage="verify", status="start", t=0.1))
    board.on_event(ProgressEvent(change_id=7, stage="verify", status="progress", t=0.2, detail=Verdict(
        key="sprite.png", method="heuristic", confidence=0.85, description=LONG)))
    text = rendered(board, width)
    assert all(len(line) <= width for line in text.splitlines())
    flat = "".join(line.split("│")[2].strip() if line.count("│") >= 3 else "" for line in text.splitlines())
    assert flat.replace(" ", "") == f"heuristic:0.85{LONG}".replace(" ", ""), text  # every character, folded
    if width == 160:  # wide enough: the detail on as few lines as the width allows, not cut at 60 or 80
        assert sum(1 for line in text.splitlines() if "0.85" in line or "sixty" in line) <= 2


def run(args: list[str], width: int, env: dict[str, str]) -> str:
    result = CliRunner().invoke(app, args, env={"COLUMNS": str(width), "LINES": "50", **env}, terminal_width=width)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("width", [80, 160])
def test_history_is_one_line_per_change(tmp_path, width: int) -> None:
    history = History(tmp_path / "history.sqlite3")
    for n in range(3):
        change = history.start("local:/srv/art", dry_run=True)
        history.finish(change, "dry-run", source="local", post_key=f"local:{n}{'ab' * 31}a", crop_method="face",
                       description=LONG, avatar_path=str(tmp_path / "avatars" / f"change-{change:05d}.png"),
                       timings={"crop": 1.0}, events=[])
    out = run(["pfp", "history"], width, {"MIKU_DATA_DIR": str(tmp_path)})
    lines = out.splitlines()
    rows = [line for line in lines if line.strip()[:1].isdigit()]
    table = [line for line in lines if not line.startswith("avatars")]  # a path is printed whole, to copy
    assert len(rows) == 3 and len(table) == 5 and all(len(line) <= width for line in table), out
    assert all("dry-run" in r and "face" in r for r in rows)
    assert f"avatars (change-NNNNN.png) in {tmp_path / 'avatars'}" in lines
    if width == 160:
        assert "hair #f87f7d matches Eileen's colours" in rows[0]
    else:
        assert "…" in rows[0]  # cut with a mark, never wrapped onto more lines


@pytest.mark.parametrize("width", [80, 160])
def test_config_show_never_cuts_a_name(tmp_path, width: int) -> None:
    out = run(["config", "show"], width, {"MIKU_DATA_DIR": str(tmp_path)})
    for name in ("MIKU_SOURCE_MAX_RETRY_AFTER_S", "MIKU_CANDIDATE_PICTURES_KEPT", "FACE_DETECTOR_URL"):
        assert name in out, out
    assert all(len(line) <= width for line in out.splitlines())
    assert "…" not in out


def test_help_texts_say_what_the_code_does() -> None:
    """`pfp change --help` lists the stages in the order they run by default (no vision model: detect
    before verify) and says when verify comes first; `vramctl --llama-swap` names its default (rich once
    read "[default: ...]" as markup and printed "base URL .")."""
    from vramctl.cli import app as vramctl_app

    change = " ".join(run(["pfp", "change", "--help"], 160, {}).split())
    assert "search → download → reserve → detect → verify → crop → upload → record" in change
    assert "(MIKU_LLAMA_SWAP_URL) verify comes first: search → download → verify → reserve → detect" in change
    result = CliRunner().invoke(vramctl_app, ["status", "--help"], env={"COLUMNS": "160"}, terminal_width=160)
    assert result.exit_code == 0
    assert "llama-swap base URL (default: http://localhost:8090)." in " ".join(result.output.split())
