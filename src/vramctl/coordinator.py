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
from typing import Any

import httpx

from httpretry import tls_context

from . import metrics
from .config import Consumer, VramSettings
from .errors import LeaseError, NotEnoughVram, ReservationTimeout, VramError
from .lease import HostLease
from .planner import choose_victims
from .probes import GpuMemory, Probe, ProbeError, select_probe
from .residency import Reservation, Residency, llama_swap_residency
from .servers.llama_swap import Catalog
from .timeline import Timeline
from .unloads import Unloader

__all__ = ["Coordinator", "Reservation", "Residency", "llama_swap_residency"]


class Coordinator(Unloader):
    def __init__(self, settings: VramSettings, *, probe: Probe | None = None,
                 http: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=settings.http_timeout_s, verify=tls_context())
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
