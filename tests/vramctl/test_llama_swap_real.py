"""The real llama-swap (the pinned commit, built by `make test`) with model stand-ins on a simulated card:
vramctl's status / unload / wait, API keys, the pipeline's vision check and its swap before detection,
an unload while a model is still starting, our shipped llama-swap/config.yaml — and the llama-swap
emulator held to what the real one answers.

One keyed llama-swap serves the module (`swap`); the shipped config gets its own. Each test starts from
an idle proxy and a card holding only the display's memory (`idle`). Waits poll a state (the card, /running),
never a clock.
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
import loopback
from emulators.llama_swap import (
    MODEL_UNLOADED,
    ROOT_CONFIG,
    LlamaSwapEmulator,
    SimulatedGpu,
    create_detector_app,
    create_gpu_app,
)
from images import encode
from PIL import Image
from pipeline_rig import posts_for, scaled_art, world
from real_llama_swap import (RealLlamaSwap, model_server, needs_binary, serve, start_args, start_port,
                             with_stand_in)
from servers import free_port, serve_app, venv_bin

from mikubot.pipeline import AvatarPipeline
from mikubot.sources.base import Candidate
from mikubot.verify import CandidatePicture, VisionUnavailable, VisionVerifier
from vramctl import Consumer, Coordinator, VramSettings
from vramctl.errors import ServerError
from vramctl.servers.llama_swap import LlamaSwapClient

pytestmark = needs_binary

KEY = "real-llama-swap-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TOTAL_MIB, DISPLAY_MIB = 8192, 2600  # a tight card: vision (4608) and the detector (1024) never fit together
VISION_MIB, TEXT_MIB, SLOW_MIB, DETECTOR_MIB = 4608, 5120, 1024, 1024
VISION_RELEASE_S = 0.3  # the driver's teardown after the process is gone


@dataclass
class Rig:
    swap: RealLlamaSwap
    gpu: SimulatedGpu
    card_url: str
    detector_url: str
    journal: Path  # what the vision model was asked

    def asked(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.journal.read_text().splitlines()] if self.journal.exists() else []


def wait_until(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.02)


def models_config(card_url: str, journal: Path) -> dict[str, Any]:
    """llama-swap config for the rig: vision (with an mmproj), text, and a model that takes 30 s to load."""
    return {
        "healthCheckTimeout": 60,
        "logLevel": "debug",
        "startPort": start_port(3),
        "apiKeys": [KEY],
        "peers": {"gpu-box": {"proxy": "http://127.0.0.1:9", "models": ["big"]}},  # another machine's llama-swap
        "models": {
            "vision": {"cmd": model_server(card_url, vram_mib=VISION_MIB, release_s=VISION_RELEASE_S, journal=journal)
                       + " --port ${PORT} --alias vision --mmproj mmproj-model-f16.gguf",
                       "proxy": "http://127.0.0.1:${PORT}", "aliases": ["minicpm-v"], "ttl": 900,
                       "name": "vision stand-in"},
            "llama3.1": {"cmd": model_server(card_url, vram_mib=TEXT_MIB, release_s=0.1)
                         + " --port ${PORT} --alias llama3.1",
                         "proxy": "http://127.0.0.1:${PORT}", "aliases": ["text"], "ttl": 1800},
            "slow": {"cmd": model_server(card_url, vram_mib=SLOW_MIB, load_s=30) + " --port ${PORT} --alias slow",
                     "proxy": "http://127.0.0.1:${PORT}"},
        },
    }


@pytest.fixture(scope="module")
def rig(tmp_path_factory) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("real-llama-swap")
    gpu = SimulatedGpu(TOTAL_MIB, DISPLAY_MIB)
    with serve_app(create_gpu_app(gpu)) as card_url, \
            serve_app(create_detector_app(gpu, vram_mib=DETECTOR_MIB), health="/health") as detector_url, \
            serve(models_config(card_url, work / "journal.jsonl"), work) as swap:
        yield Rig(swap, gpu, card_url, detector_url, work / "journal.jsonl")


@pytest.fixture()
def idle(rig: Rig) -> Rig:
    """Nothing loaded, nothing on the card but the display's memory, the detector paused."""
    loopback.get(f"{rig.swap.url}/unload", headers=AUTH, timeout=30).raise_for_status()
    loopback.post(f"{rig.detector_url}/unload", timeout=10).raise_for_status()
    wait_until("the card is back to the display's memory", lambda: rig.gpu.free_mib == TOTAL_MIB - DISPLAY_MIB)
    return rig


