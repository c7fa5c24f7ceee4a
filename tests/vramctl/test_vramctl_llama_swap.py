"""vramctl's llama-swap client against the emulator of the pinned release: states, aliases, peers, old servers."""

from __future__ import annotations

import httpx
import pytest
from emulators.llama_swap import LlamaSwapEmulator

from vramctl import Consumer, Coordinator, EmulatorProbe, VramSettings
from vramctl.errors import ServerError, UnloadUnsupported
from vramctl.servers.llama_swap import (
    Catalog,
    LlamaSwapClient,
    RemoteModel,
    error_message,
)

CONFIG = {"gpu_total_mib": 8192, "gpu_reserved_mib": 512,
          "models": {"vision": {"cmd": "llama-server --port ${PORT}", "aliases": ["minicpm-v"], "vram_mib": 4608,
                                "vision": True, "stop_s": 0.02},
                     "llama3.1": {"cmd": "llama-server --port ${PORT}", "aliases": ["text"], "vram_mib": 2048}},
          "peers": {"gpu-box": {"proxy": "http://192.0.2.1:8080", "models": ["big"]}}}


@pytest.fixture()
def emu():
    e = LlamaSwapEmulator(CONFIG)
    with e.serve():
        yield e


async def test_catalog_resolves_aliases_and_knows_peers(emu):
    async with httpx.AsyncClient() as http:
        cat = await LlamaSwapClient(emu.url, http).catalog()
        assert cat.resolve("minicpm-v") == "vision" and cat.resolve("vision") == "vision"
        assert cat.peer("gpu-box/big") == "gpu-box" and cat.peer("big") == "gpu-box" and cat.peer("vision") is None
        assert await LlamaSwapClient(emu.url, http).models() == ["llama3.1", "vision"]
    emu.include_aliases_in_list = True  # alias records of their own carry modelID
    async with httpx.AsyncClient() as http:
        cat = await LlamaSwapClient(emu.url, http).catalog()
    assert cat.real["text"] == "llama3.1"


async def test_unload_by_alias_and_the_states_running_reports(emu):
    emu.preload("vision")
    async with httpx.AsyncClient() as http:
        client = LlamaSwapClient(emu.url, http)
        [vision] = await client.running()
        assert (vision.model, vision.state, vision.holds_memory, vision.releasing) == ("vision", "ready", True, False)
        assert await client.unload("minicpm-v") == "api/models/unload"
        assert await client.running() == [] and emu.unloads == ["vision"]


async def test_a_peers_model_is_not_an_old_server_and_nothing_else_is_stopped(emu):
    """v250 answers 404 "model not found" for a peer's model; that is llama-swap's own 404, not a missing
    route: no fallback to GET /unload (which would stop every local model)."""
    emu.preload("llama3.1")
    async with httpx.AsyncClient() as http:
        client = LlamaSwapClient(emu.url, http)
        with pytest.raises(RemoteModel, match="peer 'gpu-box'.*holds no VRAM"):
            await client.unload("gpu-box/big")
        with pytest.raises(ServerError, match="does not know model 'nope'") as exc:
            await client.unload("nope")
        assert not isinstance(exc.value, (RemoteModel, UnloadUnsupported))
        emu.switches.error_envelope = True  # the same, in main's OpenAI-style error body
        with pytest.raises(RemoteModel):
            await client.unload("big")
        emu.switches.legacy_no_model_unload = True  # an older llama-swap: the router's plain 404
        with pytest.raises(UnloadUnsupported):
            await client.unload("vision")
    assert {"path": "/unload"} not in emu.requests and emu.running() == ["llama3.1"]


async def test_a_peer_consumer_holds_nothing_here_and_an_alias_consumer_is_seen_running(emu):
    emu.preload("vision")
    s = VramSettings(consumers=[
        Consumer(name="vision", kind="llama-swap", model="minicpm-v", vram_mib=4608),  # MIKU_VISION_MODEL=minicpm-v
        Consumer(name="big", kind="llama-swap", model="gpu-box/big", vram_mib=20000),
        Consumer(name="text", kind="llama-swap", model="text", vram_mib=2048)],
        probe="emulator", probe_url=emu.gpu_url, llama_swap_url=emu.url, poll_s=0.02, timeout_s=5.0)
    async with Coordinator(s) as coord:
        st = {c["name"]: c for c in (await coord.status())["consumers"]}
        async with coord.reserve("vision") as r:
            pass
    assert st["vision"]["loaded"] is True and "minicpm-v = vision, ready" in st["vision"]["detail"]
    assert st["big"]["loaded"] is False and "peer 'gpu-box'" in st["big"]["detail"]
    assert st["text"]["loaded"] is False
    assert "already-loaded" in r.timeline.names() and r.unloaded == []


