"""Scheduled rotation (jitter bounds, daily and every-N-hours, skip while a change runs) and the
shared ChangeRunner (one change at a time, listeners), on the real pipeline in dry-run."""

from __future__ import annotations

import random
from datetime import datetime, time, timedelta, timezone

import pytest
from panel_helpers import sprite_folder

from mikubot.bot.colour import dominant_colour
from mikubot.bot.schedule import Rotation, RotationScheduler, ScheduleError
from mikubot.config import Settings
from mikubot.pipeline import AvatarPipeline
from mikubot.runner import ChangeBusy, ChangeRunner

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def test_every_n_hours_with_jitter_stays_in_bounds():
    rot = Rotation(every=timedelta(hours=6), jitter=timedelta(minutes=30))
    rng = random.Random(1)
    delays = [(rot.next_after(T0, rng) - T0) for _ in range(2000)]
    assert min(delays) >= timedelta(hours=6) and max(delays) <= timedelta(hours=6, minutes=30)
    # The jitter is really used (not a constant offset): the spread covers most of the window.
    assert max(delays) - min(delays) > timedelta(minutes=25)


def test_daily_time_is_never_early_and_rolls_to_tomorrow():
    rot = Rotation(daily_at=time(7, 30), jitter=timedelta(minutes=10))
    rng = random.Random(2)
    before = T0.replace(hour=6)
    after = T0.replace(hour=8)
    for _ in range(500):
        a = rot.next_after(before, rng)
        assert before.replace(hour=7, minute=30) <= a <= before.replace(hour=7, minute=40)
        b = rot.next_after(after, rng)
        assert (after + timedelta(days=1)).replace(hour=7, minute=30) <= b <= (after + timedelta(days=1)).replace(hour=7, minute=40)
    assert Rotation(daily_at=time(7, 30)).next_after(T0.replace(hour=7, minute=30), rng).day == T0.day + 1


def test_rotation_from_settings_and_bad_combinations():
    assert Rotation.from_settings(Settings()) is None
    rot = Rotation.from_settings(Settings(rotate_at="07:05", rotate_jitter_min=0))
    assert rot is not None and rot.daily_at == time(7, 5) and rot.jitter == timedelta(0)
    assert "every 12 h" in Rotation.from_settings(Settings(rotate_every_h=12)).describe()
    with pytest.raises(ScheduleError, match="not both"):
        Rotation.from_settings(Settings(rotate_at="07:05", rotate_every_h=3))
    with pytest.raises(ValueError, match="HH:MM"):
        Settings(rotate_at="7h30")


@pytest.fixture
async def runner(art_dir, tmp_path):
    art = sprite_folder(art_dir, tmp_path / "art")
    settings = Settings(data_dir=tmp_path / "data", source=f"local:{art}", candidates=1)
    pipeline = AvatarPipeline(settings)
    try:
        yield ChangeRunner(pipeline)
    finally:
        await pipeline.aclose()


async def test_scheduler_starts_when_due_and_skips_while_a_change_runs(runner):
    sched = RotationScheduler(runner, Rotation(every=timedelta(hours=1), jitter=timedelta(minutes=5)), rng=random.Random(3))
    outcome, _ = await sched.tick(T0)
    assert outcome == "not-due" and T0 + timedelta(hours=1) <= sched.next_due <= T0 + timedelta(hours=1, minutes=5)

    # Due while a change (e.g. a slash command) runs: skipped, not queued, and re-planned from then.
    busy = await runner.start_change()
    due = sched.next_due
    outcome, handle = await sched.tick(due)
    assert outcome == "skipped" and handle is None
    assert sched.last == (due, "skipped", busy.change_id)
    assert sched.next_due >= due + timedelta(hours=1)
    await busy.result()

    # Due and idle: a change starts and runs to the end.
    outcome, handle = await sched.tick(sched.next_due)
    assert outcome == "started" and handle is not None
    record = await handle.result()
    assert record.status == "dry-run" and record.id == handle.change_id
    assert [r.id for r in runner.pipeline.history.list()] == [handle.change_id, busy.change_id]


async def test_runner_refuses_a_second_change_and_calls_listeners(runner):
    seen: list[dict] = []

    async def listener(record: dict) -> None:
        seen.append(record)

    async def broken(record: dict) -> None:
        raise RuntimeError("a broken listener must not break the change")

    runner.add_listener(broken)
    runner.add_listener(listener)
    first = await runner.start_change()
    assert runner.busy and first.change_id is not None
    with pytest.raises(ChangeBusy) as exc:
        await runner.start_change()
    assert exc.value.running_id == first.change_id
    with pytest.raises(ChangeBusy):
        await runner.start_restore(first.change_id)  # busy wins over "nothing to restore yet"
    record = await first.result()
    assert not runner.busy and seen == [record]
    assert [e.change_id for e in first.events] and {e.change_id for e in first.events} == {first.change_id}
    assert runner.get(first.change_id) is first


def test_dominant_colour_picks_the_colourful_part(tmp_path):
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (256, 256), (250, 250, 250))
    ImageDraw.Draw(im).ellipse((40, 40, 216, 216), fill=(57, 197, 187))  # Miku teal on white
    path = tmp_path / "a.png"
    im.save(path)
    c = dominant_colour(path)
    r, g, b = c >> 16, (c >> 8) & 255, c & 255
    assert abs(r - 57) < 12 and abs(g - 197) < 12 and abs(b - 187) < 12
    Image.new("RGB", (64, 64), (0, 0, 0)).save(path)
    assert dominant_colour(path) == 0x010101  # Discord reads 0 as "no colour"
