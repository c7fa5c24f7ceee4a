"""The panel's HTML pages: Actions → Profile Picture, History, Status, and the login form.

Pages are rendered by Jinja2 (autoescaped) and brought to life by small vanilla scripts in ``static/``
that call the JSON API. The only secret-adjacent value a page carries is the *session's* CSRF token
(in a ``<meta>`` tag, for the scripts' ``X-CSRF-Token`` header) — never the panel's token itself.
"""

from __future__ import annotations

import asyncio
import functools
import io
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from PIL import Image, ImageDraw

from mikubot.web.auth import CSRF_FIELD, SESSION_COOKIE, SESSION_TTL_S
from mikubot.web.state import panel
from mikubot.web.status import gather
from mikubot.web.views import change_view, safe_link

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.filters["safe_link"] = safe_link
router = APIRouter(include_in_schema=False)
LOGIN_FAILURE_DELAY_S = 0.5  # slows guessing; the token itself is long and random or owner-chosen


ICON_SIZES = (16, 32, 48)
ACCENT, ACCENT_DARK = (0x39, 0xC5, 0xBB), (0x13, 0x7A, 0x7F)  # panel.css --accent / --accent-dark


@functools.cache
def favicon_ico() -> bytes:
    """The panel's icon, drawn here (no outside art): the accent's disc in a dark ring, as an ICO of
    ``ICON_SIZES``, made once per process."""
    side = 4 * max(ICON_SIZES)  # drawn large, scaled down: smooth edges
    im = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(im)
    draw.ellipse((4, 4, side - 5, side - 5), fill=ACCENT, outline=ACCENT_DARK, width=side // 10)
    draw.ellipse((side * 0.38, side * 0.38, side * 0.62, side * 0.62), fill=ACCENT_DARK)
    buf = io.BytesIO()
    im.resize((max(ICON_SIZES),) * 2, Image.Resampling.LANCZOS).save(buf, format="ICO",
                                                                      sizes=[(n, n) for n in ICON_SIZES])
    return buf.getvalue()


@router.get("/favicon.ico")
async def favicon() -> Response:
    return Response(favicon_ico(), media_type="image/x-icon", headers={"Cache-Control": "public, max-age=86400"})


def _context(request: Request, page: str, **extra: Any) -> dict[str, Any]:
    p = panel(request)
    session = p.auth.session(request)
    return {"page": page, "logged_in": session is not None, "csrf": session.csrf if session else "",
            "dry_run": p.settings.effective_dry_run, "stages": p.runner.pipeline.stage_order(), "character": p.settings.character_name, **extra}


def _safe_next(target: str | None) -> str:
    """Only a local path: a login link must not become an open redirect."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/actions/profile-picture"
    return target


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/actions/profile-picture", status_code=303)


@router.get("/actions/profile-picture", response_class=HTMLResponse)
async def profile_picture(request: Request) -> Response:
    p = panel(request)
    # the global profile's latest; each server's look has its own card below
    latest = await asyncio.to_thread(p.history.list, 1, scope=None)
    cur = p.runner.current
    return templates.TemplateResponse(request, "profile_picture.html", _context(
        request, "profile-picture", latest_id=latest[0].id if latest else None,
        running_id=cur.change_id if cur else None, source=p.settings.source,
        server_looks=await asyncio.to_thread(server_looks, p)))


def server_looks(p: Any) -> list[dict[str, Any]]:
    """One profile card per configured server (MIKU_GUILD_LOOKS): its look and its latest change (reads the
    history: call it in a worker thread)."""
    s = p.settings
    cards = []
    for guild_id, look in s.guild_looks.items():
        rows = p.history.list(1, scope=guild_id)
        cards.append({"guild_id": guild_id, "name": look.character_name or s.character_name,
                      "source": look.source or s.source,
                      "change": change_view(rows[0], s.avatars_dir, with_events=False) if rows else None})
    return cards


@router.get("/history", response_class=HTMLResponse)
async def history_page(request: Request, offset: int = 0) -> Response:
    p = panel(request)
    offset = min(max(0, offset), 2**63 - 1)  # SQLite's integer range
    rows = [change_view(r, p.settings.avatars_dir, with_events=False)
            for r in await asyncio.to_thread(p.history.list, 24, offset)]
    return templates.TemplateResponse(request, "history.html", _context(
        request, "history", changes=rows, offset=offset, more=len(rows) == 24))


@router.get("/status", response_class=HTMLResponse)
async def status_page(request: Request) -> Response:
    status = await gather(panel(request).runner)
    return templates.TemplateResponse(request, "status.html", _context(request, "status", status=status))


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str | None = None) -> Response:
    p = panel(request)
    return templates.TemplateResponse(request, "login.html", _context(
        request, "login", next=_safe_next(next), token_source=p.auth.token_source, error=None))


@router.post("/login")
async def login(request: Request, token: str = Form("", max_length=4096), next: str = Form("")) -> Response:
    p = panel(request)
    p.auth.check_origin(request)
    if not p.auth.guess(request, token):
        await asyncio.sleep(LOGIN_FAILURE_DELAY_S)
        return templates.TemplateResponse(request, "login.html", _context(
            request, "login", next=_safe_next(next), token_source=p.auth.token_source,
            error="That is not the panel's token."), status_code=401)
    sid, _ = p.auth.new_session()
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(SESSION_COOKIE, sid, max_age=SESSION_TTL_S, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    p = panel(request)
    form = await request.form()
    field = form.get(CSRF_FIELD)
    if p.auth.session(request) is None:
        raise HTTPException(401, "not logged in")
    p.auth.require_write(request, form_csrf=field if isinstance(field, str) else None)
    p.auth.end_session(request)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response
