"""Server-Sent Events of one change's progress: the events so far, then the live ones, then ``end``.

Three cases, one stream format (``id`` = the event's index within the change, so a reconnecting
browser's ``Last-Event-ID`` skips what it has already seen):

* the change runs in this process — subscribe to the bus and snapshot the events so far in the same
  synchronous step (the bus emits on the event loop, so nothing can slip between the two), then relay;
* it has finished — replay the events stored in its history row;
* it runs in another process (a CLI run beside the panel) — poll the history row until it finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from mikubot.events import ProgressEvent
from mikubot.history import History
from mikubot.runner import ChangeRunner, RunningChange

KEEPALIVE_S = 15.0
POLL_S = 0.5


def frame(data: dict[str, Any], *, event: str = "progress", id: int | None = None) -> str:
    lines = [f"event: {event}"]
    if id is not None:
        lines.append(f"id: {id}")
    lines.append("data: " + json.dumps(data, default=str))
    return "\n".join(lines) + "\n\n"


async def change_events(runner: ChangeRunner, change_id: int, last_seen: int = -1) -> AsyncIterator[str]:
    """The stream: each event as a numbered frame (those after ``last_seen``), comments passed through,
    and ``end`` with the change's final status once the change has a row."""
    history = runner.pipeline.history
    handle = runner.get(change_id)
    running_here = handle is not None and not handle.done
    items = _live(runner, handle, change_id) if running_here else _stored(history, change_id)  # type: ignore[arg-type]
    index = 0
    async with contextlib.aclosing(items):
        async for item in items:
            if isinstance(item, str):
                yield item  # a comment: keeps the connection open, never counted
                continue
            if index > last_seen:
                yield frame(item, id=index)
            index += 1
    row = history.get(change_id)
    if row is not None:
        yield frame({"change_id": change_id, "status": row.get("status"), "error": row.get("error")}, event="end")


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


async def _stored(history: History, change_id: int) -> AsyncIterator[dict[str, Any] | str]:
    """A finished change's stored events; one running in another process is polled until it finishes."""
    row = history.get(change_id)
    polls = 0
    while row is not None and row["status"] == "running":
        yield ": running in another process\n\n"
        await asyncio.sleep(POLL_S)
        polls += 1
        if polls % 20 == 0:
            await asyncio.to_thread(history.recover)  # that process may have died: close its row as failed
        row = history.get(change_id)
    for ev in (row or {}).get("events") or []:
        yield ev
