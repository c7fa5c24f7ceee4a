"""The coordinator end to end over HTTP: llama-swap emulator + simulated card + detector service on that card."""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

import loopback
from emulators.llama_swap import LlamaSwapEmulator, create_detector_app
from emulators.ollama import create_ollama_app
from servers import free_port, serve_app
from vramctl import (Consumer, Coordinator, EmulatorProbe, NotEnoughVram, ReservationTimeout, UnknownConsumer,
                     VramSettings, metrics)

STOP_S, RELEASE_S = 0.05, 0.3


def llama_swap_config(release_s: float = RELEASE_S, text_load_s: float = 0.05) -> dict[str, Any]:
    # The original bot's card: 8 GB of which 512 MiB held by the display and CUDA contexts; the vision model with its
    # mmproj and image context does not fit beside the detector; the text model does.
    return {"gpu_total_mib": 8192, "gpu_reserved_mib": 512, "models": {
        "llama3.1": {"ttl": 1800, "vram_mib": 5120, "load_s": text_load_s, "stop_s": STOP_S, "release_s": release_s},
        "vision": {"ttl": 900, "vram_mib": 6912, "vision": True, "load_s": 0.05, "stop_s": STOP_S, "release_s": release_s},
    }}


@dataclass
class Card:
    emu: LlamaSwapEmulator
    detector_url: str
    detector: dict[str, Any]

    def settings(self, **kw: Any) -> VramSettings:
        base = dict(
            consumers=[
                Consumer(name="text", kind="llama-swap", model="llama3.1", vram_mib=5120, priority=0),
                Consumer(name="vision", kind="llama-swap", model="vision", vram_mib=6912, priority=1),
                Consumer(name="face-detector", kind="facedetect", url=self.detector_url, vram_mib=1024, priority=2),
            ],
            probe="emulator", probe_url=self.emu.gpu_url, llama_swap_url=self.emu.url,
            poll_s=0.02, timeout_s=5.0, settle_s=0.3, safety_margin_mib=256,
        )
        return VramSettings(**{**base, **kw})


@contextlib.contextmanager
def card_ctx(**cfg: Any):
    emu = LlamaSwapEmulator(llama_swap_config(**cfg))
    det_app = create_detector_app(emu.gpu, vram_mib=1024, stop_s=0.02, release_s=0.1)
    with emu.serve(), serve_app(det_app) as det_url:
        yield Card(emu, det_url, det_app.state.detector)


@pytest.fixture()
def card():
    with card_ctx() as c:
        yield c


def names(r) -> list[str]:
    return r.timeline.names()


async def test_seed_scenario_frees_vision_without_oom_and_never_loads_text(card):
    card.emu.preload("vision")
    async with Coordinator(card.settings()) as coord:
        async with coord.reserve("face-detector", note="avatar change") as r:
            det = loopback.post(f"{card.detector_url}/detect")
            assert det.status_code == 200
    ev = names(r)
    order = ["request", "measured", "unload", "unloaded", "waiting", "free", "resumed", "granted", "released"]
    assert [e for e in ev if e in order] == order, ev
    assert r.unloaded == ["vision"]
    assert card.emu.gpu.oom_count == 0 and card.detector["ooms"] == 0
    assert "llama3.1" not in card.emu.loads  # the original bot loaded 5 GB of text model it did not need
    assert card.detector["loaded"] and card.detector["loads"] == 1
    # It waited for the driver, not for a fixed delay: memory was still held right after the unload returned...
    unloaded = next(e for e in r.timeline.events if e.event == "unloaded")
    assert unloaded.free_mib is not None and unloaded.free_mib < 1024 + 256
    # ...and was granted once the ledger shows it released.
    assert r.waited_s >= RELEASE_S and r.free_mib >= 1024 + 256
    assert r.timeline.to_json()[0]["event"] == "request"
    assert coord.timeline.count("granted") == 1
    assert b'vramctl_reservations_total{consumer="face-detector",outcome="granted"}' in metrics.render()


