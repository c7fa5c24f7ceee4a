"""The timeline of a reservation: every step (measure, unload, wait, grant) with the free VRAM at that moment.

Callers read it after the fact (the panel draws it; the CLI prints it), so it is plain data with `to_json()`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TimelineEvent:
    t: float  # seconds since the timeline started
    event: str
    consumer: str | None
    free_mib: float | None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["t"] = round(self.t, 4)
        if self.free_mib is not None:
            d["free_mib"] = round(float(self.free_mib), 1)
        return d


@dataclass
class Timeline:
    """An append-only list of events; `t` is measured on the monotonic clock from `started`."""

    events: list[TimelineEvent] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    wall_started: float = field(default_factory=time.time)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, event: str, consumer: str | None = None, free_mib: float | None = None, detail: str = "",
            *, at: float | None = None) -> TimelineEvent:
        """Record an event now (or at monotonic time `at`) and return it."""
        ev = TimelineEvent(t=(at if at is not None else time.monotonic()) - self.started, event=event,
                           consumer=consumer, free_mib=free_mib, detail=detail)
        with self._lock:
            self.events.append(ev)
        return ev

    def names(self) -> list[str]:
        """The event names in order: handy for asserting the order of steps."""
        return [e.event for e in self.events]

    def count(self, event: str) -> int:
        return sum(1 for e in self.events if e.event == event)

    def to_json(self) -> list[dict[str, Any]]:
        with self._lock:
            return [e.to_json() for e in self.events]
