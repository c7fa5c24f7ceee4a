"""The deployment files checked by the real tools and against the code they deploy (no Docker engine
here): Compose v2's own parser (compose-go, in the `docker-compose` binary) reads docker-compose.yml with
and without a .env, alone (the GPU setup) and with its overlays, hadolint lints the three Dockerfiles, Docker's own dockerignore matcher tells what a build
context sends; then ports, health paths, GPUs, start order, volumes, the one lock of versions, the model
files and every setting name in .env.example are checked against the code."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from deploy_tools import ROOT, compose_config, compose_model, project_copy, tool
from docker.utils.build import exclude_paths
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from facedetect.settings import FaceDetectSettings
from mikubot.bot import PANEL_PORT
from mikubot.config import CONFIG_ENV, Settings
from mikubot.vram import vram_settings
from vramctl.cli import app as vramctl_app
from vramctl.config import (
    DETECTOR_VRAM_MIB,
    TEXT_VRAM_MIB,
    VISION_VRAM_MIB,
    VramSettings,
)

SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (Settings, VramSettings, FaceDetectSettings)
# Interpolated by docker compose itself, read by no Python code.
COMPOSE_ONLY = {"MODELS_DIR", "DETECTOR_VARIANT"}
LINE = re.compile(r"^(# )?([A-Z][A-Z0-9_]*)=(.*)$")
DOCKERFILES = {"miku-bot": ROOT / "bot" / "Dockerfile", "anime-face-detector": ROOT / "face-detector" / "Dockerfile",
               "llama-swap": ROOT / "llama-swap" / "Dockerfile"}


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """docker-compose.yml as Compose v2 resolves it, with no .env at all."""
    return compose_model(project_copy(tmp_path_factory.mktemp("no-env")))


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    return compose["services"][name]


def ports(svc: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """container port -> (host address, host port)."""
    return {int(p["target"]): (p.get("host_ip", "0.0.0.0"), int(p["published"])) for p in svc.get("ports", [])}


def env_names(cls: type[BaseSettings]) -> dict[str, set[str]]:
    """field -> every environment name that sets it (prefix + name, or its validation aliases)."""
    prefix = cls.model_config.get("env_prefix", "")
    out = {}
    for name, f in cls.model_fields.items():
        alias = f.validation_alias
        if isinstance(alias, AliasChoices):
            out[name] = {str(c).upper() for c in alias.choices} | {(prefix + name).upper()}
        else:
            out[name] = {(prefix + name).upper()}
    return out


def env_example() -> list[tuple[bool, str, str]]:
    """(commented, NAME, value) for each assignment line of .env.example."""
    rows = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        m = LINE.match(line)
        if m:
            rows.append((bool(m.group(1)), m.group(2), m.group(3)))
    return rows


def healthcheck_url(svc: dict[str, Any]) -> str:
    text = " ".join(svc["healthcheck"]["test"])
    m = re.search(r"https?://[^'\" ]+", text)
    assert m, f"no URL in healthcheck {text!r}"
    return m.group(0)


def mounts(svc: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """container path -> (type, source), the source of a bind relative to the project."""
    return {v["target"]: (v["type"], v["source"]) for v in svc.get("volumes", [])}


def gpu_capabilities(svc: dict[str, Any]) -> list[list[str]]:
    devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    assert all(d["driver"] == "nvidia" for d in devices)
    return [sorted(d["capabilities"]) for d in devices]


def overlaid(project: Path, *overlays: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml with these overlays, as Compose v2 resolves them (no .env, a clean environment)."""
    files = [a for f in ("docker-compose.yml", *overlays) for a in ("-f", f)]
    result = subprocess.run([tool("docker-compose"), *files, "config", "--format", "json"], cwd=project,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(project), **(env or {})},
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def consumers_of(env: dict[str, str]) -> VramSettings:
    """What `vramctl` run in the bot's container sees (its MIKU_VRAM_* and MIKU_LLAMA_SWAP_URL)."""
    with pytest.MonkeyPatch.context() as m:
        for name in ("MIKU_VRAM_CONSUMERS", "MIKU_VRAM_PROBE", "MIKU_LLAMA_SWAP_URL"):
            m.setenv(name, env[name])
        return VramSettings()


