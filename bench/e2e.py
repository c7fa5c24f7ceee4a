"""A full avatar change in the emulators with the original bot's latencies: ours vs the original bot's method, on two cards.

Latencies (the original bot's "Typical Timeline"): vision verification 5 s (2 s loading the model + 3 s answering, per
picture), unloading a model 2 s (0.5 s for the llama-server process to exit + 1.5 s until the driver hands the
memory back), detector load 1 s, upload 1 s; the text model takes 2 s to load.

Two cards (8 GB, 512 MiB held by the display), both starting with the text model loaded (the bot was chatting):
- **original sizes** — the original bot's own figures: text 5120 MiB, vision 4608 MiB (~4 GB + mmproj), detector 1024 MiB,
  and the detector loaded ("stays loaded", the original bot says). Once text is gone, vision and detector fit together.
- **tight** — vision 6912 MiB (a bigger image context): vision and detector never fit together, so the
  detector starts unloaded and every change needs a swap between verification and detection.

- ours: mikubot's pipeline — the vision reservation (unloading what is in its way, waiting until the probe
  shows the memory free) runs while the candidates download; one vision load and K answers; then one
  detector reservation, which goes at once when the detector is loaded or fits, and otherwise unloads vision
  and waits until the (emulated) probe shows the memory free.
- original: verify, then "swap to the text model" (a 1-token chat request to llama3.1, which makes llama-swap
  stop vision and load 5 GB of text model nobody asked for), sleep 3 s, detect, crop, upload.

Both use the same Danbooru emulator, sources, crop and Discord emulator; only the VRAM handling differs.
The detector is the GPU detector's simulated VRAM side (it finds no faces, so both crop by saliency).

**Vision time** is the verify window: from the first request for the vision model (ours: its reservation,
which makes room for it; the original bot: its first chat request, for which llama-swap swaps the text model out)
to the last of the K answers. Everything else in the total is overhead the bar "≤ vision time + 2 s" limits.

    .venv/bin/python bench/e2e.py [--art .cache/art/images] [--k 1 5] [--scenario original-sizes tight] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from emulators.danbooru import create_app as create_danbooru  # noqa: E402
from emulators.discord import create_app as create_discord  # noqa: E402
from emulators.llama_swap import LlamaSwapEmulator, create_detector_app  # noqa: E402
from pipeline_rig import TOKEN, YES, posts_for, scaled_art  # noqa: E402
from results import table, write_section  # noqa: E402
from servers import serve_app  # noqa: E402

from mikubot.config import Settings  # noqa: E402
from mikubot.crop import avatar_png, crop_avatar  # noqa: E402
from mikubot.pipeline import AvatarPipeline  # noqa: E402
from mikubot.sources import source_from_spec  # noqa: E402
from mikubot.upload import set_avatar  # noqa: E402
from mikubot.verify import CandidatePicture, VisionVerifier  # noqa: E402
from facedetect.imageio import load_image  # noqa: E402

VISION_S, STOP_S, RELEASE_S, DETECTOR_LOAD_S, UPLOAD_S = 5.0, 0.5, 1.5, 1.0, 1.0
VISION_LOAD_S = 2.0  # of the 5 s: loading the weights; the rest is answering (per picture)
VISION_INFER_S = VISION_S - VISION_LOAD_S
TEXT_LOAD_S = 2.0
ORIGINAL_SLEEP_S = 3.0
PLAN = {"eileen happy.png": 1.6, "eileen vhappy.png": 1.6, "eileen concerned.png": 1.6,
        "sylvie blue giggle.png": 2.2, "sylvie green normal.png": 2.2}
CARD_MIB, DISPLAY_MIB, TEXT_MIB, DETECTOR_MIB = 8192, 512, 5120, 1024


@dataclass(frozen=True)
class Scenario:
    name: str
    vision_mib: int
    detector_loaded: bool  # at the start of the change
    note: str


SCENARIOS = {
    "original-sizes": Scenario("original-sizes", 4608, True, "the original bot's sizes: vision 4608 MiB fits beside the detector "
                           "(1024 MiB, loaded) once text is gone"),
    "tight": Scenario("tight", 6912, False, "vision 6912 MiB never fits beside the detector (1024 MiB, unloaded "
                      "at the start)"),
}


def llama_config(sc: Scenario) -> dict[str, Any]:
    return {"gpu_total_mib": CARD_MIB, "gpu_reserved_mib": DISPLAY_MIB, "models": {
        "llama3.1": {"cmd": "llama-server --port ${PORT} -m llama3.1.gguf", "vram_mib": TEXT_MIB, "load_s": TEXT_LOAD_S,
                     "stop_s": STOP_S, "release_s": RELEASE_S, "infer_s": 0.05},
        "vision": {"cmd": "llama-server --port ${PORT} -m minicpm-v.gguf --mmproj mmproj.gguf", "vram_mib": sc.vision_mib,
                   "load_s": VISION_LOAD_S, "stop_s": STOP_S, "release_s": RELEASE_S, "infer_s": VISION_INFER_S,
                   "vision": True},
    }}


class Rig:
    def __init__(self, art: dict[str, Any], stack: ExitStack, k: int, sc: Scenario) -> None:
        root = next(iter(art.values()))["path"].parent
        dapp = create_danbooru(posts_for(art), art_dir=root)
        self.danbooru = stack.enter_context(serve_app(dapp))
        self.sc = sc
        self.llama = LlamaSwapEmulator(llama_config(sc))
        stack.enter_context(self.llama.serve())
        self.llama.set_answer("vision", YES)
        self.detector_app = create_detector_app(self.llama.gpu, vram_mib=DETECTOR_MIB, load_s=DETECTOR_LOAD_S,
                                                stop_s=0.2, release_s=0.3, loaded=sc.detector_loaded)
        self.detector = stack.enter_context(serve_app(self.detector_app, health="/health"))
        app, self.discord = create_discord(token=TOKEN, avatar_delay_s=UPLOAD_S, bucket_limit=100)
        self.discord_url = stack.enter_context(serve_app(app))
        self.k = k

    def settings(self, data_dir: Path) -> Settings:
        return Settings(
            data_dir=data_dir, source="danbooru", danbooru_url=self.danbooru, min_side=300, candidates=self.k,
            llama_swap_url=self.llama.url, vision_model="vision", vision_vram_mib=self.sc.vision_mib,
            text_model="llama3.1", text_vram_mib=TEXT_MIB, gpu_probe="emulator", gpu_probe_url=self.llama.gpu_url,
            face_detector_url=self.detector, detector_vram_mib=DETECTOR_MIB, discord_token=TOKEN,
            discord_api=f"{self.discord_url}/api/v10",
        )


async def ours(rig: Rig, data_dir: Path) -> dict[str, Any]:
    async with AvatarPipeline(rig.settings(data_dir)) as pipeline:
        t0 = time.monotonic()
        record = await pipeline.change()
        total = time.monotonic() - t0
    assert record.status == "applied", record.error
    ms = record.timings_ms
    return {"total_s": total, "vision_s": ms["verify"] / 1000, "stages": ms}


async def original(rig: Rig, data_dir: Path) -> dict[str, Any]:
    """The original bot's profile_picture_manager flow, with its _ensure_vram_available (swap to text + sleep 3)."""
    s = rig.settings(data_dir)
    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=120) as http:
        src = source_from_spec("danbooru", danbooru_url=s.danbooru_url, min_side=300, http=http)
        picks = [await src.download(c) for c in await src.search(rig.k, set())]
        verifier = VisionVerifier(rig.llama.url, "vision", s.character_name, http=http)
        v0 = time.monotonic()
        verdicts = [await verifier.verify(CandidatePicture(c)) for c in picks]
        vision_s = time.monotonic() - v0
        chosen = next(c for c, v in zip(picks, verdicts) if v.is_character)
        # _ensure_vram_available: "swap to text model → vision model unloads → 3 second wait"
        await http.post(f"{rig.llama.url}/v1/chat/completions",
                        json={"model": "llama3.1", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]})
        await asyncio.sleep(ORIGINAL_SLEEP_S)
        r = await http.post(f"{rig.detector}/detect", files={"file": ("a.png", chosen.data or b"")})
        oom = r.status_code != 200
        image, _ = load_image(chosen.data or b"")
        png = avatar_png(crop_avatar(image, [], output_size=1024))
        await set_avatar(s, png)
    return {"total_s": time.monotonic() - t0, "vision_s": vision_s, "detector_oom": oom}


