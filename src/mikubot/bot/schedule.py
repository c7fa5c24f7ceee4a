"""Scheduled avatar rotation: every N hours, or daily at HH:MM, each run up to ``jitter`` late.

Jitter only ever *delays* a run (uniform in [0, jitter]): a change never comes before the time a
person configured, and many bots configured alike do not hit Danbooru in the same second. A run that
falls due while another change is running (a slash command, the panel) is skipped — not queued — and
the next one is planned from then: Discord allows only a few avatar changes per hour.

``Rotation`` is pure (next time from now); ``RotationScheduler.tick(now)`` does one step, so tests
drive it with fabricated clocks; ``run_forever`` is the loop the bot runs.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Literal

from mikubot.config import Settings
from mikubot.errors import MikubotError
from mikubot.runner import ChangeBusy, ChangeRunner, RunningChange

log = logging.getLogger(__name__)

Outcome = Literal["not-due", "started", "skipped"]
MAX_SLEEP_S = 60.0  # re-read the clock at least this often (suspend/resume, clock changes)


class ScheduleError(MikubotError, ValueError):
    pass


@dataclass(frozen=True)
class Rotation:
    every: timedelta | None = None
    daily_at: time | None = None
    jitter: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        if self.every is not None and self.daily_at is not None:
            raise ScheduleError("set either MIKU_ROTATE_EVERY_H or MIKU_ROTATE_AT, not both")
        if self.every is not None and self.every <= timedelta(0):
            raise ScheduleError("MIKU_ROTATE_EVERY_H must be positive")
        if self.jitter < timedelta(0):
            raise ScheduleError("MIKU_ROTATE_JITTER_MIN must not be negative")

    @classmethod
    def from_settings(cls, settings: Settings) -> "Rotation | None":
        """None when no rotation is configured."""
        if settings.rotate_every_h is None and settings.rotate_at is None:
            return None
        daily = None
        if settings.rotate_at is not None:
            hh, mm = settings.rotate_at.split(":")
            daily = time(int(hh), int(mm))
        every = timedelta(hours=settings.rotate_every_h) if settings.rotate_every_h is not None else None
        return cls(every=every, daily_at=daily, jitter=timedelta(minutes=settings.rotate_jitter_min))

    def next_after(self, now: datetime, rng: random.Random) -> datetime:
        """The next run strictly after ``now``: the base time plus a jitter in [0, jitter]."""
        if self.every is not None:
            base = now + self.every
        else:
            assert self.daily_at is not None
            base = datetime.combine(now.date(), self.daily_at, tzinfo=now.tzinfo)
            if base <= now:
                base += timedelta(days=1)
        return base + timedelta(seconds=rng.uniform(0.0, self.jitter.total_seconds()))

    def describe(self) -> str:
        what = f"every {self.every.total_seconds() / 3600:g} h" if self.every else f"daily at {self.daily_at:%H:%M}"
        return what + (f" (up to {self.jitter.total_seconds() / 60:g} min later)" if self.jitter else "")


class RotationScheduler:
    def __init__(self, runner: ChangeRunner, rotation: Rotation, *, rng: random.Random | None = None) -> None:
        self.runner = runner
        self.rotation = rotation
        self.rng = rng or random.Random()
        self.next_due: datetime | None = None
        self.last: tuple[datetime, Outcome, int | None] | None = None  # when, what, which change

    def plan(self, now: datetime) -> datetime:
        self.next_due = self.rotation.next_after(now, self.rng)
        return self.next_due

    async def tick(self, now: datetime) -> tuple[Outcome, RunningChange | None]:
        """One step: start a change if one is due and none is running. The change runs on in its task."""
        if self.next_due is None:
            self.plan(now)
        assert self.next_due is not None
        if now < self.next_due:
            return "not-due", None
        self.plan(now)
        current = self.runner.current
        if current is not None:
            log.info("scheduled avatar change skipped: change #%s is running; next at %s", current.change_id, self.next_due)
            self.last = (now, "skipped", current.change_id)
            return "skipped", None
        try:
            handle = await self.runner.start_change()
        except ChangeBusy as exc:  # started by someone else between the check and here
            self.last = (now, "skipped", exc.running_id)
            return "skipped", None
        log.info("scheduled avatar change #%s started; next at %s", handle.change_id, self.next_due)
        self.last = (now, "started", handle.change_id)
        return "started", handle

    async def run_forever(self) -> None:
        log.info("avatar rotation: %s", self.rotation.describe())
        while True:
            now = datetime.now().astimezone()
            await self.tick(now)
            assert self.next_due is not None
            await asyncio.sleep(min(MAX_SLEEP_S, max(0.5, (self.next_due - now).total_seconds())))