def bot_settings(env: dict[str, str]) -> Settings:
    """The bot's settings from its compose environment alone."""
    with pytest.MonkeyPatch.context() as m:
        for k in list(__import__("os").environ):
            if k.startswith(("MIKU_", "FACE_DETECTOR_URL")):
                m.delenv(k)
        for name, value in env.items():
            m.setenv(name, value)
        return Settings()


def seconds(duration: str) -> float:
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert m and duration, duration
    return int(m.group(1) or 0) * 60 + int(m.group(2) or 0)


# --- Compose v2 itself ------------------------------------------------------------------------------------
def test_compose_v2_accepts_the_file_without_a_dot_env(compose):
    assert compose["name"] == "miku-discord"
    assert set(compose["services"]) == {"llama-swap", "anime-face-detector", "miku-bot"}
    # Nothing of a .env: the two services that read one get only what compose itself sets.
    assert "MIKU_WEB_TOKEN" not in service(compose, "miku-bot")["environment"]


def test_a_dot_env_reaches_both_services_and_compose_values_win(tmp_path):
    env = "MIKU_WEB_TOKEN=tok\nFACEDETECT_BACKEND=cascade\nMIKU_DATA_DIR=/elsewhere\nMIKU_VISION_VRAM_MIB=5000\n"
    model = compose_model(project_copy(tmp_path, env_file=env))
    bot, detector = service(model, "miku-bot")["environment"], service(model, "anime-face-detector")["environment"]
    assert bot["MIKU_WEB_TOKEN"] == "tok" and detector["FACEDETECT_BACKEND"] == "cascade"
    assert bot["MIKU_DATA_DIR"] == "/data"  # set by compose: the volume is mounted there
    # One setting sizes the vision model for the bot and for `vramctl` in its container alike.
    assert bot["MIKU_VISION_VRAM_MIB"] == "5000"
    vision = next(c for c in json.loads(bot["MIKU_VRAM_CONSUMERS"]) if c["name"] == "vision")
    assert vision["vram_mib"] == 5000


def test_the_tool_rejects_a_required_dot_env_that_is_missing(tmp_path):
    """The check above can fail: the short form `env_file: [.env]` makes .env required, and Compose v2
    refuses the file without one."""
    project = project_copy(tmp_path)
    text = (ROOT / "docker-compose.yml").read_text()
    strict = re.sub(r"- path: \.env\n\s+required: false", "- .env", text)
    assert strict != text
    (project / "strict.yml").write_text(strict)
    result = compose_config(project, compose_file="strict.yml", check=False)
    assert result.returncode != 0 and ".env" in result.stderr


# --- services -------------------------------------------------------------------------------------------
def test_every_published_port_is_on_the_hosts_loopback(compose):
    for name, svc in compose["services"].items():
        for target, (host_ip, _) in ports(svc).items():
            assert host_ip == "127.0.0.1", f"{name}: container port {target} is published on {host_ip}"
    text = (ROOT / "docker-compose.yml").read_text()
    assert "drop the \"127.0.0.1:\"" in text  # the comment that says how to open one


def test_gpus_by_device_reservation_not_the_nvidia_runtime(compose):
    assert gpu_capabilities(service(compose, "llama-swap")) == [["gpu"]]
    assert gpu_capabilities(service(compose, "anime-face-detector")) == [["gpu"]]
    assert gpu_capabilities(service(compose, "miku-bot")) == [["utility"]]  # NVML only
    for svc in compose["services"].values():
        assert "runtime" not in svc


