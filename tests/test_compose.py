"""The deployment files checked against the code they deploy (no Docker engine here): ports, health
paths, build contexts, volumes and every setting name in .env.example."""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from facedetect.settings import FaceDetectSettings
from mikubot.config import CONFIG_ENV, Settings
from mikubot.bot import PANEL_PORT
from vramctl.config import VramSettings

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (Settings, VramSettings, FaceDetectSettings)
COMPOSE_ONLY = {"MODELS_DIR"}  # interpolated by docker compose itself, read by no Python code
LINE = re.compile(r"^(# )?([A-Z][A-Z0-9_]*)=(.*)$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    return compose["services"][name]


def ports(svc: dict[str, Any]) -> dict[int, int]:
    """container port -> host port."""
    out = {}
    for p in svc.get("ports", []):
        parts = str(p).split(":")
        out[int(parts[-1])] = int(parts[-2])
    return out


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
    test = svc["healthcheck"]["test"]
    text = " ".join(test) if isinstance(test, list) else test
    m = re.search(r"https?://[^'\" ]+", text)
    assert m, f"no URL in healthcheck {text!r}"
    return m.group(0)


def dockerfile(svc: dict[str, Any]) -> tuple[Path, Path, DockerfileParser]:
    build = svc["build"]
    context = (ROOT / build["context"]).resolve()
    path = context / build.get("dockerfile", "Dockerfile")
    assert context.is_dir() and path.is_file(), f"{path} missing"
    return context, path, DockerfileParser(path=str(path))


def dockerignored(path: Path, name: str) -> bool:
    """Docker's rule: a pattern matches a path or one of its parent folders, the last matching
    pattern wins, and ``!`` re-includes."""
    ignore = path.with_name(path.name + ".dockerignore")
    if not ignore.is_file():
        ignore = path.parent / ".dockerignore"
    parts = name.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in ignore.read_text().splitlines() if ignore.is_file() else []:
        pat = raw.strip()
        if not pat or pat.startswith("#"):
            continue
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatch(p.split("/")[-1], pat[3:]) for p in prefixes)
        else:
            hit = any(fnmatch.fnmatch(p, pat) for p in prefixes)
        if hit:
            excluded = not neg
    return excluded


def mounts(svc: dict[str, Any]) -> dict[str, str]:
    """container path -> host path or volume name, with compose's ``${VAR:-default}`` at its default."""
    out = {}
    for v in svc.get("volumes", []):
        text = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v))
        source, target = text.split(":")[:2]
        out[target] = source
    return out


# --- services -------------------------------------------------------------------------------------------
def test_the_seeds_three_services(compose):
    assert set(compose["services"]) == {"llama-swap", "anime-face-detector", "miku-bot"}


def test_llama_swap_service(compose):
    svc = service(compose, "llama-swap")
    # One released CUDA build (llama-swap vNNN, CUDA, llama.cpp bNNNN), never the floating `:cuda` tag.
    assert re.fullmatch(r"ghcr\.io/mostlygeek/llama-swap:v\d+-cuda-b\d+", svc["image"]), svc["image"]
    assert svc["runtime"] == "nvidia"
    assert ports(svc) == {8080: 8090}  # llama-swap listens on :8080 in its image; the seed used :8090
    m = mounts(svc)
    assert (ROOT / m["/app/config.yaml"]).is_file(), "llama-swap/config.yaml is missing"  # the image reads it there
    assert m["/models"] == "./models"
    assert healthcheck_url(svc) == "http://localhost:8080/health"


def test_llama_swap_config_serves_the_models_the_bot_asks_for():
    config = yaml.safe_load((ROOT / "llama-swap" / "config.yaml").read_text())
    models = config["models"]
    assert Settings.model_fields["vision_model"].default in models
    # vramctl's seed consumers name the llama-swap models it may unload; they must exist too.
    for c in VramSettings().consumers:
        if c.kind == "llama-swap":
            assert c.model in models, f"vramctl consumer {c.name} names model {c.model!r}, absent from config.yaml"


def test_detector_service_matches_facedetect_defaults(compose):
    svc = service(compose, "anime-face-detector")
    fd = FaceDetectSettings()
    assert svc["runtime"] == "nvidia"
    assert ports(svc) == {fd.port: fd.port, fd.ui_port: fd.ui_port} == {6078: 6078, 7860: 7860}
    url = healthcheck_url(svc)
    assert url.endswith(f":{fd.port}/health")
    from facedetect.api import create_app

    routes = {r.path for r in create_app(FaceDetectSettings(preload=False)).routes}
    assert "/health" in routes and "/detect" in routes
    context, path, df = dockerfile(svc)
    assert path == ROOT / "face-detector" / "Dockerfile"
    assert {str(fd.port), str(fd.ui_port)} <= set(" ".join(i["value"] for i in df.structure if i["instruction"] == "EXPOSE").split())
    outputs = df.envs.get("FACEDETECT_OUTPUTS")
    assert mounts(svc)[outputs] in compose["volumes"], "the outputs volume must be where the image writes"
    assert mounts(svc)["/models"] == "./models"


