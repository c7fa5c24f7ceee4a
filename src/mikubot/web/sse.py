"""Server-Sent Events of one change's progress: the events so far, then the live ones, then ``end``.

Three cases, one stream format (``id`` = the event's index within the change, so a reconnecting
browser's ``Last-Event-ID`` skips what it has already seen):

* the change runs in this process — subscribe to the bus and snapshot the events so far in the same
  synchronous step (the bus emits on the event loop, so nothing can slip between the two), then relay;
* it has finished — replay the events stored in its history row;
* it runs in another process (a CLI run beside the panel) — wait for its history row to finish.

Streams are cheap to hold and bounded: a change running in another process is polled by *one* task
(``HistoryWatch``: a read every ``POLL_S`` in a worker thread, shared by every stream of that change), and
an idle stream only wakes for that task's news or its keep-alive comment. ``StreamLimits`` caps the open
streams per client and in all (429 / 503 with ``Retry-After`` past them); the route lets only a logged-in
session or the token open one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from mikubot.events import ProgressEvent
from mikubot.history import FINAL_STATUSES, History, HistoryRow
from mikubot.runner import ChangeRunner, RunningChange
from mikubot.storage import StorageError

KEEPALIVE_S = 15.0
POLL_S = 0.5
RECOVER_EVERY = 20  # polls between checks that the other process is still alive (see History.recover)
LAST_EVENT_ID = re.compile(r"[0-9]{1,9}")  # ASCII digits only; no change has a billion events
RETRY_AFTER_S = 10


def frame(data: dict[str, Any], *, event: str = "progress", id: int | None = None) -> str:
    lines = [f"event: {event}"]
    if id is not None:
        lines.append(f"id: {id}")
    lines.append("data: " + json.dumps(data, default=str))
    return "\n".join(lines) + "\n\n"


def last_event_id(header: str | None) -> int:
    """The index a reconnecting client saw last, from its ``Last-Event-ID``; -1 (replay everything) for a
    missing, non-numeric, non-ASCII (``²``) or absurdly long value."""
    value = (header or "").strip()
    return int(value) if LAST_EVENT_ID.fullmatch(value) else -1


# --- limits ----------------------------------------------------------------------------------------------
class StreamLimits:
    """Open event streams, per client address and in all. ``claim`` raises 429 (this client has too many)
    or 503 (the panel has too many), each with ``Retry-After``; the claim is given back by its release."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total, self.per_client = total, per_client
        self.open = 0
        self._by_client: dict[str, int] = {}

    def claim(self, client: str) -> Callable[[], None]:
        mine = self._by_client.get(client, 0)
        if mine >= self.per_client:
            raise HTTPException(429, f"{client} already has {mine} event streams open (the limit per client is "
                                     f"{self.per_client}, MIKU_WEB_MAX_STREAMS_PER_CLIENT); close one first",
                                headers={"Retry-After": str(RETRY_AFTER_S)})
        if self.open >= self.total:
            raise HTTPException(503, f"{self.open} event streams are open, the panel's limit "
                                     f"(MIKU_WEB_MAX_STREAMS); retry after the Retry-After seconds",
                                headers={"Retry-After": str(RETRY_AFTER_S)})
        self.open += 1
        self._by_client[client] = mine + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.open -= 1
            left = self._by_client.get(client, 1) - 1
            if left > 0:
                self._by_client[client] = left
            else:
                self._by_client.pop(client, None)

        return release


