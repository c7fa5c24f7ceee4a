"""The llama-swap emulator speaks llama-swap's API faithfully and keeps an honest VRAM ledger."""

from __future__ import annotations

import base64
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import loopback
from emulators.llama_swap import (
    MODEL_UNLOADED,
    LlamaSwapEmulator,
    SimulatedGpu,
    create_app,
)
from servers import serve_app

CONFIG = """
healthCheckTimeout: 60
gpu_total_mib: 8192
gpu_reserved_mib: 512
models:
  "llama3.1":
    cmd: llama-server --port ${PORT} -m /models/llama3.1.gguf
    proxy: http://127.0.0.1:${PORT}
    ttl: 1800
    aliases: [text]
    vram_mib: 5120
    load_s: 0.05
  vision:
    cmd: llama-server --port ${PORT} -m /models/minicpm-v.gguf --mmproj /models/mmproj.gguf
    ttl: 900
    vram_mib: 6912
    vision: true
    stop_s: 0.05
    release_s: 0.3
"""

PNG_1PX = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cf000000030101009a5c2f3b0000000049454e44ae426082")).decode()


@pytest.fixture()
def emu():
    e = LlamaSwapEmulator(CONFIG)
    with e.serve():
        yield e


def chat(url: str, model: str, content="hi", **kw) -> httpx.Response:
    return loopback.post(f"{url}/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": content}],
                                                          **kw}, timeout=10)


def until(condition, timeout: float = 5.0) -> None:
    """Wait for a state the emulator reaches on its own clock (the driver's release, a ttl), bounded."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the emulator never got there"
        time.sleep(0.01)


def memory_back(gpu: SimulatedGpu) -> bool:
    """Whether the simulated driver has handed every exited process's memory back."""
    return not any("releasing" in p["name"] for p in gpu.snapshot()["processes"])