async def test_batch_of_k_images_costs_one_swap(card):
    card.emu.preload("vision")
    k = 6
    async with Coordinator(card.settings()) as coord:
        async with coord.reserve("face-detector") as r:
            async with httpx.AsyncClient() as http:
                for _ in range(k):
                    assert (await http.post(f"{card.detector_url}/detect")).status_code == 200
    assert card.detector["detections"] == k
    assert r.timeline.count("unload") == 1 and r.timeline.count("unloaded") == 1
    assert card.emu.unloads == ["vision"] and card.detector["loads"] == 1


async def test_already_enough_or_already_loaded_goes_at_once(card):
    async with Coordinator(card.settings()) as coord:
        async with coord.reserve("face-detector") as r1:
            pass
        async with coord.reserve("face-detector") as r2:
            pass
    assert "enough" in names(r1) and r1.unloaded == []
    assert "already-loaded" in names(r2) and "measured" not in names(r2)


async def test_detector_lends_its_vram_back_for_vision(card):
    """Pause/resume: the vision model needs room, so the (idle) detector is unloaded, then vision loads."""
    async with Coordinator(card.settings()) as coord:
        async with coord.reserve("face-detector"):
            pass
        assert card.detector["loaded"]
        async with coord.reserve("vision") as r:
            chat = loopback.post(f"{card.emu.url}/v1/chat/completions", timeout=10, json={
                "model": "vision", "messages": [{"role": "user", "content": "is this Miku?"}]})
            assert chat.status_code == 200, chat.text
    assert r.unloaded == ["face-detector"] and not card.detector["loaded"]
    assert card.emu.gpu.oom_count == 0


