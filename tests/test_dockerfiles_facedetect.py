"""face-detector/Dockerfile and supervisord.conf agree with the settings defaults and the real CLI."""

from __future__ import annotations

import configparser
import json
import shlex
from pathlib import Path

import pytest
import typer
from dockerfile_parse import DockerfileParser

from facedetect.cli import app
from facedetect.settings import FaceDetectSettings

ROOT = Path(__file__).resolve().parent.parent
def _default(name: str):
    """The class default, unaffected by any FACEDETECT_* variables of the machine running the tests."""
    return FaceDetectSettings.model_fields[name].default


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    parser = DockerfileParser(path=str(ROOT / "face-detector" / "Dockerfile"))
    return parser


@pytest.fixture(scope="module")
def supervisord() -> configparser.RawConfigParser:
    cfg = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    cfg.read(ROOT / "face-detector" / "supervisord.conf")
    return cfg


def instructions(dockerfile: DockerfileParser, name: str) -> list[str]:
    return [i["value"] for i in dockerfile.structure if i["instruction"] == name]


def test_base_image_and_install(dockerfile):
    assert dockerfile.baseimage.startswith("python:3.11-slim")
    runs = " ".join(instructions(dockerfile, "RUN"))
    assert 'pip install ".[detector,ui,gpu]"' in runs
    assert "supervisor" in runs
    assert "bot" not in runs  # no Discord code in the detector image


def test_exposes_the_default_ports(dockerfile):
    exposed = {int(p) for value in instructions(dockerfile, "EXPOSE") for p in value.split()}
    assert exposed == {_default("port"), _default("ui_port")} == {6078, 7860}
    env = dockerfile.envs
    assert int(env["FACEDETECT_PORT"]) == _default("port") and int(env["FACEDETECT_UI_PORT"]) == _default("ui_port")


def test_healthcheck_hits_health_on_the_api_port(dockerfile):
    (health,) = instructions(dockerfile, "HEALTHCHECK")
    assert f":{_default('port')}/health" in health
    assert health.split("CMD", 1)[1].strip().startswith("[")  # exec form: works without a shell or curl


def test_copied_files_exist_and_survive_the_dockerignore(dockerfile):
    ignore = (ROOT / "face-detector" / "Dockerfile.dockerignore").read_text().splitlines()
    kept = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    for value in instructions(dockerfile, "COPY"):
        *sources, _dest = value.split()
        for src in sources:
            assert (ROOT / src).exists(), src
            assert any(src.rstrip("/") == k or src.startswith(k + "/") for k in kept), f"{src} is dockerignored"


def test_cmd_runs_supervisord_with_the_copied_config(dockerfile):
    (cmd,) = instructions(dockerfile, "CMD")
    args = json.loads(cmd)
    assert args[:2] == ["supervisord", "-c"]
    copies = [v.split() for v in instructions(dockerfile, "COPY")]
    assert ["face-detector/supervisord.conf", args[2]] in copies


def test_outputs_volume_matches_the_setting(dockerfile):
    assert dockerfile.envs["FACEDETECT_OUTPUTS"] in " ".join(instructions(dockerfile, "VOLUME"))


def test_supervisord_runs_in_the_foreground(supervisord):
    assert supervisord.get("supervisord", "nodaemon") == "true"


def _parse_with_cli(command: str) -> tuple[str, dict]:
    """Parse a program's command line with the real ``facedetect`` click command, as the container would."""
    argv = shlex.split(command)
    assert argv[0] == "facedetect"
    group = typer.main.get_command(app)
    sub = group.commands[argv[1]]  # type: ignore[attr-defined]
    ctx = sub.make_context(argv[1], argv[2:])
    return argv[1], ctx.params


def test_programs_run_the_api_and_the_ui_on_the_default_ports(supervisord):
    programs = {s.split(":", 1)[1] for s in supervisord.sections() if s.startswith("program:")}
    assert programs == {"facedetect-api", "facedetect-ui"}

    name, params = _parse_with_cli(supervisord.get("program:facedetect-api", "command"))
    assert name == "serve" and params["port"] == _default("port") and params["host"] == "0.0.0.0"

    name, params = _parse_with_cli(supervisord.get("program:facedetect-ui", "command"))
    assert name == "ui" and params["port"] == _default("ui_port")


def test_ui_talks_to_the_api_in_the_same_container(supervisord):
    env = supervisord.get("program:facedetect-ui", "environment")
    assert f'FACEDETECT_API_URL="http://127.0.0.1:{_default("port")}"' in env


def test_compose_file_agrees_when_present():
    compose = ROOT / "docker-compose.yml"
    if not compose.exists():
        pytest.skip("docker-compose.yml not written yet")
    text = compose.read_text()
    assert "face-detector/Dockerfile" in text
    assert f'"{_default("port")}:{_default("port")}"' in text and f'"{_default("ui_port")}:{_default("ui_port")}"' in text
