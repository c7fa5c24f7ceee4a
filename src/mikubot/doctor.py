"""``mikubot doctor``: is every part this deployment uses reachable and working? One line per part, with
a mark in front ("✅ Anime face detector API connected"), and for every failure a concrete fix.

Parts not configured are reported as off, not failed: the embedded default (no services at all) is a
healthy deployment.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import httpx

from facedetect.client import AsyncFaceDetectClient, FaceDetectClientError
from facedetect.errors import FaceDetectError
from httpretry import tls_context
from mikubot.config import Settings
from mikubot.detection import InProcessDetector
from mikubot.discord_rest import DiscordError
from mikubot.redact import strip_userinfo
from mikubot.sources import SourceError, source_from_spec
from mikubot.upload import whoami
from mikubot.vram import vram_settings
from vramctl.errors import ServerError
from vramctl.probes import ProbeError, select_probe
from vramctl.servers.llama_swap import LlamaSwapClient

State = Literal["ok", "off", "warn", "fail"]
ICONS: dict[str, str] = {"ok": "✅", "off": "➖", "warn": "⚠️", "fail": "❌"}
GELBOORU_FIX = ("set MIKU_GELBOORU_USER_ID (the number) and MIKU_GELBOORU_API_KEY from gelbooru.com: "
                "My Account > Options > API Access Credentials")


@dataclass
class Check:
    name: str
    state: State
    message: str
    fix: str | None = None

    def __post_init__(self) -> None:
        # Messages quote the configured URLs (and errors about them): never with their credentials.
        self.message = strip_userinfo(self.message)
        self.fix = strip_userinfo(self.fix) if self.fix is not None else None

    @property
    def line(self) -> str:
        return f"{ICONS[self.state]} {self.message}"

    def to_json(self) -> dict[str, str | None]:
        return asdict(self)


async def check_detector(s: Settings) -> Check:
    if url := s.detector_service_url:
        try:
            async with AsyncFaceDetectClient(url, timeout=5.0, api_key=s.detector_api_key) as client:
                health = await client.health()
        except FaceDetectClientError as exc:
            if s.detector_via == "llama-swap" and exc.status_code == 409:  # upstream.ignorePaths: not loaded
                return Check("detector", "ok", f"Anime face detector under llama-swap ({url}): not loaded "
                             "(llama-swap loads it on first use)")
            return Check("detector", "fail", f"Anime face detector API not reachable at {url}: {exc.message}",
                         "start it (`facedetect serve`, or `docker compose up -d anime-face-detector`), fix "
                         "FACE_DETECTOR_URL (or the face-detector model of llama-swap's config with "
                         "MIKU_DETECTOR_VIA=llama-swap), or unset FACE_DETECTOR_URL to detect in-process")
        backend = health.get("backend", "unknown backend")
        loaded = "loaded" if health.get("detector_loaded") else "not loaded (loads on first use)"
        return Check("detector", "ok", f"Anime face detector API connected ({url}, {backend}, {loaded})")
    try:
        await asyncio.to_thread(InProcessDetector(s.detector_backend, s.detector_model_path).get)
    except FaceDetectError as exc:
        return Check("detector", "fail", f"In-process face detector {s.detector_backend!r} unusable: {exc.message}",
                     "use MIKU_DETECTOR_BACKEND=animeface (embedded, CPU) or point MIKU_DETECTOR_MODEL_PATH at the weights")
    return Check("detector", "ok", f"Anime face detector in-process ({s.detector_backend})")


async def check_llama_swap(s: Settings, http: httpx.AsyncClient) -> Check:
    if not s.llama_swap_url:
        return Check("llama-swap", "off", "No vision model configured: the heuristic verifier (tags + hair colour) is used",
                     "set MIKU_LLAMA_SWAP_URL (and MIKU_VISION_MODEL) to verify with a vision model")
    try:
        catalog = await LlamaSwapClient(s.llama_swap_url, http, s.llama_swap_api_key, timeout_s=5.0).catalog()
    except ServerError as exc:
        return Check("llama-swap", "fail", f"llama-swap not reachable: {exc}",
                     "start llama-swap (`docker compose up -d llama-swap`) or fix MIKU_LLAMA_SWAP_URL")
    models = [name for name, real in catalog.real.items() if name == real]
    if not catalog.knows(s.vision_model):  # a model id, an alias, or a peer's model
        return Check("llama-swap", "fail",
                     f"llama-swap connected, but has no model {s.vision_model!r} (it has: {', '.join(models) or 'none'})",
                     "set MIKU_VISION_MODEL to one of those ids, or add the model to llama-swap's config.yaml")
    return Check("llama-swap", "ok", f"llama-swap connected; vision model {s.vision_model!r} available")


async def check_gpu(s: Settings, http: httpx.AsyncClient) -> Check:
    vs = vram_settings(s)
    try:
        probe = select_probe(vs, http)
        mem = await probe.read()
    except ProbeError as exc:
        return Check("gpu", "fail", f"GPU probe {vs.probe!r} cannot read the card: {exc}",
                     "install nvidia-ml-py (`pip install 'miku-discord[gpu]'`), run with the NVIDIA runtime, "
                     "or set MIKU_GPU_PROBE=none to fall back to unload + settle delay")
    if mem is None:
        return Check("gpu", "off", f"No GPU probe ({probe.name}): unloads wait {s.settle_s:g} s instead of measuring",
                     "set MIKU_GPU_PROBE=auto (or nvml) on a machine with an NVIDIA GPU")
    return Check("gpu", "ok", f"GPU probe {probe.name}: {mem.device or 'GPU'} {mem.free_mib:.0f} of {mem.total_mib:.0f} MiB free")


async def check_discord(s: Settings, http: httpx.AsyncClient) -> Check:
    if s.discord_token is None:
        return Check("discord", "off", "No Discord token: changes are dry runs (the avatar is written to a file)",
                     "set MIKU_DISCORD_TOKEN to the bot token from the Developer Portal to apply avatars")
    try:
        me = await whoami(s, timeout_s=10.0)
    except DiscordError as exc:
        fix = ("copy the token again from https://discord.com/developers/applications → your app → Bot"
               if exc.status_code == 401 else f"check the network path to {s.discord_api} (MIKU_DISCORD_API)")
        return Check("discord", "fail", f"Discord token check failed: {exc.message}", fix)
    extra = " (dry-run is on)" if s.dry_run else ""
    return Check("discord", "ok", f"Discord token valid: bot {me.get('username')} ({me.get('id')}){extra}")


async def check_source(s: Settings, http: httpx.AsyncClient) -> Check:
    spec = s.source
    kind = spec.split(":", 1)[0].lower()
    if kind == "local":
        folder = Path(spec.split(":", 1)[1])
        if not folder.is_dir():
            return Check("source", "fail", f"Source folder {folder} does not exist",
                         "run `make art` for the sample art, or set MIKU_SOURCE=local:/your/folder")
        return Check("source", "ok", f"Source folder {folder} found")
    if kind in ("danbooru", "safebooru", "gelbooru"):
        return await check_booru(s, kind, http)
    try:
        source_from_spec(spec)
    except SourceError as exc:
        return Check("source", "fail", f"Source {spec!r} refused: {exc.message}", "fix MIKU_SOURCE")
    return Check("source", "ok", f"Source {spec} accepted")


async def check_booru(s: Settings, kind: str, http: httpx.AsyncClient) -> Check:
    """One real request through the source itself (its URL, credentials and query), without retries."""
    name = kind.capitalize()
    if kind == "gelbooru" and s.gelbooru_credentials is None:
        return Check("source", "fail", "Gelbooru lacks API credentials: it answers 401 to API calls without them",
                     GELBOORU_FIX + "; or use another MIKU_SOURCE")
    try:
        src = source_from_spec(kind, **{**s.source_settings(), "http": http, "source_retries": 0,
                                        "http_timeout_s": min(s.http_timeout_s, 10.0)})
        message = await src.probe()  # type: ignore[attr-defined]
    except SourceError as exc:
        url = getattr(s, f"{kind}_url")
        if exc.unreachable:  # no answer at all: DNS, a proxy or firewall, or a wrong URL — not the site's doing
            fix = (f"check this machine's network path to {url} (DNS, proxy, firewall) and MIKU_{kind.upper()}_URL; "
                   "retrying will not help until it resolves and connects")
        elif exc.retryable:
            fix = f"try again later: {name} answered with a rate limit, a server error or not in time"
        else:
            fix = f"fix the {name} settings (MIKU_{kind.upper()}_*), or use MIKU_SOURCE=local:DIR"
        return Check("source", "fail", f"{name} search failed: {exc.message}", fix)
    return Check("source", "ok", message)


def check_gelbooru(s: Settings) -> Check:
    """Gelbooru can be picked per change (``--source``, ``/pfp change``) even when it is not the default:
    say whether it would be refused for want of credentials (no request: it is not the configured source)."""
    if s.gelbooru_credentials is not None:
        return Check("gelbooru", "ok", f"Gelbooru API credentials set (user id {s.gelbooru_user_id})")
    if s.gelbooru_user_id or s.gelbooru_api_key is not None:
        return Check("gelbooru", "warn", "Gelbooru has half its API credentials: it will answer 401", GELBOORU_FIX)
    return Check("gelbooru", "off", "Gelbooru off: no API credentials (MIKU_GELBOORU_USER_ID, MIKU_GELBOORU_API_KEY); "
                 "changes from gelbooru would get 401", GELBOORU_FIX)


def check_data_dir(s: Settings) -> Check:
    try:
        s.data_dir.mkdir(parents=True, exist_ok=True)
        probe = s.data_dir / ".doctor-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return Check("data", "fail", f"Data directory {s.data_dir} is not writable: {exc.strerror}",
                     "set MIKU_DATA_DIR to a writable folder (the history database and avatars live there)")
    return Check("data", "ok", f"Data directory {os.path.abspath(s.data_dir)} writable")


async def run_checks(s: Settings, http: httpx.AsyncClient | None = None) -> list[Check]:
    own = http is None
    client = http or httpx.AsyncClient(verify=tls_context())
    try:
        checks = list(await asyncio.gather(
            check_detector(s), check_llama_swap(s, client), check_gpu(s, client), check_discord(s, client),
            check_source(s, client), asyncio.to_thread(check_data_dir, s),
        ))
        if s.source.split(":", 1)[0].lower() != "gelbooru":  # else the source check has said it
            checks.append(check_gelbooru(s))
        return checks
    finally:
        if own:
            await client.aclose()