def test_management_endpoints_have_llama_swaps_shapes(emu):
    assert loopback.get(f"{emu.url}/health").text == "OK"
    assert loopback.head(f"{emu.url}/health").status_code == 200  # Go's mux answers HEAD on a GET route
    models = loopback.get(f"{emu.url}/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["llama3.1", "vision"]
    assert all(m["owned_by"] == "llama-swap" and m["object"] == "model" for m in models["data"])
    assert models["data"][0]["meta"] == {"llamaswap": {"type": "model", "aliases": ["text"]}}
    assert {m["status"]["value"] for m in models["data"]} == {"unloaded"}
    assert loopback.get(f"{emu.url}/running").json() == {"running": []}
    emu.preload("vision")
    running = loopback.get(f"{emu.url}/running").json()["running"]
    assert [(r["model"], r["state"], r["ttl"]) for r in running] == [("vision", "ready", 900)]
    r = loopback.post(f"{emu.url}/api/models/unload/vision")
    assert (r.status_code, r.text) == (200, "OK")
    assert loopback.get(f"{emu.url}/running").json() == {"running": []}
    until(lambda: memory_back(emu.gpu))  # vision's memory back from the driver
    emu.preload("llama3.1")
    assert (loopback.get(f"{emu.url}/unload").text, emu.running()) == ("OK", [])
    assert loopback.post(f"{emu.url}/api/models/unload").json() == {"msg": "ok"}


def test_errors_have_llama_swaps_format(emu):
    """swaputil.SendResponse: JSON by default, "llama-swap: ..." text for Accept: text/plain; the router's own
    404/405 are Go's plain text (what an older server without a route answers too)."""
    r = loopback.post(f"{emu.url}/api/models/unload/nope")
    assert (r.status_code, r.json()) == (404, {"src": "llama-swap", "error": "model not found"})
    r = loopback.post(f"{emu.url}/api/models/unload/nope", headers={"Accept": "text/plain"})
    assert (r.status_code, r.text) == (404, "llama-swap: model not found")
    assert "<h1>llama-swap</h1>" in loopback.post(f"{emu.url}/api/models/unload/nope", headers={"Accept": "text/html"}).text
    r = loopback.get(f"{emu.url}/no/such/route")
    assert (r.status_code, r.text) == (404, "404 page not found\n")
    assert loopback.delete(f"{emu.url}/running").status_code == 405
    emu.switches.error_envelope = True  # main after v250 (#1038)
    assert loopback.post(f"{emu.url}/api/models/unload/nope").json() == {"src": "llama-swap", "error": {
        "message": "model not found", "type": "invalid_request_error", "param": None, "code": "not_found"}}


def test_running_lists_every_model_that_is_not_stopped(emu):
    """RunningModels skips only stopped and shutdown: a loading model shows `starting`, a stopping one `stopping`."""
    def seen(state: str) -> bool:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if any(r["state"] == state for r in loopback.get(f"{emu.url}/running").json()["running"]):
                return True
        return False

    emu.models["llama3.1"].load_s = 0.5
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(chat, emu.url, "text")
        assert seen("starting")
        assert answer.result().status_code == 200
        assert [(r["model"], r["state"]) for r in loopback.get(f"{emu.url}/running").json()["running"]] == [
            ("llama3.1", "ready")]
        assert loopback.get(f"{emu.url}/v1/models").json()["data"][0]["status"] == {"value": "loaded"}
        emu.models["llama3.1"].stop_s = 0.5
        stopped = pool.submit(httpx.post, f"{emu.url}/api/models/unload/text")  # an alias names the model
        assert seen("stopping")
        assert stopped.result().text == "OK" and emu.unloads == ["llama3.1"]


def test_macros_are_expanded_like_llama_swap():
    e = LlamaSwapEmulator({"startPort": 9000, "macros": {"bin": "/app/llama-server", "srv": "${bin} --port ${PORT}"},
                           "models": {"b": {"cmd": "${srv} -m ${MODEL_ID}.gguf\n# a comment ${nope}"},
                                      "a": {"cmd": "${srv} -m ${ctx}", "macros": {"ctx": "4096"}},
                                      "c": {"cmd": "docker run x", "proxy": "http://10.0.0.9:8080"}}})
    assert e.models["a"].cmd == "/app/llama-server --port 9000 -m 4096"  # ports in sorted model-id order
    assert e.models["b"].cmd == "/app/llama-server --port 9001 -m b.gguf"
    assert (e.models["a"].proxy, e.models["c"].proxy) == ("http://localhost:9000", "http://10.0.0.9:8080")
    with pytest.raises(ValueError, match="unknown macro"):
        LlamaSwapEmulator({"models": {"m": {"cmd": "x --port ${PORT} ${undefined}"}}})
    with pytest.raises(ValueError, match="only available when used in cmd"):
        LlamaSwapEmulator({"models": {"m": {"cmd": "x"}}})  # the default proxy needs ${PORT}


def test_peers_are_listed_answered_remotely_and_not_unloadable_here():
    e = LlamaSwapEmulator({"models": {"m": {"cmd": "s --port ${PORT}", "vram_mib": 100}},
                           "peers": {"gpu-box": {"proxy": "http://192.0.2.1:8080", "models": ["big"]}}})
    with e.serve():
        ids = {m["id"]: m["meta"]["llamaswap"] for m in loopback.get(f"{e.url}/v1/models").json()["data"]}
        assert ids["gpu-box/big"] == {"type": "peer", "peerID": "gpu-box"}
        assert chat(e.url, "big").status_code == 200 and e.gpu.free_mib == 8192  # another machine's memory
        r = loopback.post(f"{e.url}/api/models/unload/gpu-box/big")
        assert (r.status_code, r.json()["error"]) == (404, "model not found")  # RealModelName: local models only
        assert loopback.get(f"{e.url}/running").json() == {"running": []}


def test_unload_returns_when_process_is_gone_but_memory_comes_back_later(emu):
    emu.models["vision"].release_s = 1.5  # room for a slow round trip on a busy machine before the check below
    emu.preload("vision")
    before = emu.gpu.free_mib
    t0 = time.monotonic()
    loopback.post(f"{emu.url}/api/models/unload/vision")
    assert time.monotonic() - t0 >= 0.05  # stop_s
    assert emu.gpu.free_mib == before  # the driver has not released it yet
    vram = loopback.get(f"{emu.url}/_emulator/vram").json()
    assert any("releasing" in p["name"] for p in vram["processes"])
    until(lambda: memory_back(emu.gpu))
    assert emu.gpu.free_mib == 8192 - 512
    history = emu.gpu.history
    assert [h["event"] for h in history] == ["alloc", "exit", "released"]
    assert history[2]["t"] - history[1]["t"] >= 1.5 - 0.01  # released the driver's delay after the exit


def test_chat_loads_on_demand_swaps_others_and_ooms_like_the_seed(emu):
    emu.models["vision"].release_s = 1.0  # still releasing when text loads, however slow the machine
    emu.preload("vision")
    r = chat(emu.url, "text", max_tokens=1)  # alias of llama3.1; vision's memory is still being released
    assert (r.status_code, r.json()["error"]) == (500, "unspecific error: upstream command exited prematurely")
    assert emu.gpu.oom_count == 1 and emu.swap_count == 1 and emu.unloads == ["vision"]
    until(lambda: memory_back(emu.gpu))
    r = chat(emu.url, "llama3.1")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    assert emu.loads == ["vision", "llama3.1"] and emu.running() == ["llama3.1"]


def test_an_unload_while_the_model_starts_aborts_the_load():
    """process_command.go / fifo.go (v250): a Stop during the start cancels it — starting → stopped, no memory
    taken — and every request waiting for that model gets the unload's error (the real proxy answers the same:
    test_llama_swap_real). A request that comes after the unload loads the model again."""
    e = LlamaSwapEmulator({"models": {"slow": {"vram_mib": 1024, "load_s": 30}}})
    with e.serve(), ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(chat, e.url, "slow") for _ in range(2)]
        deadline = time.monotonic() + 10
        while e.waiting["slow"] < 2:  # both requests in, the first starting the model, the second behind it
            assert time.monotonic() < deadline, f"{e.waiting['slow']} of 2 requests reached the emulator"
            time.sleep(0.01)
        assert [m["state"] for m in loopback.get(f"{e.url}/running").json()["running"]] == ["starting"]
        r = loopback.post(f"{e.url}/api/models/unload/slow", timeout=10)
        assert (r.status_code, r.text) == (200, "OK")
        for w in waiting:
            r = w.result(timeout=10)
            assert (r.status_code, r.json()) == (500, {"src": "llama-swap", "error": f"unspecific error: {MODEL_UNLOADED}"})
        assert loopback.get(f"{e.url}/running").json() == {"running": []}
        assert e.gpu.history == [] and e.loads == [] and e.unloads == ["slow"]
        e.models["slow"].load_s = 0
        assert chat(e.url, "slow").status_code == 200 and e.loads == ["slow"]