def run(art_dir: Path, ks: list[int], scenarios: list[str]) -> tuple[list[list[object]], list[list[object]]]:
    rows: list[list[object]] = []
    stage_rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        art = scaled_art(art_dir, Path(tmp) / "art", PLAN, {})
        for name in scenarios:
            sc = SCENARIOS[name]
            for k in ks:
                for method in ("original", "ours"):
                    with ExitStack() as stack:
                        rig = Rig(art, stack, k, sc)
                        rig.llama.preload("llama3.1")  # the bot was chatting
                        start = len(rig.llama.gpu.history)
                        fn = ours if method == "ours" else original
                        out = asyncio.run(fn(rig, Path(tmp) / f"data-{name}-{method}-{k}"))
                        history = rig.llama.gpu.history[start:]
                        unloads = sum(1 for e in history if e["event"] == "exit")
                        loads = [e["owner"] for e in history if e["event"] == "alloc"]
                        ooms = sum(1 for e in history if e["event"] == "oom")
                        total, vision = out["total_s"], out["vision_s"]
                        rest = total - vision
                        rows.append([name, method, k, f"{total:.2f}", f"{vision:.2f}", f"{rest:.2f}",
                                     "yes" if rest <= 2.0 else "no", unloads, loads.count("vision"),
                                     loads.count("face-detector"), loads.count("llama3.1"), ooms])
                        if method == "ours":
                            st = out["stages"]
                            stage_rows.append([name, k] + [f"{st.get(s_, 0) / 1000:.2f}" for s_ in STAGES])
                        print(rows[-1], flush=True)
    return rows, stage_rows


