"""vramctl against the real face detector service (facedetect.api): pause/resume through /unload and /load,
and a reservation's need measured from the service's `uses_gpu` instead of the configured figure.

The real service runs animeface here (CPU): it needs no VRAM, so reserving it must unload nothing and it
must never be unloaded for someone else. The GPU side (a yolo-onnx detector on CUDA) cannot exist without a
GPU: the llama-swap emulator's simulated detector plays it, on the same simulated card as the models.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

import loopback
from cli_runner import run_cli
from emulators.llama_swap import LlamaSwapEmulator, create_detector_app
from facedetect.api import create_app
from facedetect.settings import FaceDetectSettings
from servers import free_port, serve_app
from vramctl.cli import app as vramctl_app
from vramctl import Consumer, Coordinator, VramSettings
from vramctl.servers import FaceDetectControl

# A tight card: vision (6912 MiB) and a 1024 MiB detector never fit together beside 512 MiB of display.
CARD = {"gpu_total_mib": 8192, "gpu_reserved_mib": 512,
        "models": {"vision": {"vram_mib": 6912, "stop_s": 0.05, "release_s": 0.1}}}


def detector_app(tmp_path, **kw):
    return create_app(FaceDetectSettings(outputs=tmp_path / "out", **{"preload": True, **kw}))


def settings(emu: LlamaSwapEmulator, detector_url: str) -> VramSettings:
    return VramSettings(probe="emulator", probe_url=emu.gpu_url, llama_swap_url=emu.url, poll_s=0.02,
                        timeout_s=10, consumers=[
                            Consumer(name="vision", kind="llama-swap", model="vision", vram_mib=6912, priority=1),
                            Consumer(name="face-detector", kind="facedetect", url=detector_url, vram_mib=1024,
                                     priority=2)])


@contextmanager
def card_with_vision() -> Iterator[LlamaSwapEmulator]:
    emu = LlamaSwapEmulator(CARD)
    with emu.serve():
        emu.preload("vision")
        yield emu


async def test_control_pauses_and_resumes_the_real_service(tmp_path):
    with serve_app(detector_app(tmp_path)) as url:
        async with httpx.AsyncClient() as http:
            ctl = FaceDetectControl(url, http)
            assert (await ctl.health())["status"] == "healthy" and await ctl.loaded()
            assert await ctl.uses_gpu() is False
            assert await ctl.unload() == "unload"
            assert not await ctl.loaded()
            assert await ctl.uses_gpu() is False  # unloaded, it still knows where it would run
            await ctl.load()
            assert await ctl.loaded()


async def test_cpu_detector_needs_no_vram_so_vision_stays(tmp_path):
    with card_with_vision() as emu, serve_app(detector_app(tmp_path)) as url:
        loopback.post(f"{url}/unload").raise_for_status()  # lent away earlier: the reservation brings it back
        async with Coordinator(settings(emu, url)) as coord:
            async with coord.reserve("face-detector") as r:
                assert loopback.get(f"{url}/health").json()["detector_loaded"] is True
        assert r.unloaded == [] and r.errors == []
        names = r.timeline.names()
        assert names[:2] == ["request", "cpu-only"] and "resumed" in names
        assert not {"measured", "unload", "waiting"} & set(names), names
        cpu = next(e for e in r.timeline.events if e.event == "cpu-only")
        assert cpu.consumer == "face-detector" and "animeface" in cpu.detail and "needs no VRAM" in cpu.detail
        assert emu.running() == ["vision"] and emu.ledger()["unloads"] == []


async def test_gpu_detector_still_makes_vision_leave(tmp_path):
    with card_with_vision() as emu, serve_app(create_detector_app(emu.gpu, vram_mib=1024)) as url:
        async with Coordinator(settings(emu, url)) as coord:
            async with coord.reserve("face-detector") as r:
                pass
        assert r.unloaded == ["vision"] and "cpu-only" not in r.timeline.names()
        assert emu.ledger()["oom_count"] == 0 and emu.running() == []


async def test_older_service_without_the_field_is_planned_by_its_declared_need(tmp_path):
    with card_with_vision() as emu, serve_app(create_detector_app(emu.gpu, vram_mib=1024, uses_gpu=None)) as url:
        async with Coordinator(settings(emu, url)) as coord:
            status = await coord.status()
            det = next(c for c in status["consumers"] if c["name"] == "face-detector")
            assert det["uses_gpu"] is None and det["needs_mib"] == 1024
            async with coord.reserve("face-detector") as r:
                pass
        assert r.unloaded == ["vision"] and "cpu-only" not in r.timeline.names()


async def test_unreachable_service_is_planned_by_its_declared_need():
    dead = f"http://127.0.0.1:{free_port()}"
    with card_with_vision() as emu:
        async with Coordinator(settings(emu, dead)) as coord:
            async with coord.reserve("face-detector") as r:
                pass
        names = r.timeline.names()
        assert "server-unreachable" in names and "cpu-only" not in names
        assert r.unloaded == ["vision"], "1024 MiB declared: vision must make room, as before"


@pytest.mark.parametrize("gpu_total_mib", [None, 8192])
async def test_cpu_detector_is_never_unloaded_for_someone_else(tmp_path, gpu_total_mib):
    with serve_app(detector_app(tmp_path)) as url:
        s = VramSettings(probe="none", settle_s=0.05, gpu_total_mib=gpu_total_mib, consumers=[
            Consumer(name="face-detector", kind="facedetect", url=url, vram_mib=1024, priority=2),
            Consumer(name="sd", kind="external", vram_mib=7500),
        ])
        async with Coordinator(s) as coord:
            # No probe: without the card's size every loaded GPU consumer would make way; with it, the estimate
            # counts the CPU detector as 0 MiB, so 7500 of 8192 fit. Either way unloading it would free nothing.
            async with coord.reserve("sd") as r:
                pass
            assert r.unloaded == [] and "settle" not in r.timeline.names()
            assert loopback.get(f"{url}/health").json()["detector_loaded"] is True


async def test_gpu_detector_is_still_paused_for_someone_else_and_resumed(tmp_path):
    emu = LlamaSwapEmulator(CARD)
    with emu.serve(), serve_app(create_detector_app(emu.gpu, vram_mib=1024, loaded=True)) as url:
        s = VramSettings(probe="none", settle_s=0.05, consumers=[
            Consumer(name="face-detector", kind="facedetect", url=url, vram_mib=1024, priority=2),
            Consumer(name="sd", kind="external", vram_mib=6000),
        ])
        async with Coordinator(s) as coord:
            async with coord.reserve("sd") as r:  # no probe: every unheld loaded GPU consumer makes way
                pass
            assert r.unloaded == ["face-detector"] and "settle" in r.timeline.names()
            assert loopback.get(f"{url}/health").json()["detector_loaded"] is False
            async with coord.reserve("face-detector") as r2:
                pass
            assert "resumed" in r2.timeline.names()
            assert loopback.get(f"{url}/health").json()["detector_loaded"] is True


def test_status_shows_the_measured_need(tmp_path):
    with serve_app(detector_app(tmp_path)) as url:
        cfg = tmp_path / "vram.json"  # JSON is YAML: the config file format vramctl reads
        cfg.write_text(json.dumps({"probe": "none", "consumers": [
            {"name": "face-detector", "kind": "facedetect", "url": url, "vram_mib": 1024, "priority": 2}]}))
        env = {**os.environ, "COLUMNS": "200"}
        env.pop("MIKU_VRAM_CONFIG", None)
        run = ["status", "--config", str(cfg)]
        r = run_cli(vramctl_app, *run, "--json", env=env)
        assert r.returncode == 0, r.stderr
        (det,) = json.loads(r.stdout)["consumers"]
        assert det["vram_mib"] == 1024 and det["needs_mib"] == 0 and det["uses_gpu"] is False
        r = run_cli(vramctl_app, *run, env=env)
        assert r.returncode == 0, r.stderr
        assert "0 (CPU)" in r.stdout and "1,024 MiB" not in r.stdout
        assert "animeface" in r.stdout and "on the CPU" in r.stdout