async def until(condition, timeout: float = 5.0) -> None:
    """Wait for a condition another task brings about (never a fixed delay standing in for it)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def test_held_reservation_is_never_evicted_and_waits_its_turn(card):
    card.emu.preload("vision")
    async with Coordinator(card.settings()) as coord:
        granted, let_go = asyncio.Event(), asyncio.Event()
        release_at: dict[str, float] = {}

        async def vision_user():
            async with coord.reserve("vision"):
                granted.set()
                await let_go.wait()
                release_at["vision"] = time.monotonic()

        task = asyncio.create_task(vision_user())
        await granted.wait()
        held = coord.reserve("face-detector")
        detector = asyncio.create_task(held.__aenter__())
        await until(lambda: coord.timeline.count("waiting") == 1)  # it polls, vision untouched while held
        assert not detector.done() and card.emu.unloads == []
        let_go.set()
        r = await asyncio.wait_for(detector, 5)
        await held.__aexit__(None, None, None)
        await task
    unload_t = r.timeline.started + next(e.t for e in r.timeline.events if e.event == "unload")
    assert unload_t >= release_at["vision"]  # vision was unloaded only after its holder let go
    assert r.unloaded == ["vision"] and card.emu.gpu.oom_count == 0


async def test_reservations_are_granted_in_arrival_order(card):
    entered: list[str] = []
    async with Coordinator(card.settings()) as coord:
        async def hold(name: str, note: str):
            async with coord.reserve(name, note=note):
                entered.append(note)

        tasks = []
        for i in range(4):
            tasks.append(asyncio.create_task(hold("face-detector", f"job{i}")))
            await until(lambda n=i + 1: coord.timeline.count("request") == n)  # arrived before the next is made
        await asyncio.gather(*tasks)
    req = [e.detail for e in coord.timeline.events if e.event == "request"]
    assert [d.split(";")[1].strip() for d in req] == ["job0", "job1", "job2", "job3"]
    assert entered == ["job0", "job1", "job2", "job3"] and coord.timeline.count("granted") == 4


async def test_unknown_consumer_is_a_clear_error(card):
    async with Coordinator(card.settings()) as coord:
        with pytest.raises(UnknownConsumer, match="configured: text, vision, face-detector"):
            async with coord.reserve("gpu-hog"):
                pass


# ---- faults: each a clear outcome, never a hang ---------------------------------------------------------
async def test_llama_swap_down_gives_a_clear_error_quickly(card):
    card.emu.preload("vision")
    card.emu.set_down(True)
    t0 = time.monotonic()
    # "Quickly": at once, not when the reservation's time runs out (30 s, far from what a loaded machine takes).
    async with Coordinator(card.settings(timeout_s=30.0, settle_s=0.3)) as coord:
        with pytest.raises((NotEnoughVram, ReservationTimeout)) as exc:
            async with coord.reserve("face-detector"):
                pass
    assert time.monotonic() - t0 < 15
    msg = str(exc.value)
    assert "vision" in msg and "unreachable" in msg and "face-detector" in msg
    assert "server-unreachable" in coord.timeline.names()


async def test_older_llama_swap_without_per_model_unload_falls_back_to_unload_all(card):
    card.emu.preload("vision")
    card.emu.switches.legacy_no_model_unload = True
    async with Coordinator(card.settings()) as coord:
        async with coord.reserve("face-detector") as r:
            pass
    assert "unload-fallback" in names(r) and r.unloaded == ["vision"]
    assert {"path": "/unload"} in card.emu.requests
    assert card.emu.gpu.oom_count == 0


async def test_swap_to_another_model_only_as_last_resort_and_said_so():
    with card_ctx(text_load_s=0.4) as card:  # text loads after vision's memory is back, so the swap succeeds
        card.emu.preload("vision")
        card.emu.switches.legacy_no_model_unload = True
        card.emu.switches.legacy_no_unload = True
        async with Coordinator(card.settings()) as coord:
            async with coord.reserve("face-detector") as r:
                pass
        last = next(e for e in r.timeline.events if e.event == "swap-last-resort")
        assert "LAST RESORT" in last.detail and "llama3.1" in last.detail
        assert card.emu.loads == ["vision", "llama3.1"] and r.unloaded == ["vision"]


async def test_probe_unavailable_falls_back_to_unload_and_settle(card):
    card.emu.preload("vision")
    dead = f"http://127.0.0.1:{free_port()}"
    s = card.settings(settle_s=0.4)
    async with httpx.AsyncClient() as http:
        coord = Coordinator(s, probe=EmulatorProbe(dead, http), http=http)
        async with coord.reserve("face-detector") as r:
            pass
    ev = names(r)
    assert "probe-unavailable" in ev and "settle" in ev and ev.index("unloaded") < ev.index("settle")
    assert r.waited_s >= 0.4 and r.unloaded == ["vision"]


async def test_timeout_names_who_still_holds_what():
    with card_ctx(release_s=60.0) as card:  # the memory comes back long after the test: only the timeout ends the wait
        card.emu.preload("vision")
        t0 = time.monotonic()
        async with Coordinator(card.settings(timeout_s=0.6)) as coord:
            with pytest.raises(ReservationTimeout) as exc:
                async with coord.reserve("face-detector"):
                    pass
        assert time.monotonic() - t0 < 15  # the timeout's 0.6 s, not the release's 60
        msg = str(exc.value)
        assert "not free within 0.6 s" in msg and "vision" in msg and "releasing" in msg
        assert coord.timeline.names()[-1] == "failed"


async def test_no_probe_unloads_then_waits_the_settle_delay(card):
    card.emu.preload("vision")
    async with Coordinator(card.settings(probe="none", probe_url=None, settle_s=0.35)) as coord:
        async with coord.reserve("face-detector") as r:
            pass
    ev = names(r)
    assert "no-probe" in ev and "settle" in ev and r.unloaded == ["vision"] and r.waited_s >= 0.35
    assert card.emu.gpu.oom_count == 0  # 0.35 s settle ≥ 0.05 stop + 0.3 release here; the bench shows when it is not


async def test_status_reports_gpu_and_what_each_server_has_loaded(card):
    card.emu.preload("vision")
    async with Coordinator(card.settings()) as coord:
        st = await coord.status()
    assert st["probe"] == "emulator" and st["gpu"]["free_mib"] == 8192 - 512 - 6912
    loaded = {c["name"]: c["loaded"] for c in st["consumers"]}
    assert loaded == {"text": False, "vision": True, "face-detector": False}
    assert st["servers"][card.emu.url]["running"] == [{"model": "vision", "state": "ready"}]


async def test_ollama_answers_keep_alive_zero_at_once_and_vramctl_waits_for_the_memory(card):
    """Ollama (server/routes.go → sched.expireRunner) answers the unload as soon as it is queued; the runner
    stops later and the driver lets go after that. The reservation is granted on the measured memory only."""
    oll = create_ollama_app({"llava": {"vram_mib": 6912, "stop_s": 0.3, "release_s": 0.2}}, card.emu.gpu)
    with serve_app(oll) as oll_url:
        loaded = await asyncio.to_thread(httpx.post, f"{oll_url}/api/generate", json={"model": "llava"})
        assert loaded.status_code == 200
        s = card.settings(consumers=[
            Consumer(name="llava", kind="ollama", model="llava", url=oll_url, vram_mib=6912),
            Consumer(name="face-detector", kind="facedetect", url=card.detector_url, vram_mib=1024),
        ])
        async with Coordinator(s) as coord, coord.reserve("face-detector") as r:
            assert (await asyncio.to_thread(httpx.post, f"{card.detector_url}/detect")).status_code == 200
        ev = names(r)
        assert ev.index("unloaded") < ev.index("waiting") < ev.index("free") < ev.index("granted")
        unloaded = next(e for e in r.timeline.events if e.event == "unloaded")
        assert unloaded.free_mib is not None and unloaded.free_mib < 1024 + 256  # answered, memory still held
        assert r.unloaded == ["llava"] and r.free_mib >= 1024 + 256
        ps = await asyncio.to_thread(httpx.get, f"{oll_url}/api/ps")
        assert oll.state.ollama["unloads"] == ["llava:latest"] and ps.json()["models"] == []
        assert card.emu.gpu.oom_count == 0 and card.detector["ooms"] == 0


def test_ollama_emulator_answers_before_the_runner_stops(card):
    oll = create_ollama_app({"llava": {"vram_mib": 1000, "stop_s": 0.5}}, card.emu.gpu)
    with serve_app(oll) as url:
        loopback.post(f"{url}/api/generate", json={"model": "llava"})
        r = loopback.post(f"{url}/api/generate", json={"model": "llava", "keep_alive": 0})
        assert r.json() == {**r.json(), "model": "llava", "done": True, "done_reason": "unload"}
        assert [m["name"] for m in loopback.get(f"{url}/api/ps").json()["models"]] == ["llava:latest"]  # still there
        assert oll.state.ollama["unloads"] == []


@contextlib.contextmanager
def vision_stopping_on_its_own(stop_s: float = 0.4):
    """Vision (4096) is being stopped by another client, text (2048) is loaded: 8192 - 512 - 4096 - 2048 = 1536
    free; a 2048 MiB detector needs 2048 + 256. Vision's memory alone covers it once it is back."""
    emu = LlamaSwapEmulator({"gpu_total_mib": 8192, "gpu_reserved_mib": 512, "models": {
        "vision": {"vram_mib": 4096, "stop_s": stop_s, "release_s": 0.2},
        "llama3.1": {"vram_mib": 2048}}})
    det_app = create_detector_app(emu.gpu, vram_mib=2048)
    with emu.serve(), serve_app(det_app) as det_url:
        emu.preload("vision")
        emu.preload("llama3.1")
        consumers = [Consumer(name="text", kind="llama-swap", model="llama3.1", vram_mib=2048, priority=0),
                     Consumer(name="vision", kind="llama-swap", model="vision", vram_mib=4096, priority=1),
                     Consumer(name="face-detector", kind="facedetect", url=det_url, vram_mib=2048, priority=2)]
        with ThreadPoolExecutor(1) as pool:
            other_client = pool.submit(httpx.post, f"{emu.url}/api/models/unload/vision", timeout=10)
            deadline = time.monotonic() + 5
            while emu.state["vision"] != "stopping":
                assert time.monotonic() < deadline
                time.sleep(0.005)
            yield emu, det_url, det_app.state.detector, consumers
            assert other_client.result().text == "OK"