STAGES = ["search", "download", "verify", "reserve", "detect", "crop", "upload", "record"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--art", type=Path, default=ROOT / ".cache" / "art" / "images")
    ap.add_argument("--k", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--scenario", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rows, stage_rows = run(args.art, args.k, args.scenario)
    md = (
        f"A full avatar change in the emulators with the original bot's latencies: vision {VISION_S:g} s ({VISION_LOAD_S:g} s "
        f"load + {VISION_INFER_S:g} s per picture), unload {STOP_S + RELEASE_S:g} s ({STOP_S:g} s process exit + "
        f"{RELEASE_S:g} s driver release), detector load {DETECTOR_LOAD_S:g} s, upload {UPLOAD_S:g} s, text load "
        f"{TEXT_LOAD_S:g} s; 8 GB card ({DISPLAY_MIB} MiB display), text {TEXT_MIB} MiB loaded at the start, "
        f"detector {DETECTOR_MIB} MiB. *original*: swap to the text model + sleep {ORIGINAL_SLEEP_S:g} s; *ours*: vramctl "
        "reservations. The original bot's own figure: 10–19 s.\n\n"
        + "\n".join(f"- **{sc.name}**: {sc.note}." for sc in SCENARIOS.values() if sc.name in args.scenario)
        + "\n- **vision s** = the verify window: from the first request for the vision model (ours: its "
        "reservation, which unloads the text model and waits until the memory is free; original: its first chat "
        "request, for which llama-swap swaps the text model out) to the last of the K answers. "
        "**rest s** = total − vision; the target is rest ≤ 2 s. **unloads**: processes that left the card "
        "(models and detector); **loads**: what came onto it during the change (text = loaded unasked).\n\n"
        + table(["scenario", "method", "K", "total s", "vision s", "rest s", "bar ≤ 2 s", "unloads",
                 "vision loads", "detector loads", "text loads (unasked)", "OOM"], rows)
        + "\n\nOurs, seconds per stage (verify overlaps download; reserve includes unloading vision and loading "
        "the detector when needed):\n\n"
        + table(["scenario", "K"] + STAGES, stage_rows)
        + "\n\n" + NOTES
    )
    print(md)
    if not args.no_write:
        write_section("e2e", md)


NOTES = (
    "Reading it: with the original bot's sizes the detector never leaves the card, so after the last answer only "
    "detect, crop and the 1 s upload remain — the bar is met, for K = 1 and 5 alike. On the tight card the "
    "detector cannot load until the vision model has stopped (0.5 s) and the driver has released its memory "
    "(1.5 s), then it loads (1 s), then the upload (1 s): at least 4 s after the last answer whatever the "
    "coordinator does, so the bar is physically out of reach there without giving up the GPU detector "
    "(docs/pipeline.md says why we do not detect on the CPU instead). Ours' vision window is ~1.5 s longer "
    "than the original bot's: vramctl lets the vision model load only once the probe shows the text model's memory "
    "back, where llama-swap's own swap starts loading as soon as the text process has exited (the emulator, "
    "like a slow loader, allocates at the end of the load, so the original bot gets away with it here). The original bot's "
    "method loads the text model nobody asked for and sleeps a fixed 3 s; K candidates cost ours one vision "
    "load and at most one swap.\n"
)


if __name__ == "__main__":
    main()
