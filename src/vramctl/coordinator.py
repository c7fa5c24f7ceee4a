"""Reservations of VRAM: measure, unload the fewest others, wait until the card *shows* the memory free.

`async with coordinator.reserve("face-detector") as r:` returns once the consumer may load and run; the
reservation may span a whole batch. While it is held, the consumer is never unloaded for someone else.
Reservations are granted one at a time in arrival order (asyncio.Lock is FIFO), so two callers never race
to free the same memory. Without a probe the coordinator unloads and waits `settle_s` (3 s by default).

A face detector service says in its /health whether it runs on the GPU (`uses_gpu`): one that does not
(animeface, cascade) needs 0 MiB whatever its declared `vram_mib`, so nothing is unloaded for it and it is
never unloaded for anyone else (that would free nothing). A service that does not answer, or is too old
to send the field, is planned by its declared figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import httpx

from . import metrics
from .config import Consumer, VramSettings
from .errors import LeaseError, NotEnoughVram, ReservationTimeout, ServerError, UnloadUnsupported, VramError
from .lease import HostLease
from .planner import choose_victims
from .probes import GpuMemory, Probe, ProbeError, select_probe
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


class Coordinator:
    def __init__(self, settings: VramSettings, *, probe: Probe | None = None,
                 http: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=settings.http_timeout_s)
        self.probe: Probe = probe or select_probe(settings, self._http)
        self.timeline = Timeline()
        self._lock = asyncio.Lock()
        self.lease = HostLease(settings.lease_file) if settings.lease_file else None
        self._held: dict[str, int] = defaultdict(int)
        self._catalogs: dict[str, Catalog] = {}  # llama-swap URL → the names it answers to

    # ---- public surface ------------------------------------------------------------------------------
    def reserve(self, consumer: str, *, note: str = "") -> AbstractAsyncContextManager[Reservation]:
        """Make room for `consumer` and hold it until the block ends. Raises UnknownConsumer,
        ReservationTimeout or NotEnoughVram with a message naming who holds what."""
        return self._reserve(self.settings.consumer(consumer), note)

    def reserve_mib(self, mib: int, *, note: str = "") -> AbstractAsyncContextManager[Reservation]:
        """Make room for `mib` MiB for something not in the config (`vramctl free --mib N`)."""
        return self._reserve(Consumer(name=f"{mib} MiB", kind="external", vram_mib=mib, priority=10**9), note)

    @property
    def held(self) -> dict[str, int]:
        return {k: v for k, v in self._held.items() if v > 0}

    async def status(self) -> dict[str, Any]:
        """The card (if measurable) and what each server has loaded."""
        gpu: GpuMemory | None = None
        probe_error = None
        try:
            gpu = await self.probe.read()
        except ProbeError as exc:
            probe_error = str(exc)
        states, servers = await self._residency(None)
        return {
            "probe": self.probe.name,
            "probe_error": probe_error,
            "gpu": gpu.to_json() if gpu else None,
            "consumers": [{"name": c.name, "kind": c.kind, "model": c.model, "url": self.settings.server_url(c) or None,
                           "vram_mib": c.vram_mib, "needs_mib": self._need(c, states),
                           "uses_gpu": states[c.name].uses_gpu, "priority": c.priority,
                           "loaded": states[c.name].loaded, "detail": states[c.name].detail,
                           "held": self._held.get(c.name, 0)}
                          for c in self.settings.consumers],
            "servers": servers,
        }

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> "Coordinator":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- reservation ---------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _reserve(self, c: Consumer, note: str) -> AsyncIterator[Reservation]:
        started = time.monotonic()
        res = Reservation(consumer=c.name, timeline=Timeline(started=started), note=note)
        queued = self._lock.locked()
        self._event(res, "request", c.name, None,
                    f"needs {c.vram_mib} MiB" + (f"; {note}" if note else "") + ("; queued behind another" if queued else ""))
        try:
            await self._take_lease(c, res, note)
        except LeaseError as exc:
            self._event(res, "failed", c.name, None, str(exc))
            metrics.RESERVATIONS.labels(c.name, "timeout").inc()
            raise
        try:
            async with self._lock:
                try:
                    await self._make_room(c, res)
                except VramError as exc:
                    outcome = "timeout" if isinstance(exc, ReservationTimeout) else "error"
                    self._event(res, "failed", c.name, None, str(exc))
                    metrics.RESERVATIONS.labels(c.name, outcome).inc()
                    raise
                self._held[c.name] += 1
        except BaseException:
            if self.lease:
                self.lease.release()
            raise
        res.waited_s = time.monotonic() - started
        self._event(res, "granted", c.name, res.free_mib, f"after {res.waited_s:.3f} s")
        metrics.RESERVATIONS.labels(c.name, "granted").inc()
        metrics.WAIT_SECONDS.labels(c.name).observe(res.waited_s)
        metrics.HELD.labels(c.name).inc()
        try:
            yield res
        finally:
            self._held[c.name] -= 1
            metrics.HELD.labels(c.name).dec()
            if self.lease:
                self.lease.release()
            self._event(res, "released", c.name, None, f"held {time.monotonic() - started - res.waited_s:.3f} s")

    async def _take_lease(self, c: Consumer, res: Reservation, note: str) -> None:
        """The host lease first (when configured): another process of ours may hold the card's room."""
        if self.lease is None:
            return
        if not self.lease.held and (holder := self.lease.holder()):
            self._event(res, "lease-wait", c.name, None, f"host lease {self.lease.path} held by {holder}")
        s = self.settings
        waited = await self.lease.acquire(s.timeout_s, s.poll_s, f"{c.name}{f', {note}' if note else ''}")
        self._event(res, "lease", c.name, None, f"host lease {self.lease.path} taken after {waited:.3f} s")

    async def _make_room(self, c: Consumer, res: Reservation) -> None:
        need = c.vram_mib + self.settings.safety_margin_mib
        states, _ = await self._residency(res)
        states.setdefault(c.name, Residency(None, "not a configured consumer"))  # reserve_mib
        if c.routed:
            self._event(res, "routed", c.name, None, "llama-swap's routing makes its room when it is requested "
                        "(and its start command waits until the card shows the memory free)")
            return
        if self._cpu_only(c, states):
            self._event(res, "cpu-only", c.name, None,
                        f"face detector runs on the CPU ({states[c.name].backend or 'unknown backend'}): needs no "
                        f"VRAM (declared {c.vram_mib} MiB not reserved)")
        elif states[c.name].loaded:
            self._event(res, "already-loaded", c.name, None, states[c.name].detail)
            return
        elif (mem := await self._measure(res)) is None:
            await self._make_room_blind(c, res, states, need)
        else:
            await self._make_room_measured(c, res, states, need, mem)
        if c.kind == "facedetect" and states[c.name].loaded is False:
            await self._resume(c, res)

    async def _make_room_measured(self, c: Consumer, res: Reservation, states: dict[str, Residency], need: int,
                                  mem: GpuMemory) -> None:
        """Unload the fewest others, then poll the probe until the card shows `need` MiB free."""
        s = self.settings
        deadline = res.timeline.started + s.timeout_s
        promised = self._promised(c, states)
        self._event(res, "measured", None, mem.free_mib,
                    f"need {need:.0f} MiB ({c.vram_mib} + {s.safety_margin_mib} margin) of {mem.total_mib:.0f}"
                    + (f"; {promised:.0f} MiB promised to reservations not loaded yet" if promised else ""))
        leaving: list[tuple[Consumer, float]] = []  # stopped (by us or on their own), and the free MiB just before
        stuck_since: float | None = None
        while mem.free_mib - promised < need:
            if need + promised - mem.free_mib - self._pending_release(leaving, mem.free_mib) > 0:
                states, promised, victims = await self._unload_more(c, res, need, mem, leaving)
                pending = self._pending_release(leaving, mem.free_mib)
                stuck_since = None if victims or pending > 0 or self._others_held(c) else stuck_since or time.monotonic()
                if stuck_since is not None and time.monotonic() - stuck_since >= s.settle_s:
                    # Nothing to unload, nothing on its way out, nobody to wait for: waiting would not help
                    # (after a grace for memory some server is releasing on its own, e.g. a ttl expiry).
                    raise NotEnoughVram(self._holders_message(c, need, mem, states, res, "nothing left to unload"))
            if time.monotonic() >= deadline:
                states, _ = await self._residency(res)
                raise ReservationTimeout(self._holders_message(c, need, mem, states, res,
                                                               f"not free within {s.timeout_s:g} s"))
            if not res.timeline.count("waiting"):
                self._event(res, "waiting", None, mem.free_mib, f"polling every {s.poll_s:g} s for {need:.0f} MiB")
            await asyncio.sleep(s.poll_s)
            new = await self._measure(res)
            if new is None:  # the probe failed on the way: fall back to the settle delay
                await self._settle(res)
                return
            mem = new
        self._event(res, "free" if leaving else "enough", None, mem.free_mib,
                    f"{mem.free_mib:.0f} MiB free ≥ {need:.0f} needed" if leaving
                    else "enough free VRAM already; nothing unloaded")
        res.free_mib = mem.free_mib

    async def _unload_more(self, c: Consumer, res: Reservation, need: int, mem: GpuMemory,
                           leaving: list[tuple[Consumer, float]]) -> tuple[dict[str, Residency], float, list[Consumer]]:
        """Ask the servers again; count models already stopping as memory on its way back; unload the fewest
        others that cover what is still missing. Returns the new states, promised MiB and the victims."""
        states, _ = await self._residency(res)
        states.setdefault(c.name, Residency(None))
        promised = self._promised(c, states)
        gone = {v.name for v, _ in leaving}
        for o in self.settings.consumers:
            if o.name != c.name and o.name not in gone and states[o.name].releasing:
                self._event(res, "releasing", o.name, mem.free_mib,
                            f"{states[o.name].detail}; its memory counts once the card shows it free")
                leaving.append((o, mem.free_mib))
                gone.add(o.name)
        deficit = need + promised - mem.free_mib - self._pending_release(leaving, mem.free_mib)
        victims = choose_victims(self._candidates(c, states, gone), deficit) if deficit > 0 else []
        # All at once: two servers stopping (and the driver releasing) in parallel cost the longest of them.
        await self._unload_all(victims, c, res, mem.free_mib)
        leaving.extend((v, mem.free_mib) for v in victims)
        return states, promised, victims

    def _candidates(self, c: Consumer, states: dict[str, Residency], exclude: set[str] | frozenset[str] = frozenset()
                    ) -> list[Consumer]:
        """Who may be unloaded for `c`: loaded, controllable, not held, on the GPU, not already tried."""
        return [o for o in self.settings.consumers
                if o.name != c.name and o.name not in exclude and o.controllable and states[o.name].loaded
                and not self._held.get(o.name, 0) and not self._cpu_only(o, states)]

    def _others_held(self, c: Consumer) -> bool:
        return any(self._held.get(o.name, 0) for o in self.settings.consumers if o.name != c.name)

    async def _make_room_blind(self, c: Consumer, res: Reservation, states: dict[str, Residency], need: int) -> None:
        """No probe: unload what must go (all others, or by estimate when the card's size is configured),
        then wait the settle delay — the only thing left when nothing can measure. A model that is stopping
        on its own holds its memory until then too."""
        s = self.settings
        candidates = self._candidates(c, states)
        others = [o for o in s.consumers if o.name != c.name and (states[o.name].loaded or states[o.name].releasing)]
        if s.gpu_total_mib:  # a stopping model's memory is counted as back after the settle delay
            loaded = [o for o in others if states[o.name].loaded]
            estimate = s.gpu_total_mib - sum(self._need(o, states) for o in loaded)
            self._event(res, "estimated", None, estimate,
                        f"no probe: {s.gpu_total_mib} MiB card minus declared use of loaded consumers")
            victims = choose_victims(candidates, need - estimate)
            held_use = sum(self._need(o, states) for o in loaded if o not in victims)
            if s.gpu_total_mib - held_use < need:
                raise NotEnoughVram(self._holders_message(c, need, None, states, res,
                                                          "the loaded consumers that are in use leave too little"))
        else:
            victims = candidates
        await self._unload_all(victims, c, res, None)
        if res.unloaded or any(states[o.name].releasing for o in others):
            await self._settle(res)

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

    @staticmethod
    def _cpu_only(c: Consumer, states: dict[str, Residency]) -> bool:
        """A face detector whose service reports it runs on the CPU: it holds no VRAM and needs none."""
        st = states.get(c.name)
        return c.kind == "facedetect" and st is not None and st.uses_gpu is False

    def _need(self, c: Consumer, states: dict[str, Residency]) -> int:
        """What `c` needs on the card: 0 when its server measured that it runs on the CPU, else the declared MiB."""
        return 0 if self._cpu_only(c, states) else c.vram_mib

    def _promised(self, c: Consumer, states: dict[str, Residency]) -> float:
        """MiB granted to other reservations whose consumer is not on the card yet (a model that loads on its
        first request): free VRAM that is already spoken for. Without this, a reservation made while another
        one's model is still loading would see that model's memory as free — and one of the two would OOM."""
        return float(sum(self._need(o, states) for o in self.settings.consumers
                         if o.name != c.name and self._held.get(o.name, 0) and states.get(o.name)
                         and states[o.name].loaded is False))

    @staticmethod
    def _pending_release(unloaded: list[tuple[Consumer, float]], free_now: float) -> float:
        """MiB we expect still to come back from consumers we stopped (the driver frees memory late)."""
        if not unloaded:
            return 0.0
        expected = sum(v.vram_mib for v, _ in unloaded)
        released = max(0.0, free_now - min(f for _, f in unloaded))
        return max(0.0, expected - released)

    # ---- unloading -----------------------------------------------------------------------------------
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