def chat(rig: Rig, model: str, headers: dict[str, str] | None = AUTH, **body: Any) -> httpx.Response:
    return loopback.post(f"{rig.swap.url}/v1/chat/completions", headers=headers, timeout=60,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], **body})


def vram_settings(rig: Rig, **kw: Any) -> VramSettings:
    consumers = [Consumer(name="text", kind="llama-swap", model="text", vram_mib=TEXT_MIB, priority=0),
                 Consumer(name="vision", kind="llama-swap", model="minicpm-v", vram_mib=VISION_MIB, priority=1),
                 Consumer(name="face-detector", kind="facedetect", url=rig.detector_url, vram_mib=DETECTOR_MIB,
                          priority=2)]
    return VramSettings(consumers=consumers, probe="emulator", probe_url=rig.card_url, llama_swap_url=rig.swap.url,
                        llama_swap_api_key=KEY, poll_s=0.02, timeout_s=20.0, **kw)


# --- vramctl --------------------------------------------------------------------------------------------------

async def test_status_shows_what_llama_swap_runs_and_what_the_card_holds(idle):
    assert chat(idle, "text").json()["choices"][0]["message"]["content"] == "[llama3.1] ok"
    running = loopback.get(f"{idle.swap.url}/running", headers=AUTH).json()["running"]
    assert [(r["model"], r["state"], r["ttl"]) for r in running] == [("llama3.1", "ready", 1800)]
    async with Coordinator(vram_settings(idle)) as coord:
        st = await coord.status()
    by_name = {c["name"]: c for c in st["consumers"]}
    assert by_name["text"]["loaded"] is True and by_name["text"]["detail"] == "llama-swap: text = llama3.1, ready"
    assert by_name["vision"]["loaded"] is False
    [model] = [p for p in st["gpu"]["processes"] if p["name"] == "llama3.1"]
    assert model["used_mib"] == TEXT_MIB and model["pid"], "the stand-in's own process holds the memory"
    assert st["gpu"]["free_mib"] == TOTAL_MIB - DISPLAY_MIB - TEXT_MIB


