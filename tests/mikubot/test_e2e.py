"""A whole avatar change over loopback: Danbooru emulator → llama-swap emulator (vision answers per image,
VRAM ledger) → the real facedetect service → Discord emulator. Then a second change.

The first change runs once (the ``first`` fixture, with what the services saw right after it); each test
checks one behaviour of it.

The detector service runs animeface (the default), on the CPU: its /health says `uses_gpu: false`, so the
detector reservation needs no VRAM and the vision model is *not* unloaded for detection (a GPU detector's
swap is covered by tests/mikubot/test_pipeline_overlap.py and bench/e2e.py with the emulator's simulated one).
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import loopback
from emulators.danbooru import make_post
from emulators.discord import UploadedAvatar
from mikubot.crop import face_in_circle
from mikubot.config import Settings
from mikubot.events import EventBus, ProgressEvent, StageDone
from mikubot.history import History
from mikubot.pipeline import AvatarPipeline
from mikubot.record import ChangeRecord
from pipeline_rig import MIKU, NO_PROSE, YES, YES_FENCED, history_row_is_consistent, posts_for, scaled_art, vision_answers, world

# 1.6x Eileen: a 230-px face, big enough for 1024 px within the 2x upscaling limit.
PLAN = {"eileen happy.png": 1.6, "eileen vhappy.png": 1.6, "eileen concerned.png": 1.6,
        "lucy happy.png": 1.0, "sylvie blue giggle.png": 1.0}
VERDICTS = {"eileen happy.png": YES, "eileen vhappy.png": YES_FENCED, "eileen concerned.png": YES,
            "lucy happy.png": NO_PROSE,
            "sylvie blue giggle.png": "I think so? It's hard to say."}  # unreadable: not a yes


@pytest.fixture(scope="module")
def art(art_dir, face_labels, tmp_path_factory):
    return scaled_art(art_dir, tmp_path_factory.mktemp("booru-art"), PLAN, face_labels)


@pytest.fixture(scope="module")
def rig(art, art_dir, tmp_path_factory):
    extra = [
        # skipped client-side before any download: deleted (no file_url), explicit, not solo
        make_post(art["eileen happy.png"]["path"], 2990, characters=[MIKU], general=["1girl", "solo"], is_deleted=True),
        make_post(art["eileen vhappy.png"]["path"], 2991, characters=[MIKU], general=["1girl", "solo"], rating="e"),
        make_post(art_dir / "concert1.png", 2992, characters=[MIKU, "eileen_(ren'py)"], general=["multiple_girls", "3girls"]),
    ]
    root = art["eileen happy.png"]["path"].parent
    (root / "concert1.png").write_bytes((art_dir / "concert1.png").read_bytes())
    with world(root, posts_for(art, extra), outputs=tmp_path_factory.mktemp("fd-out")) as w:
        yield w


@dataclass
class FirstChange:
    settings: Settings
    record: ChangeRecord
    events: list[ProgressEvent]
    seen: list[str]  # the pictures the vision model was shown
    ledger: dict[str, Any]  # the llama-swap emulator's, right after the change
    running: list[str]
    upload: UploadedAvatar
    names: dict[str, str]  # post key -> art file


@pytest.fixture(scope="module")
def first(rig, art, tmp_path_factory) -> FirstChange:
    seen: list[str] = []
    rig.llama.set_answer("vision", vision_answers(art, VERDICTS, seen))
    rig.llama.preload("llama3.1")  # the bot was chatting: the text model holds the card
    loopback.post(f"{rig.detector_url}/unload")  # someone paused the detector earlier: the reservation resumes it
    rig.danbooru.rate_limit(1)  # Danbooru's 429 (no Retry-After: backed off) on the first search
    rig.discord.force_429, rig.discord.retry_after_s = 1, 0.3  # and Discord's on the first upload
    settings = rig.settings(tmp_path_factory.mktemp("e2e") / "data")
    bus = EventBus()
    events: list[ProgressEvent] = []
    bus.subscribe(events.append)

    async def change() -> dict[str, Any]:
        async with AvatarPipeline(settings, bus=bus) as pipeline:
            return await pipeline.change()

    record = asyncio.run(change())
    assert record.status == "applied", record.error
    return FirstChange(settings, record, events, list(seen), rig.llama.ledger(), rig.llama.running(),
                       rig.discord.uploads[-1], {f"danbooru:{2001 + i}": name for i, name in enumerate(PLAN)})


def test_one_vision_and_one_detector_reservation_for_all_candidates(first):
    record, ledger = first.record, first.ledger
    assert [r.consumer for r in record.reservations] == ["vision", "face-detector"]
    requests = [e for e in record.vram_timeline if e.event == "request"]
    assert [e.consumer for e in requests] == ["vision", "face-detector"]
    assert len(first.seen) == 5, "all five candidates were verified"
    assert ledger["oom_count"] == 0
    assert ledger["loads"].count("vision") == 1, "K candidates cost one vision load, not K"
    assert ledger["unloads"] == ["llama3.1"], "text freed for vision; the CPU detector needs no room"
    assert [e.consumer for e in record.vram_timeline if e.event == "unloaded"] == ["text"]
    assert first.running == ["vision"], "vision stays for the next change"


def test_the_cpu_detector_is_granted_without_measuring_or_unloading(first):
    record = first.record
    assert record.reservations[1].unloaded == []
    timeline = record.vram_timeline
    start = next(i for i, e in enumerate(timeline) if e.event == "request" and e.consumer == "face-detector")
    detector_events = [e.event for e in timeline[start:] if e.event != "released"]  # vision's release
    assert detector_events[:2] == ["request", "cpu-only"] and "resumed" in detector_events, detector_events
    assert not {"measured", "unload", "waiting"} & set(detector_events), "granted without measuring or unloading"
    cpu = next(e for e in timeline if e.event == "cpu-only")
    assert cpu.consumer == "face-detector" and "animeface" in cpu.detail and "needs no VRAM" in cpu.detail


def test_refused_candidates_are_recorded_with_the_reason(first):
    by_file = {first.names[c.key]: c for c in first.record.candidates}
    assert "not Hatsune Miku" in by_file["lucy happy.png"].skipped
    assert by_file["sylvie blue giggle.png"].verification.evidence["parsed"] is False
    assert by_file["eileen vhappy.png"].verification.confidence == pytest.approx(0.9)
    assert {c.detected_via for c in first.record.candidates if not c.skipped} == {"service"}
    assert first.record.detector_backend == "animeface"


def test_discord_gets_the_labelled_face_inside_the_round_area(first, art):
    record, upload = first.record, first.upload
    assert (upload.width, upload.height, upload.format) == (1024, 1024, "PNG")
    name = first.names[record.source.key]
    assert name.startswith("eileen")
    crop = record.crop_box
    inside, share = face_in_circle(tuple(art[name]["labels"][0]), tuple(crop))
    assert inside and 0.2 <= share <= 0.75, (crop, share)
    # and the PNG really is that crop of the source
    with Image.open(art[name]["path"]) as src:
        src = src.convert("RGBA")
        white = Image.new("RGBA", src.size, (255, 255, 255, 255))
        expect = Image.alpha_composite(white, src).convert("RGB").crop(tuple(int(v) for v in crop)).resize((1024, 1024))
    got = Image.open(io.BytesIO(upload.data)).convert("RGB")
    assert float(np.abs(np.asarray(got, np.float32) - np.asarray(expect, np.float32)).mean()) < 6.0
    assert record.description and "girl" in record.description


def test_rate_limits_are_waited_out(first):
    """Discord's 429 on the first upload is waited out as asked and recorded (Danbooru's on the first search
    too: otherwise the change could not have been applied)."""
    assert first.record.upload.attempts == 2 and first.record.upload.rate_limits[0].retry_after == 0.3


def test_the_history_row_is_complete(first):
    record = first.record
    row = History(first.settings.history_path).get(record.id)
    history_row_is_consistent(row)
    assert row.status == "applied" and row.post_key == record.source.key
    assert row.artist.startswith("artist_") and MIKU in row.tags and row.rating == "g"
    assert row.page_url and row.image_url
    assert row.face_box == record.face_box and row.crop_box == record.crop_box
    assert row.verification.method == "vision" and row.description == record.description
    assert set(row.timings) >= {"search", "download", "verify", "reserve", "detect", "crop", "upload", "record"}
    assert [e.event for e in row.vram_timeline].count("granted") == 2
    assert Path(row.avatar_path).read_bytes() == first.upload.data
    assert Path(record.report_path).is_file()


def test_every_stage_finishes_in_order(first):
    stages = [e.stage for e in first.events if e.status == "done"]
    assert stages == ["search", "download", "verify", "reserve", "detect", "crop", "upload", "record"]
    assert {e.change_id for e in first.events} == {first.record.id}
    # The row's events read back into the kinds they were emitted as, with the same JSON (the record stage's
    # done is stored before it ends: no ms there).
    stored = History(first.settings.history_path).get(first.record.id).events
    assert [type(e.detail) for e in stored] == [type(e.detail) for e in first.events]
    assert [e.to_json() for e in stored][:-1] == [e.to_json() for e in first.events][:-1]


async def test_a_second_change_never_reuses_the_post(first, rig, art):
    rig.llama.set_answer("vision", vision_answers(art, VERDICTS, []))
    async with AvatarPipeline(first.settings) as pipeline:
        second = await pipeline.change(candidates=3)
    assert second.status == "applied", second.error
    assert second.source.key != first.record.source.key
    assert first.record.source.key not in {c.key for c in second.candidates}
    assert len(rig.discord.uploads) == 2
    assert rig.llama.ledger()["oom_count"] == 0
    # vision was still there: the second change loaded and unloaded nothing
    assert rig.llama.ledger()["unloads"] == ["llama3.1"] and rig.llama.loads.count("vision") == 1


async def test_the_stage_rows_describe_the_chosen_picture_not_the_last_one(art, art_dir, tmp_path):
    """Two candidates, the face one first and a faceless background last (Danbooru lists newest first):
    the last picture detected and verified is not the one chosen. The detect and verify rows of the live
    table (and the panel, which reads the same events) summarise every candidate, and the crop row names
    the chosen picture — never 'detect ✓ 0 face(s)' next to an avatar cut around a face."""
    from mikubot.cli import StageBoard

    eileen = art["eileen happy.png"]["path"]
    meadow = eileen.parent / "bg meadow.jpg"  # beside the scaled art: the emulator serves that folder
    meadow.write_bytes((art_dir / "bg meadow.jpg").read_bytes())
    posts = [make_post(meadow, 3001, characters=[MIKU], general=["1girl", "solo", "scenery"], rating="g"),
             make_post(eileen, 3002, characters=[MIKU], general=["1girl", "solo"], rating="g")]
    with world(eileen.parent, posts, llama=False, detector=False, discord=False, outputs=tmp_path / "fd") as w:
        settings = w.settings(tmp_path / "data", candidates=2, extra_tag="solo")  # no order:random: newest first
        bus = EventBus()
        board = StageBoard()
        events: list[ProgressEvent] = []
        bus.subscribe(events.append)
        bus.subscribe(board.on_event)
        async with AvatarPipeline(settings, bus=bus) as pipeline:
            record = await pipeline.change(dry_run=True)
    assert record.status == "dry-run", record.error
    assert record.source.key == "danbooru:3002" and record.crop_method == "face"
    detected = [e.detail.key for e in events if e.stage == "detect" and e.status == "progress"]
    verified = [e.detail.key for e in events if e.stage == "verify" and e.status == "progress"]
    assert detected[-1] == verified[-1] == "danbooru:3001", "the faceless picture is the last one processed"
    rows = {stage: detail for stage, (_, detail, _) in board.rows.items()}
    assert rows["detect"] == "faces in 1 of 2 candidates (1, 0) via in-process", rows
    assert rows["verify"].startswith("2 of 2 candidates accepted as Hatsune Miku (heuristic)"), rows
    assert rows["crop"].startswith("chose danbooru_3002.png of 2: 1 face (best "), rows
    assert "face crop" in rows["crop"] and "0 face" not in " ".join(rows.values())
    # the record's events (what the panel replays for an earlier change) end each stage on the same words
    dones = {e.stage: e.detail.summary for e in record_events(settings, record.id) if isinstance(e.detail, StageDone)}
    assert (dones["detect"], dones["verify"], dones["crop"]) == (rows["detect"], rows["verify"], rows["crop"])


def record_events(settings: Settings, change_id: int) -> list[ProgressEvent]:
    row = History(settings.history_path).get(change_id)
    assert row is not None
    return row.events
