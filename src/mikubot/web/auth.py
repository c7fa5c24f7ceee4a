"""Who may change things: the panel's token, its login sessions and the CSRF defences.

Reading (pages, history, status) is open to whoever can reach the port — 127.0.0.1 by default; an
event stream, which holds a connection open, needs a login or the token (``require_viewer``). Every
state-changing request needs the token, presented one of two ways:

* ``Authorization: Bearer <token>`` — scripts and ``curl``. Browsers never attach this header on their
  own, so a request carrying it cannot be a cross-site forgery; it needs no CSRF token.
* a session cookie from the login form — the browser. The cookie is ``HttpOnly`` and ``SameSite=Strict``
  (a cross-site page cannot make the browser send it), and each session has its own CSRF token that
  every state-changing request must echo in ``X-CSRF-Token`` (or a ``csrf_token`` form field); a
  request whose ``Origin`` names another site is refused before anything else.

The token is compared in constant time, and guessing it is throttled per client: after
``FREE_ATTEMPTS`` wrong tokens (bearer or login form) a client waits 1 s, then 2, 4, … up to
``MAX_BACKOFF_S`` between tries, answered 429 with ``Retry-After`` — even with the right token, so the
answer leaks nothing. A right token clears the client's record. It is never rendered, logged or put in a URL; sessions live in
memory only (a restart logs everyone out), each with a random id unrelated to the token.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import HTTPException, Request
from pydantic import SecretStr

log = logging.getLogger(__name__)

SESSION_COOKIE = "miku_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 256  # a flood of logins must not grow memory without bound
TOKEN_FILE = "web-token"
FREE_ATTEMPTS = 10  # wrong tokens a client may send before it has to wait
MAX_BACKOFF_S = 300.0
MAX_CLIENTS = 4096  # clients remembered; the oldest record goes first


@dataclass
class Session:
    csrf: str
    expires: float


def resolve_token(configured: SecretStr | None, data_dir: Path) -> tuple[SecretStr, str]:
    """The token the panel accepts and where it comes from.

    ``MIKU_WEB_TOKEN`` when set. Otherwise one is generated once and kept in ``<data dir>/web-token``
    (mode 0600), so the panel works with no configuration while a token is still required for every
    change — the owner reads it from the file; it is never printed.
    """
    if configured is not None and configured.get_secret_value().strip():
        return SecretStr(configured.get_secret_value().strip()), "MIKU_WEB_TOKEN"
    path = data_dir / TOKEN_FILE
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if not existing:
        path.parent.mkdir(parents=True, exist_ok=True)
        existing = secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(existing + "\n")
    return SecretStr(existing), str(path)


@dataclass
class Attempts:
    failures: int = 0
    blocked_until: float = 0.0


class AttemptLimiter:
    """Wrong-token attempts per client address, with exponential backoff past ``free`` attempts."""

    def __init__(self, free: int = FREE_ATTEMPTS, max_backoff_s: float = MAX_BACKOFF_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.free, self.max_backoff_s, self.clock = free, max_backoff_s, clock
        self._clients: dict[str, Attempts] = {}

    def check(self, client: str) -> None:
        """Raise 429 while ``client`` must wait."""
        record = self._clients.get(client)
        wait = record.blocked_until - self.clock() if record is not None else 0.0
        if wait > 0:
            raise HTTPException(429, f"too many wrong tokens from {client}; try again in {math.ceil(wait)} s",
                                headers={"Retry-After": str(math.ceil(wait))})

    def failed(self, client: str) -> None:
        record = self._clients.pop(client, None) or Attempts()
        self._clients[client] = record  # re-inserted: the dict's order is the records' age
        record.failures += 1
        if record.failures >= self.free:
            backoff = min(self.max_backoff_s, 2.0 ** (record.failures - self.free))
            record.blocked_until = self.clock() + backoff
        while len(self._clients) > MAX_CLIENTS:
            del self._clients[next(iter(self._clients))]

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class Auth:
    def __init__(self, token: SecretStr, token_source: str) -> None:
        self._token = token
        self.token_source = token_source  # "MIKU_WEB_TOKEN" or the file's path: safe to show
        self._sessions: dict[str, Session] = {}
        self.attempts = AttemptLimiter()

    # --- the token ------------------------------------------------------------------------------------
    def token_ok(self, presented: str) -> bool:
        return _same(presented.strip(), self._token.get_secret_value())

    def guess(self, request: Request, presented: str) -> bool:
        """Check a presented token under the client's attempt limit (429 while it must wait)."""
        client = client_of(request)
        self.attempts.check(client)
        if self.token_ok(presented):
            self.attempts.succeeded(client)
            return True
        self.attempts.failed(client)
        return False

    # --- sessions -------------------------------------------------------------------------------------
    def new_session(self) -> tuple[str, Session]:
        self._expire()
        if len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions, key=lambda k: self._sessions[k].expires)
            del self._sessions[oldest]
        sid = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(32), expires=time.time() + SESSION_TTL_S)
        self._sessions[sid] = session
        return sid, session

    def session(self, request: Request) -> Session | None:
        sid = request.cookies.get(SESSION_COOKIE)
        if not sid:
            return None
        s = self._sessions.get(sid)
        if s is None or s.expires < time.time():
            self._sessions.pop(sid, None)
            return None
        return s

    def end_session(self, request: Request) -> None:
        sid = request.cookies.get(SESSION_COOKIE)
        if sid:
            self._sessions.pop(sid, None)

    def _expire(self) -> None:
        now = time.time()
        for sid in [k for k, s in self._sessions.items() if s.expires < now]:
            del self._sessions[sid]

    # --- checks -----------------------------------------------------------------------------------------
    @staticmethod
    def check_origin(request: Request) -> None:
        """Refuse a request that a page of another site sent (``Origin``/``Referer`` naming another host)."""
        origin = request.headers.get("origin") or request.headers.get("referer")
        if not origin or origin == "null":
            if origin == "null":
                raise HTTPException(403, "cross-site request refused (Origin: null)")
            return  # not a browser's cross-site request (curl, a same-origin navigation without the header)
        host = request.headers.get("host", "")
        if urlsplit(origin).netloc.lower() != host.lower():
            raise HTTPException(403, f"cross-site request refused: Origin {urlsplit(origin).netloc!r} is not {host!r}")

    def _bearer(self, request: Request, header: str) -> str:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise HTTPException(401, "use Authorization: Bearer <MIKU_WEB_TOKEN>",
                                headers={"WWW-Authenticate": "Bearer"})
        if not self.guess(request, value):
            log.warning("refused a request with a wrong bearer token from %s", client_of(request))
            raise HTTPException(401, "wrong token", headers={"WWW-Authenticate": "Bearer"})
        return "bearer"

    def require_viewer(self, request: Request) -> str:
        """Allow a request that holds a resource open (an event stream) to the token or a logged-in session
        only, or raise 401. A GET changes nothing, so a session needs no CSRF token here."""
        header = request.headers.get("authorization")
        if header:
            return self._bearer(request, header)
        if self.session(request) is None:
            raise HTTPException(401, "event streams need a login (/login) or Authorization: Bearer <MIKU_WEB_TOKEN>",
                                headers={"WWW-Authenticate": "Bearer"})
        return "session"

    def require_write(self, request: Request, form_csrf: str | None = None) -> str:
        """Allow a state-changing request or raise 401/403 saying what to do. Returns how it was allowed."""
        header = request.headers.get("authorization")
        if header:
            return self._bearer(request, header)
        self.check_origin(request)
        session = self.session(request)
        if session is None:
            raise HTTPException(401, "this request changes state: send Authorization: Bearer <MIKU_WEB_TOKEN> "
                                     "or log in at /login", headers={"WWW-Authenticate": "Bearer"})
        presented = request.headers.get(CSRF_HEADER) or form_csrf or ""
        if not presented or not _same(presented, session.csrf):
            raise HTTPException(403, f"missing or wrong CSRF token: send the page's token in {CSRF_HEADER}")
        return "session"


def client_of(request: Request) -> str:
    """The client's address (a trusted proxy's client, see MIKU_WEB_TRUSTED_PROXIES), for per-client limits."""
    return request.client.host if request.client else "?"
