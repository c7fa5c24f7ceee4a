"""Progress events of an avatar change: ``{change_id, stage, status, t, detail}``.

The pipeline emits; the CLI's live display, the panel's event stream and the tests subscribe. A bus
belongs to whoever creates it (one per pipeline, or one shared by a bot process) — there is no module
state, so two changes in one process never see each other's events unless they share a bus.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from mikubot.redact import scrub

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("search", "download", "verify", "reserve", "detect", "crop", "upload", "record")
Status = Literal["start", "progress", "done", "skip", "fallback", "fail"]


@dataclass(frozen=True)
class ProgressEvent:
    change_id: int
    stage: str
    status: Status
    t: float  # seconds since the change started (monotonic clock)
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"change_id": self.change_id, "stage": self.stage, "status": self.status, "t": round(self.t, 3), "detail": self.detail}


Subscriber = Callable[[ProgressEvent], None]


class EventBus:
    """Synchronous fan-out to subscribers. A subscriber that raises is logged and skipped: a broken
    progress display must never break an avatar change."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Add ``fn``; returns a function that removes it again."""
        self._subscribers.append(fn)

        def unsubscribe() -> None:
            if fn in self._subscribers:
                self._subscribers.remove(fn)

        return unsubscribe

    def queue(self, maxsize: int = 1000) -> tuple[asyncio.Queue[ProgressEvent], Callable[[], None]]:
        """An asyncio queue fed with every event (for streaming to a web client) and its unsubscribe.
        Call from the event loop that will read the queue; a full queue drops the oldest event."""
        q: asyncio.Queue[ProgressEvent] = asyncio.Queue(maxsize=maxsize)

        def put(ev: ProgressEvent) -> None:
            if q.full():
                q.get_nowait()
            q.put_nowait(ev)

        return q, self.subscribe(put)

    def emit(self, event: ProgressEvent) -> None:
        for fn in list(self._subscribers):
            try:
                fn(event)
            except Exception:  # noqa: BLE001 - see class docstring
                log.exception("progress subscriber %r failed", fn)


class ChangeEvents:
    """The emitter one change uses: stamps the change id and the time since the change began."""

    def __init__(self, bus: EventBus, change_id: int) -> None:
        self.bus = bus
        self.change_id = change_id
        self.t0 = time.monotonic()
        self.log: list[ProgressEvent] = []

    def emit(self, stage: str, status: Status, /, **detail: Any) -> ProgressEvent:
        ev = ProgressEvent(self.change_id, stage, status, time.monotonic() - self.t0, scrub(detail))
        self.log.append(ev)
        self.bus.emit(ev)
        return ev
