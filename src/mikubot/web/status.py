"""What the Status page shows: the face detector, llama-swap and its loaded models, GPU memory, and
whether a change runs. Every probe is bounded in time and reports its failure as data — a status
page that errors out when the thing it reports on is down would be useless exactly when needed."""

from __future__ import annotations

import asyncio
from typing import Any

from facedetect.client import AsyncFaceDetectClient, FaceDetectClientError
from facedetect.errors import FaceDetectError
from mikubot.redact import scrub
from mikubot.runner import ChangeRunner
from mikubot.vram import DETECTOR
from mikubot.web.views import redact_spec, safe_link

PROBE_TIMEOUT_S = 5.0


async def detector_status(runner: ChangeRunner) -> dict[str, Any]:
    s = runner.pipeline.settings
    local = runner.pipeline.services.local_detector
    if url := s.detector_service_url:
        out: dict[str, Any] = {"mode": "service" if s.detector_via == "direct" else "llama-swap",
                               "url": safe_link(url), "fallback": local.backend}
        try:
            async with AsyncFaceDetectClient(url, timeout=PROBE_TIMEOUT_S, api_key=s.detector_api_key) as client:
                health = await client.health()
            out.update(ok=True, health=health, loaded=bool(health.get("detector_loaded")))
        except FaceDetectClientError as exc:
            if s.detector_via == "llama-swap" and exc.status_code == 409:  # not loaded; asking must not load it
                out.update(ok=True, loaded=False)
            else:
                out.update(ok=False, error=exc.message)
        return out
    out = {"mode": "in-process", "backend": local.backend}
    try:
        detector = await asyncio.to_thread(local.get)
        out.update(ok=True, loaded=detector.loaded, describe=detector.describe(), vram_mib=detector.vram_mib())
    except FaceDetectError as exc:
        out.update(ok=False, error=exc.message)
    return out


async def vram_status(runner: ChangeRunner) -> dict[str, Any]:
    try:
        status = await asyncio.wait_for(runner.pipeline.coordinator.status(), PROBE_TIMEOUT_S * 2)
        return {"ok": True, **status}
    except TimeoutError:
        return {"ok": False, "error": f"vramctl did not answer within {PROBE_TIMEOUT_S * 2:.0f} s"}
    except Exception as exc:  # noqa: BLE001 - any probe/server failure is shown, never raised into the page
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def with_in_process_detector(vram: dict[str, Any], detector: dict[str, Any]) -> dict[str, Any]:
    """The face detector's consumer row as this process knows it: vramctl only accounts for an in-process
    detector (kind "external": it cannot load or unload it, so it cannot tell whether it is loaded), but the
    detector row above it can — one answer for one detector, not "loaded" and "?" two rows apart."""
    if detector.get("mode") != "in-process" or not vram.get("ok"):
        return vram
    consumers = [dict(c, kind=f"in-process {detector['backend']}", loaded=detector.get("loaded") if detector.get("ok") else None,
                      detail=f"in this process ({detector['backend']}); vramctl accounts for its need, never unloads it")
                 if c.get("name") == DETECTOR and c.get("kind") == "external" else c
                 for c in vram.get("consumers", [])]
    return {**vram, "consumers": consumers}


async def gather(runner: ChangeRunner) -> dict[str, Any]:
    s = runner.pipeline.settings
    detector, vram = await asyncio.gather(detector_status(runner), vram_status(runner))
    vram = with_in_process_detector(vram, detector)
    cur = runner.current
    return scrub({
        "change": {"running": cur is not None, "change_id": cur.change_id if cur else None,
                   "kind": cur.kind if cur else None},
        "detector": detector,
        "llama_swap": {"url": safe_link(s.llama_swap_url), "vision_model": s.vision_model,
                       "verifier": "vision" if s.llama_swap_url else "heuristic"},
        "vram": vram,
        "settings": {"source": redact_spec(s.source), "dry_run": s.effective_dry_run, "candidates": s.candidates,
                     "discord_token_set": s.discord_token is not None},
    })
