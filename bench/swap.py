"""The original bot's "swap to the text model and sleep 3 s" vs vramctl's "unload, then wait until the probe shows it free".

For each driver release latency (`release_s`: how long after the model process exits the card gets its memory
back) both methods run against the llama-swap emulator with the original bot's card: 8 GB (512 MiB held by the display
and CUDA contexts), vision model 6912 MiB with mmproj and image context, text model 5120 MiB (2 s to load),
face detector 1024 MiB; stopping a llama-server takes 0.5 s. Measured: time from "VRAM needed" to "detector
may run" (its memory claimed), and OOMs (`cudaMalloc failed`) on the simulated card.

    .venv/bin/python bench/swap.py [--release 0.5 1 2 3 5 8] [--stop 0.5] [--no-write]

Target: overhead ≤ stop + release + 0.2 s, 0 OOM.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from emulators.llama_swap import LlamaSwapEmulator, create_detector_app  # noqa: E402
from results import table, write_section  # noqa: E402
from servers import serve_app  # noqa: E402

from vramctl import Consumer, Coordinator, VramSettings  # noqa: E402

TEXT_LOAD_S = 2.0
ORIGINAL_SLEEP_S = 3.0
VISION_MIB, TEXT_MIB, DETECTOR_MIB = 6912, 5120, 1024


def card(stop_s: float, release_s: float):
    emu = LlamaSwapEmulator({"gpu_total_mib": 8192, "gpu_reserved_mib": 512, "healthCheckTimeout": 120, "models": {
        "llama3.1": {"ttl": 1800, "vram_mib": TEXT_MIB, "load_s": TEXT_LOAD_S, "stop_s": stop_s, "release_s": release_s},
        "vision": {"ttl": 900, "vram_mib": VISION_MIB, "vision": True, "load_s": 1.5, "stop_s": stop_s,
                   "release_s": release_s}}})
    det = create_detector_app(emu.gpu, vram_mib=DETECTOR_MIB)
    return emu, det


async def original_method(emu: LlamaSwapEmulator, det_url: str) -> tuple[float, bool]:
    """The original bot's _ensure_vram_available(): ask for the text model (max_tokens 1), sleep 3 s; then the detector
    loads. Returns (seconds from need to detector running, whether the detector got its memory)."""
    async with httpx.AsyncClient(timeout=120) as http:
        t0 = time.monotonic()
        await http.post(f"{emu.url}/v1/chat/completions", json={
            "model": "llama3.1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})  # errors ignored, as in the original bot
        await asyncio.sleep(ORIGINAL_SLEEP_S)
        r = await http.post(f"{det_url}/load")
        return time.monotonic() - t0, r.status_code == 200


async def our_method(emu: LlamaSwapEmulator, det_url: str) -> tuple[float, bool, list[str]]:
    s = VramSettings(probe="emulator", probe_url=emu.gpu_url, llama_swap_url=emu.url, timeout_s=60, consumers=[
        Consumer(name="text", kind="llama-swap", model="llama3.1", vram_mib=TEXT_MIB, priority=0),
        Consumer(name="vision", kind="llama-swap", model="vision", vram_mib=VISION_MIB, priority=1),
        Consumer(name="face-detector", kind="facedetect", url=det_url, vram_mib=DETECTOR_MIB, priority=2)])
    async with Coordinator(s) as coord:
        t0 = time.monotonic()
        async with coord.reserve("face-detector", note="bench") as r:
            elapsed = time.monotonic() - t0
            async with httpx.AsyncClient() as http:
                ok = (await http.get(f"{det_url}/health")).json()["detector_loaded"]
        return elapsed, ok, r.timeline.names()


def run_one(method: str, stop_s: float, release_s: float) -> dict:
    emu, det = card(stop_s, release_s)
    with emu.serve(), serve_app(det) as det_url:
        emu.preload("vision")
        if method == "original":
            elapsed, ok = asyncio.run(original_method(emu, det_url))
        else:
            elapsed, ok, _ = asyncio.run(our_method(emu, det_url))
        return {"elapsed": elapsed, "ok": ok, "oom": emu.gpu.oom_count, "text_loaded": "llama3.1" in emu.loads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--release", type=float, nargs="+", default=[0.5, 1, 2, 3, 5, 8])
    ap.add_argument("--stop", type=float, default=0.5)
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = ap.parse_args()
    rows = []
    all_ok = True
    for rel in args.release:
        orig = run_one("original", args.stop, rel)
        ours = run_one("ours", args.stop, rel)
        overhead = ours["elapsed"] - (args.stop + rel)
        met = ours["oom"] == 0 and ours["ok"] and overhead <= 0.2
        all_ok &= met
        rows.append([f"{rel:g}", f"{orig['elapsed']:.2f}", orig["oom"], "no (OOM)" if not orig["ok"] else "yes",
                     f"{TEXT_MIB} MiB" if orig["text_loaded"] else "— (its load OOMed)",
                     f"{ours['elapsed']:.2f}", ours["oom"], f"{overhead:+.2f}", "✅" if met else "❌"])
        print(" | ".join(str(c) for c in rows[-1]), flush=True)
    md = (f"The original bot's card on the llama-swap emulator: 8192 MiB (512 held by display/contexts), vision {VISION_MIB} MiB "
          f"loaded, detector needs {DETECTOR_MIB} MiB, llama-server stop {args.stop:g} s, text model load "
          f"{TEXT_LOAD_S:g} s. Time = from \"VRAM needed\" to \"detector has its memory\". Overhead = ours − "
          f"(stop + release); target ≤ 0.2 s and 0 OOM.\n\n"
          + table(["release_s", "original: time (s)", "original: OOMs", "original: detector ran", "original: text model loaded",
                   "ours: time (s)", "ours: OOMs", "ours: overhead (s)", "target met"], rows))
    print(md)
    if not args.no_write:
        write_section("vramctl swap (bench/swap.py)", md)
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