def test_the_cpu_overlay_runs_everything_without_an_nvidia_gpu(tmp_path):
    """docker-compose.cpu.yml (the supported GPU-less setup, which `make stack-test` runs for real): no
    device reservation left, the CPU detector image loaded at start-up and reached directly (nothing to
    arbitrate), no NVML probe, the rest as in the main file."""
    model = overlaid(project_copy(tmp_path), "docker-compose.cpu.yml")
    for name, svc in model["services"].items():
        assert gpu_capabilities(svc) == [] and "deploy" not in svc, f"{name} still reserves a device"
    detector = service(model, "anime-face-detector")
    assert detector["build"]["args"]["VARIANT"] == "cpu" and detector["environment"]["FACEDETECT_PRELOAD"] == "true"
    bot = service(model, "miku-bot")["environment"]
    assert bot["MIKU_GPU_PROBE"] == bot["MIKU_VRAM_PROBE"] == "none"
    assert service(model, "llama-swap")["environment"]["MIKU_VRAM_PROBE"] == "none"
    assert bot["MIKU_WEB_PUBLISHED_ON_LOOPBACK"] == "true"  # no .env needed: the generated panel token
    assert ports(service(model, "miku-bot")) == {PANEL_PORT: ("127.0.0.1", PANEL_PORT)}
    # Direct: the bot detects at the service, and `vramctl` in its container declares what the bot declares.
    s = bot_settings(bot)
    assert s.detector_via == "direct" and s.detector_service_url == bot["FACE_DETECTOR_URL"]
    vram = consumers_of(bot)
    detector_consumer = vram.consumer("face-detector")
    assert detector_consumer.kind == "facedetect" and detector_consumer.url == bot["FACE_DETECTOR_URL"]
    assert {c.name: (c.kind, c.vram_mib, c.routed) for c in vram.consumers} == \
        {c.name: (c.kind, c.vram_mib, c.routed) for c in vram_settings(s).consumers if c.name != "text"} | \
        {"text": ("llama-swap", s.text_vram_mib, False)}


def test_the_stack_tests_gpu_overlay_changes_only_what_needs_the_card(tmp_path):
    """tests/stack/compose.gpu.yml (`make stack-test`'s GPU setup): docker-compose.yml with its device
    reservations taken away and the CPU detector image standing in for the GPU one; everything else --
    the detector under llama-swap, the bot's mode, vramctl's consumers -- is the GPU file's own."""
    project = project_copy(tmp_path)
    gpu = overlaid(project)
    ci = overlaid(project, "tests/stack/compose.gpu.yml")
    for name, svc in ci["services"].items():
        assert gpu_capabilities(svc) == [] and "deploy" not in svc, f"{name} still reserves a device"
        expected = {k: v for k, v in service(gpu, name).items() if k != "deploy"}
        if name == "anime-face-detector":
            expected["build"] = {**expected["build"], "args": {"VARIANT": "cpu"}}
        assert svc == expected, name


def test_llama_swap_service(compose):
    svc = service(compose, "llama-swap")
    # Our image (llama-swap/Dockerfile: vramctl for the detector's hold) on one released CUDA build
    # (llama-swap vNNN, CUDA, llama.cpp bNNNN), never the floating `:cuda` tag.
    assert Path(svc["build"]["dockerfile"]) == Path("llama-swap/Dockerfile") and "image" not in svc
    df = DockerfileParser(path=str(DOCKERFILES["llama-swap"]))
    assert re.fullmatch(r"ghcr\.io/mostlygeek/llama-swap:v\d+-cuda-b\d+", df.baseimage), df.baseimage
    # It keeps the release's entrypoint and port, and runs unprivileged.
    assert not [i for i in df.structure if i["instruction"] in ("ENTRYPOINT", "CMD", "EXPOSE")]
    user = next(i["value"] for i in reversed(df.structure) if i["instruction"] == "USER")
    assert user not in ("root", "0")
    # `vramctl hold` (the face-detector model's command) measures with NVML on the GPU host, sends the
    # detector's token, and has NVML through the `gpu` capability llama-swap's reservation gives.
    env = svc["environment"]
    assert env["MIKU_VRAM_PROBE"] == "nvml" and "FACEDETECT_TOKEN" in env
    assert '".[gpu]"' in DOCKERFILES["llama-swap"].read_text()
    assert ports(svc) == {8080: ("127.0.0.1", 8090)}  # llama-swap listens on :8080 in its image
    m = mounts(svc)
    assert Path(m["/app/config.yaml"][1]).is_file(), "llama-swap/config.yaml is missing"  # the image reads it there
    assert Path(m["/models"][1]).name == "models"
    assert healthcheck_url(svc) == "http://localhost:8080/health"


