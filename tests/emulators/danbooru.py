"""Danbooru (and a Gelbooru/Safebooru "dapi") emulator: a real HTTP server that speaks the real protocol.

Danbooru is an internet service, so tests use this instead. ``create_app(posts, art_dir=...)`` serves
``GET /posts.json`` with Danbooru's field names (``tag_string*``, ``rating`` g/s/q/e, ``file_url``,
``large_file_url``, ``media_asset.variants`` ...), honours ``tags``/``limit``/``page``, ``order:random``,
``random:N`` (and ``random=true``, a redirect to it), ``rating:g,s`` and ``status:``, answers ``GET /counts/posts.json``, accepts
``login``+``api_key`` as HTTP basic auth or as parameters, and serves the image files its posts list
(the Ren'Py test art, resized on the fly for samples and thumbnails).

The tag limit follows Danbooru's source, danbooru/danbooru at production-2026.08.06.135255-utc-112
(commit 06587d1f, August 2026): ``app/logical/post_query.rb`` counts the unique tags, wildcards and
metatags of a search except ``UNLIMITED_METATAGS`` (``rating``, ``status``, ``limit`` since 2020; ``id``,
``width``, ``score`` ... since June 2022), skips the check for an empty search or a single plain tag
(``validate_tag_limit!``), and ``app/models/user.rb`` (``tag_query_limit``) allows 2 for anonymous and
Member accounts, 6 for Gold and no limit for Platinum. Over the limit, ``application_controller.rb``
answers 422 with ``{"success": false, "error": "PostQuery::TagLimitError", "message": "You cannot search
for more than 2 tags at a time.", "backtrace": [...]}``. ``limit=`` wins over ``limit:`` and both are
clamped to 200 (``app/logical/post_sets/post.rb``); ``random:N`` draws N posts (clamped to 200,
``post_query_builder.rb``); ``/counts/posts.json`` answers ``{"counts": {"posts": N}}`` and, like
``counts_controller.rb``, never enforces the tag limit (it does not call ``validate_tag_limit!``). A static
WebP or AVIF post also lists a ``full`` variant, a JPEG at the original's size (``media_asset.rb``
``variant_types``). A 429 is ``RateLimiter::RateLimitError`` with an ``X-Rate-Limit`` header and no
``Retry-After`` (``application_controller.rb``, ``rate_limiter.rb``).

The default post set (``default_posts``): Sylvie's sprites are tagged as the character (``hatsune_miku``
unless told otherwise) with mixed ratings, one of them banned and one deleted (neither has ``file_url``);
Eileen and Lucy are other characters; the concert CGs show the character among others (not ``solo``);
backgrounds have ``no_humans``; an animated ``zip`` (ugoira) post is tagged like a perfect match.
Deleted posts are listed (as for accounts that show deleted posts) so clients must skip them.

Misbehaviour on demand through ``app.state.control`` (a ``DanbooruControl``): ``rate_limit(n)`` -> n of
the site's 429s (``retry_after``: the dapi sites' ``Retry-After``; Danbooru sends none); ``fail(status, n)`` -> n 5xx; ``slow(seconds)``; down ->
leave the ``serve_app`` block (connection refused). ``control.requests`` logs what clients sent.

``create_dapi_app(flavour="gelbooru"|"safebooru")`` serves the same art through
``index.php?page=dapi&s=post&q=index&json=1`` in that site's dialect. Gelbooru answers 401 with the
body ``[]`` to any API call without a valid ``user_id`` and ``api_key`` (so since June 2025, as its
users and client authors report: e.g. AtoraSuunva/booru#115, gallery-dl#7674); give it accounts with
``control.add_user(user_id, api_key)``. Safebooru's current JSON is a bare list of posts with
``file_url``, ``sample_url``, ``preview_url``, ``rating: "general"`` and ``score: null``; with
``legacy=True`` it answers as it used to, without the URLs (built from ``directory`` and ``image``) and
with ``rating: "safe"``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from PIL import Image

TAG_LIMITS = {"member": 2, "gold": 6, "platinum": None}  # user.rb tag_query_limit; None: no limit
# post_query.rb PostQuery::UNLIMITED_METATAGS: metatags that do not count towards the limit.
UNLIMITED_METATAGS = frozenset("""
    status rating limit is id date age filesize filetype parent child md5 width
    height duration mpixels ratio score upvote downvotes favcount embedded
    tagcount pixiv_id pixiv
