"""How a change spends the card's time: VRAM work overlaps the work that needs no GPU, and nothing is unloaded
that need not be. Asserted from the order of events and the emulator's ledger, never from timings.

The swaps between vision and the detector are a GPU detector's (the emulator's simulated one); the real
facedetect service runs animeface on the CPU, for which vision never has to leave."""

from __future__ import annotations

from typing import Any

import pytest

from mikubot.events import EventBus
from mikubot.pipeline import AvatarPipeline
import loopback
from pipeline_rig import REFERENCE_SIZES_CONFIG, YES, posts_for, scaled_art, vision_answers, world

PLAN = {"eileen happy.png": 1.0, "eileen vhappy.png": 1.0, "eileen concerned.png": 1.0}


@pytest.fixture(scope="module")
def art(art_dir, face_labels, tmp_path_factory):
    return scaled_art(art_dir, tmp_path_factory.mktemp("overlap-art"), PLAN, face_labels)


def _root(art: dict[str, Any]):
    return next(iter(art.values()))["path"].parent


async def test_text_unload_runs_while_the_candidates_download(art, tmp_path):
    """The vision model's room is made during the download stage: by the time the first picture has arrived,
    vramctl has already asked llama-swap to unload the text model."""
    with world(_root(art), posts_for(art), discord=False, outputs=tmp_path / "fd", gpu_detector=True) as w:
        w.llama.set_answer("vision", vision_answers(art, dict.fromkeys(PLAN, YES), []))
        w.llama.preload("llama3.1")  # the bot was chatting
        loopback.post(f"{w.detector_url}/unload").raise_for_status()  # lent to an earlier vision reservation
        bus = EventBus()
        seen: list[tuple[str, str, bool]] = []

        def text_unload_asked() -> bool:
            return any(r.get("path") == "/api/models/unload" and r.get("model") == "llama3.1" for r in w.llama.requests)

        # Every picture is answered only once the text model's unload has been asked: a pipeline that made the
        # room after the downloads would wait out the emulator's hold and fail below, whatever the machine's pace.
        for variant in ("/original", "/sample", "/720x720", "/360x360", "/180x180"):
            w.danbooru.hold(text_unload_asked, path=variant)
        bus.subscribe(lambda e: seen.append((e.stage, e.status, text_unload_asked())))
        async with AvatarPipeline(w.settings(tmp_path / "data", candidates=3), bus=bus) as pipeline:
            record = await pipeline.change(dry_run=True)
    assert record.status == "dry-run", record.error
    order = [(stage, status) for stage, status, _ in seen]
    # verify starts (its reservation is requested) inside the download stage and ends after it
    assert order.index(("download", "start")) < order.index(("verify", "start")) < order.index(("download", "done"))
    assert order.index(("download", "done")) < order.index(("verify", "done")) < order.index(("reserve", "start"))
    first_picture = next(asked for stage, status, asked in seen if (stage, status) == ("download", "progress"))
    assert first_picture, "the text model's unload was requested before any picture had downloaded"
    unloaded = [e.consumer for e in record.vram_timeline if e.event == "unloaded"]
    assert unloaded == ["text", "vision"]  # this card is tight: vision leaves for the detector
    assert w.llama.ledger()["oom_count"] == 0 and w.llama.loads.count("vision") == 1


async def test_detector_that_fits_beside_vision_needs_no_swap(art, tmp_path):
    """The reference sizes: once text is gone, vision (4.5 GB) and the detector (1 GB) fit together. The detector
    reservation goes at once, the vision model is not unloaded, and the text model is never loaded."""
    with world(_root(art), posts_for(art), discord=False, outputs=tmp_path / "fd", llama_config=REFERENCE_SIZES_CONFIG,
               gpu_detector=True) as w:
        w.llama.set_answer("vision", vision_answers(art, dict.fromkeys(PLAN, YES), []))
        w.llama.preload("llama3.1")
        loopback.post(f"{w.detector_url}/load").raise_for_status()  # the detector stays loaded between changes
        async with AvatarPipeline(w.settings(tmp_path / "data", candidates=3)) as pipeline:
            record = await pipeline.change(dry_run=True)
            assert record.status == "dry-run", record.error
            ledger = w.llama.ledger()
            assert ledger["unloads"] == ["llama3.1"], "only the text model left the card"
            assert ledger["loads"] == ["llama3.1", "vision"] and ledger["oom_count"] == 0
            detector = next(r for r in record.reservations if r.consumer == "face-detector")
            assert detector.unloaded == [] and detector.waited_s < 5
            events = [e.event for e in record.vram_timeline if e.consumer in (None, "face-detector")]
            assert "already-loaded" in events
            assert w.llama.running() == ["vision"], "vision stays for the next change (llama-swap's ttl)"

            # A second change: vision is already there, nothing moves at all.
            second = await pipeline.change(dry_run=True, candidates=2)
            assert second.status == "dry-run", second.error
            assert w.llama.ledger()["unloads"] == ["llama3.1"] and w.llama.loads.count("vision") == 1
            assert all(r.unloaded == [] for r in second.reservations)


async def test_cpu_detector_never_sends_vision_away(art, tmp_path):
    """The same tight card with the real detector service (animeface, CPU): it reports `uses_gpu: false`, so
    its reservation needs 0 MiB — vision stays loaded for the next change and the detector is merely resumed."""
    with world(_root(art), posts_for(art), discord=False, outputs=tmp_path / "fd") as w:
        w.llama.set_answer("vision", vision_answers(art, dict.fromkeys(PLAN, YES), []))
        w.llama.preload("llama3.1")
        loopback.post(f"{w.detector_url}/unload").raise_for_status()
        async with AvatarPipeline(w.settings(tmp_path / "data", candidates=3)) as pipeline:
            record = await pipeline.change(dry_run=True)
    assert record.status == "dry-run", record.error
    assert record.detector_backend == "animeface" and record.crop_method == "face"
    ledger = w.llama.ledger()
    assert ledger["unloads"] == ["llama3.1"], "only the text model left, for vision; nothing for the detector"
    assert ledger["oom_count"] == 0 and w.llama.running() == ["vision"]
    detector = next(r for r in record.reservations if r.consumer == "face-detector")
    assert detector.unloaded == []
    timeline = record.vram_timeline
    start = next(i for i, e in enumerate(timeline) if e.event == "request" and e.consumer == "face-detector")
    events = [e.event for e in timeline[start:] if e.event != "released"]  # vision's release may interleave
    assert events[:2] == ["request", "cpu-only"] and "resumed" in events, events
    assert not {"measured", "unload", "waiting"} & set(events), events
