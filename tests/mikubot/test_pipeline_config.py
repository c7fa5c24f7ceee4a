"""mikubot settings (env, YAML/TOML file, precedence, secrets), the VRAM consumers derived from them, events."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mikubot.config import ConfigFileError, load_settings
from mikubot.events import ChangeEvents, EventBus, RecordDone, SearchStart
from mikubot.vram import DETECTOR, TEXT, VISION, vram_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for k in list(os.environ):
        if k.startswith("MIKU_") or k == "FACE_DETECTOR_URL":
            monkeypatch.delenv(k)


def test_embedded_default(tmp_path, monkeypatch):
    s = load_settings()
    assert s.source.startswith("local:") and s.llama_swap_url is None and s.face_detector_url is None
    assert s.gpu_probe == "none" and s.effective_dry_run and s.candidates == 5
    assert s.character_tag == "hatsune_miku" and "#39c5bb" in s.hair_colours
    assert s.discord_api == "https://discord.com/api/v10"
    assert str(s.history_path).startswith("data")
    vs = vram_settings(s)
    assert [(c.name, c.kind, c.vram_mib) for c in vs.consumers] == [(DETECTOR, "external", 0)]


def test_env_file_and_precedence(tmp_path, monkeypatch):
    toml = tmp_path / "miku.toml"
    toml.write_text('candidates = 3\nsource = "danbooru"\nllama_swap_url = "http://llama:8080/"\ntext_model = "llama3.1"\n')
    monkeypatch.setenv("MIKU_CONFIG", str(toml))
    monkeypatch.setenv("MIKU_CANDIDATES", "4")
    monkeypatch.setenv("FACE_DETECTOR_URL", "http://detector:6078")
    monkeypatch.setenv("MIKU_HAIR_COLOURS", "39C5BB, #86cecb")
    monkeypatch.setenv("MIKU_DISCORD_TOKEN", "t0ken")
    s = load_settings(candidates=None)
    assert s.candidates == 4 and s.source == "danbooru" and s.llama_swap_url == "http://llama:8080"
    assert s.hair_colours == ["#39c5bb", "#86cecb"] and not s.effective_dry_run
    assert load_settings(candidates=2).candidates == 2  # CLI flags win
    assert "t0ken" not in repr(s) and s.masked()["discord_token"] == "**********"
    vs = vram_settings(s)
    assert {c.name: c.kind for c in vs.consumers} == {TEXT: "llama-swap", VISION: "llama-swap", DETECTOR: "facedetect"}
    assert vs.consumer(DETECTOR).url == "http://detector:6078"


def test_invalid_values_are_clear(tmp_path, monkeypatch):
    with pytest.raises(ValidationError, match="#rrggbb"):
        load_settings(hair_colours=["teal"])
    with pytest.raises(ValidationError, match="http"):
        load_settings(discord_api="discord.com")
    monkeypatch.setenv("MIKU_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigFileError, match="does not exist"):
        load_settings()
    (tmp_path / "x.ini").write_text("")
    monkeypatch.setenv("MIKU_CONFIG", str(tmp_path / "x.ini"))
    with pytest.raises(ConfigFileError, match="yaml"):
        load_settings()


def test_events_fan_out_and_survive_a_broken_subscriber():
    bus = EventBus()
    got = []
    bus.subscribe(lambda e: 1 / 0)
    off = bus.subscribe(got.append)
    ev = ChangeEvents(bus, 7)
    ev.emit("search", "start", SearchStart(spec="danbooru", limit=3))
    ev.emit("record", "done", RecordDone(status="applied"))  # "status" in the detail does not clash
    off()
    ev.emit("upload", "skip")
    assert [(e.change_id, e.stage, e.status) for e in got] == [(7, "search", "start"), (7, "record", "done")]
    assert got[1].detail == RecordDone(status="applied") and got[0].t <= got[1].t
    assert len(ev.log) == 3 and ev.log[0].to_json()["detail"] == {"spec": "danbooru", "limit": 3}


async def test_event_queue_for_streaming():
    bus = EventBus()
    q, off = bus.queue(maxsize=2)
    ev = ChangeEvents(bus, 1)
    for stage in ("search", "download", "verify"):
        ev.emit(stage, "start")
    assert [q.get_nowait().stage for _ in range(2)] == ["download", "verify"]  # the oldest was dropped
    off()
