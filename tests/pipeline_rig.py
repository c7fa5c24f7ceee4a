"""The loopback world the pipeline tests run a change in: Danbooru emulator → llama-swap emulator (with its
VRAM ledger) → the real facedetect service → Discord emulator, and mikubot settings that point at them.

The real facedetect service runs animeface, on the CPU: it reports `uses_gpu: false` and vramctl reserves
0 MiB for it. ``world(gpu_detector=True)`` puts the emulator's simulated GPU detector (1024 MiB on the
simulated card, finds no faces) in its place, for the swaps a GPU detector needs.

Art: Danbooru art is usually 1000+ px, the Ren'Py sprites are 700 px tall. ``scaled_art`` writes
upscaled copies (and scales the hand labels with them) so a face is big enough for a 1024-px avatar
within the pipeline's 2x upscaling limit — the same situation as real booru art.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from emulators.danbooru import create_app as create_danbooru, make_post
from emulators.discord import DiscordControl, create_app as create_discord
from emulators.llama_swap import ChatRequest, LlamaSwapEmulator, create_detector_app
from facedetect.api import create_app as create_facedetect
from facedetect.settings import FaceDetectSettings
from mikubot.config import Settings
from mikubot.history import HistoryRow
from servers import serve_app

TOKEN = "bot-token-for-tests"
MIKU = "hatsune_miku"

# The reference deployment on an emulated 8 GB card: display and CUDA contexts hold 2.6 GB, so the text
# model (5 GB) and the vision model (4.5 GB) never fit together, and the detector (1 GB) not beside vision.
LLAMA_CONFIG: dict[str, Any] = {
    "gpu_total_mib": 8192,
    "gpu_reserved_mib": 2600,
    "models": {
        "llama3.1": {"cmd": "llama-server --port ${PORT} -m llama3.1.gguf", "vram_mib": 5120, "load_s": 0.1, "stop_s": 0.05, "release_s": 0.1},
        "vision": {"cmd": "llama-server --port ${PORT} -m minicpm-v.gguf --mmproj mmproj.gguf", "vram_mib": 4608, "load_s": 0.2,
                   "stop_s": 0.05, "release_s": 0.2, "infer_s": 0.02, "vision": True},
    },
}

# The reference sizes (text ~5 GB, vision ~4 GB + mmproj, detector ~1 GB, 512 MiB display): text and vision
# never fit together, but once text is gone vision and the detector do — the detector can stay loaded.
REFERENCE_SIZES_CONFIG: dict[str, Any] = {
    **LLAMA_CONFIG,
    "gpu_reserved_mib": 512,
}

YES = '{"is_character": true, "confidence": 0.95, "description": "A smiling girl with long hair in a white dress."}'
YES_FENCED = ('Sure! Here is my answer:\n```json\n{"is_character": true, "confidence": "90%", '
              '"description": "A cheerful girl waving at the viewer."}\n```')
NO_PROSE = "No. This is not Hatsune Miku: the girl has red hair and no twin tails. Confidence: 92%."


def scaled_art(art_dir: Path, out_dir: Path, plan: dict[str, float], labels: dict[str, list[list[float]]]) -> dict[str, Any]:
    """Upscaled copies of art files; returns {name: {"path", "labels" (scaled), "thumb"}}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    art: dict[str, Any] = {}
    for name, scale in plan.items():
        with Image.open(art_dir / name) as im:
            im = im.convert("RGBA")
            big = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
        path = out_dir / name
        big.save(path)
        boxes = [[v * scale for v in box] for box in labels.get(name, [])]
        art[name] = {"path": path, "labels": boxes, "thumb": _thumb(path.read_bytes())}
    return art


def _thumb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(white, rgba).convert("L").resize((16, 32), Image.Resampling.BILINEAR)
    return np.asarray(flat, dtype=np.float32)


