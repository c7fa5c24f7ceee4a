"""GPU memory probes: how much VRAM is free *now*, measured rather than guessed.

- `NvmlProbe`: NVIDIA's management library through nvidia-ml-py (per device and, where the driver allows,
  per process).
- `NvidiaSmiProbe`: parses `nvidia-smi --query-gpu` / `--query-compute-apps` CSV; works where the library
  is not importable but the tool is on PATH (many containers).
- `EmulatorProbe`: reads the llama-swap emulator's VRAM ledger (`GET /_emulator/vram`), so the coordinator
  runs its real code paths in tests without a GPU.
- `NoProbe`: no GPU; the coordinator then unloads and waits a settle delay.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import httpx

from httpretry import tls_context

from .errors import VramError

if TYPE_CHECKING:
    from .config import VramSettings

MIB = 1024 * 1024


@dataclass
class GpuProcess:
    pid: int | None
    name: str
    used_mib: float | None


@dataclass
class GpuMemory:
    total_mib: float
    used_mib: float
    free_mib: float
    processes: list[GpuProcess] = field(default_factory=list)
    device: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ProbeError(VramError):
    """The probe could not read the card (driver gone, tool failing, emulator down)."""


@runtime_checkable
class Probe(Protocol):
    name: str

    async def read(self) -> GpuMemory | None:
        """Current memory of the card, or None when this probe cannot measure (no GPU). Raises ProbeError."""
        ...


class NoProbe:
    """There is no GPU to measure."""

    name = "none"

    async def read(self) -> GpuMemory | None:
        return None


class NvmlProbe:
    """NVML via nvidia-ml-py. Calls are short but blocking, so they run in a worker thread."""

    name = "nvml"

    def __init__(self, gpu_index: int = 0) -> None:
        import pynvml  # nvidia-ml-py: the `gpu` extra

        self._nvml = pynvml
        self.gpu_index = gpu_index
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as exc:
            raise ProbeError(f"NVML unavailable: {exc}") from exc
        if gpu_index >= count:
            raise ProbeError(f"NVML sees {count} GPU(s); gpu_index {gpu_index} does not exist")

    def _read_sync(self) -> GpuMemory:
        nv = self._nvml
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(self.gpu_index)
            mem = nv.nvmlDeviceGetMemoryInfo(handle)
            name = nv.nvmlDeviceGetName(handle)
        except nv.NVMLError as exc:
            raise ProbeError(f"NVML read failed: {exc}") from exc
        processes: list[GpuProcess] = []
        try:
            for p in nv.nvmlDeviceGetComputeRunningProcesses(handle):
                used = getattr(p, "usedGpuMemory", None)
                try:
                    pname = nv.nvmlSystemGetProcessName(p.pid)
                    pname = pname.decode() if isinstance(pname, bytes) else pname
                except nv.NVMLError:
                    pname = "?"  # another container's process: the PID namespace hides its name
                processes.append(GpuProcess(pid=p.pid, name=pname, used_mib=used / MIB if used else None))
        except nv.NVMLError:
            pass  # per-process figures are not available on every driver / in every container
        return GpuMemory(total_mib=mem.total / MIB, used_mib=mem.used / MIB, free_mib=mem.free / MIB,
                         processes=processes, device=name.decode() if isinstance(name, bytes) else str(name))

    async def read(self) -> GpuMemory:
        return await asyncio.to_thread(self._read_sync)


def parse_nvidia_smi(gpu_csv: str, apps_csv: str = "", gpu_index: int = 0) -> GpuMemory:
    """Parse `--query-gpu=index,name,memory.total,memory.used,memory.free --format=csv,noheader,nounits`
    and `--query-compute-apps=pid,process_name,used_memory --format=csv,noheader,nounits` output."""
    for line in gpu_csv.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5 or not parts[0].isdigit():
            continue
        if int(parts[0]) != gpu_index:
            continue
        try:
            total, used, free = (float(x) for x in parts[-3:])
        except ValueError as exc:
            raise ProbeError(f"nvidia-smi printed an unreadable line: {line!r}") from exc
        name = ",".join(parts[1:-3])
        processes = []
        for app in apps_csv.strip().splitlines():
            a = [p.strip() for p in app.split(",")]
            if len(a) < 3:
                continue
            try:
                used_mib = float(a[-1])
            except ValueError:
                used_mib = None  # "[N/A]" inside containers
            processes.append(GpuProcess(pid=int(a[0]) if a[0].isdigit() else None, name=",".join(a[1:-1]),
                                        used_mib=used_mib))
        return GpuMemory(total_mib=total, used_mib=used, free_mib=free, processes=processes, device=name)
    raise ProbeError(f"nvidia-smi did not report GPU {gpu_index}")


class NvidiaSmiProbe:
    """`nvidia-smi` as a subprocess: slower than NVML (tens of ms) but needs nothing importable."""

    name = "nvidia-smi"

    def __init__(self, gpu_index: int = 0, executable: str | None = None) -> None:
        self.gpu_index = gpu_index
        self.executable = executable or shutil.which("nvidia-smi")
        if not self.executable:
            raise ProbeError("nvidia-smi is not on PATH")

    async def _run(self, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(self.executable, *args, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout=10)
        except TimeoutError as exc:
            proc.kill()
            raise ProbeError("nvidia-smi did not answer within 10 s") from exc
        if proc.returncode != 0:
            raise ProbeError(f"nvidia-smi exited {proc.returncode}: {err.decode(errors='replace').strip()}")
        return out.decode(errors="replace")

    async def read(self) -> GpuMemory:
        gpu = await self._run("--query-gpu=index,name,memory.total,memory.used,memory.free",
                              "--format=csv,noheader,nounits")
        try:
            apps = await self._run(f"--id={self.gpu_index}", "--query-compute-apps=pid,process_name,used_memory",
                                   "--format=csv,noheader,nounits")
        except ProbeError:
            apps = ""
        return parse_nvidia_smi(gpu, apps, self.gpu_index)


class EmulatorProbe:
    """Reads the llama-swap emulator's simulated card (`GET /_emulator/vram`)."""

    name = "emulator"

    def __init__(self, url: str, http: httpx.AsyncClient | None = None) -> None:
        self.url = url.rstrip("/")
        self._http = http

    async def read(self) -> GpuMemory:
        http = self._http or httpx.AsyncClient(timeout=5.0, verify=tls_context())
        try:
            r = await http.get(f"{self.url}/_emulator/vram", timeout=5.0)
            r.raise_for_status()
            d = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ProbeError(f"emulator probe at {self.url} unavailable: {exc}") from exc
        finally:
            if self._http is None:
                await http.aclose()
        procs = [GpuProcess(pid=p.get("pid"), name=p["name"], used_mib=p.get("used_mib")) for p in d.get("processes", [])]
        return GpuMemory(total_mib=d["total_mib"], used_mib=d["used_mib"], free_mib=d["free_mib"], processes=procs,
                         device=d.get("device", "emulated GPU"))


def select_probe(settings: "VramSettings", http: httpx.AsyncClient | None = None) -> Probe:
    """The configured probe, or with "auto": NVML, else nvidia-smi, else the emulator if a URL is set, else none.

    An explicitly configured probe that cannot start raises ProbeError (the user asked for it); "auto" moves on.
    """
    choice = settings.probe
    if choice == "none":
        return NoProbe()
    if choice == "emulator":
        return EmulatorProbe(settings.probe_url or "", http)
    if choice == "nvml":
        try:
            return NvmlProbe(settings.gpu_index)
        except ImportError as exc:
            raise ProbeError("probe 'nvml' needs nvidia-ml-py (pip install 'miku-discord[gpu]')") from exc
    if choice == "nvidia-smi":
        return NvidiaSmiProbe(settings.gpu_index)
    if settings.probe_url:
        return EmulatorProbe(settings.probe_url, http)
    try:
        return NvmlProbe(settings.gpu_index)
    except (ImportError, ProbeError):
        pass
    try:
        return NvidiaSmiProbe(settings.gpu_index)
    except ProbeError:
        return NoProbe()
