"""Each external service down or misbehaving: the change completes by a fallback, or fails with a clear
reason — and either way leaves one consistent, finished history row."""

from __future__ import annotations

import asyncio

import pytest

from emulators.discord import DiscordControl
from mikubot.events import EventBus
from mikubot.history import History
from mikubot.pipeline import AvatarPipeline
from pipeline_rig import YES, history_row_is_consistent, posts_for, scaled_art, vision_answers, world
from servers import free_port

# Small, quick art (Eileen's detection takes ~0.2 s): faults are about control flow, not pixels.
PLAN = {"eileen happy.png": 1.0, "eileen vhappy.png": 1.0, "eileen concerned.png": 1.0}


@pytest.fixture(scope="module")
def art(art_dir, face_labels, tmp_path_factory):
    return scaled_art(art_dir, tmp_path_factory.mktemp("fault-art"), PLAN, face_labels)


@pytest.fixture(scope="module")
def rig(art, tmp_path_factory):
    root = next(iter(art.values()))["path"].parent
    with world(root, posts_for(art), outputs=tmp_path_factory.mktemp("fd-out")) as w:
        yield w


@pytest.fixture
def fresh(rig, art):
    """Reset every switch between tests."""
    rig.danbooru.reset()
    rig.llama.switches.fail_status = None
    rig.llama.switches.fail_paths = None
    rig.llama.set_down(False)
    rig.llama.set_answer("vision", vision_answers(art, dict.fromkeys(PLAN, YES), []))
    d = rig.discord
    for knob in ("force_429", "retry_after_s", "global_429", "force_status", "force_status_count", "delay_s",
                 "avatar_delay_s", "avatar_changes_allowed"):
        setattr(d, knob, getattr(DiscordControl, knob))  # the emulator's default
    d._avatar_times.clear()
    d.token = "bot-token-for-tests"
    return rig


async def change(settings, **kw):
    async with AvatarPipeline(settings) as p:
        record = await p.change(**kw)
    row = History(settings.history_path).get(record.id)
    history_row_is_consistent(row)
    assert row.status == record.status and row.error == record.error
    return record, row


async def test_vision_model_down_falls_back_to_the_heuristic(fresh, tmp_path):
    fresh.llama.set_down(True)
    record, row = await change(fresh.settings(tmp_path, candidates=2))
    assert record.status == "applied"
    assert "verify:heuristic" in record.fallbacks
    assert record.verification.method == "heuristic"
    assert "tagged hatsune_miku" in record.description


async def test_vision_model_5xx_falls_back_to_the_heuristic(fresh, tmp_path):
    fresh.llama.switches.fail_status = 500
    fresh.llama.switches.fail_paths = {"/v1/chat/completions"}
    record, _ = await change(fresh.settings(tmp_path, candidates=2))
    assert record.status == "applied" and "verify:heuristic" in record.fallbacks


async def test_vision_model_saying_no_to_everything_fails_clearly(fresh, art, tmp_path):
    fresh.llama.set_answer("vision", "No, that is not her.")
    record, row = await change(fresh.settings(tmp_path, candidates=2))
    assert record.status == "failed" and record.failed_stage == "verify"
    assert "none of 2 candidates shows Hatsune Miku" in record.error
    assert not row.uploaded and row.avatar_path is None
    assert History(tmp_path / "history.sqlite3").used_keys("danbooru") == set(), "a failed change uses no post"


async def test_detector_service_down_falls_back_to_in_process(fresh, tmp_path):
    settings = fresh.settings(tmp_path, candidates=2, face_detector_url=f"http://127.0.0.1:{free_port()}")
    record, row = await change(settings)
    assert record.status == "applied", record.error
    assert "detect:in-process" in record.fallbacks
    assert record.crop_method == "face" and record.detector_backend == "animeface"
    assert {c.detected_via for c in record.candidates} == {"in-process"}


async def test_no_detector_at_all_crops_by_saliency(fresh, tmp_path):
    settings = fresh.settings(tmp_path, candidates=1, face_detector_url=f"http://127.0.0.1:{free_port()}",
                              detector_backend="yolo-onnx", detector_model_path=str(tmp_path / "missing.onnx"))
    record, row = await change(settings)
    assert record.status == "applied", record.error
    assert record.fallbacks[:2] == ["detect:in-process", "detect:no-detector"]
    assert record.crop_method in ("saliency", "top-centre") and f"crop:{record.crop_method}" in record.fallbacks
    assert record.face_box is None and row.crop_box == record.crop_box
    assert fresh.discord.uploads[-1].width == fresh.discord.uploads[-1].height


async def test_danbooru_down_fails_at_search(fresh, tmp_path):
    settings = fresh.settings(tmp_path, danbooru_url=f"http://127.0.0.1:{free_port()}")
    record, row = await change(settings)
    assert record.status == "failed" and record.failed_stage == "search"
    assert "cannot reach Danbooru" in record.error
    assert row.post_key is None and row.candidates == []


async def test_no_picture_downloads_fails_at_download_and_frees_the_vision_model(fresh, tmp_path):
    """Every picture answers 404 while the vision model's room is being made: the change fails at the
    download stage, the verify stage never finishes, and the vision reservation is given back."""
    for variant in ("/original", "/sample", "/720x720", "/360x360", "/180x180"):
        fresh.danbooru.fail(404, times=100, path=variant)
    settings = fresh.settings(tmp_path, candidates=2)
    bus = EventBus()
    seen: list[tuple[str, str]] = []
    bus.subscribe(lambda e: seen.append((e.stage, e.status)))
    async with AvatarPipeline(settings, bus=bus) as p:
        record = await p.change()
        held = p.coordinator.held
    row = History(settings.history_path).get(record.id)
    history_row_is_consistent(row)
    assert record.status == "failed" and record.failed_stage == "download", record.error
    assert "no candidate could be downloaded" in record.error
    assert ("download", "fail") in seen and ("verify", "done") not in seen
    assert held == {}, "no reservation is left held"


