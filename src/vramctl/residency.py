"""What each server holds and what the card shows: the coordinator's reading of the world.

``ServerView`` is the measuring half of ``vramctl.coordinator.Coordinator`` (a mixin: it reads the
coordinator's settings, probe, HTTP client and timeline): the probe's reading, each server's residency
(one question per server), and the message that names who still holds memory.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx

from . import metrics
from .config import Consumer, VramSettings
from .errors import ServerError
from .probes import GpuMemory, Probe, ProbeError
from .servers import FaceDetectControl, LlamaSwapClient, OllamaClient
from .servers.facedetect import reported_uses_gpu
from .servers.llama_swap import Catalog, RunningModel
from .servers.ollama import same_model
from .timeline import Timeline


@dataclass
class Reservation:
    consumer: str
    timeline: Timeline  # the events of this reservation, t from the moment it was asked for
    unloaded: list[str] = field(default_factory=list)  # who was freed for it
    waited_s: float = 0.0  # from asking to being allowed to run
    note: str = ""
    free_mib: float | None = None  # measured free VRAM when granted (None without a probe)
    errors: list[str] = field(default_factory=list)  # unload failures met on the way (it still succeeded)

    def to_json(self) -> dict[str, Any]:
        return {"consumer": self.consumer, "note": self.note, "waited_s": round(self.waited_s, 4),
                "unloaded": list(self.unloaded), "free_mib": self.free_mib, "errors": list(self.errors),
                "timeline": self.timeline.to_json()}


@dataclass
class Residency:
    loaded: bool | None  # None: cannot tell (server unreachable, external consumer)
    detail: str = ""
    uses_gpu: bool | None = None  # measured by the server itself (face detector /health); None: not reported
    backend: str | None = None  # what the server runs, for messages
    releasing: bool = False  # llama-swap `stopping`/`shutdown`: its memory is not back until the probe shows it



class ServerView:
    """The measuring half of the coordinator (see the module's docstring)."""

    settings: VramSettings
    probe: Probe
    timeline: Timeline
    _http: httpx.AsyncClient
    _held: dict[str, int]
    _catalogs: dict[str, Catalog]

    # ---- measuring -----------------------------------------------------------------------------------
    async def _measure(self, res: Reservation | None) -> GpuMemory | None:
        try:
            mem = await self.probe.read()
        except ProbeError as exc:
            if res is not None:
                self._event(res, "probe-unavailable", None, None, f"{exc}; falling back to unload + settle delay")
            return None
        if mem is not None:
            metrics.FREE_MIB.set(mem.free_mib)
        elif res is not None and not any(e.event == "no-probe" for e in res.timeline.events):
            self._event(res, "no-probe", None, None, f"probe {self.probe.name!r} measures nothing (no GPU)")
        return mem

    async def _free_now(self) -> float | None:
        try:
            mem = await self.probe.read()
        except ProbeError:
            return None
        return mem.free_mib if mem else None

    async def _residency(self, res: Reservation | None) -> tuple[dict[str, Residency], dict[str, Any]]:
        """Ask each server once what it has loaded. Unreachable servers → `loaded=None` and an event."""
        s = self.settings
        states: dict[str, Residency] = {}
        servers: dict[str, Any] = {}
        by_server: dict[tuple[str, str], list[Consumer]] = defaultdict(list)
        for c in s.consumers:
            if c.kind == "external":
                states[c.name] = Residency(None, "external: accounted for, not controlled")
            else:
                by_server[(c.kind, s.server_url(c))].append(c)

        async def ask(kind: str, url: str, members: list[Consumer]) -> None:
            try:
                if kind == "llama-swap":
                    running, catalog = await self._llama_swap_state(url, members)
                    servers[url] = {"kind": kind, "running": [{"model": r.model, "state": r.state} for r in running]}
                    for c in members:
                        states[c.name] = llama_swap_residency(c.model or "", running, catalog)
                elif kind == "ollama":
                    loaded = await OllamaClient(url, self._http).ps()
                    servers[url] = {"kind": kind, "models": [{"name": m.name, "size_vram_mib": round(m.size_vram_mib, 1)}
                                                             for m in loaded]}
                    for c in members:
                        hit = next((m for m in loaded if same_model(m.name, c.model or "")), None)
                        states[c.name] = Residency(hit is not None, f"ollama: {hit.size_vram_mib:.0f} MiB in VRAM"
                                                   if hit else "ollama: not loaded")
                else:
                    health = await FaceDetectControl(url, self._http).health()
                    servers[url] = {"kind": kind, "health": health}
                    uses_gpu = reported_uses_gpu(health)
                    backend = health.get("backend") if isinstance(health.get("backend"), str) else None
                    where = {True: "on the GPU", False: "on the CPU: needs no VRAM", None: ""}[uses_gpu]
                    for c in members:
                        loaded_ = bool(health.get("detector_loaded"))
                        detail = "detector loaded" if loaded_ else "detector unloaded"
                        if backend or where:
                            detail += f" ({', '.join(x for x in (backend, where) if x)})"
                        states[c.name] = Residency(loaded_, detail, uses_gpu, backend)
            except (ServerError, KeyError, TypeError, ValueError) as exc:
                servers[url] = {"kind": kind, "error": str(exc)}
                for c in members:
                    states[c.name] = Residency(None, str(exc))
                if res is not None and not any(e.event == "server-unreachable" and url in e.detail
                                               for e in res.timeline.events):
                    self._event(res, "server-unreachable", None, None, str(exc))

        await asyncio.gather(*(ask(k, u, m) for (k, u), m in by_server.items()))
        return states, servers

    async def _llama_swap_state(self, url: str, members: list[Consumer]) -> tuple[list[RunningModel], Catalog]:
        """`/running`, and the names llama-swap answers to (asked again only when a consumer's name is new to
        it: its config was reloaded, or the name is wrong). Without `/v1/models` names are taken as they are."""
        client = LlamaSwapClient(url, self._http, self.settings.llama_swap_api_key)
        running = await client.running()
        catalog = self._catalogs.get(url)
        if catalog is None or not all(catalog.knows(c.model or "") for c in members):
            try:
                catalog = self._catalogs[url] = await client.catalog()
            except ServerError:
                catalog = catalog or Catalog()
        return running, catalog

    def _holders_message(self, c: Consumer, need: float, mem: GpuMemory | None, states: dict[str, Residency],
                         res: Reservation, why: str) -> str:
        parts = [f"cannot reserve {need:.0f} MiB for {c.name!r} ({c.vram_mib} + {self.settings.safety_margin_mib} "
                 f"margin): {why}."]
        if mem is not None:
            parts.append(f"GPU: {mem.free_mib:.0f} MiB free of {mem.total_mib:.0f}.")
            if mem.processes:
                procs = ", ".join(f"{p.name} {p.used_mib:.0f} MiB" if p.used_mib is not None else p.name
                                  for p in mem.processes)
                parts.append(f"Processes on the card: {procs}.")
        holders = []
        for o in self.settings.consumers:
            if o.name == c.name:
                continue
            st = states.get(o.name)
            if self._cpu_only(o, states):
                continue
            if self._held.get(o.name, 0):
                holders.append(f"{o.name} ({o.vram_mib} MiB, reserved by another task)")
            elif st and st.loaded:
                holders.append(f"{o.name} ({o.vram_mib} MiB, {st.detail})")
            elif st and st.loaded is None and o.kind != "external":
                holders.append(f"{o.name} (unknown: {st.detail})")
        if res.unloaded:
            parts.append(f"Unloaded for this request, memory not yet back: {', '.join(res.unloaded)}.")
        if holders:
            parts.append(f"Still holding: {'; '.join(holders)}.")
        if res.errors:
            parts.append(f"Errors: {'; '.join(res.errors)}.")
        return " ".join(parts)

    def _event(self, res: Reservation | None, event: str, consumer: str | None, free: float | None,
               detail: str = "") -> None:
        now = time.monotonic()
        self.timeline.add(event, consumer, free, detail, at=now)
        if res is not None:
            res.timeline.add(event, consumer, free, detail, at=now)
        metrics.EVENTS.labels(event).inc()


def llama_swap_residency(model: str, running: list[RunningModel], catalog: Catalog) -> Residency:
    """Where `model` (an id, an alias or a peer's model) stands on its llama-swap: `/running` names real ids."""
    peer = catalog.peer(model)
    if peer:
        return Residency(False, f"llama-swap: served by peer {peer!r}, another machine: holds no VRAM here")
    real = catalog.resolve(model)
    named = f"{model} = {real}, " if real != model else ""
    hit = next((r for r in running if r.model == real), None)
    if hit is None:
        return Residency(False, f"llama-swap: {named}not running")
    if hit.releasing:
        return Residency(False, f"llama-swap: {named}{hit.state} (memory not free until the card shows it)",
                         releasing=True)
    return Residency(hit.holds_memory, f"llama-swap: {named}{hit.state}")
