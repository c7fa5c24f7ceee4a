"""`vramctl hold`: the face detector as a llama-swap model.

llama-swap decides which models share the card (its routing: sets of models allowed together, the rest
evicted) and every client goes through it. To let it decide for the detector too, llama-swap's config
declares a model `face-detector` whose `cmd` is this command and whose `proxy` is the detector service:

1. llama-swap starts it after stopping what may not run beside the detector (the vision model). A stopped
   process's memory comes back only when the driver lets go of it, so the hold first **waits until the
   probe shows the detector's room free** (its declared need plus the safety margin; nothing at all when
   the service says it runs on the CPU) — it unloads nothing itself: that is llama-swap's job;
2. it asks the service to load (`POST /load`); the service's `GET /ready` (llama-swap's `checkEndpoint`)
   answers 200 from then on, and llama-swap routes `/upstream/face-detector/...` to it;
3. it stays alive until llama-swap stops it (SIGTERM, or SIGINT), then asks the service to unload
   (`POST /unload`) and **exits only once the card shows the memory back** (or `timeout_s` passed): llama-swap
   waits for the exit (up to the model's `unloadTimeout`) before it starts the model that needs the room.

A hold that cannot load (no room within `timeout_s`, the service refuses) exits 1 with the reason on
stderr; llama-swap then reports the start as failed and the request that asked for it gets the error.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable

import httpx
from pydantic import SecretStr

from .errors import ReservationTimeout
from .probes import GpuMemory, Probe, ProbeError
from .servers.facedetect import FaceDetectControl, reported_uses_gpu


class DetectorHold:
    """Load the detector once its room is free; unload it and wait for the memory when told to stop."""

    def __init__(self, detector_url: str, vram_mib: int, probe: Probe, http: httpx.AsyncClient, *,
                 safety_margin_mib: int = 256, poll_s: float = 0.1, timeout_s: float = 60.0,
                 token: SecretStr | None = None, say: Callable[[str], None] | None = None) -> None:
        self.control = FaceDetectControl(detector_url, http, timeout_s, token)
        self.vram_mib, self.margin = vram_mib, safety_margin_mib
        self.probe, self.poll_s, self.timeout_s = probe, poll_s, timeout_s
        self.say = say or (lambda line: print(f"vramctl hold: {line}", file=sys.stderr, flush=True))
        self.uses_gpu: bool | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Load, hold until `stop` is set, unload and wait for the memory. Raises ReservationTimeout or
        ServerError when the detector cannot be loaded."""
        await self.load()
        self.say("detector loaded; holding until stopped")
        await stop.wait()
        await self.unload()

    async def load(self) -> None:
        self.uses_gpu = reported_uses_gpu(await self.control.health())
        if self.uses_gpu is False:
            self.say("the detector runs on the CPU: no VRAM to wait for")
        else:
            need = self.vram_mib + self.margin
            mem = await self._wait_until(lambda m: m.free_mib >= need, f"{need} MiB free "
                                         f"({self.vram_mib} + {self.margin} margin) before loading the detector")
            if mem is not None:
                self.say(f"{mem.free_mib:.0f} MiB free ≥ {need} needed")
        await self.control.load()

    async def unload(self) -> None:
        before = await self._read()
        await self.control.unload()
        if self.uses_gpu is False or before is None:
            self.say("detector unloaded")
            return
        back = before.free_mib + self.vram_mib
        try:
            mem = await self._wait_until(lambda m: m.free_mib >= back,
                                         f"the detector's {self.vram_mib} MiB back on the card after unloading")
        except ReservationTimeout as exc:  # unloaded all the same: say why the next load may find it short
            self.say(str(exc))
            return
        if mem is not None:
            self.say(f"detector unloaded; {mem.free_mib:.0f} MiB free")

    async def _read(self) -> GpuMemory | None:
        return await read_card(self.probe, self.say)

    async def _wait_until(self, ok: Callable[[GpuMemory], bool], what: str) -> GpuMemory | None:
        return await wait_until(self.probe, ok, what, timeout_s=self.timeout_s, poll_s=self.poll_s, say=self.say)


async def read_card(probe: Probe, say: Callable[[str], None]) -> GpuMemory | None:
    """The card now; None (and a line saying so) when nothing can measure it."""
    try:
        return await probe.read()
    except ProbeError as exc:
        say(f"cannot measure the card ({exc}); not waiting for it")
        return None


async def wait_until(probe: Probe, ok: Callable[[GpuMemory], bool], what: str, *, timeout_s: float, poll_s: float,
                     say: Callable[[str], None]) -> GpuMemory | None:
    """Poll the probe until `ok`; None when nothing can measure (no GPU, probe 'none'). Raises
    ReservationTimeout after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        mem = await read_card(probe, say)
        if mem is None or ok(mem):
            return mem
        if time.monotonic() >= deadline:
            raise ReservationTimeout(f"not {what} within {timeout_s:g} s: {mem.free_mib:.0f} MiB free of "
                                     f"{mem.total_mib:.0f}")
        await asyncio.sleep(poll_s)


async def wait_for_room(probe: Probe, vram_mib: int, *, safety_margin_mib: int, timeout_s: float, poll_s: float,
                        say: Callable[[str], None]) -> None:
    """`vramctl run`'s wait before it becomes a model server: until the card shows `vram_mib` + the margin
    free. llama-swap starts a model right after the process of the one it stopped has exited, but the driver
    gives that memory back later (0.05-3 s): a llama-server started at once would fail like
    `cudaMalloc failed: out of memory`."""
    if vram_mib <= 0:
        return
    need = vram_mib + safety_margin_mib
    mem = await wait_until(probe, lambda m: m.free_mib >= need, f"{need} MiB free ({vram_mib} + {safety_margin_mib} "
                           "margin) before starting", timeout_s=timeout_s, poll_s=poll_s, say=say)
    if mem is not None:
        say(f"{mem.free_mib:.0f} MiB free ≥ {need} needed")


async def hold_until_signalled(hold: DetectorHold) -> None:
    """`hold.run` with SIGTERM / SIGINT as the stop: llama-swap's way of stopping a model's command."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await hold.run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
