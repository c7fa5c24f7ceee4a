"""What every request passes before any route sees it: the Host allow-list, then — for a request that
changes state — the client's attempt limit, the token, and a byte cap, all *before* a byte of the body
is read.

* **Host**: a DNS-rebinding page reaches the panel under its own host name; the browser then sends that
  name in ``Host``. Only loopback names (``localhost``, ``*.localhost``, loopback addresses) and the names
  in ``MIKU_WEB_ALLOWED_HOSTS`` are answered; anything else gets 400.
* **Auth first**: FastAPI parses a JSON or form body before a route's dependencies run, so the token
  check in a dependency would come after an outsider's 60 MB body was read and parsed. Here the check
  needs headers only (the bearer token, or the session cookie and its CSRF header). ``/login`` and
  ``/logout`` check for themselves (their token or CSRF field is in the small form).
* **Size**: ``Content-Length`` over the cap is refused at once; a body without one (chunked) is counted
  as it streams and cut off with 413 at the cap. The cap is 64 KiB, the upload route's is the image
  limit plus multipart overhead.
"""

from __future__ import annotations

import json

from fastapi import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facedetect.multipart import body_cap
from httpserve import host_allowed, host_name
from mikubot.web.state import PanelState

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SELF_CHECKED = frozenset({"/login", "/logout"})  # their token / CSRF field travels in the (small) form
UPLOAD_PATH = "/profile-picture/upload"
SMALL_BODY = 64 * 1024


class RequestGuard:
    def __init__(self, app: ASGIApp, state: PanelState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        settings = self.state.settings
        host = request.headers.get("host", "")
        if not host_allowed(host, settings.web_allowed_hosts):
            await _answer(send, 400, f"Host {host_name(host)!r} is not served here: use a loopback address, "
                                     "or add the name to MIKU_WEB_ALLOWED_HOSTS")
            return
        cap = SMALL_BODY
        if scope["method"] not in SAFE_METHODS:
            if scope["path"] == UPLOAD_PATH:
                cap = body_cap(int(settings.max_download_mib * 1024 * 1024))
            if scope["path"] not in SELF_CHECKED:
                try:
                    self.state.auth.require_write(request)
                except HTTPException as exc:
                    await _answer(send, exc.status_code, str(exc.detail), exc.headers)
                    return
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            await _answer(send, 413, f"the request body is {int(declared) / 1e6:.1f} MB; the limit here is "
                                     f"{cap / 1e6:.1f} MB")
            return
        await self.app(scope, _capped(receive, cap), send)


def _capped(receive: Receive, cap: int) -> Receive:
    seen = 0

    async def capped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > cap:
                # Raised inside the route's body read: FastAPI and the upload reader let HTTPException through.
                raise HTTPException(413, f"the request body is over the limit of {cap / 1e6:.1f} MB")
        return message

    return capped


async def _answer(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           (b"connection", b"close")]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
