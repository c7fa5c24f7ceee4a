"""Unloading consumers to make room: the coordinator's hands on the model servers.

``Unloader`` is the unloading half of ``vramctl.coordinator.Coordinator`` (a mixin over ``ServerView``):
each server's own unload (llama-swap per model, else all, else the swap-to-text last resort; Ollama; the
face detector's ``/unload``), the settle wait when no probe can show the memory free, and the detector's
``/load`` after a reservation that unloaded it.
"""

from __future__ import annotations

import asyncio
import time

from . import metrics
from .config import Consumer
from .errors import ServerError, UnloadUnsupported
from .residency import Reservation, ServerView
from .servers import FaceDetectControl, LlamaSwapClient, OllamaClient


class Unloader(ServerView):
    """The unloading half of the coordinator (see the module's docstring)."""


    async def _settle(self, res: Reservation) -> None:
        self._event(res, "settle", None, None,
                    f"waiting {self.settings.settle_s:g} s: no probe can show when the memory is free")
        await asyncio.sleep(self.settings.settle_s)

    async def _resume(self, c: Consumer, res: Reservation) -> None:
        try:
            await FaceDetectControl(self.settings.server_url(c), self._http, self.settings.http_timeout_s,
                                    self.settings.facedetect_token).load()
            self._event(res, "resumed", c.name, await self._free_now(), "POST /load")
        except ServerError as exc:  # the detector also loads itself on its next /detect
            self._event(res, "resume-failed", c.name, None, str(exc))
            res.errors.append(str(exc))

    async def _unload_all(self, victims: list[Consumer], requester: Consumer, res: Reservation,
                          free: float | None) -> None:
        """Unload `victims` concurrently; `res.unloaded` lists the ones that went, in the planner's order."""
        if not victims:
            return
        done = await asyncio.gather(*(self._unload(v, requester, res, free) for v in victims))
        res.unloaded.extend(v.name for v, ok in zip(victims, done) if ok)

    async def _unload(self, v: Consumer, requester: Consumer, res: Reservation, free: float | None) -> bool:
        url = self.settings.server_url(v)
        self._event(res, "unload", v.name, free, f"{v.kind} {v.model or ''} at {url}".replace("  ", " "))
        t0 = time.monotonic()
        try:
            if v.kind == "llama-swap":
                method = await self._unload_llama_swap(v, requester, res)
            elif v.kind == "ollama":
                method = await OllamaClient(url, self._http, self.settings.http_timeout_s).unload(v.model or "")
            else:
                method = await FaceDetectControl(url, self._http, self.settings.http_timeout_s,
                                                 self.settings.facedetect_token).unload()
        except ServerError as exc:
            self._event(res, "unload-failed", v.name, None, str(exc))
            res.errors.append(str(exc))
            return False
        metrics.UNLOADS.labels(v.name, method).inc()
        self._event(res, "unloaded", v.name, await self._free_now(),
                    f"via {method}; server answered after {time.monotonic() - t0:.3f} s")
        return True

    async def _unload_llama_swap(self, v: Consumer, requester: Consumer, res: Reservation) -> str:
        s = self.settings
        url = s.server_url(v)
        client = LlamaSwapClient(url, self._http, s.llama_swap_api_key, s.http_timeout_s)
        try:
            return await client.unload(v.model or "")
        except UnloadUnsupported as exc:
            self._event(res, "unload-fallback", v.name, None, f"{exc}; using GET /unload, which stops every model")
        siblings = [o for o in s.consumers if o.kind == "llama-swap" and s.server_url(o) == url and o.name != v.name]
        in_use = [o.name for o in siblings if self._held.get(o.name, 0)]
        if in_use:
            raise ServerError("llama-swap", url, f"cannot unload {v.name} alone (no per-model unload) while "
                              f"{', '.join(in_use)} is reserved; GET /unload would stop it too")
        try:
            return await client.unload_all()
        except UnloadUnsupported:
            pass
        targets = sorted((o for o in siblings if o.name != requester.name), key=lambda o: (o.vram_mib, o.name))
        if not targets:
            raise UnloadUnsupported("llama-swap", url, f"no unload endpoint and no other model to swap {v.name} out with")
        t = targets[0]
        self._event(res, "swap-last-resort", v.name, None,
                    f"LAST RESORT (the swap-to-text method): llama-swap has no unload endpoint; requesting {t.model} "
                    f"with max_tokens 1, which loads {t.vram_mib} MiB nobody asked for")
        await client.swap_to(t.model or "")
        return f"swap-to-{t.name}"
