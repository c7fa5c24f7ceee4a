"""A full avatar change in the emulators with the seed's latencies: ours vs the seed's method.

Latencies (seed, "Typical Timeline"): vision verification 5 s, unloading the vision model 2 s (0.5 s for the
llama-server process to exit + 1.5 s until the driver hands the memory back), detector load 1 s, upload 1 s.
The card is the seed's 8 GB with 512 MiB held by the display; vision 6912 MiB (with mmproj and image
context), text 5120 MiB (2 s to load), detector 1024 MiB: vision and detector do not fit together.

- ours: mikubot's pipeline — one vision reservation for the K verifications, then one detector
  reservation that unloads the vision model and waits until the (emulated) probe shows the memory free.
- seed: verify, then "swap to the text model" (a 1-token chat request to llama3.1, which makes
  llama-swap stop vision and load 5 GB of text model nobody asked for), sleep 3 s, detect, crop, upload.

Both use the same Danbooru emulator, sources, crop and Discord emulator; only the VRAM handling differs.
The detector is the GPU detector's simulated VRAM side (it finds no faces, so both crop by saliency).

    .venv/bin/python bench/e2e.py [--art .cache/art/images] [--k 1 5] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from contextlib import ExitStack
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
from mikubot.upload import DiscordUploader  # noqa: E402
from mikubot.verify import VisionVerifier  # noqa: E402
from facedetect.imageio import load_image  # noqa: E402

VISION_S, STOP_S, RELEASE_S, DETECTOR_LOAD_S, UPLOAD_S = 5.0, 0.5, 1.5, 1.0, 1.0
VISION_LOAD_S = 2.0  # of the 5 s: loading 7 GB of weights; the rest is answering (per picture)
VISION_INFER_S = VISION_S - VISION_LOAD_S
SEED_SLEEP_S = 3.0
PLAN = {"eileen happy.png": 1.6, "eileen vhappy.png": 1.6, "eileen concerned.png": 1.6,
        "sylvie blue giggle.png": 2.2, "sylvie green normal.png": 2.2}


def llama_config() -> dict[str, Any]:
    return {"gpu_total_mib": 8192, "gpu_reserved_mib": 512, "models": {
        "llama3.1": {"cmd": "llama-server -m llama3.1.gguf", "vram_mib": 5120, "load_s": 2.0, "stop_s": STOP_S,
                     "release_s": RELEASE_S, "infer_s": 0.05},
        "vision": {"cmd": "llama-server -m minicpm-v.gguf --mmproj mmproj.gguf", "vram_mib": 6912, "load_s": VISION_LOAD_S,
                   "stop_s": STOP_S, "release_s": RELEASE_S, "infer_s": VISION_INFER_S, "vision": True},
    }}


class Rig:
    def __init__(self, art: dict[str, Any], stack: ExitStack, k: int) -> None:
        root = next(iter(art.values()))["path"].parent
        dapp = create_danbooru(posts_for(art), art_dir=root)
        self.danbooru = stack.enter_context(serve_app(dapp))
        self.llama = LlamaSwapEmulator(llama_config())
        stack.enter_context(self.llama.serve())
        self.llama.set_answer("vision", YES)
        self.detector_app = create_detector_app(self.llama.gpu, vram_mib=1024, load_s=DETECTOR_LOAD_S,
                                                stop_s=0.2, release_s=0.3)
        self.detector = stack.enter_context(serve_app(self.detector_app, health="/health"))
        app, self.discord = create_discord(token=TOKEN, delay_s=UPLOAD_S, bucket_limit=100)
        self.discord_url = stack.enter_context(serve_app(app))
        self.k = k

    def settings(self, data_dir: Path) -> Settings:
        return Settings(
            data_dir=data_dir, source="danbooru", danbooru_url=self.danbooru, min_side=300, candidates=self.k,
            llama_swap_url=self.llama.url, vision_model="vision", vision_vram_mib=6912, text_model="llama3.1",
            text_vram_mib=5120, gpu_probe="emulator", gpu_probe_url=self.llama.gpu_url, face_detector_url=self.detector,
            detector_vram_mib=1024, discord_token=TOKEN, discord_api=f"{self.discord_url}/api/v10",
        )


async def ours(rig: Rig, data_dir: Path) -> dict[str, Any]:
    async with AvatarPipeline(rig.settings(data_dir)) as pipeline:
        t0 = time.monotonic()
        record = await pipeline.change()
        total = time.monotonic() - t0
    assert record["status"] == "applied", record["error"]
    return {"total_s": total, "stages": record["timings_ms"]}


async def seed(rig: Rig, data_dir: Path) -> dict[str, Any]:
    """The seed's profile_picture_manager flow, with its _ensure_vram_available (swap to text + sleep 3)."""
    s = rig.settings(data_dir)
    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=120) as http:
        src = source_from_spec("danbooru", danbooru_url=s.danbooru_url, min_side=300, http=http)
        picks = [await src.download(c) for c in await src.search(rig.k, set())]
        verifier = VisionVerifier(rig.llama.url, "vision", s.character_name, http=http)
        verdicts = [await verifier.verify(c) for c in picks]
        chosen = next(c for c, v in zip(picks, verdicts) if v.is_character)
        # _ensure_vram_available: "swap to text model → vision model unloads → 3 second wait"
        await http.post(f"{rig.llama.url}/v1/chat/completions",
                        json={"model": "llama3.1", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]})
        await asyncio.sleep(SEED_SLEEP_S)
        r = await http.post(f"{rig.detector}/detect", files={"file": ("a.png", chosen.data or b"")})
        oom = r.status_code != 200
        image, _ = load_image(chosen.data or b"")
        png = avatar_png(crop_avatar(image, [], output_size=1024))
        await DiscordUploader(s.discord_api, TOKEN, http=http).set_avatar(png)
    return {"total_s": time.monotonic() - t0, "detector_oom": oom}