""".split())
MAX_PER_PAGE = 200
TRUTHY = frozenset({"1", "true", "t", "yes", "y", "on"})
SAMPLE_WIDTH = 850
RATING_LETTER = {"g": "g", "general": "g", "s": "s", "sensitive": "s", "q": "q", "questionable": "q",
                 "e": "e", "explicit": "e", "safe": "g"}
GELBOORU_RATING = {"g": "general", "s": "sensitive", "q": "questionable", "e": "explicit"}
SAFEBOORU_RATING = {"g": "general", "s": "questionable"}
MEDIA_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif", "avif": "image/avif"}
FULL_VARIANT_EXTS = frozenset({"webp", "avif"})  # media_asset.rb: `variants << :full if (is_webp? || is_avif?) && is_static_image?`


# --- the post set --------------------------------------------------------------------------------------

def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _fit(width: int, height: int, box: int) -> tuple[int, int]:
    scale = min(1.0, box / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def make_post(
    path: Path,
    post_id: int,
    *,
    characters: list[str],
    general: list[str],
    rating: str = "g",
    artist: str = "renpy_demo_artist",
    copyright: str = "ren'py",
    score: int = 10,
    is_deleted: bool = False,
    is_banned: bool = False,
) -> dict[str, Any]:
    """A Danbooru post for an art file, with URLs relative to the server (filled in per request)."""
    md5 = _md5(path)
    ext = path.suffix.lower().lstrip(".").replace("jpeg", "jpg")
    with Image.open(path) as im:
        width, height = im.size
    d = f"{md5[:2]}/{md5[2:4]}"
    original = f"/original/{d}/{md5}.{ext}"
    variants = [
        {"type": "180x180", "url": f"/180x180/{d}/{md5}.jpg", **dict(zip(("width", "height"), _fit(width, height, 180))), "file_ext": "jpg"},
        {"type": "360x360", "url": f"/360x360/{d}/{md5}.jpg", **dict(zip(("width", "height"), _fit(width, height, 360))), "file_ext": "jpg"},
        {"type": "720x720", "url": f"/720x720/{d}/{md5}.webp", **dict(zip(("width", "height"), _fit(width, height, 720))), "file_ext": "webp"},
    ]
    has_large = width > SAMPLE_WIDTH
    large = original
    if has_large:
        large = f"/sample/{d}/sample-{md5}.jpg"
        variants.append({"type": "sample", "url": large, "width": SAMPLE_WIDTH,
                         "height": round(height * SAMPLE_WIDTH / width), "file_ext": "jpg"})
    if ext in FULL_VARIANT_EXTS:
        # media_asset.rb variant_types: a static WebP or AVIF also gets a "full" variant, a JPEG at the
        # original's size (MediaAsset::Variant#file_ext: "jpg" for :full), stored as /full/xx/yy/<md5>.jpg.
        variants.append({"type": "full", "url": f"/full/{d}/{md5}.jpg", "width": width, "height": height, "file_ext": "jpg"})
    variants.append({"type": "original", "url": original, "width": width, "height": height, "file_ext": ext})
    tags_general = sorted(set(general))
    meta = ["highres"] if max(width, height) >= 1600 else []
    created = f"2024-03-{1 + post_id % 28:02d}T12:00:00.000+09:00"
    post: dict[str, Any] = {
        "id": post_id,
        "created_at": created,
        "updated_at": created,
        "uploader_id": 1,
        "approver_id": None,
        "score": score, "up_score": score, "down_score": 0, "fav_count": score // 2,
        "source": f"https://www.renpy.org/art/{path.name.replace(' ', '%20')}",
        "md5": md5,
        "rating": rating,
        "image_width": width,
        "image_height": height,
        "tag_string": " ".join(sorted(set(characters) | set(tags_general) | {artist, copyright} | set(meta))),
        "tag_string_general": " ".join(tags_general),
        "tag_string_character": " ".join(sorted(characters)),
        "tag_string_copyright": copyright,
        "tag_string_artist": artist,
        "tag_string_meta": " ".join(meta),
        "file_ext": ext,
        "file_size": path.stat().st_size,
        "parent_id": None,
        "has_children": False,
        "is_pending": False,
        "is_flagged": False,
        "is_deleted": is_deleted,
        "is_banned": is_banned,
        "has_large": has_large,
        "file_url": original,
        "large_file_url": large,
        "preview_file_url": variants[0]["url"],
        "media_asset": {
            "id": post_id + 5000, "created_at": created, "md5": md5, "file_ext": ext,
            "file_size": path.stat().st_size, "image_width": width, "image_height": height,
            "duration": None, "status": "active", "is_public": True, "variants": variants,
        },
    }
    if is_deleted or is_banned:
        # What anonymous users get for such posts: no file, no md5, no variants.
        for key in ("file_url", "large_file_url", "preview_file_url", "md5"):
            post.pop(key, None)
        post["media_asset"] = {**post["media_asset"], "md5": None, "variants": []}
    post["_art"] = path.name  # for tests only (stripped from responses): which art file this is
    return post


def default_posts(art_dir: Path, *, character_tag: str = "hatsune_miku") -> list[dict[str, Any]]:
    """The default post set described in the module docstring (ids 1001+)."""
    art = Path(art_dir)
    solo_girl = ["1girl", "solo", "smile", "long_hair", "looking_at_viewer", "simple_background", "white_background"]
    plan: list[tuple[str, dict[str, Any]]] = [
        ("sylvie blue giggle.png", dict(characters=[character_tag], general=solo_girl + ["blue_dress"], rating="g")),
        ("sylvie blue normal.png", dict(characters=[character_tag], general=solo_girl + ["blue_dress"], rating="g")),
        ("sylvie blue smile.png", dict(characters=[character_tag], general=solo_girl + ["blue_dress"], rating="s")),
        ("sylvie blue surprised.png", dict(characters=[character_tag], general=solo_girl + ["blue_dress", "surprised"], rating="g")),
        ("sylvie green giggle.png", dict(characters=[character_tag], general=solo_girl + ["green_dress"], rating="q")),
        ("sylvie green normal.png", dict(characters=[character_tag], general=solo_girl + ["green_dress"], rating="g")),
        ("sylvie green smile.png", dict(characters=[character_tag], general=solo_girl + ["green_dress"], rating="e")),
        ("sylvie green surprised.png", dict(characters=[character_tag], general=solo_girl + ["green_dress"], rating="g", is_deleted=True)),
        ("eileen happy.png", dict(characters=["eileen_(ren'py)"], general=solo_girl + ["brown_hair"], rating="g")),
        ("eileen vhappy.png", dict(characters=["eileen_(ren'py)"], general=solo_girl + ["brown_hair"], rating="g")),
        ("eileen concerned.png", dict(characters=["eileen_(ren'py)"], general=solo_girl + ["brown_hair"], rating="g", is_banned=True)),
        ("lucy happy.png", dict(characters=["lucy_(ren'py)"], general=solo_girl + ["red_hair"], rating="g")),
        ("lucy mad.png", dict(characters=["lucy_(ren'py)"], general=solo_girl + ["red_hair", "angry"], rating="s")),
        ("concert1.png", dict(characters=[character_tag, "eileen_(ren'py)", "lucy_(ren'py)"], general=["multiple_girls", "3girls", "concert", "guitar", "stage"], rating="g")),
        ("concert2.png", dict(characters=[character_tag, "eileen_(ren'py)", "lucy_(ren'py)"], general=["multiple_girls", "3girls", "concert", "microphone"], rating="g")),
        ("concert3.png", dict(characters=[character_tag, "eileen_(ren'py)"], general=["multiple_girls", "concert", "drum"], rating="g")),
        ("bg club.jpg", dict(characters=[], general=["no_humans", "scenery", "indoors"], rating="g")),
        ("bg meadow.jpg", dict(characters=[], general=["no_humans", "scenery", "outdoors", "grass"], rating="g")),
    ]
    posts = [make_post(art / name, 1001 + i, **kw) for i, (name, kw) in enumerate(plan) if (art / name).exists()]
    # An ugoira (animation as a zip of frames): perfectly tagged, but not a still image.
    ugoira = make_post(art / "sylvie blue normal.png", 1001 + len(plan), characters=[character_tag],
                       general=solo_girl + ["animated", "ugoira"], rating="g")
    ugoira.update(file_ext="zip", file_url=ugoira["file_url"].replace(".png", ".zip"), large_file_url=None,
                  image_width=1000, image_height=1400)
    ugoira["media_asset"] = {**ugoira["media_asset"], "file_ext": "zip", "variants": ugoira["media_asset"]["variants"][:3]}
    ugoira["_art"] = None
    posts.append(ugoira)
    return posts


# --- query matching (shared by both dialects) ------------------------------------------------------------

def _metatag(term: str) -> tuple[str, str] | None:
    """``("rating", "g,s")`` for ``rating:g,s`` (and ``-rating:g``); ``None`` for a plain tag."""
    name, sep, value = term.lstrip("-~").partition(":")
    return (name.lower(), value) if sep and value else None


def _status(post: dict[str, Any]) -> str:
    if post.get("is_banned"):
        return "banned"
    return "deleted" if post.get("is_deleted") or post.get("status") == "deleted" else "active"


def _term_matches(post: dict[str, Any], tags: set[str], term: str) -> bool:
    meta = _metatag(term)
    if meta is None:
        return term.lstrip("-~") in tags
    name, value = meta
    if name == "rating":  # Post.rating_matches: the first letter of each comma-separated value
        rating = RATING_LETTER.get(str(post.get("rating")), str(post.get("rating")))
        return rating in {v[:1] for v in value.lower().split(",") if v}
    if name == "status":
        return value.lower() in ("any", "all") or _status(post) == value.lower()
    return True  # order:, limit:, random: ... shape the result, not the match


def match(post: dict[str, Any], terms: list[str]) -> bool:
    tags = set(str(post.get("tag_string") or post.get("tags") or "").split())
    return all(_term_matches(post, tags, t) != t.startswith("-") for t in terms)


def counted_terms(terms: list[str]) -> int:
    """PostQuery#term_count: unique terms, less the free metatags."""
    unique = {t.lower() for t in terms}
    return sum(1 for t in unique if (_metatag(t) or ("",))[0] not in UNLIMITED_METATAGS)