def test_the_detectors_llama_swap_model_runs_vramctl_hold_on_the_compose_detector(compose):
    """The face-detector model's command is `vramctl hold` as the real CLI parses it, on the detector's compose
    address; it names no probe (MIKU_VRAM_PROBE of llama-swap's environment decides: nvml on the GPU host, the
    simulated card in the stack test); the detector answers the Host names it is reached by."""
    config = yaml.safe_load((ROOT / "llama-swap" / "config.yaml").read_text())
    det = config["models"][Settings.model_fields["detector_model"].default]
    argv = shlex.split(det["cmd"])
    assert argv[:2] == ["vramctl", "hold"]
    hold = typer.main.get_command(vramctl_app).commands["hold"]  # type: ignore[attr-defined]
    params = hold.make_context("hold", argv[2:]).params
    assert params["probe"] is None and params["probe_url"] is None
    assert params["detector_url"] == det["proxy"] == compose["services"]["miku-bot"]["environment"]["FACE_DETECTOR_URL"]
    assert params["vram_mib"] == DETECTOR_VRAM_MIB
    assert det["checkEndpoint"] == "/ready"
    # llama-swap forwards the client's Host (the bot's http://llama-swap:8080), its checks send the proxy's.
    allowed = service(compose, "anime-face-detector")["environment"]["FACEDETECT_ALLOWED_HOSTS"].split(",")
    bot = service(compose, "miku-bot")["environment"]
    from urllib.parse import urlsplit

    assert {urlsplit(det["proxy"]).hostname, urlsplit(bot["MIKU_LLAMA_SWAP_URL"]).hostname} <= set(allowed)


def test_each_model_server_starts_once_the_card_shows_its_room():
    """Text and vision start through `vramctl run --vram-mib N -- ${server} ...` (the real CLI parses it), N the
    size the bot and vramctl declare, no probe named (MIKU_VRAM_PROBE of llama-swap's environment decides)."""
    config = yaml.safe_load((ROOT / "llama-swap" / "config.yaml").read_text())
    run = typer.main.get_command(vramctl_app).commands["run"]  # type: ignore[attr-defined]
    sizes = {"llama3.1": TEXT_VRAM_MIB, "vision": VISION_VRAM_MIB}
    for model, size in sizes.items():
        argv = shlex.split(config["models"][model]["cmd"])
        assert argv[:2] == ["vramctl", "run"], config["models"][model]["cmd"]
        params = run.make_context("run", argv[2:]).params
        assert params["vram_mib"] == size and params["probe"] is None
        assert params["command"][0] == "${server}" and "--model" in params["command"]
    assert config["macros"]["server"].split()[0] == "/app/llama-server"


def test_llama_swap_config_serves_the_models_the_bot_asks_for():
    config = yaml.safe_load((ROOT / "llama-swap" / "config.yaml").read_text())
    models = config["models"]
    assert Settings.model_fields["vision_model"].default in models
    assert Settings.model_fields["detector_model"].default in models
    # vramctl's default consumers name the llama-swap models it may unload; they must exist too.
    for c in VramSettings().consumers:
        if c.kind == "llama-swap":
            assert c.model in models, f"vramctl consumer {c.name} names model {c.model!r}, absent from config.yaml"


