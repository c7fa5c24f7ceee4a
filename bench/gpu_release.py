"""How long after a GPU process ends does NVML show its memory free? The real-world figure behind the
original bot's "sleep 3 s" (and the `release_s` of the llama-swap emulator).

A child process allocates ~2 GB with the CUDA driver API (ctypes on libcuda, no framework needed), touches it,
reports, then ends — by exiting (`exit`: the driver tears the context down) or by SIGKILL (`kill`: what
llama-swap's StopImmediately amounts to when a server does not stop in time). The parent polls vramctl's
NvmlProbe and reports: process gone (waitpid returned) after the signal, and memory back after the process was gone.

    .venv/bin/python bench/gpu_release.py [--mib 2048] [--repeat 5] [--gpu 0] [--no-write]

Without a GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from results import table, write_section  # noqa: E402

from vramctl.probes import NvmlProbe, ProbeError  # noqa: E402

CHILD = r"""
import ctypes, os, sys
idx, size = int(sys.argv[1]), int(sys.argv[2]) * 1024 * 1024
cuda = ctypes.CDLL("libcuda.so.1")
def ck(rc, what):
    if rc != 0:
        print(f"ERROR {what} -> CUresult {rc}", flush=True); os._exit(3)
ck(cuda.cuInit(0), "cuInit")
dev = ctypes.c_int(); ck(cuda.cuDeviceGet(ctypes.byref(dev), idx), "cuDeviceGet")
ctx = ctypes.c_void_p(); ck(cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev), "cuCtxCreate")
ptr = ctypes.c_uint64(); ck(cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(size)), "cuMemAlloc")
ck(cuda.cuMemsetD8_v2(ptr, ctypes.c_ubyte(1), ctypes.c_size_t(size)), "cuMemsetD8")
ck(cuda.cuCtxSynchronize(), "cuCtxSynchronize")
print("ALLOCATED", flush=True)
sys.stdin.readline()
os._exit(0)
"""


async def free_mib(probe: NvmlProbe) -> float:
    return (await probe.read()).free_mib


async def one_run(probe: NvmlProbe, gpu: int, mib: int, mode: str, poll_s: float) -> dict[str, float]:
    base = await free_mib(probe)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(gpu), str(mib)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    line = child.stdout.readline().strip() if child.stdout else ""
    if line != "ALLOCATED":
        child.kill()
        raise RuntimeError(f"child could not allocate: {line or 'no output'}")
    held = base - await free_mib(probe)
    t_signal = time.monotonic()
    if mode == "kill":
        child.kill()
    else:
        child.stdin.write("\n")
        child.stdin.flush()
    child.wait()
    t_gone = time.monotonic()
    target = base - 64  # back to the baseline, within the noise of other processes
    deadline = t_gone + 60
    while await free_mib(probe) < target:
        if time.monotonic() > deadline:
            raise RuntimeError("memory not back within 60 s")
        await asyncio.sleep(poll_s)
    t_free = time.monotonic()
    return {"held_mib": held, "gone_s": t_gone - t_signal, "release_s": t_free - t_gone, "total_s": t_free - t_signal}


def fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:.0f} ms (min {min(xs) * 1000:.0f}, max {max(xs) * 1000:.0f})"


async def run(args: argparse.Namespace) -> str | None:
    try:
        probe = NvmlProbe(args.gpu)
        mem = await probe.read()
    except (ImportError, ProbeError) as exc:
        print(f"no GPU to measure ({exc}); nothing recorded.")
        return None
    try:
        import ctypes

        ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        print(f"NVML works but libcuda.so.1 cannot be loaded ({exc}); nothing recorded.")
        return None
    print(f"{mem.device}: {mem.free_mib:.0f} MiB free of {mem.total_mib:.0f}")
    rows = []
    for mode in ("exit", "kill"):
        runs = [await one_run(probe, args.gpu, args.mib, mode, args.poll) for _ in range(args.repeat)]
        for r in runs:
            print(mode, {k: round(v, 4) for k, v in r.items()}, flush=True)
        rows.append([mode, f"{statistics.median(r['held_mib'] for r in runs):.0f}",
                     fmt([r["gone_s"] for r in runs]), fmt([r["release_s"] for r in runs]),
                     fmt([r["total_s"] for r in runs])])
    return (f"{mem.device}, driver view through NVML (vramctl's NvmlProbe, polled every {args.poll * 1000:.0f} ms); "
            f"a child allocates {args.mib} MiB with the CUDA driver API, then ends; {args.repeat} runs per way. "
            f"Median (min, max).\n\n"
            + table(["how the process ends", "held (MiB)", "signal → process gone", "gone → NVML shows it free",
                     "signal → free"], rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--gpu", type=int, default=0)
    ap.add_argument("--poll", type=float, default=0.002)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    md = asyncio.run(run(args))
    if md is None:
        return
    print(md)
    if not args.no_write:
        write_section("gpu memory release (bench/gpu_release.py)", md)


if __name__ == "__main__":
    main()