def test_vramctl_cli_status_authenticates_with_the_key_from_the_environment(idle):
    env = {"MIKU_VRAM_LLAMA_SWAP_API_KEY": KEY, "MIKU_VRAM_PROBE": "emulator", "MIKU_VRAM_PROBE_URL": idle.card_url,
           "PATH": "/usr/bin:/bin"}
    chat(idle, "minicpm-v").raise_for_status()
    out = subprocess.run([venv_bin("vramctl"), "status", "--json", "--llama-swap", idle.swap.url], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert st["servers"][idle.swap.url] == {"kind": "llama-swap", "running": [{"model": "vision", "state": "ready"}]}
    vision = next(c for c in st["consumers"] if c["name"] == "vision")
    assert (vision["loaded"], vision["detail"]) == (True, "llama-swap: ready")  # the default consumers: model "vision"
    assert KEY not in out.stdout + out.stderr


async def test_unload_by_alias_returns_once_the_process_is_gone_and_the_card_frees_it_later(idle):
    chat(idle, "minicpm-v").raise_for_status()
    async with httpx.AsyncClient() as http:
        client = LlamaSwapClient(idle.swap.url, http, KEY)
        assert [(m.model, m.state) for m in await client.running()] == [("vision", "ready")]
        assert await client.unload("minicpm-v") == "api/models/unload"  # POST /api/models/unload/minicpm-v
        assert await client.running() == []
    snapshot = idle.gpu.snapshot()  # the process is gone; the driver has not given the memory back yet
    assert "vision (exited, driver releasing)" in {p["name"] for p in snapshot["processes"]}, snapshot
    wait_until("the card gives vision's memory back", lambda: idle.gpu.free_mib == TOTAL_MIB - DISPLAY_MIB)


async def test_unload_all_is_the_older_get_unload(idle):
    chat(idle, "text").raise_for_status()
    async with httpx.AsyncClient() as http:
        client = LlamaSwapClient(idle.swap.url, http, KEY)
        assert await client.unload_all() == "unload"
        assert await client.running() == []
    r = loopback.post(f"{idle.swap.url}/api/models/unload", headers=AUTH)
    assert (r.status_code, r.json()) == (200, {"msg": "ok"})


async def test_a_reservation_unloads_vision_and_waits_until_the_card_shows_the_memory_free(idle):
    chat(idle, "vision").raise_for_status()
    ooms = idle.gpu.oom_count
    async with Coordinator(vram_settings(idle)) as coord, coord.reserve("face-detector") as r:
        free_at_grant = idle.gpu.free_mib
        assert loopback.post(f"{idle.detector_url}/detect").status_code == 200  # loads on the card: no OOM
    assert r.unloaded == ["vision"]
    events = r.timeline.names()
    assert events.index("unload") < events.index("unloaded") < events.index("free") < events.index("granted")
    assert "waiting" in events, "the unload returned before the driver gave the memory back"
    assert free_at_grant >= DETECTOR_MIB + 256 and idle.gpu.oom_count == ooms
    assert idle.swap.running(KEY) == {}


# --- API keys -------------------------------------------------------------------------------------------------

async def test_api_keys_guard_everything_but_health(idle):
    assert loopback.get(f"{idle.swap.url}/health").text == "OK"
    for method, path in [("GET", "/running"), ("GET", "/v1/models"), ("GET", "/unload"),
                         ("POST", "/api/models/unload/vision"), ("POST", "/v1/chat/completions")]:
        r = loopback.request(method, f"{idle.swap.url}{path}")
        assert r.status_code == 401 and r.headers["www-authenticate"] == 'Basic realm="llama-swap"', (path, r.text)
    async with httpx.AsyncClient() as http:
        with pytest.raises(ServerError, match="rejected the API key.*MIKU_VRAM_LLAMA_SWAP_API_KEY"):
            await LlamaSwapClient(idle.swap.url, http).running()
    with pytest.raises(VisionUnavailable, match="401"):
        await VisionVerifier(idle.swap.url, "vision", "Hatsune Miku").verify(CandidatePicture(_candidate()))


def _candidate() -> Candidate:
    teal = encode(Image.new("RGB", (64, 64), (57, 197, 187)), "PNG")
    return Candidate(source="local", key="local:teal.png", image_url=None, page_url=None, artist=None, tags=[],
                     rating=None, width=64, height=64, file_ext="png", filename="teal.png", data=teal)


# --- the pipeline ---------------------------------------------------------------------------------------------

PLAN = {"eileen happy.png": 1.0, "eileen vhappy.png": 1.0, "eileen concerned.png": 1.0}


async def test_a_change_verifies_through_llama_swap_and_swaps_vision_out_before_detection(idle, art_dir, face_labels,
                                                                                        tmp_path):
    """The keyed llama-swap: the pipeline's vision check authenticates (no fallback to the heuristic), the
    vision model sees every candidate, and vision leaves the card for the GPU detector."""
    art = scaled_art(art_dir, tmp_path / "art", PLAN, face_labels)
    chat(idle, "text").raise_for_status()  # the bot was chatting: the text model holds the card
    asked_before, ooms = len(idle.asked()), idle.gpu.oom_count
    with world(tmp_path / "art", posts_for(art), llama=False, detector=False, discord=False,
               outputs=tmp_path / "fd") as w:
        settings = w.settings(tmp_path / "data", candidates=3, llama_swap_url=idle.swap.url, vision_model="minicpm-v",
                              text_model="text", vision_vram_mib=VISION_MIB, text_vram_mib=TEXT_MIB,
                              llama_swap_api_key=KEY, gpu_probe="emulator", gpu_probe_url=idle.card_url,
                              face_detector_url=idle.detector_url, detector_vram_mib=DETECTOR_MIB)
        async with AvatarPipeline(settings) as pipeline:
            record = await pipeline.change(dry_run=True)
    assert record.status == "dry-run", record.error
    assert record.verifier == "vision" and not [f for f in record.fallbacks if f.startswith("verify")]
    assert record.verification.method == "vision" and "teal twin tails" in record.description
    asked = idle.asked()[asked_before:]
    assert len(asked) == 3 and all(a["images"] and a["authorization"] for a in asked), asked
    assert "Is the main character Hatsune Miku?" in asked[0]["text"]
    assert [e.consumer for e in record.vram_timeline if e.event == "unloaded"] == ["text", "vision"]
    assert idle.gpu.oom_count == ooms and idle.swap.running(KEY) == {}


# --- an unload while a model is still starting ----------------------------------------------------------------

def test_an_unload_while_the_model_starts_aborts_the_load(idle):
    """process_command.go: a Stop during the start cancels it; fifo.go: the waiting request gets the unload's
    error. The emulator answers the same (test_vramctl_emulator)."""
    answer: dict[str, httpx.Response] = {}
    waiter = threading.Thread(target=lambda: answer.setdefault("r", chat(idle, "slow")))
    waiter.start()
    wait_until("slow is starting", lambda: idle.swap.running(KEY).get("slow") == "starting")
    r = loopback.post(f"{idle.swap.url}/api/models/unload/slow", headers=AUTH, timeout=30)
    assert (r.status_code, r.text) == (200, "OK")
    waiter.join(timeout=30)
    assert (answer["r"].status_code, answer["r"].json()) == (
        500, {"src": "llama-swap", "error": f"unspecific error: {MODEL_UNLOADED}"})
    assert idle.swap.running(KEY) == {}
    assert not [h for h in idle.gpu.history if h["owner"] == "slow"], "its weights never reached the card"


# --- our emulator against the real proxy -----------------------------------------------------------------------

def _exchange(url: str, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, str, Any]:
    r = loopback.request(method, f"{url}{path}", headers=headers, timeout=30,
                      **({"json": body} if body is not None else {}))
    kind = r.headers.get("content-type", "").split(";")[0]
    try:
        data: Any = r.json()
    except ValueError:
        data = r.text.strip()
    if isinstance(data, dict) and isinstance(data.get("data"), list):  # /v1/models: `created` is the server's clock
        data = {**data, "data": [{k: v for k, v in m.items() if k != "created"} for m in data["data"]]}
    return r.status_code, kind, data


EXCHANGES = [  # (method, path, headers, body)
    ("GET", "/health", {}, None),
    ("GET", "/running", AUTH, None),
    ("GET", "/v1/models", AUTH, None),
    ("GET", "/running", {}, None),  # no key
    ("GET", "/running", {"Authorization": "Bearer wrong", "Accept": "text/plain"}, None),
    ("GET", "/running", {"x-api-key": KEY}, None),
    ("POST", "/api/models/unload/nope", AUTH, None),
    ("POST", "/api/models/unload/nope", {**AUTH, "Accept": "text/plain"}, None),
    ("POST", "/api/models/unload/minicpm-v", AUTH, None),
    ("POST", "/api/models/unload", AUTH, None),
    ("GET", "/unload", AUTH, None),
    ("POST", "/v1/chat/completions", AUTH, {"messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/v1/chat/completions", AUTH, {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
    ("GET", "/no-such-route", AUTH, None),
    ("HEAD", "/health", {}, None),
    ("GET", "/api/models/unload/vision", AUTH, None),  # a known path with another method
    ("POST", "/running", AUTH, None),
    ("POST", "/api/models/unload/nope", {**AUTH, "Accept": "text/html"}, None),
    ("GET", "/running", {"Authorization": "Basic " + base64.b64encode(f"user:{KEY}".encode()).decode()}, None),
    ("GET", "/running", {"Authorization": "Basic " + base64.b64encode(b"user:wrong").decode()}, None),
    ("POST", "/api/models/unload/gpu-box/big", AUTH, None),
    ("POST", "/v1/chat/completions", {**AUTH, "Accept": "text/plain"}, {"model": "nope", "messages": []}),
]


def test_the_emulator_answers_the_management_api_as_the_real_one(idle):
    """Status, content type and body of each exchange, from the emulator fed the same config as the real one."""
    emu = LlamaSwapEmulator(yaml.safe_load(idle.swap.config_path.read_text()))
    with emu.serve():
        differ = [(method, path, headers, real, emulated) for method, path, headers, body in EXCHANGES
                  if (real := _exchange(idle.swap.url, method, path, headers, body))
                  != (emulated := _exchange(emu.url, method, path, headers, body))]
    assert not differ, "\n".join(map(repr, differ))


def test_the_emulator_runs_and_fails_a_load_as_the_real_one(idle):
    """/running while a model is loaded (cmd and proxy with macros expanded), and a load that does not fit
    (someone else's process holds the card): the stand-in exits as llama-server does on cudaMalloc."""
    config = yaml.safe_load(idle.swap.config_path.read_text())
    config["models"]["llama3.1"]["vram_mib"] = TEXT_MIB  # the emulator's ledger entry for it
    emu = LlamaSwapEmulator({**config, "gpu_total_mib": TOTAL_MIB, "gpu_reserved_mib": DISPLAY_MIB})
    hi = {"model": "text", "messages": [{"role": "user", "content": "hi"}]}
    with emu.serve():
        for url in (idle.swap.url, emu.url):
            assert _exchange(url, "POST", "/v1/chat/completions", AUTH, hi)[0] == 200
        assert _exchange(emu.url, "GET", "/running", AUTH, None) == _exchange(idle.swap.url, "GET", "/running", AUTH,
                                                                             None)
        for url in (idle.swap.url, emu.url):
            loopback.get(f"{url}/unload", headers=AUTH, timeout=30).raise_for_status()
        wait_until("text's memory is back", lambda: idle.gpu.free_mib == TOTAL_MIB - DISPLAY_MIB)
        ooms = idle.gpu.oom_count
        for gpu in (idle.gpu, emu.gpu):
            gpu.alloc("comfyui", 3000)
        try:
            real = _exchange(idle.swap.url, "POST", "/v1/chat/completions", AUTH, hi)
            emulated = _exchange(emu.url, "POST", "/v1/chat/completions", AUTH, hi)
        finally:
            idle.gpu.free("comfyui")
    assert real[0] == 500 and emulated == real
    assert idle.gpu.oom_count == ooms + 1 and idle.swap.running(KEY) == {}


# --- the shipped config -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Iterator[tuple[RealLlamaSwap, SimulatedGpu]]:
    """llama-swap/config.yaml as it ships, but for the executables of the `server` macro (llama-server → the
    stand-in, `vramctl run` → this venv's, reading the simulated card) and startPort (a free one: tests run
    beside other servers)."""
    config = yaml.safe_load(ROOT_CONFIG.read_text())
    gpu = SimulatedGpu(TOTAL_MIB, 512)
    with serve_app(create_gpu_app(gpu)) as card_url:
        with_stand_in(config, model_server(card_url, vram_mib=VISION_MIB), card_url)
        config["startPort"] = start_port(2)
        with serve(config, tmp_path_factory.mktemp("shipped")) as swap:
            yield swap, gpu


def test_the_shipped_config_is_accepted_and_serves_both_models_by_alias(shipped):
    swap, gpu = shipped
    models = {m["id"]: m for m in loopback.get(f"{swap.url}/v1/models").json()["data"]}
    assert sorted(models) == ["face-detector", "llama3.1", "vision"]  # the detector: tests/vramctl/test_llama_swap_detector.py
    assert models["llama3.1"]["meta"]["llamaswap"]["aliases"] == ["text"]
    assert models["vision"]["meta"]["llamaswap"]["aliases"] == ["minicpm-v"]
    assert models["vision"]["name"] == "MiniCPM-V 2.6 (vision)"
    text = loopback.post(f"{swap.url}/v1/chat/completions", timeout=60,
                      json={"model": "text", "messages": [{"role": "user", "content": "hi"}]})
    assert text.status_code == 200, text.text
    [running] = loopback.get(f"{swap.url}/running").json()["running"]
    port = yaml.safe_load(swap.config_path.read_text())["startPort"]
    assert (running["model"], running["state"], running["ttl"], running["proxy"]) == (
        "llama3.1", "ready", 1800, f"http://127.0.0.1:{port}")
    assert "--n-gpu-layers 99" in running["cmd"] and "--ctx-size 8192" in running["cmd"]
    vision = loopback.post(f"{swap.url}/v1/chat/completions", timeout=60, json={"model": "minicpm-v", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "who?"}, {"type": "image_url", "image_url": {
            "url": "data:image/png;base64,iVBORw0KGgo="}}]}]})
    assert vision.status_code == 200, vision.text  # the shipped vision command has its --mmproj
    [running] = loopback.get(f"{swap.url}/running").json()["running"]
    assert (running["model"], running["ttl"], running["proxy"]) == ("vision", 900, f"http://127.0.0.1:{port + 1}")
    assert gpu.oom_count == 0


def test_llama_swap_refuses_a_config_it_cannot_load(tmp_path):
    """What makes the test above mean something: the binary validates its config and exits on a bad one."""
    config = yaml.safe_load(ROOT_CONFIG.read_text())
    config["models"]["vision"]["cmd"] += " ${no_such_macro}"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    out = subprocess.run(start_args(bad, free_port()), capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "no_such_macro" in out.stdout + out.stderr, out.stdout + out.stderr