def test_bot_service(compose):
    from mikubot.web import DEFAULT_PORT

    assert PANEL_PORT == DEFAULT_PORT  # `mikubot run` and `mikubot web` serve the panel on the same port
    svc = service(compose, "miku-bot")
    assert ports(svc) == {PANEL_PORT: PANEL_PORT} == {3939: 3939}
    assert svc["env_file"] == [".env"] and (ROOT / ".env.example").is_file()
    env = svc["environment"]
    # Inside the compose network the bot reaches the others by service name on their container ports.
    assert env["FACE_DETECTOR_URL"].endswith(f"http://anime-face-detector:{FaceDetectSettings().port}}}")
    llama_port = next(iter(ports(service(compose, "llama-swap"))))
    assert env["MIKU_LLAMA_SWAP_URL"].endswith(f"http://llama-swap:{llama_port}}}")
    for name in env:
        if name.startswith(("MIKU_", "FACE_DETECTOR_URL")):
            assert any(name in names for cls in (Settings, VramSettings) for names in env_names(cls).values()), \
                f"{name} is not a setting"
    # Those URLs parse as settings (the ${VAR:-default} of compose resolved to its default).
    resolved = {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()}
    s = Settings(data_dir=resolved["MIKU_DATA_DIR"], face_detector_url=resolved["FACE_DETECTOR_URL"],
                 llama_swap_url=resolved["MIKU_LLAMA_SWAP_URL"], gpu_probe=resolved["MIKU_GPU_PROBE"])
    assert s.gpu_probe == "nvml"
    # `vramctl` run inside the container sees the compose addresses and the models llama-swap serves.
    with pytest.MonkeyPatch.context() as m:
        for name in ("MIKU_VRAM_CONSUMERS", "MIKU_VRAM_PROBE", "MIKU_LLAMA_SWAP_URL"):
            m.setenv(name, resolved[name])
        vram = VramSettings()
    assert vram.llama_swap_url == resolved["MIKU_LLAMA_SWAP_URL"] and vram.probe == "nvml"
    detector = vram.consumer("face-detector")
    assert detector.kind == "facedetect" and detector.url == resolved["FACE_DETECTOR_URL"]
    served = yaml.safe_load((ROOT / "llama-swap" / "config.yaml").read_text())["models"]
    assert {c.model for c in vram.consumers if c.kind == "llama-swap"} <= set(served)
    # The data volume is mounted where MIKU_DATA_DIR points, and declared.
    assert mounts(svc)[env["MIKU_DATA_DIR"]] in compose["volumes"]
    # It starts after both dependencies are *healthy*, and each of them has a healthcheck.
    for dep in ("llama-swap", "anime-face-detector"):
        assert svc["depends_on"][dep]["condition"] == "service_healthy"
        assert "healthcheck" in service(compose, dep)
    assert healthcheck_url(svc) == f"http://localhost:{PANEL_PORT}/health"


def test_build_contexts_and_copy_sources_exist(compose):
    for name, svc in compose["services"].items():
        if "build" not in svc:
            continue
        context, path, df = dockerfile(svc)
        for instr in df.structure:
            if instr["instruction"] != "COPY" or "--from" in instr["value"]:
                continue
            *sources, _dest = [a for a in shlex.split(instr["value"]) if not a.startswith("--")]
            for src in sources:
                assert (context / src).exists(), f"{name}: COPY {src} but {context / src} does not exist"
                assert not dockerignored(path, src), f"{name}: COPY {src} is excluded by the dockerignore"


def test_bot_dockerfile(compose):
    context, path, df = dockerfile(service(compose, "miku-bot"))
    assert path == ROOT / "bot" / "Dockerfile"
    assert df.baseimage.startswith("python:3.11")
    assert dockerignored(path, ".venv") and dockerignored(path, ".env") and dockerignored(path, ".cache")
    assert not dockerignored(path, "src") and not dockerignored(path, "pyproject.toml")
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
    assert "[bot]" in (ROOT / "bot" / "Dockerfile").read_text()  # the extra that carries discord.py


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
