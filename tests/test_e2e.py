"""A whole avatar change over loopback: Danbooru emulator → llama-swap emulator (vision answers per image,
VRAM ledger) → the real facedetect service → Discord emulator. Then a second change.

The detector service runs animeface (the default), on the CPU: its /health says `uses_gpu: false`, so the
detector reservation needs no VRAM and the vision model is *not* unloaded for detection (a GPU detector's
swap is covered by tests/test_pipeline_overlap.py and bench/e2e.py with the emulator's simulated one).
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from emulators.danbooru import make_post
from mikubot.crop import face_in_circle
from mikubot.events import EventBus
from mikubot.history import History
from mikubot.pipeline import AvatarPipeline
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


async def test_change_end_to_end_then_no_reuse(rig, art, tmp_path):
    seen: list[str] = []
    rig.llama.set_answer("vision", vision_answers(art, VERDICTS, seen))
    rig.llama.preload("llama3.1")  # the bot was chatting: the text model holds the card
    httpx.post(f"{rig.detector_url}/unload")  # someone paused the detector earlier: the reservation resumes it
    rig.danbooru.rate_limit(1, retry_after=0.2)  # Danbooru's 429 on the first search
    rig.discord.force_429, rig.discord.retry_after_s = 1, 0.3  # and Discord's on the first upload
    settings = rig.settings(tmp_path / "data")
    bus = EventBus()
    events = []
    bus.subscribe(events.append)

    async with AvatarPipeline(settings, bus=bus) as pipeline:
        record = await pipeline.change()
        assert record["status"] == "applied", record["error"]

        # --- one vision reservation for all K verifications, one detector reservation for all survivors
        assert [r["consumer"] for r in record["reservations"]] == ["vision", "face-detector"]
        requests = [e for e in record["vram_timeline"] if e["event"] == "request"]
        assert [e["consumer"] for e in requests] == ["vision", "face-detector"]
        assert len(seen) == 5, "all five candidates were verified"
        ledger = rig.llama.ledger()
        assert ledger["oom_count"] == 0
        assert ledger["loads"].count("vision") == 1, "K candidates cost one vision load, not K"
        assert ledger["unloads"] == ["llama3.1"], "text freed for vision; the CPU detector needs no room"
        unloaded = [e["consumer"] for e in record["vram_timeline"] if e["event"] == "unloaded"]
        assert unloaded == ["text"]
        assert record["reservations"][1]["unloaded"] == []
        timeline = record["vram_timeline"]
        start = next(i for i, e in enumerate(timeline) if e["event"] == "request" and e["consumer"] == "face-detector")
        detector_events = [e["event"] for e in timeline[start:] if e["event"] != "released"]  # vision's release
        assert detector_events[:2] == ["request", "cpu-only"] and "resumed" in detector_events, detector_events
        assert not {"measured", "unload", "waiting"} & set(detector_events), "granted without measuring or unloading"
        cpu = next(e for e in timeline if e["event"] == "cpu-only")
        assert cpu["consumer"] == "face-detector" and "animeface" in cpu["detail"] and "needs no VRAM" in cpu["detail"]
        assert rig.llama.running() == ["vision"], "vision stays for the next change"

        # --- the candidates: the refused ones are recorded with the reason
        names = {f"danbooru:{2001 + i}": name for i, name in enumerate(PLAN)}
        by_file = {names[c["key"]]: c for c in record["candidates"]}
        assert "not Hatsune Miku" in by_file["lucy happy.png"]["skipped"]
        assert by_file["sylvie blue giggle.png"]["verification"]["evidence"]["parsed"] is False
        assert by_file["eileen vhappy.png"]["verification"]["confidence"] == pytest.approx(0.9)
        assert {c["detected_via"] for c in record["candidates"] if not c["skipped"]} == {"service"}
        assert record["detector_backend"] == "animeface"

        # --- the avatar Discord got: 1024x1024, the labelled face inside the round area
        upload = rig.discord.uploads[-1]
        assert (upload.width, upload.height, upload.format) == (1024, 1024, "PNG")
        name = names[record["source"]["key"]]
        assert name.startswith("eileen")
        label = art[name]["labels"][0]
        crop = record["crop_box"]
        inside, share = face_in_circle(tuple(label), tuple(crop))
        assert inside and 0.2 <= share <= 0.75, (label, crop, share)
        # and the PNG really is that crop of the source
        with Image.open(art[name]["path"]) as src:
            src = src.convert("RGBA")
            white = Image.new("RGBA", src.size, (255, 255, 255, 255))
            expect = Image.alpha_composite(white, src).convert("RGB").crop(tuple(int(v) for v in crop)).resize((1024, 1024))
        got = Image.open(io.BytesIO(upload.data)).convert("RGB")
        assert float(np.abs(np.asarray(got, np.float32) - np.asarray(expect, np.float32)).mean()) < 6.0
        assert record["upload"]["attempts"] == 2 and record["upload"]["rate_limits"][0]["retry_after"] == 0.3
        assert record["description"] and "girl" in record["description"]

        # --- the history row is complete
        row = History(settings.history_path).get(record["id"])
        history_row_is_consistent(row)
        assert row["status"] == "applied" and row["post_key"] == record["source"]["key"]
        assert row["artist"].startswith("artist_") and MIKU in row["tags"] and row["rating"] == "g"
        assert row["page_url"] and row["image_url"]
        assert row["face_box"] == record["face_box"] and row["crop_box"] == crop
        assert row["verification"]["method"] == "vision" and row["description"] == record["description"]
        assert set(row["timings"]) >= {"search", "download", "verify", "reserve", "detect", "crop", "upload", "record"}
        assert [e["event"] for e in row["vram_timeline"]].count("granted") == 2
        assert Path(row["avatar_path"]).read_bytes() == upload.data
        assert Path(record["report_path"]).is_file()

        # --- events: every stage started and finished in order, all for this change
        stages = [e.stage for e in events if e.status == "done"]
        assert stages == ["search", "download", "verify", "reserve", "detect", "crop", "upload", "record"]
        assert {e.change_id for e in events} == {record["id"]}

        # --- a second change never reuses the post
        seen.clear()
        second = await pipeline.change(candidates=3)
        assert second["status"] == "applied", second["error"]
        assert second["source"]["key"] != record["source"]["key"]
        assert record["source"]["key"] not in {c["key"] for c in second["candidates"]}
        assert len(rig.discord.uploads) == 2
        assert rig.llama.ledger()["oom_count"] == 0
        # vision was still there: the second change loaded and unloaded nothing
        assert rig.llama.ledger()["unloads"] == ["llama3.1"] and rig.llama.loads.count("vision") == 1