def test_detector_service_matches_facedetect_defaults(compose):
    svc = service(compose, "anime-face-detector")
    fd = FaceDetectSettings.model_fields
    assert ports(svc) == {6078: ("127.0.0.1", 6078), 7860: ("127.0.0.1", 7860)}
    assert (fd["port"].default, fd["ui_port"].default) == (6078, 7860)
    # Inside the container the programs bind every interface (the host side is loopback, above).
    assert svc["environment"]["FACEDETECT_HOST"] == "0.0.0.0"
    url = healthcheck_url(svc)
    assert url.endswith(":6078/health")
    from facedetect.api import create_app

    routes = {r.path for r in create_app(FaceDetectSettings(preload=False)).routes}
    assert "/health" in routes and "/detect" in routes
    assert Path(svc["build"]["dockerfile"]) == Path("face-detector/Dockerfile")
    df = DockerfileParser(path=str(DOCKERFILES["anime-face-detector"]))
    exposes = " ".join(i["value"] for i in df.structure if i["instruction"] == "EXPOSE").split()
    assert {"6078", "7860"} <= set(exposes)
    outputs = df.envs.get("FACEDETECT_OUTPUTS")
    kind, source = mounts(svc)[outputs]
    assert kind == "volume" and source in compose["volumes"], "the outputs volume must be where the image writes"
    assert Path(mounts(svc)["/models"][1]).name == "models"


def test_detector_image_is_the_gpu_variant_unless_asked_otherwise(compose, tmp_path):
    assert service(compose, "anime-face-detector")["build"]["args"] == {"VARIANT": "gpu"}
    cpu = compose_model(project_copy(tmp_path), extra_env={"DETECTOR_VARIANT": "cpu"})
    assert service(cpu, "anime-face-detector")["build"]["args"] == {"VARIANT": "cpu"}


def test_docker_waits_for_supervisord_to_stop_its_programs(compose):
    import configparser

    conf = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    conf.read(ROOT / "face-detector" / "supervisord.conf")
    waits = [conf.getint(s, "stopwaitsecs", fallback=10) for s in conf.sections() if s.startswith("program:")]
    grace = seconds(service(compose, "anime-face-detector")["stop_grace_period"])
    assert grace > max(waits), f"stop_grace_period {grace}s must exceed supervisord's stopwaitsecs {max(waits)}s"


def test_bot_service(compose):
    from mikubot.web import DEFAULT_PORT

    assert PANEL_PORT == DEFAULT_PORT  # `mikubot run` and `mikubot web` serve the panel on the same port
    svc = service(compose, "miku-bot")
    assert ports(svc) == {PANEL_PORT: ("127.0.0.1", PANEL_PORT)} == {3939: ("127.0.0.1", 3939)}
    assert (ROOT / ".env.example").is_file()
    env = svc["environment"]
    # Inside the compose network the bot reaches the others by service name on their container ports.
    assert env["FACE_DETECTOR_URL"] == "http://anime-face-detector:6078"
    assert env["MIKU_LLAMA_SWAP_URL"] == f"http://llama-swap:{next(iter(ports(service(compose, 'llama-swap'))))}"
    for name in env:
        if name.startswith(("MIKU_", "FACE_DETECTOR_URL")):
            assert any(name in names for cls in (Settings, VramSettings) for names in env_names(cls).values()), \
                f"{name} is not a setting"
    s = bot_settings(env)
    assert s.gpu_probe == "nvml"
    # With a GPU the detector is llama-swap's model: the bot detects through llama-swap's passthrough.
    assert s.detector_via == "llama-swap"
    assert s.detector_service_url == f"{env['MIKU_LLAMA_SWAP_URL']}/upstream/{s.detector_model}"
    # `vramctl` run inside the container sees the compose addresses, the models llama-swap serves, the
    # detector as llama-swap reports it, and the same sizes and routing the bot declares.
    vram = consumers_of(env)
    assert vram.llama_swap_url == env["MIKU_LLAMA_SWAP_URL"] and vram.probe == "nvml"
    detector = vram.consumer("face-detector")
    assert detector.kind == "llama-swap" and detector.model == s.detector_model and detector.routed
    served = yaml.safe_load((ROOT / "llama-swap" / "config.yaml").read_text())["models"]
    assert {c.model for c in vram.consumers if c.kind == "llama-swap"} <= set(served)
    sizes = {c.name: c.vram_mib for c in vram.consumers}
    assert sizes == {"text": s.text_vram_mib, "vision": s.vision_vram_mib, "face-detector": s.detector_vram_mib}
    declared = {c.name: (c.kind, c.model, c.routed) for c in vram_settings(s).consumers}
    assert {c.name: (c.kind, c.model, c.routed) for c in vram.consumers if c.name in declared} == declared
    # Loaded only when llama-swap (or vramctl) asks: never behind llama-swap's back at start-up.
    assert service(compose, "anime-face-detector")["environment"]["FACEDETECT_PRELOAD"] == "false"
    # The data volume is mounted where MIKU_DATA_DIR points, and declared.
    kind, source = mounts(svc)[env["MIKU_DATA_DIR"]]
    assert kind == "volume" and source in compose["volumes"]
    # It starts once both dependencies have *started*: without a healthy detector or vision model it
    # still runs (in-process detection, heuristic verifier) and `mikubot doctor` says what is missing.
    for dep in ("llama-swap", "anime-face-detector"):
        assert svc["depends_on"][dep]["condition"] == "service_started"
        assert "healthcheck" in service(compose, dep)  # `docker compose ps` still shows their health
    assert healthcheck_url(svc) == f"http://localhost:{PANEL_PORT}/health"