class ClaimedStream(StreamingResponse):
    """A ``StreamingResponse`` that gives its ``StreamLimits`` claim back when it ends, however it ends
    (the change finished, the client went away, the server shuts down)."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


# --- one poll per change of another process -------------------------------------------------------------
@dataclass
class _Watch:
    change_id: int
    row: HistoryRow | None = None
    news: asyncio.Event = field(default_factory=asyncio.Event)  # set when ``row`` is final (or gone)
    users: int = 0
    task: asyncio.Task[None] | None = None

    @property
    def over(self) -> bool:
        return self.row is None or self.row.status in FINAL_STATUSES


class HistoryWatch:
    """Waits for history rows to finish: one polling task per change, however many streams wait on it."""

    def __init__(self, poll_s: float = POLL_S) -> None:
        self.poll_s = poll_s
        self._watches: dict[int, _Watch] = {}

    @property
    def polling(self) -> int:
        """Changes being polled now (one task each)."""
        return len(self._watches)

    @property
    def waiting(self) -> int:
        """Streams waiting on those polls."""
        return sum(w.users for w in self._watches.values())

    @contextlib.asynccontextmanager
    async def watch(self, history: History, change_id: int) -> AsyncIterator[_Watch]:
        w = self._watches.get(change_id)
        if w is None:
            w = _Watch(change_id)
            w.row = await asyncio.to_thread(history.get, change_id)
            w = self._watches.setdefault(change_id, w)  # another stream may have started one meanwhile
            if w.task is None:
                if w.over:
                    w.news.set()
                else:
                    w.task = asyncio.get_running_loop().create_task(self._poll(history, w))
        w.users += 1
        try:
            yield w
        finally:
            w.users -= 1
            if w.users == 0 and self._watches.get(change_id) is w:
                del self._watches[change_id]
                if w.task is not None:
                    w.task.cancel()

    async def _poll(self, history: History, w: _Watch) -> None:
        polls = 0
        while not w.over:
            await asyncio.sleep(self.poll_s)
            polls += 1
            try:
                if polls % RECOVER_EVERY == 0:
                    await asyncio.to_thread(history.recover)  # that process may have died: close its row
                w.row = await asyncio.to_thread(history.get, w.change_id)
            except StorageError:
                continue  # a failing disk: keep waiting, the streams keep their keep-alives
        w.news.set()


# --- the stream --------------------------------------------------------------------------------------------
async def change_events(runner: ChangeRunner, watch: HistoryWatch, change_id: int,
                        last_seen: int = -1) -> AsyncIterator[str]:
    """The stream: each event as a numbered frame (those after ``last_seen``), comments passed through,
    and ``end`` with the change's final status once the change has a row."""
    history = runner.pipeline.history
    handle = runner.get(change_id)
    running_here = handle is not None and not handle.done
    numbered = _Numbered(last_seen)
    final: Outcome | None = None
    if running_here:
        assert handle is not None
        async with contextlib.aclosing(_live(runner, handle, change_id)) as items:
            async for item in items:
                if isinstance(item, str):
                    yield item  # a comment: keeps the connection open, never counted
                elif (framed := numbered.frame(item)) is not None:
                    yield framed
        final = _record_of(handle)
    if final is None:
        ended = Ended()
        async with contextlib.aclosing(_row_finished(history, watch, change_id, handle, ended)) as comments:
            async for comment in comments:
                yield comment
        final = ended.final
        for ev in [] if running_here else ended.events:  # from the row (the history unreadable: from memory)
            if (framed := numbered.frame(ev.to_json())) is not None:
                yield framed
    if final is not None:
        yield frame({"change_id": change_id, "status": final[0], "error": final[1]}, event="end")


class _Numbered:
    """Numbers a stream's events from 0; frames only those after ``last_seen`` (the client's Last-Event-ID)."""

    def __init__(self, last_seen: int) -> None:
        self.last_seen, self.index = last_seen, 0

    def frame(self, item: dict[str, Any]) -> str | None:
        index, self.index = self.index, self.index + 1
        return frame(item, id=index) if index > self.last_seen else None


Outcome = tuple[str | None, str | None]  # a finished change's status and error


@dataclass
class Ended:
    """How a change not followed live ended: its final status and error, and its stored events."""

    final: Outcome | None = None
    events: list[ProgressEvent] = field(default_factory=list)


async def _row_finished(history: History, watch: HistoryWatch, change_id: int, handle: RunningChange | None,
                        ended: Ended) -> AsyncIterator[str]:
    """Wait until the change's row is final (a keep-alive comment now and then) and fill ``ended``; when the
    history cannot be read (a full disk), what this process remembers of it."""
    try:
        async with watch.watch(history, change_id) as w:
            while not w.news.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(w.news.wait(), KEEPALIVE_S)
                if not w.news.is_set():
                    yield ": running in another process\n\n"
            if w.row is not None:
                ended.final, ended.events = (w.row.status, w.row.error), w.row.events or []
    except StorageError as exc:
        ended.final = (_record_of(handle) if handle is not None else None) or (None, str(exc))
        ended.events = list(handle.events) if handle is not None else []


def _record_of(handle: RunningChange) -> Outcome | None:
    """The final status and error a finished change of this process ended with (None if it ended without a
    record)."""
    task = handle.task
    if not task.done() or task.cancelled() or task.exception() is not None:
        return None
    record = task.result()
    return record.status, record.error


async def _live(runner: ChangeRunner, handle: RunningChange, change_id: int) -> AsyncIterator[dict[str, Any] | str]:
    """A change running in this process: the events so far, then the bus's, until the record is written."""
    queue, unsubscribe = runner.bus.queue()
    past = list(handle.events)  # same synchronous step as the subscription: no gap, no duplicate
    try:
        for ev in past:
            yield ev.to_json()
        while True:
            try:
                ev: ProgressEvent = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except TimeoutError:
                if handle.done and queue.empty():
                    return
                yield ": keep-alive\n\n"
                continue
            if ev.change_id == change_id:
                yield ev.to_json()
                if (ev.stage, ev.status) == ("record", "done"):
                    break
        if not handle.done:
            await asyncio.wait({handle.task}, timeout=5.0)  # the record is written just before "done"
    finally:
        unsubscribe()