async def test_a_model_stopping_on_its_own_is_waited_for_and_nothing_else_is_unloaded():
    """/running shows `stopping` (a ttl expiry, another client's unload): that memory is on its way back, so
    vramctl waits for the card to show it free instead of unloading the text model as well."""
    # vramctl must see the stop under way: 2 s leave room for a slow start of the coordinator on a busy machine
    with vision_stopping_on_its_own(stop_s=2.0) as (emu, det_url, detector, consumers):
        s = VramSettings(consumers=consumers, probe="emulator", probe_url=emu.gpu_url, llama_swap_url=emu.url,
                         poll_s=0.02, timeout_s=5.0, settle_s=0.3, safety_margin_mib=256)
        async with Coordinator(s) as coord, coord.reserve("face-detector") as r:
            assert (await asyncio.to_thread(httpx.post, f"{det_url}/detect")).status_code == 200
    releasing = next(e for e in r.timeline.events if e.event == "releasing")
    assert releasing.consumer == "vision" and "stopping" in releasing.detail
    assert r.unloaded == [] and "unload" not in names(r) and emu.unloads == ["vision"]
    assert emu.running() == ["llama3.1"] and emu.gpu.oom_count == 0 and detector["ooms"] == 0


async def test_without_a_probe_a_stopping_model_is_given_the_settle_delay():
    # As above: vramctl must see the stop under way, so it lasts 2 s (0.4 s was a race with a slow start).
    with vision_stopping_on_its_own(stop_s=2.0) as (emu, det_url, detector, consumers):
        s = VramSettings(consumers=consumers, probe="none", llama_swap_url=emu.url, gpu_total_mib=8192 - 512,
                         settle_s=2.5, safety_margin_mib=256)
        async with Coordinator(s) as coord, coord.reserve("face-detector") as r:
            assert (await asyncio.to_thread(httpx.post, f"{det_url}/detect")).status_code == 200
    assert "settle" in names(r) and r.unloaded == [] and emu.running() == ["llama3.1"]
    assert emu.gpu.oom_count == 0 and detector["ooms"] == 0  # 2.5 s settle ≥ 2 s stop + 0.2 s release