# --- images ---------------------------------------------------------------------------------------------
def test_hadolint_passes_the_dockerfiles():
    result = subprocess.run([tool("hadolint"), "--no-color", "--failure-threshold", "warning", *map(str, DOCKERFILES.values())],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def context_files(root: Path) -> set[str]:
    """What a build of ``root`` sends to the daemon under its .dockerignore, by Docker's own matcher."""
    patterns = [line.strip() for line in (root / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    return {p for p in exclude_paths(str(root), patterns) if (root / p).is_file()}


def test_the_dockerignore_sends_only_what_the_images_need(tmp_path):
    ctx = tmp_path / "checkout"
    files = [".env", ".env.local", ".venv/bin/python", ".cache/art/images/a.png", "data/history.db", "out/demo/avatar.png",
             ".git/HEAD", "models/m.gguf", "tests/test_x.py", "src/pkg/__pycache__/m.cpython-311.pyc", "src/pkg/.env",
             "src/pkg/m.py", "pyproject.toml", "README.md", "LICENSE", "constraints.txt",
             "face-detector/supervisord.conf", "face-detector/exit-on-fatal.py", "face-detector/Dockerfile",
             "scripts/fetch-art.sh", "scripts/stack-test.sh"]
    for name in files:
        (ctx / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / name).write_text("x")
    (ctx / ".dockerignore").write_text((ROOT / ".dockerignore").read_text())
    sent = context_files(ctx) - {".dockerignore"}
    assert sent == {"src/pkg/m.py", "pyproject.toml", "README.md", "LICENSE", "constraints.txt",
                    "face-detector/supervisord.conf", "face-detector/exit-on-fatal.py", "scripts/fetch-art.sh"}
    # No per-Dockerfile ignore file that BuildKit would prefer over the root one.
    assert not [p for p in DOCKERFILES.values() if p.with_name(p.name + ".dockerignore").exists()]


def test_every_copy_source_exists_and_is_in_the_context(compose):
    sent = context_files(ROOT)
    for name, path in DOCKERFILES.items():
        assert (Path(service(compose, name)["build"]["context"]) / "docker-compose.yml").is_file()  # the root
        for instr in DockerfileParser(path=str(path)).structure:
            if instr["instruction"] != "COPY" or "--from" in instr["value"]:
                continue
            *sources, _dest = [a for a in shlex.split(instr["value"]) if not a.startswith("--")]
            for src in sources:
                assert (ROOT / src).exists(), f"{name}: COPY {src} but it does not exist"
                assert src in sent or any(f.startswith(src.rstrip("/") + "/") for f in sent), \
                    f"{name}: COPY {src} is excluded by .dockerignore"


def test_images_install_dependencies_first_then_the_project_without_them():
    for path in DOCKERFILES.values():
        steps = [(i["instruction"], i["value"]) for i in DockerfileParser(path=str(path)).structure]
        copy_src = steps.index(("COPY", "src ./src"))
        deps = [v for k, v in steps[:copy_src] if k == "RUN" and "pip install" in v]
        assert len(deps) == 1 and "--constraint constraints.txt" in deps[0], path
        assert any(k == "COPY" and "constraints.txt" in v for k, v in steps[:copy_src])
        after = [v for k, v in steps[copy_src:] if k == "RUN" and "pip install" in v]
        assert after == ["pip install --no-deps ."], path


def extra_closure(extras: set[str]) -> dict[str, Requirement]:
    """Every requirement of the base install plus these extras, following `miku-discord[...]` links."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out: dict[str, Requirement] = {}
    todo, seen = [*project["dependencies"]], set()
    for e in extras:
        todo += project["optional-dependencies"][e]
    while todo:
        req = Requirement(todo.pop())
        if req.name == project["name"]:
            for e in req.extras - seen:
                seen.add(e)
                todo += project["optional-dependencies"][e]
            continue
        out[req.name.lower()] = req
    return out


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            out[name.lower()] = version
    return out


def test_constraints_pin_every_requirement_within_its_range():
    pinned = pins()
    everything = extra_closure({"all", "detector-gpu", "supervisor", "test"})
    for name, req in everything.items():
        assert name in pinned, f"{name} is not in constraints.txt: run `make constraints`"
        assert req.specifier.contains(pinned[name], prereleases=True), f"{name}=={pinned[name]} is outside {req}"


def test_cpu_and_gpu_detector_extras_install_exactly_one_onnxruntime():
    cpu, gpu = extra_closure({"detector"}), extra_closure({"detector-gpu"})
    assert "onnxruntime" in cpu and "onnxruntime-gpu" not in cpu
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu
    assert {"cuda", "cudnn"} <= gpu["onnxruntime-gpu"].extras  # NVIDIA's CUDA and cuDNN wheels come along
    assert set(cpu) - {"onnxruntime"} == set(gpu) - {"onnxruntime-gpu"}
    text = DOCKERFILES["anime-face-detector"].read_text()
    assert 'cpu) detector="detector"' in text and 'gpu) detector="detector-gpu"' in text


def test_make_installs_with_the_same_constraints():
    makefile = (ROOT / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if "pip install" in line and "-e" in line]
    # The hysts venv's lock is constraints.txt less its NVIDIA pins (PyTorch's CUDA wheels pin their own).
    assert "grep -v '^nvidia-' constraints.txt > $(HYSTS_LOCK)" in makefile
    assert installs and all("-c constraints.txt" in line or "-c $(HYSTS_LOCK)" in line for line in installs)
    assert re.search(r"^constraints:", makefile, re.MULTILINE)


def test_bot_dockerfile(compose):
    path = DOCKERFILES["miku-bot"]
    assert Path(service(compose, "miku-bot")["build"]["dockerfile"]) == Path("bot/Dockerfile")
    df = DockerfileParser(path=str(path))
    assert df.baseimage.startswith("python:3.11")
    assert df.envs["MIKU_DATA_DIR"] == service(compose, "miku-bot")["environment"]["MIKU_DATA_DIR"]
    user = next(i["value"] for i in reversed(df.structure) if i["instruction"] == "USER")
    assert user not in ("root", "0")
    exposes = " ".join(i["value"] for i in df.structure if i["instruction"] == "EXPOSE").split()
    assert str(PANEL_PORT) in exposes
    cmd = yaml.safe_load(df.cmd) if df.cmd.startswith("[") else shlex.split(df.cmd)
    assert cmd[:2] == ["mikubot", "run"] and cmd[cmd.index("--port") + 1] == str(PANEL_PORT)
    # The command exists: `mikubot run --help` answers.
    from typer.testing import CliRunner

    from mikubot.cli import app

    result = CliRunner().invoke(app, ["run", "--help"])
    assert result.exit_code == 0, result.output
    assert "--host" in result.output and "--port" in result.output
    assert '".[bot]"' in path.read_text()  # the extra that carries discord.py


# --- models and VRAM ------------------------------------------------------------------------------------
def model_table() -> list[dict[str, str]]:
    """The rows of docs/operations.md's quantisation table."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("## Models and VRAM", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]]


def test_model_files_are_the_publishers_names_and_sizes_match_the_vram_table():
    rows = model_table()
    defaults = {r["model"]: r for r in rows if "default" in r["quantisation"]}
    assert set(defaults) == {"text", "vision"}
    config = yaml.safe_load((ROOT / "llama-swap" / "config.yaml").read_text())["models"]
    for model, consumer in (("text", "llama3.1"), ("vision", "vision")):
        args = shlex.split(config[consumer]["cmd"])
        files = [args[args.index("--model") + 1]] + ([args[args.index("--mmproj") + 1]] if "--mmproj" in args else [])
        documented = [f.strip("` ") for f in defaults[model]["file under models/"].split("+")]
        assert [f.removeprefix("/models/") for f in files] == documented
    # openbmb ships MiniCPM-V under these names; the text model under bartowski's.
    assert documented == ["MiniCPM-V-2_6-gguf/ggml-model-Q4_K_M.gguf", "MiniCPM-V-2_6-gguf/mmproj-model-f16.gguf"]
    # The sizes vramctl and mikubot declare are the table's, from one home.
    assert int(defaults["text"]["VRAM (MiB)"]) == TEXT_VRAM_MIB == Settings.model_fields["text_vram_mib"].default
    assert int(defaults["vision"]["VRAM (MiB)"]) == VISION_VRAM_MIB == Settings.model_fields["vision_vram_mib"].default
    assert Settings.model_fields["detector_vram_mib"].default == DETECTOR_VRAM_MIB
    seed = {c.name: c.vram_mib for c in VramSettings.model_fields["consumers"].default_factory()}
    assert seed == {"text": TEXT_VRAM_MIB, "vision": VISION_VRAM_MIB, "face-detector": DETECTOR_VRAM_MIB}
    # Each row's estimate is its own sum: file + mmproj + KV cache + overhead, rounded up to 64 MiB.
    for r in rows:
        total = sum(int(r[k]) for k in ("weights (MiB)", "mmproj (MiB)", "KV cache (MiB)", "overhead (MiB)"))
        assert int(r["VRAM (MiB)"]) == -(-total // 64) * 64, r


# --- .env.example -----------------------------------------------------------------------------------------
def test_env_example_names_every_setting_and_nothing_else():
    rows = env_example()
    documented = {name for _, name, _ in rows}
    known: set[str] = {CONFIG_ENV} | COMPOSE_ONLY
    for cls in SETTINGS_CLASSES:
        for field, names in env_names(cls).items():
            known |= names
            assert names & documented, f"{cls.__name__}.{field} ({sorted(names)[0]}) is not in .env.example"
    assert documented <= known, f"unknown names in .env.example: {sorted(documented - known)}"
    assert len(documented) == len(rows), "a name is listed twice"


def owner(name: str) -> tuple[type[BaseSettings], str] | None:
    for cls in SETTINGS_CLASSES:
        for field, names in env_names(cls).items():
            if name in names:
                return cls, field
    return None


def test_env_example_defaults_are_the_codes_defaults(monkeypatch):
    for k in list(__import__("os").environ):
        if k.startswith(("MIKU_", "FACEDETECT_", "FACE_DETECTOR_URL")):
            monkeypatch.delenv(k)
    for commented, name, value in env_example():
        found = owner(name)
        if found is None:
            continue
        cls, field = found
        info = cls.model_fields[field]
        default = info.get_default(call_default_factory=True)
        if not commented:
            continue  # set on purpose (checked below)
        if value == "":
            assert default is None or default == [] or info.default_factory is not None, f"{name}: default is {default!r}"
            continue
        with monkeypatch.context() as m:
            m.setenv(name, value)
            parsed = getattr(cls(), field)
        assert parsed == default or str(parsed) == str(default), f"{name}={value} documents {parsed!r}, the code says {default!r}"


def test_env_example_values_that_are_set_are_valid_and_secret_free(monkeypatch):
    for commented, name, value in env_example():
        if commented:
            continue
        monkeypatch.setenv(name, value)
        assert not re.search(r"(TOKEN|KEY|PASSWORD)", name), f"{name} must not be set in the example"
    Settings()
    FaceDetectSettings()
    VramSettings()