def test_image_inputs_and_configurable_answers(emu):
    seen = {}

    def answer(req):
        seen["images"], seen["text"] = req.images, req.text
        return "YES" if req.images else "NO"

    emu.set_answer("vision", answer)
    content = [{"type": "text", "text": "Is this Miku?"},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1PX}"}}]
    r = chat(emu.url, "vision", content)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "YES"
    assert seen["text"] == "Is this Miku?" and seen["images"][0][:4] == b"\x89PNG"
    bad = [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
    assert chat(emu.url, "vision", bad).status_code == 400
    r = chat(emu.url, "llama3.1", content)  # a text model has no mmproj
    assert r.status_code == 500 and "mmproj" in r.text
    emu.set_answer("llama3.1", "hello there")
    loopback.post(f"{emu.url}/api/models/unload/vision")
    until(lambda: memory_back(emu.gpu))  # the driver hands vision's memory back, or loading llama3.1 would OOM
    assert chat(emu.url, "llama3.1").json()["choices"][0]["message"]["content"] == "hello there"


def test_bad_requests_are_4xx(emu):
    r = loopback.post(f"{emu.url}/v1/chat/completions", content=b"not json", headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()["error"]) == (404, "no model id could be identified")
    r = chat(emu.url, "no-such-model")
    assert (r.status_code, r.json()) == (404, {"src": "llama-swap", "error": "no router for requested model"})
    r = loopback.post(f"{emu.url}/v1/chat/completions", json={"model": "llama3.1", "messages": []})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"  # llama-server's own


def test_ttl_expiry_unloads():
    e = LlamaSwapEmulator({"models": {"m": {"ttl": 1, "vram_mib": 100}}})
    e.models["m"].ttl = 0.2  # llama-swap's ttl is whole seconds; shortened here to keep the test fast
    with e.serve():
        assert chat(e.url, "m").status_code == 200
        until(lambda: e.unloads == ["m"])  # the ttl loop stops it (every 50 ms) once it sat idle for its ttl
        assert e.running() == []


def test_switches_and_api_keys():
    e = LlamaSwapEmulator({"apiKeys": ["sekret"], "models": {"m": {"vram_mib": 100}}})
    with e.serve():
        r = loopback.get(f"{e.url}/running")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
        assert loopback.get(f"{e.url}/health").status_code == 200  # unprotected, as in llama-swap
        auth = {"Authorization": "Bearer sekret"}
        assert loopback.get(f"{e.url}/running", headers=auth).status_code == 200
        e.switches.fail_status = 503
        assert loopback.get(f"{e.url}/running", headers=auth).status_code == 503
        assert loopback.get(f"{e.url}/_emulator/vram").status_code == 200  # emulator routes never misbehave
        e.switches.fail_status = None
        e.switches.legacy_no_model_unload = True
        r = loopback.post(f"{e.url}/api/models/unload/m", headers=auth)
        assert (r.status_code, r.text) == (404, "404 page not found")
        e.switches.slow_s = 0.2
        t0 = time.monotonic()
        loopback.get(f"{e.url}/health")
        assert time.monotonic() - t0 >= 0.2
        e.switches.slow_s = 0
        e.set_down(True)
        with pytest.raises(httpx.ConnectError):
            loopback.get(f"{e.url}/health")
        assert loopback.get(f"{e.gpu_url}/_emulator/vram").status_code == 200
        e.set_down(False)
        assert loopback.get(f"{e.url}/health").text == "OK"


def test_create_app_serves_with_the_shared_helper():
    gpu = SimulatedGpu(total_mib=2048)
    app = create_app({"models": {"m": {"vram_mib": 4096}}}, gpu)
    with serve_app(app) as url:
        r = chat(url, "m")
        assert r.status_code == 500 and "exited prematurely" in r.text
        assert app.state.emulator.ledger()["oom_count"] == 1
        assert loopback.post(f"{url}/_emulator/alloc", json={"owner": "x", "mib": 4096}).status_code == 500
        assert loopback.post(f"{url}/_emulator/alloc", json={"owner": "x"}).status_code == 400


def test_the_emulated_release_is_the_one_compose_pins():
    """docker-compose.yml builds llama-swap/Dockerfile, which names the release image it builds on."""
    import yaml
    from dockerfile_parse import DockerfileParser
    from emulators.llama_swap import LLAMA_SWAP_VERSION, ROOT_CONFIG
    compose = yaml.safe_load((ROOT_CONFIG.parents[1] / "docker-compose.yml").read_text())
    dockerfile = ROOT_CONFIG.parents[1] / compose["services"]["llama-swap"]["build"]["dockerfile"]
    image = DockerfileParser(path=str(dockerfile)).baseimage
    assert image.startswith(f"ghcr.io/mostlygeek/llama-swap:{LLAMA_SWAP_VERSION}-cuda-"), image
