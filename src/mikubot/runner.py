"""One avatar change at a time, shared by everything in the process that can start one.

The bot's slash commands, its scheduler and the panel's API all go through one ``ChangeRunner``. A
second request while a change runs is *refused* at once with the running change's id (the panel's 409,
the bot's "a change is already running") instead of queueing behind it — refused by the history's change
lock (``History.claim``), the one rule for this process and any other on the data directory: Discord allows only a few avatar
changes per hour, so a queued second change would mostly fail anyway, and a person would rather watch
the running one. The change itself runs in its own task, so a caller that goes away (a closed HTTP
request, an expired Discord interaction) never cancels it half-way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from mikubot.errors import MikubotError
from mikubot.events import EventBus, ProgressEvent
from mikubot.history import ChangeLocked, Claim
from mikubot.pipeline import AvatarPipeline
from mikubot.record import ChangeRecord
from mikubot.storage import StorageError

log = logging.getLogger(__name__)

Kind = Literal["change", "restore"]


class ChangeBusy(MikubotError):
    """A change is already running; ``running_id`` is its id (None while it is still being started)."""

    def __init__(self, running_id: int | None, kind: str):
        self.running_id = running_id
        self.kind = kind
        what = f"{kind} #{running_id}" if running_id is not None else kind
        super().__init__(f"an avatar {what} is already running; wait for it to finish")


@dataclass
class RunningChange:
    """A change started by the runner: its id as soon as the pipeline allotted one, its events so far
    (a late subscriber can replay them), and the task that ends with the change record."""

    kind: Kind
    task: asyncio.Task[ChangeRecord]
    started_at: float = field(default_factory=time.time)
    change_id: int | None = None
    events: list[ProgressEvent] = field(default_factory=list)
    id_known: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def done(self) -> bool:
        return self.task.done()

    async def result(self) -> ChangeRecord:
        """The change record (``status`` "applied", "dry-run" or "failed"). ``asyncio.shield`` keeps
        the change running when the awaiting caller is cancelled."""
        return await asyncio.shield(self.task)


class ChangeRunner:
    def __init__(self, pipeline: AvatarPipeline) -> None:
        self.pipeline = pipeline
        self._current: RunningChange | None = None
        self._finished: dict[int, RunningChange] = {}
        self._listeners: list[Callable[[ChangeRecord], Awaitable[None]]] = []
        pipeline.bus.subscribe(self._on_event)

    def add_listener(self, fn: Callable[[ChangeRecord], Awaitable[None]]) -> None:
        """``await fn(record)`` after every change this runner runs (the bot's announcement, the role
        colour). A listener that raises is logged and skipped: the change is already recorded."""
        self._listeners.append(fn)

    @property
    def bus(self) -> EventBus:
        return self.pipeline.bus

    @property
    def current(self) -> RunningChange | None:
        """The running change, or None when idle."""
        return self._current if self._current is not None and not self._current.done else None

    @property
    def busy(self) -> bool:
        return self.current is not None

    def get(self, change_id: int) -> RunningChange | None:
        """A change this runner started (running, or one of the recent finished ones)."""
        cur = self._current
        if cur is not None and cur.change_id == change_id:
            return cur
        return self._finished.get(change_id)

    async def start_change(self, *, source: str | None = None, candidates: int | None = None,
                           dry_run: bool | None = None, guild_id: int | None = None) -> RunningChange:
        """Start a change and return once it has an id. Raises ``ChangeBusy`` if one is running.
        ``guild_id``: change that server's own look instead of the global profile."""
        return await self._start("change", lambda claim: self.pipeline.change(
            source=source, candidates=candidates, dry_run=dry_run, guild_id=guild_id, claim=claim))

    async def start_restore(self, change_id: int, *, dry_run: bool | None = None) -> RunningChange:
        """Start re-applying an earlier change's avatar. An unknown id or a missing avatar file raises
        ``mikubot.history.HistoryError`` from here, before anything is recorded."""
        return await self._start("restore", lambda claim: self.pipeline.restore(change_id, dry_run=dry_run, claim=claim),
                                 check=lambda: self.pipeline.history.restorable(change_id))

    async def change(self, **kwargs: Any) -> ChangeRecord:
        """Start a change and wait for its record."""
        return await (await self.start_change(**kwargs)).result()

    async def _start(self, kind: Kind, run: Callable[[Claim], Awaitable[ChangeRecord]],
                     check: Callable[[], object] | None = None) -> RunningChange:
        """Take the history's change lock (the one "one change at a time": refused here while a change runs in
        this process or another), ``check`` (fail fast, before anything is recorded), then start ``run``."""
        history = self.pipeline.history
        try:
            claim = await asyncio.to_thread(history.claim)
        except ChangeLocked as exc:
            cur = self.current
            raise ChangeBusy(exc.running_id if exc.running_id is not None or cur is None else cur.change_id,
                             cur.kind if cur is not None else kind) from exc
        if check is not None:
            try:
                await asyncio.to_thread(check)
            except BaseException:
                history.release(claim)
                raise

        async def body() -> ChangeRecord:
            record = await run(claim)
            for fn in list(self._listeners):
                try:
                    await fn(record)
                except Exception:  # noqa: BLE001 - see add_listener
                    log.exception("after-change listener %r failed for change #%s", fn, record.id)
            return record

        handle = RunningChange(kind=kind, task=asyncio.get_running_loop().create_task(body()))
        self._current = handle
        handle.task.add_done_callback(self._on_done)
        # A change cancelled before its row was written lets go of the lock here (``release`` leaves a claim
        # whose row exists to ``finish``).
        handle.task.add_done_callback(lambda _: history.release(claim))
        # The pipeline allots the id in its first step; wait for it (or for the task to end early).
        waiter = asyncio.ensure_future(handle.id_known.wait())
        try:
            await asyncio.wait({waiter, handle.task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if handle.change_id is None and handle.task.done() and not handle.task.cancelled():
            exc = handle.task.exception()
            if exc is not None:
                raise exc
            handle.change_id = handle.task.result().id
        return handle

    def _on_event(self, event: ProgressEvent) -> None:
        cur = self._current
        if cur is None or cur.done:
            return
        if cur.change_id is None:
            cur.change_id = event.change_id
            cur.id_known.set()
        if event.change_id == cur.change_id:
            cur.events.append(event)

    def _on_done(self, task: asyncio.Task[ChangeRecord]) -> None:
        cur = self._current
        if cur is None or cur.task is not task:
            return
        if not task.cancelled() and task.exception() is None:
            cur.change_id = cur.change_id if cur.change_id is not None else task.result().id
        elif not task.cancelled() and isinstance(task.exception(), StorageError):  # no row could be written
            log.warning("avatar %s could not start: %s", cur.kind, task.exception())
        elif not task.cancelled() and not isinstance(task.exception(), ChangeLocked):  # refused, not broken
            log.error("avatar %s #%s ended with an internal error: %r", cur.kind, cur.change_id, task.exception())
        if cur.change_id is not None:
            self._finished[cur.change_id] = cur
            # Keep only the recent ones: a long-running bot must not grow without bound.
            for old in sorted(self._finished)[:-20]:
                del self._finished[old]