def over_tag_limit(terms: list[str], limit: int | None) -> bool:
    """PostQuery#validate_tag_limit!: an empty search and a single plain tag are never over."""
    if not terms or (len(terms) == 1 and _metatag(terms[0]) is None and not terms[0].startswith("-")):
        return False
    return limit is not None and counted_terms(terms) > limit


def metatag_value(terms: list[str], name: str) -> str | None:
    for t in terms:
        meta = _metatag(t)
        if meta is not None and meta[0] == name:
            return meta[1]
    return None


# --- control -------------------------------------------------------------------------------------------------

@dataclass
class Fault:
    status: int
    remaining: int
    retry_after: str | None
    path: str


@dataclass
class LoggedRequest:
    method: str
    path: str
    params: dict[str, str]
    login: str | None
    user_agent: str | None
    authorization: bool


@dataclass
class DanbooruControl:
    """Knobs the test turns while the server runs (uvicorn runs in another thread: guarded by a lock)."""

    users: dict[str, tuple[str, str]] = field(default_factory=dict)  # login -> (api_key, level)
    delay_s: float = 0.0
    faults: list[Fault] = field(default_factory=list)
    requests: list[LoggedRequest] = field(default_factory=list)
    seed: int | None = None
    # (path prefix, condition): such requests wait until the condition holds (HOLD_LIMIT_S at most), so a test
    # orders "this answer comes after that happened" by the event itself, not by a delay that guesses it.
    holds: list[tuple[str, Callable[[], bool]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_user(self, login: str, api_key: str, level: str = "member") -> None:
        self.users[login] = (api_key, level)

    def rate_limit(self, times: int = 1, retry_after: float | str | None = None, path: str = "/posts.json") -> None:
        """The next ``times`` requests under ``path`` get the site's 429: Danbooru's never carries
        ``Retry-After`` (``danbooru_too_fast``); the dapi sites' carries ``retry_after`` when given."""
        with self.lock:
            self.faults.append(Fault(429, times, None if retry_after is None else str(retry_after), path))

    def fail(self, status: int = 503, times: int = 1, path: str = "/posts.json") -> None:
        with self.lock:
            self.faults.append(Fault(status, times, None, path))

    def slow(self, seconds: float) -> None:
        self.delay_s = seconds

    def hold(self, until: Callable[[], bool], path: str = "/") -> None:
        """Requests under ``path`` are answered only once ``until()`` is true (or after HOLD_LIMIT_S)."""
        with self.lock:
            self.holds.append((path, until))

    def holds_for(self, path: str) -> list[Callable[[], bool]]:
        with self.lock:
            return [until for prefix, until in self.holds if path.startswith(prefix)]

    def reset(self) -> None:
        """Back to a fresh emulator's knobs: no faults, holds or delay, no log, no accounts, unseeded order."""
        with self.lock:
            self.faults.clear()
            self.requests.clear()
            self.users.clear()
            self.holds.clear()
            self.delay_s = 0.0
            self.seed = None

    def take_fault(self, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if path.startswith(fault.path) and fault.remaining > 0:
                    fault.remaining -= 1
                    return fault
        return None

    def log(self, entry: LoggedRequest) -> None:
        with self.lock:
            self.requests.append(entry)

    def searches(self) -> list[LoggedRequest]:
        return [r for r in self.requests if r.path in ("/posts.json", "/index.php")]


# --- serving images ------------------------------------------------------------------------------------------

class ArtStore:
    """md5 -> art file, and resized variants made once on demand."""

    def __init__(self, art_dir: Path):
        self.art_dir = Path(art_dir)
        self.by_md5: dict[str, Path] = {}
        self.cache: dict[tuple[str, str], bytes] = {}
        self.lock = threading.Lock()

    def register(self, posts: list[dict[str, Any]]) -> None:
        for post in posts:
            name = post.get("_art")
            if name and (self.art_dir / name).exists():
                md5 = post.get("md5") or _md5(self.art_dir / name)
                self.by_md5[md5] = self.art_dir / name

    def original(self, md5: str) -> Path | None:
        return self.by_md5.get(md5)

    def variant(self, md5: str, kind: str) -> tuple[bytes, str] | None:
        path = self.by_md5.get(md5)
        if path is None:
            return None
        with self.lock:
            if (md5, kind) in self.cache:
                return self.cache[(md5, kind)], _media(kind)
        with Image.open(path) as im:
            im = im.convert("RGBA")
            white = Image.new("RGBA", im.size, (255, 255, 255, 255))
            rgb = Image.alpha_composite(white, im).convert("RGB")
            if kind == "sample":
                size = (SAMPLE_WIDTH, round(rgb.height * SAMPLE_WIDTH / rgb.width))
            elif kind == "full":
                size = rgb.size
            else:
                size = _fit(rgb.width, rgb.height, int(kind.split("x")[0]))
            small = rgb.resize(size, Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        small.save(buf, format="WEBP" if kind == "720x720" else "JPEG", quality=90)
        data = buf.getvalue()
        with self.lock:
            self.cache[(md5, kind)] = data
        return data, _media(kind)


def _media(kind: str) -> str:
    return "image/webp" if kind == "720x720" else "image/jpeg"


def _absolute(post: dict[str, Any], base: str) -> dict[str, Any]:
    """The post as served: relative URLs made absolute, test-only keys removed."""
    out = {k: v for k, v in post.items() if not k.startswith("_")}
    for key in ("file_url", "large_file_url", "preview_file_url", "file_url", "sample_url", "preview_url"):
        if isinstance(out.get(key), str) and out[key].startswith("/"):
            out[key] = base + out[key]
    asset = out.get("media_asset")
    if isinstance(asset, dict) and asset.get("variants"):
        out["media_asset"] = {**asset, "variants": [
            {**v, "url": base + v["url"] if str(v.get("url", "")).startswith("/") else v.get("url")}
            for v in asset["variants"]
        ]}
    return out


def _error(status: int, error: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    # application_controller.rb render_error_page: the API's error object (the backtrace is a list of lines).
    return JSONResponse({"success": False, "error": error, "message": message, "backtrace": []},
                        status_code=status, headers=headers)


def _tag_limit_error(limit: int) -> JSONResponse:
    return _error(422, "PostQuery::TagLimitError", f"You cannot search for more than {limit} tags at a time.")


TooFast = Callable[[Request, "Fault"], Response]
HOLD_LIMIT_S = 30.0  # a held request is answered anyway after this: the test's own assertion then says what is wrong


def danbooru_too_fast(request: Request, fault: Fault) -> Response:
    """Danbooru's 429, as production-2026.08.06 (commit 06587d1f) answers it: ``application_controller.rb``
    ``check_rate_limit`` sets ``X-Rate-Limit`` to the RateLimiter as JSON (``rate_limiter.rb`` ``as_json``:
    its action, cost, rate, burst, minimum_points, enabled and the points left per key) before
    ``RateLimiter#limit!`` raises ``RateLimiter::RateLimitError``, which ``rescue_exception`` renders as 429
    "You're doing that too fast. Wait a minute and try again." — with no ``Retry-After``."""
    client = request.client.host if request.client else "127.0.0.1"
    limiter = {"action": f"{request.url.path.strip('/').split('.')[0].replace('/', ':')}:index", "cost": 1,
               "rate": 1.0, "burst": 1, "minimum_points": -30, "enabled": True,
               "limits": {f"ip/{client}": -1.0}}
    return _error(429, "RateLimiter::RateLimitError", "You're doing that too fast. Wait a minute and try again.",
                  {"X-Rate-Limit": json.dumps(limiter, separators=(",", ":"))})


def dapi_too_fast(request: Request, fault: Fault) -> Response:
    """A Gelbooru/Safebooru 429 (behind their CDN), with ``Retry-After`` when the test asks for one."""
    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
    return _error(429, "RateLimitError", "Rate limit exceeded", headers)


def _install_common(app: FastAPI, control: DanbooruControl, store: ArtStore, too_fast: TooFast) -> None:
    @app.middleware("http")
    async def misbehave(request: Request, call_next: Any) -> Response:
        login = request.query_params.get("login")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                login = base64.b64decode(auth[6:]).decode().split(":", 1)[0]
            except (ValueError, UnicodeDecodeError):
                login = "?"
        params = {k: ("***" if k == "api_key" else v) for k, v in request.query_params.items()}
        control.log(LoggedRequest(request.method, request.url.path, params, login,
                                  request.headers.get("user-agent"), bool(auth)))
        # The fault is taken on arrival, before any delay: a request a slow test left sleeping here wakes
        # after the next test has queued its faults, and must not consume them.
        fault = control.take_fault(request.url.path)
        for until in control.holds_for(request.url.path):
            deadline = asyncio.get_running_loop().time() + HOLD_LIMIT_S
            while not until() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
        if control.delay_s:
            await asyncio.sleep(control.delay_s)
        if fault is not None:
            if fault.status == 429:
                return too_fast(request, fault)
            return _error(fault.status, "ServerError", "Internal server error (emulated)")
        return await call_next(request)

    @app.get("/{kind}/{a}/{b}/{name}")
    async def image(kind: str, a: str, b: str, name: str) -> Response:
        stem = name.rsplit(".", 1)[0].removeprefix("sample-").removeprefix("sample_")
        if kind in ("original", "images"):
            path = store.original(stem)
            if path is None or path.suffix.lower().lstrip(".").replace("jpeg", "jpg") != name.rsplit(".", 1)[-1]:
                return _error(404, "ActiveRecord::RecordNotFound", "That record was not found.")
            return Response(path.read_bytes(), media_type=MEDIA_TYPES.get(name.rsplit(".", 1)[-1], "application/octet-stream"))
        if kind in ("sample", "samples", "full", "180x180", "360x360", "720x720"):
            made = await asyncio.to_thread(store.variant, stem, "sample" if kind == "samples" else kind)
            if made is None:
                return _error(404, "ActiveRecord::RecordNotFound", "That record was not found.")
            return Response(made[0], media_type=made[1])
        return _error(404, "ActiveRecord::RecordNotFound", "That record was not found.")


def _auth(request: Request, control: DanbooruControl) -> tuple[str | None, JSONResponse | None]:
    """(level, error): anonymous is ``None``; wrong credentials are Danbooru's 401."""
    login = request.query_params.get("login")
    key = request.query_params.get("api_key")
    header = request.headers.get("authorization", "")
    if header.lower().startswith("basic "):
        try:
            login, _, key = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None, _error(401, "SessionLoader::AuthenticationFailure", "Invalid authorization header")
    if login is None and key is None:
        return None, None
    user = control.users.get(login or "")
    if user is None or user[0] != key:
        return None, _error(401, "SessionLoader::AuthenticationFailure", "Invalid API key")
    return user[1], None


# --- Danbooru -------------------------------------------------------------------------------------------------

def create_app(
    posts: list[dict[str, Any]] | None = None,
    *,
    art_dir: Path,
    character_tag: str = "hatsune_miku",
    control: DanbooruControl | None = None,
) -> FastAPI:
    """The Danbooru emulator; ``app.state.control`` is its ``DanbooruControl``, ``app.state.posts`` its posts."""
    posts = default_posts(art_dir, character_tag=character_tag) if posts is None else posts
    control = control or DanbooruControl()
    store = ArtStore(art_dir)
    store.register(posts)
    app = FastAPI(title="Danbooru emulator")
    app.state.control = control
    app.state.posts = posts
    _install_common(app, control, store, danbooru_too_fast)

    def searched(request: Request, *, tag_limit: bool = True) -> tuple[str | None, list[str], list[dict[str, Any]], Response | None]:
        """The account level, the search's terms and matching posts (newest first), or Danbooru's error.
        ``tag_limit``: enforce the account's tag limit (``/posts.json`` does; ``/counts/posts.json`` does not)."""
        level, err = _auth(request, control)
        if err is not None:
            return level, [], [], err
        terms = request.query_params.get("tags", "").split()
        limit_tags = TAG_LIMITS[level or "member"]
        if tag_limit and over_tag_limit(terms, limit_tags):
            return level, terms, [], _tag_limit_error(limit_tags or 0)
        matched = sorted((p for p in posts if match(p, terms)), key=lambda p: p["id"], reverse=True)
        return level, terms, matched, None

    def shuffled(matched: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = list(matched)
        (random.Random(control.seed) if control.seed is not None else random).shuffle(out)
        return out

    @app.get("/posts.json")
    async def search(request: Request) -> Response:
        level, terms, matched, err = searched(request)
        if err is not None:
            return err
        q = request.query_params
        if q.get("random", "").lower() in TRUTHY:
            # posts_controller.rb#index: random=true redirects to the same search plus random:<per page>.
            wanted = q.get("limit") or metatag_value(terms, "limit") or "20"
            if not wanted.isdigit():
                return _error(422, "PostQuery::Error", "limit must be a number")
            per_page = min(int(wanted), MAX_PER_PAGE)
            params = {"tags": " ".join([*terms, f"random:{per_page}"]).strip(),
                      **{k: q[k] for k in ("page", "limit", "login", "api_key") if k in q}}
            return RedirectResponse(f"/posts.json?{urlencode(params)}", status_code=302)
        try:
            limit = int(q.get("limit") or metatag_value(terms, "limit") or 20)
            draw = metatag_value(terms, "random")
            if draw is not None:
                matched = shuffled(matched)[:max(0, min(int(draw), MAX_PER_PAGE))]
        except ValueError:
            return _error(422, "PostQuery::Error", "limit and random: must be numbers")
        limit = max(0, min(limit, MAX_PER_PAGE))
        page_param = q.get("page", "1")
        if metatag_value(terms, "order") == "random":
            matched = shuffled(matched)
            page_param = "1"  # random order ignores the page
        if page_param[:1] in ("a", "b") and page_param[1:].isdigit():
            pivot = int(page_param[1:])
            matched = [p for p in matched if (p["id"] < pivot if page_param[0] == "b" else p["id"] > pivot)]
            chosen = matched[:limit]
        else:
            try:
                page = int(page_param)
            except ValueError:
                return _error(422, "ArgumentError", f"invalid page {page_param!r}")
            if page > 1000 and level not in ("gold", "platinum"):
                return _error(410, "PaginationExtension::PaginationError",
                              "You cannot go beyond page 1000. Try narrowing your search terms, "
                              "or upgrade your account to go beyond page 1000.")
            page = max(page, 1)
            chosen = matched[(page - 1) * limit: page * limit]
        base = str(request.base_url).rstrip("/")
        return JSONResponse([_absolute(p, base) for p in chosen])

    @app.get("/counts/posts.json")
    async def count(request: Request) -> Response:
        # counts_controller.rb#posts normalises the query and calls fast_count: it never calls
        # validate_tag_limit! (only PostSets::Post#posts and PostQuery.search do), so any number of tags counts.
        _level, _terms, matched, err = searched(request, tag_limit=False)
        return err if err is not None else JSONResponse({"counts": {"posts": len(matched)}})

    @app.get("/posts/{post_id}.json")
    async def one(post_id: int, request: Request) -> Response:
        for p in posts:
            if p["id"] == post_id:
                return JSONResponse(_absolute(p, str(request.base_url).rstrip("/")))
        return _error(404, "ActiveRecord::RecordNotFound", "That record was not found.")

    return app


def art_file(app: FastAPI, post_id: int) -> str | None:
    """Which Ren'Py art file a post of this emulator shows (to compare with hand labels)."""
    for p in app.state.posts:
        if p["id"] == post_id:
            return p.get("_art")
    return None


# --- Gelbooru / Safebooru -----------------------------------------------------------------------------------

def to_dapi(post: dict[str, Any], flavour: str) -> dict[str, Any] | None:
    """A Danbooru post in the Gelbooru or Safebooru dialect (None where Safebooru would not have it)."""
    rating = post["rating"]
    if flavour == "safebooru" and rating not in SAFEBOORU_RATING:
        return None
    md5 = post.get("md5") or hashlib.md5(str(post["id"]).encode()).hexdigest()
    directory = f"{md5[:2]}/{md5[2:4]}"
    image = f"{md5}.{post['file_ext']}"
    width, height = post["image_width"], post["image_height"]
    sample = width > SAMPLE_WIDTH
    gone = post.get("is_deleted") or post.get("is_banned")
    out: dict[str, Any] = {
        "id": post["id"],
        "width": width, "height": height,
        "directory": directory, "image": image,
        "tags": post["tag_string"],
        "owner": "danbooru",
        "score": post.get("score"),
        "source": post.get("source", ""),
        "change": 1709000000 + post["id"],
        "parent_id": 0,
        "sample": int(sample) if flavour == "gelbooru" else sample,
        "sample_width": SAMPLE_WIDTH if sample else 0,
        "sample_height": round(height * SAMPLE_WIDTH / width) if sample else 0,
        "status": "deleted" if gone else "active",
        "has_notes": "false",
        "_art": post.get("_art"),
    }
    if flavour == "gelbooru":
        out.update(
            md5=md5, rating=GELBOORU_RATING[rating], created_at="Fri Mar 01 12:00:00 -0600 2024",
            creator_id=1, title="", has_comments="false", post_locked=0, has_children="false",
            file_url="" if gone else f"/images/{directory}/{image}",
            sample_url=f"/samples/{directory}/sample_{md5}.jpg" if sample and not gone else "",
            preview_url=f"/thumbnails/{directory}/thumbnail_{md5}.jpg",
        )
    else:
        # Safebooru's JSON today: file_url and sample_url (the original's own URL when it has no sample),
        # ratings spelled out, and a score that is null (Safebooru keeps no votes).
        file_url = "" if gone else f"/images/{directory}/{image}"
        out.update(hash=md5, rating=SAFEBOORU_RATING[rating], comment_count=0, score=None, file_url=file_url,
                   sample_url=f"/samples/{directory}/sample_{md5}.jpg" if sample and not gone else file_url,
                   preview_url=f"/thumbnails/{directory}/thumbnail_{md5}.jpg")
        if gone:
            out.update(directory=None, image="")
    return out


def create_dapi_app(
    posts: list[dict[str, Any]] | None = None,
    *,
    art_dir: Path,
    flavour: str = "gelbooru",
    character_tag: str = "hatsune_miku",
    control: DanbooruControl | None = None,
    legacy: bool = False,
) -> FastAPI:
    """Gelbooru-style ``index.php?page=dapi&s=post&q=index&json=1``; posts are Danbooru-shaped (converted)."""
    source_posts = default_posts(art_dir, character_tag=character_tag) if posts is None else posts
    dapi_posts = [d for d in (to_dapi(p, flavour) for p in source_posts) if d is not None]
    if legacy:  # Safebooru's JSON before file_url: clients build it from directory + image; "safe" rating
        dapi_posts = [{**{k: v for k, v in d.items() if not k.endswith("_url")},
                       "rating": "safe" if d["rating"] == "general" else d["rating"]} for d in dapi_posts]
    control = control or DanbooruControl()
    store = ArtStore(art_dir)
    store.register(source_posts)
    app = FastAPI(title=f"{flavour} emulator")
    app.state.control = control
    app.state.posts = dapi_posts
    _install_common(app, control, store, dapi_too_fast)
    max_limit = 100 if flavour == "gelbooru" else 1000

    @app.get("/index.php")
    async def dapi(request: Request) -> Response:
        q = request.query_params
        if (q.get("page"), q.get("s"), q.get("q")) != ("dapi", "post", "index"):
            return Response("<html><body>not the API</body></html>", media_type="text/html")
        account = control.users.get(q.get("user_id") or "")
        if flavour == "gelbooru" and (account is None or account[0] != q.get("api_key")):
            # Gelbooru since June 2025: no API without an account's user_id and api_key.
            return Response(b"[]", status_code=401, media_type="application/json")
        terms = q.get("tags", "").split()
        try:
            limit = max(0, min(int(q.get("limit", 100)), max_limit))
            pid = max(0, int(q.get("pid", 0)))
        except ValueError:
            return Response("Search error: invalid limit or pid", status_code=400)
        matched = sorted((p for p in dapi_posts if match(p, terms)), key=lambda p: p["id"], reverse=True)
        chosen = matched[pid * limit:(pid + 1) * limit]
        base = str(request.base_url).rstrip("/")
        served = [_absolute(p, base) for p in chosen]
        if q.get("json") != "1":
            items = "".join(f'<post id="{p["id"]}" tags="{p["tags"]}"/>' for p in served)
            return Response(f'<?xml version="1.0" encoding="UTF-8"?><posts count="{len(matched)}" '
                            f'offset="{pid * limit}">{items}</posts>', media_type="application/xml")
        if flavour == "gelbooru":
            body: dict[str, Any] = {"@attributes": {"limit": limit, "offset": pid * limit, "count": len(matched)}}
            if served:
                body["post"] = served
            return JSONResponse(body)
        if not served:
            return Response(b"", media_type="application/json")  # Safebooru's answer to "no results"
        return JSONResponse(served)

    return app
