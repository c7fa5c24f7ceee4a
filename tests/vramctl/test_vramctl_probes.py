"""Probes, settings and the victim planner: the parts that need no server."""

from __future__ import annotations

import shutil
import stat
import textwrap

import pytest
from pydantic import ValidationError

from vramctl import Consumer, NoProbe, NvidiaSmiProbe, ProbeError, VramSettings, select_probe
from vramctl.planner import choose_victims
from vramctl.probes import EmulatorProbe, parse_nvidia_smi

GPU_CSV = "0, NVIDIA GeForce RTX 3070, 8192, 5210, 2795\n1, NVIDIA A100-SXM4-80GB, 81920, 0, 81050\n"
APPS_CSV = "4242, /usr/bin/llama-server, 4608\n77, python3, [N/A]\n"


def test_parse_nvidia_smi_csv():
    mem = parse_nvidia_smi(GPU_CSV, APPS_CSV, gpu_index=0)
    assert (mem.total_mib, mem.used_mib, mem.free_mib) == (8192, 5210, 2795)
    assert mem.device == "NVIDIA GeForce RTX 3070"
    assert [(p.pid, p.name, p.used_mib) for p in mem.processes] == [(4242, "/usr/bin/llama-server", 4608), (77, "python3", None)]
    assert parse_nvidia_smi(GPU_CSV, "", gpu_index=1).free_mib == 81050
    with pytest.raises(ProbeError, match="GPU 3"):
        parse_nvidia_smi(GPU_CSV, "", gpu_index=3)


async def test_nvidia_smi_probe_runs_the_tool(tmp_path):
    """A stand-in `nvidia-smi` script prints what the real one prints, so the subprocess path is exercised."""
    tool = tmp_path / "nvidia-smi"
    gpu_lines, app_lines = GPU_CSV.replace("\n", "\\n"), APPS_CSV.replace("\n", "\\n")
    tool.write_text("#!/bin/sh\n"
                    'case "$*" in\n'
                    f"  *query-gpu*) printf '{gpu_lines}' ;;\n"
                    f"  *query-compute-apps*) printf '{app_lines}' ;;\n"
                    "  *) exit 9 ;;\n"
                    "esac\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    mem = await NvidiaSmiProbe(0, executable=str(tool)).read()
    assert mem.free_mib == 2795 and len(mem.processes) == 2
    bad = tmp_path / "broken-smi"
    bad.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2; exit 9\n")
    bad.chmod(0o755)
    with pytest.raises(ProbeError, match="NVIDIA-SMI has failed"):
        await NvidiaSmiProbe(0, executable=str(bad)).read()


def test_select_probe_honours_config():
    assert isinstance(select_probe(VramSettings(probe="none")), NoProbe)
    assert isinstance(select_probe(VramSettings(probe="emulator", probe_url="http://127.0.0.1:1")), EmulatorProbe)
    if shutil.which("nvidia-smi") is None:
        with pytest.raises(ProbeError, match="not on PATH"):
            select_probe(VramSettings(probe="nvidia-smi"))
    auto = select_probe(VramSettings(probe="auto"))
    assert auto.name in {"nvml", "nvidia-smi", "none"}


async def test_no_probe_reads_nothing():
    assert await NoProbe().read() is None


def test_settings_from_env_and_yaml(tmp_path, monkeypatch):
    monkeypatch.setenv("MIKU_LLAMA_SWAP_URL", "http://llama-swap:8090/")
    monkeypatch.setenv("MIKU_VRAM_SAFETY_MARGIN_MIB", "512")
    monkeypatch.setenv("MIKU_VRAM_LLAMA_SWAP_API_KEY", "sekret")
    s = VramSettings()
    assert s.llama_swap_url == "http://llama-swap:8090" and s.safety_margin_mib == 512
    assert "sekret" not in repr(s) and s.llama_swap_api_key.get_secret_value() == "sekret"
    assert [c.name for c in s.consumers] == ["text", "vision", "face-detector"]  # the original bot's deployment
    cfg = tmp_path / "vram.yaml"
    cfg.write_text(textwrap.dedent("""\
        vram:
          probe: none
          settle_s: 1.5
          consumers:
            - {name: vision, kind: llama-swap, model: vision, vram_mib: 4608, priority: 1}
            - {name: sd, kind: external, vram_mib: 3000}
        """))
    s = VramSettings.from_yaml(cfg, llama_swap_url="http://elsewhere:1")
    assert s.probe == "none" and s.settle_s == 1.5 and s.llama_swap_url == "http://elsewhere:1"
    assert s.server_url(s.consumer("vision")) == "http://elsewhere:1"


@pytest.mark.parametrize("bad, match", [
    ({"consumers": [{"name": "a", "kind": "llama-swap", "vram_mib": 1}]}, "needs `model`"),
    ({"consumers": [{"name": "a", "kind": "ollama", "model": "x", "vram_mib": 1}]}, "needs `url`"),
    ({"consumers": [{"name": "a", "kind": "external", "vram_mib": 1}] * 2}, "repeated: a"),
    ({"consumers": [{"name": "a", "kind": "gpu", "vram_mib": 1}]}, "kind"),
    ({"consumers": [{"name": "a", "kind": "external", "vram_mib": -5}]}, "greater than or equal"),
    ({"probe": "emulator"}, "probe_url"),
])
def test_bad_settings_are_clear(bad, match):
    with pytest.raises(ValidationError, match=match):
        VramSettings.from_mapping(bad)


def C(name: str, mib: int, prio: int = 0) -> Consumer:
    return Consumer(name=name, kind="external", vram_mib=mib, priority=prio)


def test_planner_picks_the_fewest_then_least_important_then_smallest():
    text, vision, det, sd = C("text", 5120, 0), C("vision", 4608, 1), C("det", 1024, 2), C("sd", 3000, 0)
    assert choose_victims([text, vision, det], 0) == []
    assert choose_victims([text, vision, det], 900) == [text]  # one suffices; lowest priority first
    assert choose_victims([vision, det], 900) == [vision]
    assert choose_victims([text, sd], 2000) == [sd]  # same priority: free less
    assert {c.name for c in choose_victims([text, vision, det, sd], 9000)} == {"text", "vision"}  # 2 beat 3
    assert choose_victims([det], 5000) == [det]  # nothing covers it: everything, the probe tells the rest
