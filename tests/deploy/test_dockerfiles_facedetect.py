"""face-detector/Dockerfile and supervisord.conf agree with the settings defaults and the real CLI, and
supervisord itself (from PyPI) runs the configuration's FATAL listener: a program that keeps crashing
at start-up ends supervisord, so the container exits and Docker's restart policy applies."""

from __future__ import annotations

import configparser
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from dockerfile_parse import DockerfileParser

from facedetect.cli import app
from facedetect.settings import FaceDetectSettings

ROOT = Path(__file__).resolve().parents[2]
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
    assert '--constraint constraints.txt ".[$detector,ui,gpu,supervisor]"' in runs
    assert "bot" not in runs  # no Discord code in the detector image
    assert dockerfile.args["VARIANT"] == "cpu"  # `docker build` alone: the small image; compose asks for gpu


def test_exposes_the_default_ports(dockerfile):
    exposed = {int(p) for value in instructions(dockerfile, "EXPOSE") for p in value.split()}
    assert exposed == {_default("port"), _default("ui_port")} == {6078, 7860}
    env = dockerfile.envs
    assert int(env["FACEDETECT_PORT"]) == _default("port") and int(env["FACEDETECT_UI_PORT"]) == _default("ui_port")


def test_healthcheck_hits_health_on_the_api_port(dockerfile):
    (health,) = instructions(dockerfile, "HEALTHCHECK")
    assert f":{_default('port')}/health" in health
    assert health.split("CMD", 1)[1].strip().startswith("[")  # exec form: works without a shell or curl


def test_copied_files_exist(dockerfile):
    # (tests/deploy/test_compose.py checks them against the root .dockerignore with Docker's own matcher)
    for value in instructions(dockerfile, "COPY"):
        *sources, _dest = value.split()
        for src in sources:
            assert (ROOT / src).exists(), src


def test_cmd_runs_supervisord_with_the_copied_config(dockerfile):
    (cmd,) = instructions(dockerfile, "CMD")
    args = json.loads(cmd)
    assert args[:2] == ["supervisord", "-c"]
    copies = [v.split() for v in instructions(dockerfile, "COPY")]
    # The configuration and its listener land in one folder: the listener's command is %(here)s-relative.
    assert ["face-detector/supervisord.conf", "face-detector/exit-on-fatal.py", "/etc/supervisor/"] in copies
    assert args[2] == "/etc/supervisor/supervisord.conf"


def test_outputs_volume_matches_the_setting(dockerfile):
    assert dockerfile.envs["FACEDETECT_OUTPUTS"] in " ".join(instructions(dockerfile, "VOLUME"))


def test_supervisord_runs_in_the_foreground(supervisord):
    assert supervisord.get("supervisord", "nodaemon") == "true"


def _parse_with_cli(command: str, dockerfile: DockerfileParser) -> tuple[str, dict]:
    """Parse a program's command line with the real ``facedetect`` click command, as the container would,
    after supervisord's %(ENV_x)s expansion with the image's environment."""
    env = {f"ENV_{k}": v for k, v in dockerfile.envs.items()}
    argv = shlex.split(command % env)
    assert argv[0] == "facedetect"
    group = typer.main.get_command(app)
    sub = group.commands[argv[1]]  # type: ignore[attr-defined]
    ctx = sub.make_context(argv[1], argv[2:])
    return argv[1], ctx.params


def test_programs_run_the_api_and_the_ui_on_the_default_ports(supervisord, dockerfile):
    programs = {s.split(":", 1)[1] for s in supervisord.sections() if s.startswith("program:")}
    assert programs == {"facedetect-api", "facedetect-ui"}

    # Both bind FACEDETECT_HOST (docker-compose.yml sets it too), 0.0.0.0 in the image.
    name, params = _parse_with_cli(supervisord.get("program:facedetect-api", "command"), dockerfile)
    assert name == "serve" and params["port"] == _default("port") and params["host"] == "0.0.0.0"

    name, params = _parse_with_cli(supervisord.get("program:facedetect-ui", "command"), dockerfile)
    assert name == "ui" and params["port"] == _default("ui_port") and params["host"] == "0.0.0.0"


def test_ui_talks_to_the_api_in_the_same_container(supervisord):
    env = supervisord.get("program:facedetect-ui", "environment")
    assert f'FACEDETECT_API_URL="http://127.0.0.1:{_default("port")}"' in env


def test_compose_file_builds_this_image():
    text = (ROOT / "docker-compose.yml").read_text()
    assert "face-detector/Dockerfile" in text
    assert '"127.0.0.1:6078:6078"' in text and '"127.0.0.1:7860:7860"' in text


# --- supervisord, for real ---------------------------------------------------------------------------------
def _run_supervisord(tmp_path: Path, programs: dict[str, dict[str, str]]) -> subprocess.CompletedProcess[str]:
    """supervisord (the PyPI package the image installs) with the image's [supervisord] and
    [eventlistener:exit-on-fatal] sections as written, the listener copied beside the file as in the
    image, and ``programs`` in place of the API and UI. Returns once supervisord has exited."""
    real = configparser.RawConfigParser()
    real.read(ROOT / "face-detector" / "supervisord.conf")
    conf = configparser.RawConfigParser()
    for section in ("supervisord", "eventlistener:exit-on-fatal"):
        conf[section] = dict(real[section])
    conf["supervisord"]["pidfile"] = str(tmp_path / "supervisord.pid")  # not the image's /tmp
    for name, options in programs.items():
        conf[f"program:{name}"] = {"stdout_logfile": "/dev/stdout", "stdout_logfile_maxbytes": "0",
                                   "stderr_logfile": "/dev/stderr", "stderr_logfile_maxbytes": "0", **options}
    (tmp_path / "exit-on-fatal.py").write_text((ROOT / "face-detector" / "exit-on-fatal.py").read_text())
    with (tmp_path / "supervisord.conf").open("w") as f:
        conf.write(f)
    # `python` in the listener's command is this interpreter, which has supervisor installed (as the image's has).
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    supervisord = Path(sys.executable).parent / "supervisord"
    assert supervisord.is_file(), "supervisord is not installed; install the test extra (make install)"
    return subprocess.run([str(supervisord), "-c", str(tmp_path / "supervisord.conf")], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_a_fatal_program_ends_supervisord(tmp_path):
    """A program that exits at once, every time, becomes FATAL after its retry (one: each costs a second of backoff); the listener then stops
    supervisord, which stops the healthy program and exits: the container would end and be restarted.
    A program that finished normally (EXITED, not FATAL) does not end it."""
    result = _run_supervisord(tmp_path, {
        "crasher": {"command": "/bin/false", "startsecs": "2", "startretries": "1", "autorestart": "true"},
        "steady": {"command": f"{sys.executable} -c 'import time; time.sleep(300)'", "startsecs": "0"},
        "oneshot": {"command": "/bin/true", "startsecs": "0", "autorestart": "false"},
    })
    log = result.stdout + result.stderr
    assert "gave up: crasher entered FATAL state" in log, log
    assert "exit-on-fatal: crasher is FATAL" in log, log
    assert "exit-on-fatal: oneshot" not in log and "exit-on-fatal: steady" not in log
    assert "stopped: steady" in log, log  # supervisord stopped the other program on its way out
