"""vramctl against the real face detector service (facedetect.api): pause/resume through /unload and /load."""

from __future__ import annotations

import httpx

from facedetect.api import create_app
from facedetect.settings import FaceDetectSettings
from servers import serve_app
from vramctl import Consumer, Coordinator, VramSettings
from vramctl.servers import FaceDetectControl


def detector_app(tmp_path):
    return create_app(FaceDetectSettings(outputs=tmp_path / "out", preload=True))


async def test_control_pauses_and_resumes_the_real_service(tmp_path):
    with serve_app(detector_app(tmp_path)) as url:
        async with httpx.AsyncClient() as http:
            ctl = FaceDetectControl(url, http)
            assert (await ctl.health())["status"] == "healthy" and await ctl.loaded()
            assert await ctl.unload() == "unload"
            assert not await ctl.loaded()
            await ctl.load()
            assert await ctl.loaded()


async def test_reserving_the_detector_resumes_it_and_reserving_another_pauses_it(tmp_path):
    with serve_app(detector_app(tmp_path)) as url:
        s = VramSettings(probe="none", settle_s=0.05, consumers=[
            Consumer(name="face-detector", kind="facedetect", url=url, vram_mib=1024, priority=2),
            Consumer(name="sd", kind="external", vram_mib=6000),
        ])
        async with Coordinator(s) as coord:
            async with coord.reserve("sd") as r:  # no probe: every unheld loaded consumer makes way
                pass
            assert r.unloaded == ["face-detector"] and "settle" in r.timeline.names()
            assert httpx.get(f"{url}/health").json()["detector_loaded"] is False
            async with coord.reserve("face-detector") as r2:
                pass
            assert "resumed" in r2.timeline.names()
            assert httpx.get(f"{url}/health").json()["detector_loaded"] is True
