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
import json
from collections.abc import AsyncIterator
from typing import Any

from mikubot.events import ProgressEvent
from mikubot.history import History
from mikubot.runner import ChangeRunner

KEEPALIVE_S = 15.0
POLL_S = 0.5


def frame(data: dict[str, Any], *, event: str = "progress", id: int | None = None) -> str:
    lines = [f"event: {event}"]
    if id is not None:
        lines.append(f"id: {id}")
    lines.append("data: " + json.dumps(data, default=str))
    return "\n".join(lines) + "\n\n"


def _end(history: History, change_id: int) -> str:
    row = history.get(change_id) or {}
    return frame({"change_id": change_id, "status": row.get("status"), "error": row.get("error")}, event="end")


async def change_events(runner: ChangeRunner, change_id: int, last_seen: int = -1) -> AsyncIterator[str]:
    history = runner.pipeline.history
    handle = runner.get(change_id)
    if handle is not None and not handle.done:
        queue, unsubscribe = runner.bus.queue()
        past = list(handle.events)  # same synchronous step as the subscription: no gap, no duplicate
        try:
            index = 0
            for ev in past:
                if index > last_seen:
                    yield frame(ev.to_json(), id=index)
                index += 1
            while True:
                try:
                    ev: ProgressEvent = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    if handle.done and queue.empty():
                        break
                    yield ": keep-alive\n\n"
                    continue
                if ev.change_id != change_id:
                    continue
                if index > last_seen:
                    yield frame(ev.to_json(), id=index)
                index += 1
                if ev.stage == "record" and ev.status == "done":
                    break
            if not handle.done:
                await asyncio.wait({handle.task}, timeout=5.0)  # the record is written just before "done"
        finally:
            unsubscribe()
        yield _end(history, change_id)
        return
    row = history.get(change_id)
    polls = 0
    while row is not None and row["status"] == "running":
        yield ": running in another process\n\n"
        await asyncio.sleep(POLL_S)
        polls += 1
        if polls % 20 == 0:
            await asyncio.to_thread(history.recover)  # that process may have died: close its row as failed
        row = history.get(change_id)
    if row is None:
        return
    for index, ev in enumerate(row.get("events") or []):
        if index > last_seen:
            yield frame(ev, id=index)
    yield _end(history, change_id)
