"""The face detector as a llama-swap model, with the real llama-swap and our shipped llama-swap/config.yaml:
`vramctl hold` as its `cmd`, the detector service as its `proxy`, `/ready` as its `checkEndpoint`, and the
matrix routing (text and detector together, vision alone).

Two detectors stand behind it: the real `facedetect serve` (CPU animeface: the routing, the passthrough,
the bot's MIKU_DETECTOR_VIA=llama-swap) and the simulated GPU detector on the simulated card (the hold waits
for the room a stopped model's driver has not yet returned, and for its own memory before it exits). The
model servers are the stand-ins of `emulators.model_server`. Waits poll a state, never a clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml
import loopback
from emulators.llama_swap import ROOT_CONFIG, SimulatedGpu, create_detector_app, create_gpu_app
from images import encode
from PIL import Image
from real_llama_swap import RealLlamaSwap, model_server, needs_binary, serve, start_port, with_stand_in
from servers import free_port, run_command, serve_app, venv_bin

from mikubot.config import Settings
from mikubot.pipeline import AvatarPipeline, face_finder, reserve_detector
from mikubot.vram import DETECTOR, vram_settings
from vramctl import Consumer, Coordinator, VramSettings

pytestmark = needs_binary

TOTAL_MIB, DISPLAY_MIB = 8192, 512
VISION_MIB, TEXT_MIB, DETECTOR_MIB = 6912, 5120, 1024  # vision + detector never fit; text + detector do


def shipped_config(card_url: str, detector_url: str, *, release_s: float = 0.0) -> dict[str, Any]:
    """llama-swap/config.yaml as it ships, but for the executables (llama-server → the stand-in, `vramctl run`
    and the hold → this venv's vramctl reading the simulated card), the detector's address and startPort."""
    config = yaml.safe_load(ROOT_CONFIG.read_text())
    with_stand_in(config, model_server(card_url, release_s=release_s), card_url)
    models = config["models"]
    # Each model's size on the card: the stand-in's --vram-mib (its last option wins).
    models["vision"]["cmd"] += f" --vram-mib {VISION_MIB}"
    models["llama3.1"]["cmd"] += f" --vram-mib {TEXT_MIB}"
    det = models["face-detector"]
    hold = det["cmd"].split()
    assert hold[:3] == ["vramctl", "hold", det["proxy"]] and det["checkEndpoint"] == "/ready"
    det["cmd"] = " ".join([venv_bin("vramctl"), "hold", detector_url, *hold[3:],
                           "--probe", "emulator", "--probe-url", card_url])
    det["proxy"] = detector_url
    config["startPort"] = start_port(2)
    config["logToStdout"] = "both"  # the hold's lines (its stderr) in llama-swap's log, for the assertions
    return config


def running(swap: RealLlamaSwap) -> dict[str, str]:
    return swap.running()


def picture() -> bytes:
    return encode(Image.new("RGB", (64, 64), (200, 220, 230)), "PNG")


def chat(swap: RealLlamaSwap, model: str) -> httpx.Response:
    return loopback.post(f"{swap.url}/v1/chat/completions", timeout=60,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}]})


def detect(swap: RealLlamaSwap) -> httpx.Response:
    return loopback.post(f"{swap.url}/upstream/face-detector/detect", files={"file": ("p.png", picture())}, timeout=60)


@dataclass
class CpuRig:
    swap: RealLlamaSwap
    gpu: SimulatedGpu
    detector_url: str

    def detector_loaded(self) -> bool:
        return bool(loopback.get(f"{self.detector_url}/health", timeout=10).json()["detector_loaded"])


@pytest.fixture(scope="module")
def cpu_rig(tmp_path_factory) -> Iterator[CpuRig]:
    """The real `facedetect serve` (animeface, not preloaded) behind the shipped config."""
    work = tmp_path_factory.mktemp("detector-under-llama-swap")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"FACEDETECT_PRELOAD": "false", "FACEDETECT_OUTPUTS": str(work / "outputs")}
    gpu = SimulatedGpu(TOTAL_MIB, DISPLAY_MIB)
    with run_command([venv_bin("facedetect"), "serve", "--host", "127.0.0.1", "--port", str(port)],
                     url=f"{url}/health", env=env), \
            serve_app(create_gpu_app(gpu)) as card_url, \
            serve(shipped_config(card_url, url), work) as swap:
        yield CpuRig(swap, gpu, url)


@pytest.fixture()
def idle(cpu_rig: CpuRig) -> CpuRig:
    loopback.get(f"{cpu_rig.swap.url}/unload", timeout=60).raise_for_status()
    assert running(cpu_rig.swap) == {} and not cpu_rig.detector_loaded()
    return cpu_rig


def test_the_detector_loads_through_its_hold_and_shares_the_card_with_text_only(idle):
    swap = idle.swap
    assert "face-detector" in {m["id"] for m in loopback.get(f"{swap.url}/v1/models").json()["data"]}
    # Reading its state through llama-swap does not load it (upstream.ignorePaths).
    assert loopback.get(f"{swap.url}/upstream/face-detector/health", timeout=10).status_code == 409
    assert loopback.get(f"{idle.detector_url}/ready", timeout=10).status_code == 503
    assert running(swap) == {}
    # A detection through the passthrough starts the hold, which loads the service's model.
    r = detect(swap)
    assert r.status_code == 200, r.text
    assert r.json()["backend"] == "animeface" and idle.detector_loaded()
    assert running(swap) == {"face-detector": "ready"}
    assert loopback.get(f"{swap.url}/upstream/face-detector/health", timeout=10).json()["detector_loaded"] is True
    # Text may run beside it.
    chat(swap, "text").raise_for_status()
    assert running(swap) == {"face-detector": "ready", "llama3.1": "ready"}
    # Vision runs alone: asking for it stops both, and the hold unloads the service's model on its way out.
    chat(swap, "vision").raise_for_status()
    assert running(swap) == {"vision": "ready"} and not idle.detector_loaded()
    assert loopback.get(f"{swap.url}/upstream/face-detector/health", timeout=10).status_code == 409
    # And the detector back: vision leaves.
    assert detect(swap).status_code == 200
    assert running(swap) == {"face-detector": "ready"} and idle.detector_loaded()
    assert idle.gpu.oom_count == 0
    assert "vramctl hold: detector loaded" in swap.log()


async def test_vramctl_status_shows_the_detector_as_llama_swap_reports_it(idle):
    settings = VramSettings(probe="none", llama_swap_url=idle.swap.url,
                            consumers=[Consumer(name="vision", kind="llama-swap", model="vision", vram_mib=VISION_MIB),
                                       Consumer(name="face-detector", kind="llama-swap", model="face-detector",
                                                vram_mib=DETECTOR_MIB, priority=2)])
    async with Coordinator(settings) as coord:
        before = {c["name"]: c for c in (await coord.status())["consumers"]}
        assert before["face-detector"]["loaded"] is False and "not running" in before["face-detector"]["detail"]
        assert detect(idle.swap).status_code == 200
        after = {c["name"]: c for c in (await coord.status())["consumers"]}
    assert after["face-detector"]["loaded"] is True and after["face-detector"]["detail"] == "llama-swap: ready"


async def test_the_bot_detects_through_llama_swap_with_detector_via(idle, tmp_path):
    chat(idle.swap, "vision").raise_for_status()  # someone's vision request holds the card
    s = Settings(data_dir=tmp_path / "data", llama_swap_url=idle.swap.url, detector_via="llama-swap",
                 face_detector_url=None, gpu_probe="none", settle_s=0)
    assert s.detector_service_url == f"{idle.swap.url}/upstream/face-detector"
    consumer = vram_settings(s).consumer(DETECTOR)
    assert (consumer.kind, consumer.model, consumer.routed) == ("llama-swap", "face-detector", True)
    assert vram_settings(s).consumer("vision").routed
    async with AvatarPipeline(s) as pipeline:
        notes: list[str] = []
        async with AsyncExitStack() as room:
            service, res = await reserve_detector(pipeline.services, room, "test", lambda to, why: notes.append(why))
            # llama-swap routes: the reservation unloads nothing; asking for the detector makes vision leave.
            assert service == s.detector_service_url and res is not None and res.unloaded == []
            assert "routed" in res.timeline.names() and running(idle.swap) == {"vision": "ready"}
            async with face_finder(pipeline.services, service, lambda to, why: notes.append(why)) as finder:
                found = await finder.find(Image.new("RGB", (64, 64)), picture(), "p.png")
    assert found.via == "service" and found.error is None and notes == []
    assert running(idle.swap) == {"face-detector": "ready"}


def test_detector_via_llama_swap_needs_its_url(tmp_path):
    with pytest.raises(ValueError, match="MIKU_DETECTOR_VIA=llama-swap needs MIKU_LLAMA_SWAP_URL"):
        Settings(data_dir=tmp_path, detector_via="llama-swap", llama_swap_url=None)


# --- the GPU detector: the hold waits for memory the driver has not returned --------------------------------

def test_the_hold_waits_for_the_room_and_for_its_memory_before_it_exits(tmp_path):
    """Vision (6912 MiB) leaves 768 MiB on the card; its memory comes back 1.5 s after its process is gone.
    A detector loaded the moment llama-swap started its hold would not fit; the hold waits until the card shows
    the room. On the way out the hold waits for the detector's memory, so vision starts on a card that has
    it. Any early load is an OOM on the card (and a failed request)."""
    gpu = SimulatedGpu(TOTAL_MIB, DISPLAY_MIB)
    with serve_app(create_gpu_app(gpu)) as card_url, \
            serve_app(create_detector_app(gpu, vram_mib=DETECTOR_MIB, release_s=1.5), health="/health") as det_url, \
            serve(shipped_config(card_url, det_url, release_s=1.5), tmp_path) as swap:
        chat(swap, "vision").raise_for_status()
        r = loopback.post(f"{swap.url}/upstream/face-detector/detect", timeout=60)
        assert r.status_code == 200, r.text
        assert running(swap) == {"face-detector": "ready"}
        chat(swap, "vision").raise_for_status()
        assert running(swap) == {"vision": "ready"}
        log = swap.log()
    assert gpu.oom_count == 0, gpu.history
    vision = "ggml-model-Q4_K_M"  # a stand-in claims under its model file's name (the shipped --model)
    events = [(h["event"], "vision" if h["owner"] == vision else h["owner"])
              for h in gpu.history if h["owner"] != "display+contexts"]
    # vision up, vision gone and released, detector up, detector gone and released, vision up again.
    assert events == [("alloc", "vision"), ("exit", "vision"), ("released", "vision"), ("alloc", "face-detector"),
                      ("exit", "face-detector"), ("released", "face-detector"), ("alloc", "vision")], events
    assert "MiB free ≥ 1280 needed" in log and "detector unloaded;" in log


def test_text_and_vision_swap_only_once_the_card_shows_the_memory_back(tmp_path):
    """The same wait for the text <-> vision swaps: each model starts through `vramctl run --vram-mib N`.
    Text (5120 MiB) leaves 2560 MiB of the card; llama-swap starts vision the moment text's process is gone,
    but its memory comes back 1.5 s later: a llama-server started at once would OOM. `vramctl run` waits
    until the card shows vision's room, and the same way back."""
    gpu = SimulatedGpu(TOTAL_MIB, DISPLAY_MIB)
    with serve_app(create_gpu_app(gpu)) as card_url, \
            serve(shipped_config(card_url, "http://127.0.0.1:9", release_s=1.5), tmp_path) as swap:
        chat(swap, "text").raise_for_status()
        chat(swap, "vision").raise_for_status()
        assert running(swap) == {"vision": "ready"}
        chat(swap, "text").raise_for_status()
        assert running(swap) == {"llama3.1": "ready"}
        log = swap.log()
    assert gpu.oom_count == 0, gpu.history
    names = {"Meta-Llama-3.1-8B-Instruct-Q4_K_M": "text", "ggml-model-Q4_K_M": "vision"}  # the --model files
    events = [(h["event"], names.get(h["owner"], h["owner"])) for h in gpu.history if h["owner"] != "display+contexts"]
    assert events == [("alloc", "text"), ("exit", "text"), ("released", "text"), ("alloc", "vision"),
                      ("exit", "vision"), ("released", "vision"), ("alloc", "text")], events
    assert "vramctl run: " in log and "MiB free ≥ 6720 needed" in log and "MiB free ≥ 6784 needed" in log


async def test_doctor_reads_the_detector_through_llama_swap_without_loading_it(idle, tmp_path):
    from mikubot.doctor import check_detector

    s = Settings(data_dir=tmp_path / "data", llama_swap_url=idle.swap.url, detector_via="llama-swap", gpu_probe="none")
    idle_check = await check_detector(s)
    assert idle_check.state == "ok" and "not loaded (llama-swap loads it on first use)" in idle_check.message
    assert running(idle.swap) == {}  # asking did not load it
    assert detect(idle.swap).status_code == 200
    loaded = await check_detector(s)
    assert loaded.state == "ok" and "animeface" in loaded.message and ", loaded)" in loaded.message
