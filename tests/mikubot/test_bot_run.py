"""`mikubot run` as a real process: the panel served from the bot's event loop, the doctor lines
logged at start, changes through the shared runner, and the bind rule. (No Discord gateway here:
without a token the bot stays off and says so.)"""

from __future__ import annotations

import subprocess


import loopback
from panel_helpers import sprite_folder
from servers import free_port, run_command, venv_bin


def test_run_serves_panel_logs_doctor_and_changes_through_one_runner(art_dir, tmp_path):
    port = free_port()
    art = sprite_folder(art_dir, tmp_path / "art")
    env = {"MIKU_DATA_DIR": str(tmp_path / "data"), "MIKU_SOURCE": f"local:{art}", "MIKU_CANDIDATES": "1",
           "MIKU_WEB_TOKEN": "a-test-token-long-enough", "MIKU_ROTATE_EVERY_H": "24"}
    base = f"http://127.0.0.1:{port}"
    with run_command([venv_bin("mikubot"), "run", "--port", str(port)], url=f"{base}/health", env=env, timeout=90) as proc:
        assert loopback.get(f"{base}/health", timeout=10).status_code == 200
        auth = {"Authorization": "Bearer a-test-token-long-enough"}
        r = loopback.post(f"{base}/profile-picture/change", params={"wait": "true"}, headers=auth, timeout=120)
        assert r.status_code == 200, r.text
        body = r.json()
        record = body.get("record", body)
        assert record["status"] == "dry-run", record
        # Refused without the token: the panel guards changes even in the bot's process.
        assert loopback.post(f"{base}/profile-picture/change", timeout=10).status_code in (401, 403)
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "Data directory" in out  # a doctor line, logged at start-up
    assert "Discord bot off" in out and "no MIKU_DISCORD_TOKEN" in out
    assert "avatar rotation: every 24 h" in out
    assert "a-test-token-long-enough" not in out  # secrets never logged
    assert "changes need the token from MIKU_WEB_TOKEN" in out  # where the token comes from, not what it is
    assert proc.returncode in (0, -15)


def test_run_refuses_a_network_bind_without_a_token(tmp_path):
    r = subprocess.run([venv_bin("mikubot"), "run", "--host", "0.0.0.0", "--port", str(free_port())],
                       env={"PATH": "/usr/bin:/bin", "MIKU_DATA_DIR": str(tmp_path)}, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert "MIKU_WEB_TOKEN" in r.stderr and "Traceback" not in r.stderr
