"""One dry-run rule: a request may ask for a dry run but never out of one; an empty token is no token."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from mikubot.config import Settings
from panel_helpers import bearer, panel_server, panel_settings, sprite_folder
from servers import free_port


@pytest.mark.parametrize("env_value", ["", "   "])
def test_an_empty_discord_token_means_unset(monkeypatch: pytest.MonkeyPatch, env_value: str) -> None:
    monkeypatch.setenv("MIKU_DISCORD_TOKEN", env_value)
    s = Settings()
    assert s.discord_token is None and s.effective_dry_run
    assert s.dry_run_for(False) == (True, "dry run: no MIKU_DISCORD_TOKEN")
    assert Settings(discord_token="").discord_token is None


def test_dry_run_from_settings_is_final() -> None:
    s = Settings(dry_run=True, discord_token="t0k")
    assert s.dry_run_for(False) == (True, "dry run (MIKU_DRY_RUN)")
    assert s.dry_run_for(True) == (True, "dry run (asked for)")
    live = Settings(dry_run=False, discord_token="t0k")
    assert live.dry_run_for(None) == (False, None) and live.dry_run_for(True)[0] is True


def test_the_panel_cannot_turn_a_configured_dry_run_off(art_dir: Path, tmp_path: Path) -> None:
    # A token and a Discord that is not there: an upload attempt would end the change "failed".
    settings = panel_settings(tmp_path / "data", sprite_folder(art_dir, tmp_path / "art"), dry_run=True,
                              discord_token="t0k", discord_api=f"http://127.0.0.1:{free_port()}/api/v10")
    with panel_server(settings) as base, httpx.Client(base_url=base, timeout=120) as c:
        assert c.get("/health").json()["dry_run"] is True
        r = c.post("/profile-picture/change", headers=bearer(), params={"dry_run": "false", "wait": "true"})
        assert r.status_code == 200 and r.json()["status"] == "dry-run" and r.json()["uploaded"] is False, r.text
        r = c.post("/profile-picture/change", headers=bearer(), params={"wait": "true"}, json={"dry_run": False})
        assert r.json()["status"] == "dry-run", r.text
        cid = r.json()["id"]
        r = c.post(f"/profile-picture/restore/{cid}", headers=bearer(), params={"dry_run": "false", "wait": "true"})
        assert r.status_code == 200 and r.json()["status"] == "dry-run", r.text