def _response(status: int, body: bytes, content_type: str) -> httpx.Response:
    return httpx.Response(status, content=body, headers={"Content-Type": content_type},
                          request=httpx.Request("POST", "http://llama-swap/api/models/unload/x"))


def test_error_message_reads_every_llama_swap_error_body_and_nothing_else():
    assert error_message(_response(404, b'{"src":"llama-swap","error":"model not found"}', "application/json")) \
        == "model not found"
    envelope = (b'{"src":"llama-swap","error":{"message":"no local server found for requested model",'
                b'"type":"invalid_request_error","param":null,"code":"not_found"}}')
    assert error_message(_response(404, envelope, "application/json")) == "no local server found for requested model"
    assert error_message(_response(404, b"llama-swap: model not found", "text/plain")) == "model not found"
    assert error_message(_response(404, b"404 page not found\n", "text/plain")) is None  # Go's/gin's router
    assert error_message(_response(404, b'{"error":"x"}', "application/json")) is None  # not llama-swap's


async def test_no_local_server_is_a_remote_model_not_an_old_server():
    """The other 404 v250's handleAPIUnloadModel can give; answered by a stand-in server with that body."""
    envelope = (b'{"src":"llama-swap","error":{"message":"no local server found for requested model",'
                b'"type":"invalid_request_error","param":null,"code":"not_found"}}')

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": []})
        return httpx.Response(404, content=envelope, headers={"Content-Type": "application/json"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        with pytest.raises(RemoteModel, match="no local process"):
            await LlamaSwapClient("http://llama-swap", http).unload("elsewhere")


def test_catalog_of_an_older_server_without_meta_takes_ids_as_they_are():
    cat = Catalog.from_models([{"id": "vision", "object": "model"}])
    assert cat.resolve("vision") == "vision" and cat.resolve("unknown") == "unknown" and cat.peers == {}


async def test_probe_sees_memory_of_a_stopping_model_until_it_is_released(emu):
    emu.models["vision"].release_s = 5.0  # far beyond the next read, however slow the machine (nothing waits for it)
    emu.preload("vision")
    async with httpx.AsyncClient() as http:
        before = (await EmulatorProbe(emu.gpu_url, http).read()).free_mib
        await LlamaSwapClient(emu.url, http).unload("vision")
        assert (await EmulatorProbe(emu.gpu_url, http).read()).free_mib == before  # stopped, not yet released


async def test_doctor_accepts_an_alias_as_the_vision_model(emu):
    from mikubot.config import Settings
    from mikubot.doctor import check_llama_swap

    async with httpx.AsyncClient() as http:
        ok = await check_llama_swap(Settings(llama_swap_url=emu.url, vision_model="minicpm-v"), http)
        bad = await check_llama_swap(Settings(llama_swap_url=emu.url, vision_model="nope"), http)
    assert ok.state == "ok" and "minicpm-v" in ok.message
    assert bad.state == "fail" and "llama3.1, vision" in bad.message


@pytest.mark.parametrize(("state", "loaded", "releasing"), [("starting", True, False), ("ready", True, False),
                                                             ("stopping", False, True), ("shutdown", False, True)])
def test_every_process_state_has_a_residency(state, loaded, releasing):
    """internal/process/process.go's states, as /running may report them (v250 lists all but stopped and
    shutdown; a server that lists shutdown is still read right). Aliases resolve to the real id."""
    from vramctl.coordinator import llama_swap_residency
    from vramctl.servers.llama_swap import RunningModel

    cat = Catalog(real={"vision": "vision", "minicpm-v": "vision"})
    r = llama_swap_residency("minicpm-v", [RunningModel("vision", state)], cat)
    assert (r.loaded, r.releasing) == (loaded, releasing) and state in r.detail
    assert llama_swap_residency("minicpm-v", [], cat).loaded is False
