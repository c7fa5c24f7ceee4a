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
from mikubot.config import Settings
from mikubot.detection import InProcessDetector
from mikubot.sources import SourceError, source_from_spec
from mikubot.upload import DiscordUploader, UploadError
from mikubot.vram import vram_settings
from vramctl.errors import ServerError
from vramctl.probes import ProbeError, select_probe
from vramctl.servers.llama_swap import LlamaSwapClient

State = Literal["ok", "off", "warn", "fail"]
ICONS: dict[str, str] = {"ok": "✅", "off": "➖", "warn": "⚠️", "fail": "❌"}


@dataclass
class Check:
    name: str
    state: State
    message: str
    fix: str | None = None

    @property
    def line(self) -> str:
        return f"{ICONS[self.state]} {self.message}"

    def to_json(self) -> dict[str, str | None]:
        return asdict(self)


async def check_detector(s: Settings) -> Check:
    if s.face_detector_url:
        try:
            async with AsyncFaceDetectClient(s.face_detector_url, timeout=5.0) as client:
                health = await client.health()
        except FaceDetectClientError as exc:
            return Check("detector", "fail", f"Anime face detector API not reachable at {s.face_detector_url}: {exc.message}",
                         "start it (`facedetect serve`, or `docker compose up -d anime-face-detector`), fix "
                         "FACE_DETECTOR_URL, or unset FACE_DETECTOR_URL to detect in-process")
        backend = health.get("backend", "unknown backend")
        loaded = "loaded" if health.get("detector_loaded") else "not loaded (loads on first use)"
        return Check("detector", "ok", f"Anime face detector API connected ({s.face_detector_url}, {backend}, {loaded})")
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
        models = await LlamaSwapClient(s.llama_swap_url, http, timeout_s=5.0).models()
    except ServerError as exc:
        return Check("llama-swap", "fail", f"llama-swap not reachable: {exc}",
                     "start llama-swap (`docker compose up -d llama-swap`) or fix MIKU_LLAMA_SWAP_URL")
    if s.vision_model not in models:
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
        me = await DiscordUploader(s.discord_api, s.discord_token.get_secret_value(), http=http, timeout_s=10.0).me()
    except UploadError as exc:
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
        base = {"danbooru": s.danbooru_url, "safebooru": "https://safebooru.org", "gelbooru": "https://gelbooru.com"}[kind]
        path = "/posts.json?limit=1" if kind == "danbooru" else "/index.php?page=dapi&s=post&q=index&json=1&limit=1"
        try:
            r = await http.get(base + path, headers={"User-Agent": s.user_agent}, timeout=10.0)
        except httpx.HTTPError as exc:
            return Check("source", "fail", f"{kind.capitalize()} not reachable at {base}: {type(exc).__name__}",
                         "check the network (and MIKU_DANBOORU_URL for Danbooru); or use MIKU_SOURCE=local:DIR")
        if r.status_code == 401:
            return Check("source", "fail", f"{kind.capitalize()} rejected the login (401)",
                         "check MIKU_DANBOORU_LOGIN and MIKU_DANBOORU_API_KEY, or unset both to search anonymously")
        if r.status_code >= 400:
            return Check("source", "fail", f"{kind.capitalize()} answered {r.status_code} at {base}",
                         "try again later; a 429 or 5xx is the site's, not ours")
        login = " (logged in)" if s.danbooru_login and kind == "danbooru" else ""
        return Check("source", "ok", f"{kind.capitalize()} reachable at {base}{login}")
    try:
        source_from_spec(spec)
    except SourceError as exc:
        return Check("source", "fail", f"Source {spec!r} refused: {exc.message}", "fix MIKU_SOURCE")
    return Check("source", "ok", f"Source {spec} accepted")


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
    client = http or httpx.AsyncClient()
    try:
        return list(await asyncio.gather(
            check_detector(s), check_llama_swap(s, client), check_gpu(s, client), check_discord(s, client),
            check_source(s, client), asyncio.to_thread(check_data_dir, s),
        ))
    finally:
        if own:
            await client.aclose()