def vision_answers(art: dict[str, Any], verdicts: dict[str, str], seen: list[str]) -> Callable[[ChatRequest], str]:
    """The vision model's answer per picture: the sent image is matched to the nearest art file by thumbnail."""
    def answer(req: ChatRequest) -> str:
        assert len(req.images) == 1, "one image per verification request"
        t = _thumb(req.images[0])
        name = min(art, key=lambda n: float(np.abs(art[n]["thumb"] - t).mean()))
        seen.append(name)
        return verdicts[name]
    return answer


def posts_for(art: dict[str, Any], extra: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every art file as a general-rated solo post of the character, plus ``extra`` posts."""
    solo = ["1girl", "solo", "long_hair", "smile", "looking_at_viewer"]
    posts = [make_post(a["path"], 2001 + i, characters=[MIKU], general=solo, rating="g", artist=f"artist_{i}")
             for i, a in enumerate(art.values())]
    return posts + (extra or [])


@dataclass
class World:
    danbooru_url: str
    danbooru: Any  # DanbooruControl
    llama: LlamaSwapEmulator | None
    detector_url: str | None
    discord_url: str | None
    discord: DiscordControl | None

    def settings(self, data_dir: Path, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": data_dir, "source": "danbooru", "danbooru_url": self.danbooru_url, "min_side": 300,
            "candidates": 5, "http_timeout_s": 20.0, "settle_s": 0.2,
        }
        if self.llama is not None:
            values.update(llama_swap_url=self.llama.url, vision_model="vision", text_model="llama3.1",
                          vision_vram_mib=4608, text_vram_mib=5120, gpu_probe="emulator", gpu_probe_url=self.llama.gpu_url)
        if self.detector_url is not None:
            values.update(face_detector_url=self.detector_url, detector_vram_mib=1024)
        if self.discord_url is not None:
            values.update(discord_token=TOKEN, discord_api=f"{self.discord_url}/api/v10", upload_max_wait_s=5.0)
        values.update(overrides)
        return Settings(**values)


@contextlib.contextmanager
def world(
    art_root: Path,
    posts: list[dict[str, Any]],
    *,
    llama: bool = True,
    detector: bool = True,
    discord: bool = True,
    outputs: Path,
    llama_config: dict[str, Any] | None = None,
    gpu_detector: bool = False,
) -> Iterator[World]:
    with contextlib.ExitStack() as stack:
        dapp = create_danbooru(posts, art_dir=art_root)
        dbase = stack.enter_context(serve_app(dapp))
        emu = None
        if llama:
            emu = LlamaSwapEmulator(llama_config or LLAMA_CONFIG)
            stack.enter_context(emu.serve())
        det = None
        if detector and gpu_detector:
            assert emu is not None, "the simulated GPU detector lives on the llama-swap emulator's card"
            det = stack.enter_context(serve_app(create_detector_app(emu.gpu, vram_mib=1024), health="/health"))
        elif detector:
            det = stack.enter_context(serve_app(create_facedetect(FaceDetectSettings(outputs=outputs, retention=50)),
                                                health="/health"))
        disc_url = ctl = None
        if discord:
            app, ctl = create_discord(token=TOKEN, bucket_limit=5, bucket_window_s=1.0)
            disc_url = stack.enter_context(serve_app(app))
        yield World(dbase, dapp.state.control, emu, det, disc_url, ctl)


def history_row_is_consistent(row: HistoryRow) -> None:
    """Every finished row: a final status, a finish time, an error exactly when failed, timings recorded."""
    assert row.status in ("applied", "dry-run", "failed"), row.status
    assert row.finished_at, "a finished row has a finish time"
    assert (row.error is not None) == (row.status == "failed"), (row.status, row.error)
    assert isinstance(row.timings, dict) and row.timings, "per-stage timings are recorded"
    assert row.events and row.events[-1].stage == "record"
    if row.status == "applied":
        assert row.uploaded and row.avatar_path and Path(row.avatar_path).is_file()
    json.dumps(row.model_dump())  # everything in it is plain data
