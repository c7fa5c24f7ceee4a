"""The sources' one settings model: environment -> Settings -> the source, validated once, secrets masked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from mikubot.config import Settings
from mikubot.sources import SourceConfigError, SourceOptions, SourceSettings, source_from_spec

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("MIKU_"):
            monkeypatch.delenv(name)


def test_settings_are_the_sources_model() -> None:
    assert issubclass(Settings, SourceSettings) and issubclass(SourceOptions, SourceSettings)
    assert set(SourceSettings.model_fields) <= set(Settings.model_fields)
    # one definition: Settings declares none of the sources' fields again
    assert not set(SourceSettings.model_fields) & set(Settings.__annotations__)


def test_environment_reaches_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIKU_GELBOORU_URL", "https://gelbooru.example/")
    monkeypatch.setenv("MIKU_GELBOORU_USER_ID", "1234")
    monkeypatch.setenv("MIKU_GELBOORU_API_KEY", "gel-secret")
    monkeypatch.setenv("MIKU_SAFEBOORU_URL", "https://safebooru.example")
    monkeypatch.setenv("MIKU_DANBOORU_TAG_LIMIT", "6")
    monkeypatch.setenv("MIKU_RATINGS", "sensitive,general")
    monkeypatch.setenv("MIKU_BLACKLIST", '["Guro", "comic"]')
    monkeypatch.setenv("MIKU_EXTRA_TAG", "")  # an empty line in .env is "unset"
    s = Settings()
    src = source_from_spec("gelbooru", **s.source_settings())
    opts = src.options
    assert opts.gelbooru_url == "https://gelbooru.example" and src.base == "https://gelbooru.example"
    assert opts.gelbooru_credentials == ("1234", "gel-secret") and isinstance(opts.gelbooru_api_key, SecretStr)
    assert opts.safebooru_url == "https://safebooru.example" and opts.danbooru_tag_limit == 6
    assert opts.ratings == ["g", "s"] and opts.blacklist == ["comic", "guro"] and opts.extra_tag is None
    assert "gel-secret" not in repr(opts) and s.masked()["gelbooru_api_key"] == "**********"
    assert source_from_spec("danbooru", **s.source_settings()).tags == ["hatsune_miku", "order:random", "rating:g,s"]
    monkeypatch.setenv("MIKU_DANBOORU_LOGIN", "goldfan")
    monkeypatch.setenv("MIKU_DANBOORU_API_KEY", "gold-key")
    danbooru = source_from_spec("danbooru", **Settings().source_settings())
    assert danbooru.tags == ["hatsune_miku", "order:random", "solo", "rating:g,s"]  # Gold: room for solo


@pytest.mark.parametrize(("name", "value", "words"), [
    ("MIKU_GELBOORU_USER_ID", "mikufan", "numeric"),
    ("MIKU_GELBOORU_URL", "gelbooru.com", "http(s) URL"),
    ("MIKU_DANBOORU_TAG_LIMIT", "0", "greater than or equal to 1"),
    ("MIKU_RATINGS", "nice", "ratings must be"),
    ("MIKU_EXTRA_TAG", "solo 1girl", "one tag"),
    ("MIKU_BOORU_PER_PAGE", "500", "less than or equal to 100"),
])
def test_bad_source_settings_are_clear_errors(monkeypatch: pytest.MonkeyPatch, name: str, value: str, words: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=re.escape(words)):
        Settings()
    field = name.removeprefix("MIKU_").lower()
    with pytest.raises(SourceConfigError, match=re.escape(words)):
        source_from_spec("danbooru", **{field: value})


def test_code_only_options_are_not_settings() -> None:
    assert {"http", "rng", "url_policy"}.isdisjoint(Settings.model_fields)
    with pytest.raises(SourceConfigError, match="unknown source option"):
        source_from_spec("danbooru", http_client=None)


def test_every_source_setting_is_documented() -> None:
    docs = (ROOT / "docs" / "sources.md").read_text()
    env = (ROOT / ".env.example").read_text()
    for field in SourceSettings.model_fields:
        name = field.upper()
        assert re.search(rf"`[^`]*\b{name}\b", docs), f"docs/sources.md does not list {name}"
        assert f"MIKU_{name}=" in env, f".env.example does not list MIKU_{name}"
