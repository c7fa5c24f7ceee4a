"""`vramctl` as a user runs it, talking to the llama-swap emulator over loopback: in-process through typer's
``CliRunner`` (tests/cli_runner.py), and as the installed console script in a real subprocess (`watch` into a pipe)."""

from __future__ import annotations

import json
import os
import subprocess
import threading

import pytest
import yaml

from cli_runner import run_cli
from emulators.llama_swap import LlamaSwapEmulator, create_detector_app
from servers import free_port, serve_app, venv_bin
from vramctl.cli import app as vramctl_app
from vramctl.config import default_consumers


def vramctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "COLUMNS": "200", **(env or {})}
    full.pop("MIKU_VRAM_CONFIG", None) if env is None or "MIKU_VRAM_CONFIG" not in env else None
    return run_cli(vramctl_app, *args, env=full)


@pytest.fixture()
def deployment(tmp_path):
    emu = LlamaSwapEmulator({"gpu_total_mib": 8192, "gpu_reserved_mib": 512, "models": {
        "llama3.1": {"vram_mib": 5120}, "vision": {"vram_mib": 6912, "stop_s": 0.05, "release_s": 0.3}}})
    det = create_detector_app(emu.gpu, vram_mib=1024)
    with emu.serve(), serve_app(det) as det_url:
        cfg = tmp_path / "vram.yaml"
        cfg.write_text(yaml.safe_dump({"probe": "emulator", "probe_url": emu.gpu_url, "poll_s": 0.02, "consumers": [
            {"name": "text", "kind": "llama-swap", "model": "llama3.1", "vram_mib": 5120},
            {"name": "vision", "kind": "llama-swap", "model": "vision", "vram_mib": 6912, "priority": 1},
            {"name": "face-detector", "kind": "facedetect", "url": det_url, "vram_mib": 1024, "priority": 2}]}))
        yield emu, cfg


def test_status_json_and_table(deployment):
    emu, cfg = deployment
    emu.preload("vision")
    r = vramctl("status", "--json", "--config", str(cfg), "--llama-swap", emu.url)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["gpu"]["free_mib"] == 768
    assert {c["name"]: c["loaded"] for c in st["consumers"]} == {"text": False, "vision": True, "face-detector": False}
    r = vramctl("status", "--config", str(cfg), env={"MIKU_LLAMA_SWAP_URL": emu.url})  # URL from the environment
    assert r.returncode == 0, r.stderr
    assert "vision" in r.stdout and "768 MiB" in r.stdout and "yes" in r.stdout


def test_free_consumer_prints_the_timeline(deployment):
    emu, cfg = deployment
    emu.preload("vision")
    r = vramctl("free", "face-detector", "--json", "--config", str(cfg), "--llama-swap", emu.url)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["unloaded"] == ["vision"] and [e["event"] for e in out["timeline"]][-1] == "released"
    assert emu.gpu.oom_count == 0 and "llama3.1" not in emu.loads
    r = vramctl("free", "--mib", "2000", "--config", str(cfg), "--llama-swap", emu.url)
    assert r.returncode == 0, r.stderr
    assert "granted" in r.stdout and "unloaded: nothing" in r.stdout


def test_watch_stops_after_count(deployment):
    emu, cfg = deployment
    r = vramctl("watch", "--count", "2", "--interval", "0.05", "--config", str(cfg), "--llama-swap", emu.url)
    assert r.returncode == 0, r.stderr
    assert "Consumers" in r.stdout


def test_without_gpu_or_servers_status_still_answers(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    # the default consumers, the detector at an address where nothing listens (a real one may run on :6078 here)
    cfg = tmp_path / "vram.yaml"
    cfg.write_text(yaml.safe_dump({"consumers": [
        {**c.model_dump(mode="json", exclude_none=True), **({"url": f"http://127.0.0.1:{free_port()}"} if c.url else {})}
        for c in default_consumers()]}))
    r = vramctl("status", "--json", "--probe", "none", "--llama-swap", dead, "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["gpu"] is None and all(c["loaded"] is None for c in st["consumers"])
    assert "unreachable" in st["consumers"][0]["detail"]


def test_bad_input_is_a_message_not_a_traceback(tmp_path):
    r = vramctl("free", "nobody", "--probe", "none")
    assert r.returncode == 2 and "unknown consumer 'nobody'" in r.stderr and "Traceback" not in r.stderr
    r = vramctl("free", "--probe", "none")
    assert r.returncode == 2 and "CONSUMER or --mib" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("consumers:\n  - {name: x, kind: ollama, vram_mib: 1}\n")
    r = vramctl("status", "--config", str(bad))
    assert r.returncode == 2 and "needs `model`" in r.stderr and "Traceback" not in r.stderr
    r = vramctl("free", "--mib", "100000", "--timeout", "0.3", "--probe", "emulator", "--probe-url",
                f"http://127.0.0.1:{free_port()}", "--llama-swap", f"http://127.0.0.1:{free_port()}")
    assert "Traceback" not in r.stderr


def test_watch_into_a_pipe_prints_each_refresh_as_it_comes(deployment):
    """Piped (not a terminal), every refresh is written and flushed at once: the first view arrives while
    watch waits out its 30-s interval (it would run until stopped), not when it ends."""
    emu, cfg = deployment
    env = {**os.environ, "COLUMNS": "120"}
    proc = subprocess.Popen([venv_bin("vramctl"), "watch", "--interval", "30", "--config", str(cfg),
                             "--llama-swap", emu.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    first: list[str] = []
    reader = threading.Thread(target=lambda: first.extend(proc.stdout.readline() for _ in range(3)), daemon=True)  # type: ignore[union-attr]
    try:
        reader.start()
        reader.join(timeout=25)  # a bound on a hang, not an ordering: the view comes within a second or two
        assert len(first) == 3, "nothing reached the pipe while watch ran"
        assert any("Consumers" in line or "GPU" in line for line in first), first
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_run_becomes_the_model_server_once_the_card_shows_its_room(deployment):
    """`vramctl run` (how llama-swap/config.yaml starts each llama-server): with vision loaded 768 MiB are free,
    so a 1024-MiB start waits and, past --timeout, exits 1 naming the shortfall without starting the command;
    with the room free it becomes the command (exec: the same pid, the command's own exit code)."""
    emu, cfg = deployment
    emu.preload("vision")
    marker = emu.gpu_url  # any text the command would print
    r = vramctl("run", "--vram-mib", "1024", "--timeout", "0.3", "--config", str(cfg), "--", "echo", marker)
    assert r.returncode == 1 and marker not in r.stdout, r.stdout + r.stderr
    said = " ".join(r.stderr.split())  # rich wraps stderr at 80 columns when it is no terminal
    assert "1280 MiB free (1024 + 256 margin) before starting within 0.3 s: 768 MiB free" in said
    proc = subprocess.Popen([venv_bin("vramctl"), "run", "--vram-mib", "512", "--config", str(cfg), "--", "sh", "-c",
                             'echo "$$"; exit 7'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, errors = proc.communicate(timeout=30)
    assert proc.returncode == 7 and "vramctl run: 768 MiB free ≥ 768 needed" in errors, errors
    assert int(out) == proc.pid  # llama-swap's stop signal reaches the server itself
    r = vramctl("run", "--vram-mib", "0", "--probe", "none", "--", "no-such-program-here")
    assert r.returncode == 127 and "cannot start no-such-program-here" in r.stderr and "Traceback" not in r.stderr
