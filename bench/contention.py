"""One GPU, many clients: three bot processes and an outside llama-swap client on one simulated 8 GB card.

The real llama-swap (v250, built by `make llama-swap`; MIKU_TEST_LLAMA_SWAP or .cache/go/bin/llama-swap) runs
our shipped llama-swap/config.yaml with the model stand-ins of tests/emulators/model_server.py (only the
llama-server executable swapped, as in tests/vramctl/test_llama_swap_real.py). The card is the tests' simulated GPU:
every stand-in claims its memory on it when its load ends, the detector (tests/emulators/llama_swap.py's GPU
detector service) when it loads; an allocation that does not fit fails like `cudaMalloc failed: out of
memory` (the stand-in exits, the detector answers 503) and counts as an OOM; a process's memory comes back
only its release lag after it is gone (vision 2.0 s, detector 0.8 s).

Three bot processes (each its own vramctl Coordinator, as three bots with their own data directories have)
make CHANGES changes in all. A change here is its GPU part, what contends for the card: the vision
reservation around K = 3 vision checks (chat requests with an image, through llama-swap), then the detector
reservation around K = 3 detections. Meanwhile an outside client asks llama-swap for the vision model every
0.5 s (a chat with an image), as Open WebUI or the original chat bot would. A sampler reads /running and the
detector's state at 20 Hz. Three ways to share the card, in one run:

  (a) in-process: today's path — each bot's reservation is its own; the detector is a service vramctl pauses
      and resumes (MIKU_DETECTOR_VIA=direct);
  (b) llama-swap: the detector is llama-swap's `face-detector` model (`vramctl hold`), reached at
      /upstream/face-detector; the matrix routing keeps vision alone (MIKU_DETECTOR_VIA=llama-swap);
  (c) host lease: as (a), with MIKU_VRAM_LEASE_FILE in every bot — and in the outside client, which here is
      a process of ours taking the lease around its request (a client that does not take it is not covered).

    nice python bench/contention.py [--changes 20] [--modes a,b,c] [--write]

`--write` puts the table in bench/RESULTS.md (section "contention").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from vramctl import Consumer, Coordinator, VramSettings  # noqa: E402
from vramctl.errors import VramError  # noqa: E402

TOTAL_MIB, DISPLAY_MIB = 8192, 512
VISION_MIB, DETECTOR_MIB = 6912, 1024  # never together on the card
VISION_RELEASE_S, DETECTOR_RELEASE_S = 2.0, 0.8
K = 3
OUTSIDE_EVERY_S = 0.5
SAMPLE_EVERY_S = 0.05  # 20 Hz
IMAGE = "data:image/png;base64,iVBORw0KGgo="
MODES = {"a": "in-process reservation (today)", "b": "detector under llama-swap", "c": "host lease"}


def consumers(mode: str, detector_url: str) -> list[Consumer]:
    """As mikubot.vram declares them: in (b) every model is routed by llama-swap (MIKU_DETECTOR_VIA=llama-swap)."""
    det = (Consumer(name="face-detector", kind="llama-swap", model="face-detector", vram_mib=DETECTOR_MIB, priority=2,
                    routed=True) if mode == "b" else
           Consumer(name="face-detector", kind="facedetect", url=detector_url, vram_mib=DETECTOR_MIB, priority=2))
    return [Consumer(name="vision", kind="llama-swap", model="vision", vram_mib=VISION_MIB, priority=1,
                     routed=mode == "b"), det]


def vram_settings(mode: str, a: argparse.Namespace) -> VramSettings:
    return VramSettings(probe="emulator", probe_url=a.card, llama_swap_url=a.swap, poll_s=0.05, timeout_s=90,
                        consumers=consumers(mode, a.detector), lease_file=a.lease if mode == "c" else None)


async def vision_check(http: httpx.AsyncClient, swap: str) -> None:
    r = await http.post(f"{swap}/v1/chat/completions", json={"model": "vision", "max_tokens": 8, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Is this Miku?"},
                                     {"type": "image_url", "image_url": {"url": IMAGE}}]}]})
    if r.status_code != 200:
        raise RuntimeError(f"vision answered {r.status_code}: {r.text[:200]}")


# --- a bot process ---------------------------------------------------------------------------------------------
async def bot(a: argparse.Namespace) -> None:
    detect_url = f"{a.swap}/upstream/face-detector/detect" if a.mode == "b" else f"{a.detector}/detect"
    out: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=120) as http, Coordinator(vram_settings(a.mode, a), http=http) as coord:
        for i in range(a.changes):
            t0 = time.monotonic()
            error = None
            try:
                async with coord.reserve("vision", note=f"verify {K}"):
                    for _ in range(K):
                        await vision_check(http, a.swap)
                async with coord.reserve("face-detector", note=f"detect {K}"):
                    for _ in range(K):
                        r = await http.post(detect_url, files={"file": ("p.png", b"\x89PNG")})
                        if r.status_code != 200:
                            raise RuntimeError(f"detect answered {r.status_code}: {r.text[:200]}")
            except (VramError, RuntimeError, httpx.HTTPError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            out.append({"s": time.monotonic() - t0, "error": error})
    print(json.dumps(out), flush=True)


# --- the outside client and the sampler (threads of the driver) -------------------------------------------------
@dataclass
class Outside:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, mode: str, a: argparse.Namespace) -> None:
        asyncio.run(self._run(mode, a))

    async def _run(self, mode: str, a: argparse.Namespace) -> None:
        async with httpx.AsyncClient(timeout=120) as http, Coordinator(vram_settings(mode, a), http=http) as coord:
            while not self.stop.is_set():
                t0 = time.monotonic()
                try:
                    if mode == "c":
                        async with coord.reserve("vision", note="outside client"):
                            await vision_check(http, a.swap)
                    else:
                        await vision_check(http, a.swap)
                    self.latencies.append(time.monotonic() - t0)
                except (VramError, RuntimeError, httpx.HTTPError) as exc:
                    self.errors.append(str(exc)[:200])
                await asyncio.sleep(OUTSIDE_EVERY_S)


@dataclass
class Sampler:
    samples: int = 0
    co_resident: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, mode: str, swap: str, detector: str) -> None:
        with httpx.Client(timeout=5) as http:
            while not self.stop.is_set():
                try:
                    running = {m["model"]: m["state"] for m in http.get(f"{swap}/running").json()["running"]}
                    vision = running.get("vision") in ("starting", "ready")
                    if mode == "b":
                        detector_on = running.get("face-detector") in ("starting", "ready")
                    else:
                        detector_on = bool(http.get(f"{detector}/health").json()["detector_loaded"])
                except (httpx.HTTPError, ValueError, KeyError):
                    continue
                self.samples += 1
                self.co_resident += vision and detector_on
                time.sleep(SAMPLE_EVERY_S)


# --- the driver --------------------------------------------------------------------------------------------------
def llama_swap_config(card_url: str, detector_url: str) -> dict[str, Any]:
    """The shipped config; only the executables (stand-in, this venv's vramctl on the simulated card), the
    detector's address and startPort differ — as tests/vramctl/test_llama_swap_detector.py runs it."""
    from emulators.llama_swap import ROOT_CONFIG
    from real_llama_swap import model_server, start_port, with_stand_in

    config = yaml.safe_load(ROOT_CONFIG.read_text())
    with_stand_in(config, model_server(card_url, release_s=VISION_RELEASE_S), card_url)
    config["models"]["vision"]["cmd"] += f" --vram-mib {VISION_MIB}"
    config["models"]["llama3.1"]["cmd"] += " --vram-mib 5120"
    det = config["models"]["face-detector"]
    hold = det["cmd"].split()
    vramctl = str(Path(sys.executable).with_name("vramctl"))
    det["cmd"] = " ".join([vramctl, "hold", detector_url, *hold[3:], "--probe", "emulator", "--probe-url", card_url])
    det["proxy"] = detector_url
    config["startPort"] = start_port(2)
    config["logLevel"] = "warn"
    return config


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def run_mode(mode: str, a: argparse.Namespace, work: Path, gpu: Any, card_url: str, det_url: str) -> dict[str, Any]:
    from real_llama_swap import serve

    httpx.post(f"{det_url}/unload", timeout=30).raise_for_status()
    deadline = time.monotonic() + 60
    while gpu.free_mib < TOTAL_MIB - DISPLAY_MIB:  # the previous mode's memory back on the card
        if time.monotonic() > deadline:
            raise RuntimeError(f"the card did not settle: {gpu.snapshot()}")
        time.sleep(0.05)
    with serve(llama_swap_config(card_url, det_url), work / f"swap-{mode}") as swap:
        # The outside client's latency with the vision model loaded and nobody else: its baseline.
        args = argparse.Namespace(card=card_url, swap=swap.url, detector=det_url, lease=str(work / "vram.lease"))
        base: list[float] = []
        with httpx.Client(timeout=120) as http:
            for _ in range(4):
                t0 = time.monotonic()
                http.post(f"{swap.url}/v1/chat/completions", json={"model": "vision", "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGE}}]}]}).raise_for_status()
                base.append(time.monotonic() - t0)
        base = base[1:]  # the first one loads the model
        ooms0 = gpu.oom_count
        outside, sampler = Outside(), Sampler()
        threads = [threading.Thread(target=outside.run, args=(mode, args), daemon=True),
                   threading.Thread(target=sampler.run, args=(mode, swap.url, det_url), daemon=True)]
        for t in threads:
            t.start()
        shares = [a.changes // 3 + (i < a.changes % 3) for i in range(3)]
        bots = [subprocess.Popen([sys.executable, __file__, "bot", "--mode", mode, "--changes", str(n),
                                  "--card", card_url, "--swap", swap.url, "--detector", det_url,
                                  "--lease", args.lease], stdout=subprocess.PIPE, text=True)
                for n in shares]
        changes: list[dict[str, Any]] = []
        unfinished = 0
        for p, n in zip(bots, shares):
            try:
                stdout, _ = p.communicate(timeout=a.deadline_s)
                changes += json.loads(stdout.strip().splitlines()[-1])
            except (subprocess.TimeoutExpired, ValueError, IndexError):
                p.kill()
                p.communicate()
                unfinished += n
        outside.stop.set()
        sampler.stop.set()
        for t in threads:
            t.join(timeout=150)
        httpx.get(f"{swap.url}/unload", timeout=120)
    times = [c["s"] for c in changes if not c["error"]]
    return {
        "mode": mode, "ooms": gpu.oom_count - ooms0,
        "failed": sum(1 for c in changes if c["error"]) + unfinished,
        "errors": sorted({c["error"] for c in changes if c["error"]})[:3],
        "co_resident": sampler.co_resident, "samples": sampler.samples,
        "p50": pct(times, 0.5), "p95": pct(times, 0.95),
        "outside_n": len(outside.latencies), "outside_errors": len(outside.errors),
        "outside_base": statistics.median(base),
        "outside_p50": pct(outside.latencies, 0.5), "outside_p95": pct(outside.latencies, 0.95),
    }


def drive(a: argparse.Namespace) -> None:
    import tempfile

    from emulators.llama_swap import SimulatedGpu, create_detector_app, create_gpu_app
    from servers import serve_app

    if not os.environ.get("MIKU_TEST_LLAMA_SWAP"):
        os.environ["MIKU_TEST_LLAMA_SWAP"] = str(ROOT / ".cache" / "go" / "bin" / "llama-swap")
    gpu = SimulatedGpu(TOTAL_MIB, DISPLAY_MIB)
    rows = []
    with tempfile.TemporaryDirectory(prefix="contention-") as tmp, serve_app(create_gpu_app(gpu)) as card_url, \
            serve_app(create_detector_app(gpu, vram_mib=DETECTOR_MIB, release_s=DETECTOR_RELEASE_S),
                      health="/health") as det_url:
        for mode in a.modes.split(","):
            t0 = time.monotonic()
            r = run_mode(mode, a, Path(tmp), gpu, card_url, det_url)
            r["wall_s"] = time.monotonic() - t0
            print(json.dumps(r), flush=True)
            rows.append(r)
    render(rows, a)


def render(rows: list[dict[str, Any]], a: argparse.Namespace) -> None:
    from results import table, write_section

    body = table(
        ["mode", "OOMs", "failed changes", "co-resident samples (of 20 Hz)", "change p50 / p95 (s)",
         "outside client p50 / p95 (s)", "outside added p50 (s)", "outside errors"],
        [[f"({r['mode']}) {MODES[r['mode']]}", r["ooms"], f"{r['failed']} of {a.changes}",
          f"{r['co_resident']} of {r['samples']}", f"{r['p50']:.2f} / {r['p95']:.2f}",
          f"{r['outside_p50']:.2f} / {r['outside_p95']:.2f}", f"{r['outside_p50'] - r['outside_base']:+.2f}",
          f"{r['outside_errors']} of {r['outside_n'] + r['outside_errors']}"] for r in rows])
    errors = "\n".join(f"- ({r['mode']}) first errors: " + "; ".join(e[:160] for e in r["errors"])
                       for r in rows if r["errors"])
    md = (f"## One GPU, many clients (bench/contention.py)\n\n"
          f"The real llama-swap v250 with the shipped llama-swap/config.yaml (model stand-ins), a simulated 8 GB "
          f"card ({DISPLAY_MIB} MiB display; vision {VISION_MIB} MiB, released {VISION_RELEASE_S} s after its "
          f"process ends; the GPU detector {DETECTOR_MIB} MiB, released after {DETECTOR_RELEASE_S} s). Three bot "
          f"processes make {a.changes} changes in all (the GPU part of a change: vision reservation around K = {K} "
          f"vision checks, then detector reservation around K = {K} detections) while an outside client asks "
          f"llama-swap for the vision model every {OUTSIDE_EVERY_S} s. Co-resident: a /running sample (20 Hz) with "
          f"vision starting or ready while the detector is loaded. Outside added: its p50 minus its p50 with "
          f"vision loaded and nobody else. In (c) the outside client takes the host lease too.\n\n"
          f"{body}\n\n{errors}\n\n"
          "Reading it: in (a) each bot's reservation is blind to the others and to the outside client, so vision "
          "is asked for while a detector holds its memory, and bots unload each other's models mid-work. The "
          "shipped config starts vision through `vramctl run`, so it no longer OOMs: it waits in `starting` "
          "(which the co-resident column counts) for room that a detector nobody asked to leave never gives, "
          "until it gives up after 60 s (llama-swap: 'upstream command exited prematurely') and the vision "
          "checks fail. In (b) llama-swap serialises every client's loads, and the hold and `vramctl run` wait "
          "for the driver's release both ways: nothing collides, at the price of swaps — the outside client's "
          "request waits for the detector to leave (its added latency), and a bot's detections reload the "
          "detector after each outside request. In (c) the bots and the lease-taking "
          "client never collide, and they take turns in the order they asked (the lease's queue of tickets), so "
          "a process that releases and asks again at once goes behind those already waiting: every waiter's p95 "
          "stays within a few changes' time.\n")
    print(md)
    if a.write:
        write_section("contention", md)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("role", nargs="?", default="drive", choices=["drive", "bot"])
    p.add_argument("--changes", type=int, default=20)
    p.add_argument("--modes", default="a,b,c")
    p.add_argument("--deadline-s", type=float, default=240.0, help="per bot process; unfinished changes count as failed")
    p.add_argument("--write", action="store_true")
    p.add_argument("--mode", default="a")  # bot role
    p.add_argument("--card")
    p.add_argument("--swap")
    p.add_argument("--detector")
    p.add_argument("--lease")
    a = p.parse_args()
    if a.role == "bot":
        asyncio.run(bot(a))
    else:
        drive(a)


if __name__ == "__main__":
    main()
