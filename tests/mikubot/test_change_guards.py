"""A change survives what a folder or a server can throw at it: a decompression-bomb candidate is skipped
with a reason, FIFOs and device files are never read, and a hung server meets the change's deadline
(MIKU_CHANGE_TIMEOUT_S), which fails the change cleanly and releases its reservations."""

from __future__ import annotations

import asyncio
import copy
import os
from pathlib import Path

import pytest

from cli_runner import run_cli
from emulators.llama_swap import LlamaSwapEmulator
from images import png_declaring
from mikubot.cli import app as mikubot_app
from mikubot.config import Settings
from mikubot.events import EventBus
from mikubot.history import ChangeLocked
from mikubot.pipeline import AvatarPipeline
from mikubot.sources.base import SourceError
from mikubot.sources.imagefile import ImageBomb, sniff
from mikubot.sources.local import read_limited
from panel_helpers import sprite_folder
from pipeline_rig import LLAMA_CONFIG

BOMB = png_declaring(100_000, 100_000)


def settings(tmp_path: Path, source: str, **kw) -> Settings:
    return Settings(data_dir=tmp_path / "data", source=source, dry_run=True, **kw)


def test_sniff_names_a_bomb() -> None:
    assert len(BOMB) < 1024
    with pytest.raises(ImageBomb, match="decompression bomb"):
        sniff(BOMB, what="bomb.png")


async def test_a_bomb_in_the_folder_is_skipped_and_the_change_goes_on(art_dir: Path, tmp_path: Path) -> None:
    art = sprite_folder(art_dir, tmp_path / "art", ("lucy mad.png",))
    (art / "bomb.png").write_bytes(BOMB)
    async with AvatarPipeline(settings(tmp_path, f"local:{art}", candidates=2)) as pipeline:
        record = await pipeline.change()
        report = pipeline.services.make_source(f"local:{art}")  # a fresh scan, to read its report
        await report.search(5, set())
    assert record.status == "dry-run", record.error
    assert record.source.filename == "lucy mad.png"
    assert "too many pixels (a decompression bomb)" in report.last_search.describe()


def test_a_bomb_as_the_only_file_fails_cleanly_in_the_cli(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(BOMB)
    env = {**os.environ, "MIKU_DATA_DIR": str(tmp_path / "data"), "MIKU_DRY_RUN": "true"}
    out = run_cli(mikubot_app, "pfp", "change", "--source", f"file:{bomb}", env=env)
    assert "Traceback" not in out.stderr + out.stdout
    assert "decompression bomb" in out.stdout + out.stderr
    assert out.returncode != 0


@pytest.fixture
def odd_folder(art_dir: Path, tmp_path: Path) -> Path:
    art = sprite_folder(art_dir, tmp_path / "odd", ("lucy mad.png",))
    os.mkfifo(art / "a fifo.png")
    (art / "zeros.png").symlink_to("/dev/zero")
    return art


def test_non_regular_files_are_never_read(odd_folder: Path) -> None:
    for name in ("a fifo.png", "zeros.png"):
        with pytest.raises(SourceError, match="not a regular file"):
            read_limited(odd_folder / name, 1 << 20)
    assert read_limited(odd_folder / "lucy mad.png", 1 << 20)[:4] == b"\x89PNG"


async def test_a_folder_with_a_fifo_and_dev_zero_still_changes(odd_folder: Path, tmp_path: Path) -> None:
    async with AvatarPipeline(settings(tmp_path, f"local:{odd_folder}", candidates=3)) as pipeline:
        record = await asyncio.wait_for(pipeline.change(), 120)  # a hang fails here instead of blocking the run
    assert record.status == "dry-run" and record.source.filename == "lucy mad.png"


async def test_the_deadline_fails_a_hung_change_and_releases_its_reservation(art_dir: Path, tmp_path: Path) -> None:
    """The vision model is reserved, then never answers: the deadline stops the change, records it failed,
    and the reservation is gone; the next change starts at once."""
    config = copy.deepcopy(LLAMA_CONFIG)
    config["models"]["vision"]["infer_s"] = 3600  # reserved, loaded, and then silent
    art = sprite_folder(art_dir, tmp_path / "art", ("lucy mad.png", "eileen happy.png"))
    emu = LlamaSwapEmulator(config)
    with emu.serve():
        s = settings(tmp_path, f"local:{art}", candidates=1, llama_swap_url=emu.url, vision_model="vision",
                     vision_vram_mib=4608, gpu_probe="emulator", gpu_probe_url=emu.gpu_url, change_timeout_s=2, vision_timeout_s=600,
                     http_timeout_s=600, settle_s=0)
        # The vision model is held a tenth of a second in, so a 2-s deadline meets the change in its verify stage
        # (what this test is about is the deadline firing and what it leaves behind, not the 600-s default).
        async with AvatarPipeline(s) as pipeline:
            held: list[dict[str, int]] = []
            task = asyncio.create_task(pipeline.change())
            while not task.done():
                held.append(dict(pipeline.coordinator.held))
                await asyncio.wait({task}, timeout=0.05)
            record = task.result()
            assert record.status == "failed" and "MIKU_CHANGE_TIMEOUT_S" in (record.error or ""), \
                str([e.detail for e in pipeline.history.get(record.id).events if e.status == "fallback"])
            assert record.failed_stage == "verify"
            assert {"vision": 1} in held  # it did hold the vision model while it hung ...
            assert pipeline.coordinator.held == {}  # ... and holds nothing now
            assert pipeline.history.get(record.id).status == "failed"
            pipeline.settings.change_timeout_s = 0.5
            again = await asyncio.wait_for(pipeline.change(), 30)  # not blocked by the first one
            assert again.id == record.id + 1 and again.status == "failed"


async def test_a_second_change_in_the_same_process_is_refused_not_queued(art_dir: Path, tmp_path: Path) -> None:
    """One change at a time is the history's change lock, for two changes of one pipeline as for two
    processes: the second is refused at once with the running change's id; the first goes on."""
    art = sprite_folder(art_dir, tmp_path / "art", ("lucy mad.png",))
    bus = EventBus()
    searching = asyncio.Event()
    bus.subscribe(lambda e: searching.set() if e.stage == "search" else None)
    async with AvatarPipeline(settings(tmp_path, f"local:{art}", candidates=1), bus=bus) as pipeline:
        first = asyncio.create_task(pipeline.change())
        await searching.wait()
        with pytest.raises(ChangeLocked) as refused:
            await pipeline.change()
        record = await first
    assert record.status == "dry-run" and refused.value.running_id == record.id
    assert [r.id for r in pipeline.history.list()] == [record.id]  # the refused one left no row
