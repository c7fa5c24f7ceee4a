"""Our console commands run in-process through typer's ``CliRunner``, answered as a subprocess answers.

An interpreter start plus ``import mikubot.pipeline`` costs seconds per call; the behaviour of a command
(arguments, settings from the environment, output, exit codes) needs neither. Each console script keeps one
real subprocess test of its own (``facedetect``: tests/facedetect/test_cli.py, ``vramctl``:
tests/vramctl/test_vramctl_cli.py, ``mikubot``: ``make demo`` in tests/mikubot/test_cli_mikubot.py).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import traceback
from pathlib import Path

import typer
from typer.testing import CliRunner


def run_cli(app: typer.Typer, *args: str, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``app ARGS`` with exactly the environment ``env`` (as ``subprocess.run`` takes it; None: this process's)
    in the working directory ``cwd``. Exit code, stdout and
    stderr come back as a process gives them: an exception that escapes the command is a traceback on stderr
    and exit code 1."""
    wanted = dict(os.environ if env is None else env)
    delta: dict[str, str | None] = {k: None for k in os.environ if k not in wanted}
    delta.update(wanted)
    with contextlib.chdir(cwd or Path.cwd()):
        result = CliRunner().invoke(app, list(args), env=delta)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess([app.info.name or "cli", *args], result.exit_code, result.stdout, stderr)