def run(art_dir: Path, ks: list[int]) -> list[list[object]]:
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        art = scaled_art(art_dir, Path(tmp) / "art", PLAN, {})
        for k in ks:
            for method in ("seed", "ours"):
                if method == "seed" and k > 1:
                    continue  # the seed verified one picture per change
                with ExitStack() as stack:
                    rig = Rig(art, stack, k)
                    rig.llama.preload("llama3.1")  # the bot was chatting
                    httpx.post(f"{rig.detector}/unload")
                    fn = ours if method == "ours" else seed
                    out = asyncio.run(fn(rig, Path(tmp) / f"data-{method}-{k}"))
                    ledger = rig.llama.ledger()
                    vram_moves = len(ledger["unloads"])
                    ooms = ledger["oom_count"] + rig.detector_app.state.detector["ooms"]
                    rows.append([method, k, f"{out['total_s']:.2f}", f"{VISION_LOAD_S + k * VISION_INFER_S:.0f}",
                                 vram_moves, ledger["loads"].count("vision"), ledger["loads"].count("llama3.1") - 1,
                                 ooms])
                    print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--art", type=Path, default=ROOT / ".cache" / "art" / "images")
    ap.add_argument("--k", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rows = run(args.art, args.k)
    md = (
        f"A full avatar change in the emulators with the seed's latencies: vision {VISION_S:g} s ({VISION_LOAD_S:g} s "
        f"load + {VISION_INFER_S:g} s per picture), "
        f"unload {STOP_S + RELEASE_S:g} s ({STOP_S:g} s process exit + {RELEASE_S:g} s driver release), detector "
        f"load {DETECTOR_LOAD_S:g} s, upload {UPLOAD_S:g} s; 8 GB card (512 MiB display), vision 6912 MiB, text "
        "5120 MiB (2 s load), detector 1024 MiB. *seed*: swap to the text model + sleep 3 s; *ours*: vramctl "
        "reservations (unload, then wait until the probe shows the memory free). Seed's own figure: 10–19 s.\n\n"
        + table(["method", "K", "total s", "of which vision s", "model unloads", "vision loads",
                 "text loads (unasked)", "OOM"], rows)
        + "\n\nWhere ours spends its time: unloading the text model before vision (2 s: the bot was chatting), vision, "
        "unloading vision (2 s, measured, not guessed), loading the detector (1 s), uploading (1 s) — all sequential. "
        "DESIGN's bar (vision time + 2 s) is NOT met: the seed's swap overlaps the text model's release with the vision "
        "load inside llama-swap, ours waits for it. Ours loads no model nobody asked for, and K candidates cost one "
        "vision load and one unload, not K.\n"
    )
    print(md)
    if not args.no_write:
        write_section("e2e", md)


if __name__ == "__main__":
    main()