async def test_danbooru_5xx_then_recovers(fresh, tmp_path):
    fresh.danbooru.fail(503, times=1)
    record, _ = await change(fresh.settings(tmp_path, candidates=1))
    assert record.status == "applied", record.error


async def test_discord_401_keeps_the_avatar_and_restore_applies_it(fresh, tmp_path):
    fresh.discord.token = "another-token"
    record, row = await change(fresh.settings(tmp_path, candidates=1))
    assert record.status == "failed" and record.failed_stage == "upload"
    assert "401" in record.error and "MIKU_DISCORD_TOKEN" in record.error
    assert row.avatar_path and not row.uploaded
    assert History(tmp_path / "history.sqlite3").used_keys("danbooru") == {record.source.key}
    uploads = len(fresh.discord.uploads)
    fresh.discord.token = "bot-token-for-tests"  # the person fixed the token
    async with AvatarPipeline(fresh.settings(tmp_path)) as p:
        restored = await p.restore(record.id)
    assert restored.status == "applied" and len(fresh.discord.uploads) == uploads + 1
    assert fresh.discord.uploads[-1].data == open(row.avatar_path, "rb").read()
    new_row = History(tmp_path / "history.sqlite3").get(restored.id)
    history_row_is_consistent(new_row)
    assert new_row.restored_from == record.id and new_row.crop_box == row.crop_box


async def test_avatar_changed_too_fast_is_a_clear_failure(fresh, tmp_path):
    fresh.discord.avatar_changes_allowed = 0
    record, row = await change(fresh.settings(tmp_path, candidates=1))
    assert record.status == "failed" and "changing your avatar too fast" in record.error
    assert "mikubot pfp restore" in record.error and row.avatar_path


async def test_discord_429_beyond_the_bound_fails_retryably(fresh, tmp_path):
    fresh.discord.force_429, fresh.discord.retry_after_s = 5, 45.0  # discord.py gives up at once beyond 30 s
    record, row = await change(fresh.settings(tmp_path, candidates=1, upload_max_wait_s=1.0))
    assert record.status == "failed" and "rate limit" in record.error
    assert record.upload.retryable is True and row.avatar_path


async def test_discord_down_fails_clearly(fresh, tmp_path):
    settings = fresh.settings(tmp_path, candidates=1, discord_api=f"http://127.0.0.1:{free_port()}/api/v10")
    record, _ = await change(settings)
    assert record.status == "failed" and "cannot reach Discord" in record.error


def cancel_at(bus: EventBus, stage: str, task: asyncio.Task) -> None:
    """Cancel ``task`` as soon as ``stage`` starts (the event, not a guess at how long it takes to get there)."""
    bus.subscribe(lambda e: task.cancel() if (e.stage, e.status) == (stage, "start") else None)


async def test_a_cancelled_change_still_finishes_its_row(fresh, tmp_path):
    fresh.danbooru.slow(2)  # the search is still waiting on Danbooru when the cancellation comes
    settings = fresh.settings(tmp_path, candidates=1)
    bus = EventBus()
    async with AvatarPipeline(settings, bus=bus) as p:
        task = asyncio.create_task(p.change())
        cancel_at(bus, "search", task)
        with pytest.raises(asyncio.CancelledError):
            await task
    rows = History(settings.history_path).list()
    assert len(rows) == 1 and rows[0].status == "failed" and "CancelledError" in rows[0].error
    assert rows[0].finished_at and rows[0].events[-1].stage == "record"


async def test_a_cancelled_restore_still_finishes_its_row(fresh, tmp_path):
    settings = fresh.settings(tmp_path, candidates=1, dry_run=True)
    record, _ = await change(settings)
    assert record.status == "dry-run", record.error
    fresh.discord.delay_s = 5.0  # Discord is still answering the upload when the cancellation comes
    bus = EventBus()
    async with AvatarPipeline(fresh.settings(tmp_path), bus=bus) as p:
        task = asyncio.create_task(p.restore(record.id))
        cancel_at(bus, "upload", task)
        with pytest.raises(asyncio.CancelledError):
            await task
    row = History(settings.history_path).list(1)[0]
    assert row.restored_from == record.id, "the restore's own row"
    assert row.status == "failed" and "CancelledError" in row.error and row.finished_at
    assert row.post_key == record.source.key and row.events[-1].stage == "record"


async def test_without_a_vision_model_each_picture_is_detected_once_and_first(fresh, tmp_path):
    """The heuristic verifier reads the hair colour from the detect stage's faces: detection comes first
    (no vision model to make room for) and runs once per picture, not once for the hair and again to crop."""
    record, row = await change(fresh.settings(tmp_path, candidates=2, llama_swap_url=None))
    assert record.status == "applied" and record.verifier == "heuristic"
    events = [(e.stage, e.status) for e in row.events]
    assert events.index(("detect", "done")) < events.index(("verify", "start"))
    assert events.count(("detect", "start")) == 1 and events.count(("detect", "progress")) == 2
    for c in record.candidates:
        evidence = c.verification.evidence
        assert evidence["faces_from"] == "detect stage" and evidence["hair_color"].startswith("#")
    chosen = [c for c in record.candidates if c.framing]
    assert len(chosen) == 1 and chosen[0].framing.method == "face"
    assert record.crop_reason == chosen[0].framing.reason and record.crop_reason.startswith("face: ")
    assert [c.lost for c in record.candidates if not c.framing] == [
        "ranked below the chosen picture (hair colour, then face score x verification confidence)"]