async def test_fewest_consumers_are_unloaded(card):
    """Text (5120) alone covers what vision (6912) needs beside the 1024 detector? No: 8192-512-1024-5120=1536.
    With text + detector loaded, making room for vision must unload both — and nothing when enough is free."""
    card.emu.preload("llama3.1")
    async with Coordinator(card.settings()) as coord:
        async with coord.reserve("face-detector") as r1:
            pass
        assert r1.unloaded == []  # 8192-512-5120 = 2560 free ≥ 1280
        async with coord.reserve("vision") as r2:
            pass
    assert sorted(r2.unloaded) == ["face-detector", "text"]


async def test_victims_are_unloaded_together(card):
    """Text and detector both in vision's way: both unloads are under way before either has finished."""
    card.emu.preload("llama3.1")
    async with Coordinator(card.settings()) as coord:
        async with coord.reserve("face-detector"):
            pass
        async with coord.reserve("vision") as r:
            pass
    steps = [(e.event, e.consumer) for e in r.timeline.events if e.event in ("unload", "unloaded")]
    assert sorted(steps[:2]) == [("unload", "face-detector"), ("unload", "text")], steps
    assert sorted(steps[2:]) == [("unloaded", "face-detector"), ("unloaded", "text")], steps
    assert r.unloaded == ["text", "face-detector"]  # the planner's order, whoever finished first
    assert card.emu.gpu.oom_count == 0


async def test_memory_promised_to_a_model_still_loading_is_not_handed_out(card):
    """Vision is reserved but not loaded yet (it loads on its first request). A detector reservation made
    meanwhile must not take that memory — or the vision load would OOM. It waits for vision's turn to end."""
    async with Coordinator(card.settings()) as coord:
        async with coord.reserve("vision") as rv:
            held = coord.reserve("face-detector")
            detector = asyncio.create_task(held.__aenter__())
            await until(lambda: coord.timeline.count("waiting") == 1)  # the detector's: it polls, and keeps waiting
            assert not detector.done() and coord.timeline.count("measured") == 2  # vision's, then the detector's
            chat = loopback.post(f"{card.emu.url}/v1/chat/completions", timeout=10, json={
                "model": "vision", "messages": [{"role": "user", "content": "is this Miku?"}]})
            assert chat.status_code == 200, chat.text
        rd = await asyncio.wait_for(detector, 5)
        await held.__aexit__(None, None, None)
    assert card.emu.gpu.oom_count == 0 and card.detector["ooms"] == 0
    measured = next(e for e in rd.timeline.events if e.event == "measured")
    assert "promised" in measured.detail
    assert rd.unloaded == ["vision"] and card.detector["loaded"]
    events = [(e.event, e.consumer) for e in coord.timeline.events]
    assert events.index(("released", "vision")) < events.index(("granted", "face-detector"))
    assert rv.unloaded == []
