"""One serving policy for every HTTP server in this repository: slow and idle clients timed out, a
connection cap below the open-file limit, repeated error lines rate-limited, and the Host rule.

Who uses it: the panel (``mikubot web`` / ``mikubot run``, mikubot.web.serve), the detector API
(``facedetect serve``) and the detector UI (``facedetect ui``). Like httpretry it is a package of its own
because mikubot imports facedetect but facedetect never imports mikubot (the detector image installs
without it); it depends on nothing of ours, only uvicorn, h11 and Starlette's ASGI types.

Why uvicorn, with its HTTP/1.1 protocol class extended here (``uvicorn.Config(http=...)`` takes one):

* uvicorn (0.55) has a keep-alive timeout, but it is armed only after a response and cancelled by every
  byte received, so a client that sends half a header and then a line every few seconds is never dropped;
  there is no header or body deadline (a request-start and a request-complete timeout are still open
  wishes upstream). ``limit_concurrency`` answers
  503 only once a request's headers are complete, so slow connections still take a descriptor each until
  ``accept()`` fails with EMFILE, which asyncio then logs (with a traceback) hundreds of times a second.
* hypercorn's (0.18) ``keep_alive_timeout`` does bound the time to a complete header (its idle timer
  runs from the connection's start until the request arrives), but ``read_timeout`` is per read, so a body
  trickling a byte every few seconds is never cut, and it accepts without any connection cap
  (``asyncio.start_server``).
* granian (2.8) has ``header_read_timeout`` and a real connection cap (``backpressure``: a semaphore
  taken before ``accept``), but no body deadline, and it cannot run inside the bot's own event loop except
  through an experimental embedding; the panel runs beside the Discord gateway in one loop.
* None of them keeps a normal request answerable while the cap is full of slow clients: with a cap and a
  header deadline alone, the next client waits in the kernel's queue until slow ones time out. What does
  is *making room*: when a new connection would exceed the cap, the connection that has waited longest
  for its request (headers first, then bodies) is dropped. A request that is being answered is never
  dropped; when every connection is one, the new one gets 503 at once.

So: uvicorn (already used, embeddable in the bot's loop, and its ``Config(http=...)`` takes a protocol
class) with ``GuardedH11Protocol`` — uvicorn's h11 protocol, whose request state is h11's public state
machine — adding the header deadline, the body deadline and the room-making cap; uvicorn's own
``timeout_keep_alive`` for idle keep-alive connections; and a small accept backlog so a burst of
``accept()`` stays within the descriptors kept free. ``bench/hostile.py --slow`` measures it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import resource
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import h11
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["GuardedH11Protocol", "HostGuard", "RepeatFilter", "ServeLimits", "host_allowed", "host_name", "is_loopback",
           "quiet_repeated_errors", "uvicorn_config"]

log = logging.getLogger("httpserve")

LOOPBACK_NAMES = ("localhost",)
FD_RESERVE_MAX = 1024  # descriptors kept for files, the database, outgoing connections and accept bursts
REPEAT_INTERVAL_S = 10.0


# ---- the Host rule and the bind rule ----
def is_loopback(host: str) -> bool:
    """Whether a bind address reaches this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def host_name(header: str) -> str:
    """The name part of a ``Host`` header: ``[::1]:3939`` → ``::1``, ``Example.org.:80`` → ``example.org``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    name = header.rsplit(":", 1)[0] if header.count(":") == 1 else header
    return name.rstrip(".")


def host_allowed(header: str, extra: Iterable[str]) -> bool:
    """Loopback names (``localhost``, ``*.localhost``, loopback addresses) and the names in ``extra``
    (``*`` = any). A DNS-rebinding page reaches a server under the attacker's own name, which the browser
    sends in ``Host``; refusing unknown names stops it."""
    name = host_name(header)
    if not name:
        return False
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        if ipaddress.ip_address(name).is_loopback:
            return True
    except ValueError:
        pass
    allowed = {host_name(h) for h in extra}
    return "*" in allowed or name in allowed


class HostGuard:
    """ASGI middleware: 400 for a request whose ``Host`` is not allowed (``host_allowed``), before any
    route runs. ``setting`` names where a user adds a name, for the message."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str], setting: str) -> None:
        self.app = app
        self.allowed = list(allowed)
        self.setting = setting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"), "")
            if not host_allowed(host, self.allowed):
                detail = (f"Host {host_name(host)!r} is not served here: use a loopback address, "
                          f"or add the name to {self.setting}")
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008, "reason": detail[:120]})
                    return
                body = json.dumps({"detail": detail}).encode()
                await send({"type": "http.response.start", "status": 400, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


# ---- limits ----
@dataclass(frozen=True)
class ServeLimits:
    """What a server allows a client; each service maps its own settings onto this."""

    header_timeout_s: float = 10.0  # a request's headers complete within this (from connect or the last response)
    body_timeout_s: float = 60.0  # its body within this (from the end of its headers)
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this
    max_connections: int = 1000  # open connections at most (further bounded by the open-file limit)

    def budget(self) -> tuple[int, int, int]:
        """(connection cap, accept backlog, connections being let go at most) under this process's
        open-file limit. Half the descriptors (at most 1024) stay out of the cap: an eighth of them for
        one burst of accepts (asyncio accepts up to the backlog at once, before any connection is seen),
        an eighth for connections closing, the rest for files, the database and outgoing connections.
        Under ``ulimit -n 1024`` the cap is 512."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            soft = 1 << 20
        reserve = min(FD_RESERVE_MAX, max(64, soft // 2))
        cap = max(1, min(self.max_connections, soft - reserve))
        return cap, min(128, reserve // 8), reserve // 8


Phase = Literal["header", "body"]


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with deadlines on receiving a request and a connection cap that makes room.

    A connection is in one of two waiting phases, read from h11's public state machine: ``header`` (the
    client's side IDLE: before its request line and headers are complete, including between keep-alive
    requests) and ``body`` (SEND_BODY). Each phase has its deadline from the moment it began; bytes that
    trickle in do not extend it. At the deadline a client that sent part of a request gets 408. A request
    whose body is complete is the application's; no deadline applies to its response (an event stream
    may last hours).

    A connection is let go with a lingering close: the answer, then FIN, then whatever the client still
    sends is read and dropped until it closes (or ``LINGER_S``) — closing with its bytes unread would make
    the kernel send a reset, which can destroy the answer before the client reads it.

    ``limits``, ``cap`` and ``linger_room`` are set on the subclass that ``uvicorn_config`` makes.
    """

    limits: ClassVar[ServeLimits] = ServeLimits()
    cap: ClassVar[int] = 1000
    linger_room: ClassVar[int] = 64
    LINGER_S: ClassVar[float] = 2.0

    _phase: Phase | None = None
    _since: float = 0.0
    _timer: asyncio.TimerHandle | None = None
    _letting_go = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._advance()
        if len(self.connections) > self.cap:  # with the ones being let go: the full count is checked inside
            self._make_room()

    def data_received(self, data: bytes) -> None:
        if self._letting_go:
            return  # read and dropped: the connection has been answered and is closing
        super().data_received(data)
        self._advance()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._advance()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._phase = None
        super().connection_lost(exc)

    # -- phases and deadlines --
    def _advance(self) -> None:
        """Start the deadline of the phase the connection is in now, if it changed."""
        if self._letting_go:
            return
        if self.transport.is_closing():
            self._cancel_timer()
            self._phase = None
            return
        state = self.conn.their_state
        phase: Phase | None = "header" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        if phase == self._phase:
            return
        self._cancel_timer()
        self._phase, self._since = phase, self.loop.time()
        if phase is not None:
            timeout = self.limits.header_timeout_s if phase == "header" else self.limits.body_timeout_s
            self._timer = self.loop.call_later(timeout, self._expired)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self._phase is None:
            return
        what = "headers" if self._phase == "header" else "body"
        timeout = self.limits.header_timeout_s if self._phase == "header" else self.limits.body_timeout_s
        log.warning("closed a connection that did not send its request %s within %g s", what, timeout)
        self._let_go(408, f"the request {what} did not arrive within {timeout:g} s", answer=self._sent_something())

    # -- the cap --
    def _make_room(self) -> None:
        """Stay within the cap: let go of the connection that has waited longest for its request (headers
        before bodies), or, when every other connection is being answered, refuse this one with 503.
        Connections being let go are closed outright, oldest first, beyond ``linger_room``."""
        others = [c for c in self.connections if c is not self and isinstance(c, GuardedH11Protocol)
                  and not c.transport.is_closing()]
        leaving = [c for c in others if c._letting_go]
        live = len(others) - len(leaving) + 1
        if live > self.cap:
            waiting = [c for c in others if c._phase is not None]
            busy = f"the server is at its limit of {self.cap} connections; retry shortly"
            if waiting:
                victim = min(waiting, key=lambda c: (c._phase != "header", c._since))
                log.warning("dropped the connection waiting longest for its request to stay within %d connections",
                            self.cap)
                victim._let_go(503, busy, retry_after=1, answer=victim._sent_something())
                leaving.append(victim)
            else:
                log.warning("refused a connection: all %d are busy with requests (the connection cap)", self.cap)
                self._let_go(503, busy, retry_after=1, answer=True)  # it is about to send a request: answer it
                leaving.append(self)
        for c in sorted(leaving, key=lambda c: c._since)[:max(0, len(leaving) - self.linger_room)]:
            c.transport.abort()  # no lingering for these: the descriptor is free at once

    def _sent_something(self) -> bool:
        return self.conn.their_state is not h11.IDLE or bool(self.conn.trailing_data[0])

    def _let_go(self, status: int, detail: str, *, answer: bool, retry_after: int | None = None) -> None:
        """Answer ``status`` (unless the client asked nothing yet, or a response has begun: h11 cannot
        frame one before a request, so it is written here), then a lingering close."""
        self._cancel_timer()
        self._unset_keepalive_if_required()
        self._phase, self._since, self._letting_go = None, self.loop.time(), True
        if self.cycle is not None:
            started = self.cycle.response_started
            # To the application this is a disconnect: its receive() ends, its send() is dropped.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        else:
            started = False
        if answer and not started:
            self.transport.write(_raw_response(status, detail, retry_after))
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._timer = self.loop.call_later(self.LINGER_S, self.transport.close)


def _raw_response(status: int, detail: str, retry_after: int | None) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    reason = {408: "Request Timeout", 503: "Service Unavailable"}[status]
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}",
            "connection: close"]
    if retry_after is not None:
        head.append(f"retry-after: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# ---- logging ----
class RepeatFilter(logging.Filter):
    """Lets one message (logger and format string) through at most once per ``interval_s``; the next one
    that passes says how many were held back. A flood of EMFILE tracebacks from ``accept()`` or of slow
    connections closed becomes one line per interval."""

    def __init__(self, interval_s: float = REPEAT_INTERVAL_S) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[tuple[str, str], float] = {}
        self._held: Counter[tuple[str, str]] = Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] += 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} [and {held} more like this in the last {now - last:.0f} s]"
        return True


_FILTER = RepeatFilter()
QUIETED_LOGGERS = ("asyncio", "uvicorn.error", "httpserve")


def quiet_repeated_errors(names: Iterable[str] = QUIETED_LOGGERS) -> None:
    """Put the repeat filter on the loggers a flood of connections makes talk (idempotent)."""
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


# ---- the server ----
def uvicorn_config(app: Any, *, host: str, port: int, limits: ServeLimits, **options: Any) -> uvicorn.Config:
    """A ``uvicorn.Config`` serving ``app`` under ``limits`` (``options`` go to uvicorn as they are)."""
    cap, backlog, linger_room = limits.budget()
    protocol = type("GuardedH11", (GuardedH11Protocol,), {"limits": limits, "cap": cap, "linger_room": linger_room})
    config = uvicorn.Config(app, host=host, port=port, http=protocol, backlog=backlog,
                            timeout_keep_alive=limits.keep_alive_s, **options)  # type: ignore[arg-type]
    quiet_repeated_errors()  # after Config: it (re)configures uvicorn's loggers
    return config
