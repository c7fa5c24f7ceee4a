"""mikubot's settings: environment (``MIKU_...``), an optional YAML/TOML file (``MIKU_CONFIG``), defaults.

With nothing configured this is the *embedded default*: in-process ``animeface`` detection,
the heuristic verifier (no vision model), no GPU probe, dry-run (no Discord token), the sample-art folder
as the source. Every piece of state (history database, avatars, reports) lives under ``data_dir``.

Precedence, highest first: values passed in code (the CLI's flags) > environment > config file > defaults.
Secrets are ``SecretStr`` so they print as ``**********`` everywhere, including ``mikubot config show``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from mikubot.colour import DEFAULT_TOLERANCE, parse_hex, to_hex
from mikubot.errors import MikubotError
from mikubot.redact import scrub
from mikubot.sources.options import SourceSettings
from vramctl.config import DETECTOR_VRAM_MIB, TEXT_VRAM_MIB, VISION_VRAM_MIB

CONFIG_ENV = "MIKU_CONFIG"
# Miku's hair in official art and fan art: the canonical teal, its darker shade, and the lighter cyan.
MIKU_HAIR = ["#39c5bb", "#137a7f", "#86cecb", "#00a0a0"]


# Lists from the environment arrive as text: "a,b,c" or JSON; the validator below parses both.
StrList = Annotated[list[str], NoDecode]
IntList = Annotated[list[int], NoDecode]
DAILY_TIME = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


class ConfigFileError(MikubotError, ValueError):
    """The file named by MIKU_CONFIG is missing or cannot be read."""


SOURCE_SPEC = re.compile(r"^(danbooru|safebooru|gelbooru|(local|file|url):\S.*)$", re.IGNORECASE)


class GuildLook(BaseModel):
    """One server's own look (``MIKU_GUILD_LOOKS``): what its per-server avatar is made from. Every field
    left out is the global setting of the same name; ``bio_credit`` puts the credit line in the bot's bio
    there (Discord's per-server bio)."""

    model_config = ConfigDict(extra="forbid")

    source: str | None = Field(None, description="danbooru | safebooru | gelbooru | local:DIR | url:URL | file:PATH")
    character_tag: str | None = Field(None, description="the booru tag searched for in this server")
    character_name: str | None = None
    hair_colours: list[str] | None = None
    bio_credit: bool = Field(True, description="set the server bio to the credit line (artist and source link)")

    @field_validator("source")
    @classmethod
    def _spec(cls, v: str | None) -> str | None:
        if v is not None and not SOURCE_SPEC.match(v.strip()):
            raise ValueError(f"source must be danbooru, safebooru, gelbooru, local:DIR, url:URL or file:PATH, not {v!r}")
        return v.strip() if v is not None else None

    @field_validator("character_tag")
    @classmethod
    def _tag(cls, v: str | None) -> str | None:
        return None if v is None else SourceSettings._source_tag(v)

    @field_validator("character_name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("character_name is empty")
        return v.strip() if v is not None else None

    @field_validator("hair_colours")
    @classmethod
    def _hair(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _hex_colours(v)

    def overrides(self) -> dict[str, Any]:
        """The settings this look replaces (its fields that are set, ``bio_credit`` aside)."""
        return {k: v for k, v in self.model_dump(exclude={"bio_credit"}).items() if v is not None}


def _hex_colours(v: list[str]) -> list[str]:
    parsed, bad = [], []
    for c in v:
        try:
            parsed.append(to_hex(parse_hex(c)))
        except ValueError:
            bad.append(c)
    if bad:
        raise ValueError(f"hair colours must be #rrggbb, not {', '.join(map(str, bad))}")
    return parsed


def _text_list(v: Any) -> Any:
    """A list setting from the environment: "a,b,c" as well as JSON (the file gives real lists)."""
    if isinstance(v, str):
        if v.strip().startswith("["):
            return json.loads(v)
        return [p.strip() for p in v.split(",") if p.strip()]
    return v


class PanelSettings(BaseModel):
    """The web panel's own settings (part of ``Settings``, ``MIKU_WEB_*`` and ``MIKU_UPLOAD*``; the token,
    ``MIKU_WEB_TOKEN``, is ``Settings``' with the other secrets). Validators are named ``_panel_*``:
    ``Settings`` inherits them, and a validator of the same name there would silently replace one here."""

    web_published_on_loopback: bool = Field(
        False, description="the panel's port reaches only the host's loopback (a container published on "
        "127.0.0.1): a network bind inside may then use the token generated in <data dir>/web-token")
    web_allowed_hosts: StrList = Field(default_factory=list, description="Host names the panel answers besides "
                                       "loopback ones (localhost, 127.0.0.1, ::1); '*' answers any")
    web_trusted_proxies: StrList = Field(default_factory=list, description="addresses (or CIDRs) of TLS proxies "
                                         "whose X-Forwarded-Proto/-For the panel believes (Secure cookie behind https)")
    # What one panel holds at most: open event streams, upload previews at work and waiting, stored uploads.
    web_max_streams: int = Field(64, ge=1, description="event streams open at once in all; past it 503")
    web_max_streams_per_client: int = Field(8, ge=1, description="event streams open at once per client "
                                            "address; past it 429")
    upload_preview_queue: int = Field(4, ge=0, description="upload previews that may wait while others run; "
                                      "past it 503 with Retry-After, before the upload is read")
    upload_preview_mpx: float = Field(40.0, gt=0, description="megapixels decoded by upload previews at once "
                                      "(one image over it runs alone)")
    uploads_kept: int = Field(20, ge=1, description="stored uploads kept (the newest); older ones are deleted")
    uploads_max_age_h: float = Field(168.0, gt=0, description="stored uploads older than this are deleted")
    # Slow and idle clients (httpserve.ServeLimits): a request's headers and body must arrive in time, and
    # open connections stay below the open-file limit.
    web_header_timeout_s: float = Field(10.0, gt=0, le=3600, description="a request's headers must be complete "
                                        "within this many seconds (from connecting, or from the previous answer)")
    web_body_timeout_s: float = Field(60.0, gt=0, le=86400, description="a request's body must be complete within "
                                      "this many seconds after its headers (uploads included)")
    web_keep_alive_s: float = Field(5.0, gt=0, le=3600, description="an idle keep-alive connection is closed after this")
    web_max_connections: int = Field(1000, ge=1, le=1_000_000, description="open connections at most (also kept "
                                     "below the process's open-file limit)")

    @field_validator("web_allowed_hosts", "web_trusted_proxies", mode="before")
    @classmethod
    def _panel_split_list(cls, v: Any) -> Any:
        return _text_list(v)


class Settings(SourceSettings, PanelSettings, BaseSettings):
    """Every setting. The sources' own (``MIKU_DANBOORU_*``, ``MIKU_GELBOORU_*``, ``MIKU_RATINGS`` ...) are
    inherited from ``mikubot.sources.options.SourceSettings``, their one model; the panel's from
    ``PanelSettings``."""

    model_config = SettingsConfigDict(env_prefix="MIKU_", extra="ignore", populate_by_name=True)

    # --- state -------------------------------------------------------------------------------------
    data_dir: Path = Field(Path("data"), description="history database, avatars and reports live here")

    # --- the change ----------------------------------------------------------------------------------
    source: str = Field(
        "local:.cache/art/images",
        description="danbooru | safebooru | gelbooru | local:DIR | url:URL | file:PATH",
    )
    candidates: int = Field(5, ge=1, le=20, description="K: candidates fetched and verified per change")
    change_timeout_s: float = Field(600.0, gt=0, description="a change still running after this long is stopped "
                                    "and recorded as failed (its GPU reservations released)")
    dry_run: bool = Field(False, description="write the avatar to a file and never call Discord")
    character_name: str = "Hatsune Miku"
    hair_colours: StrList = Field(default_factory=lambda: list(MIKU_HAIR))
    hair_tolerance: float = Field(DEFAULT_TOLERANCE, gt=0, description="how different a hair colour may look and "
                                  "still count as the character's (CIE Lab distance, lightness at a quarter)")
    min_confidence: float = Field(0.5, ge=0, le=1, description="verification confidence a candidate needs")
    output_size: int = Field(1024, ge=64, le=4096)
    max_upscale: float = Field(2.0, ge=1.0)
    candidate_pictures_kept: int = Field(50, ge=0, description="the candidates' thumbnails (the panel's Candidates "
                                         "view) are kept for this many latest changes, older ones deleted; the "
                                         "avatars themselves are never deleted")
    banner: bool = Field(False, description="also make a 5:2 profile banner from the same picture and apply it "
                         "with the avatar (a second public image, so off by default)")

    # --- sources: SourceSettings (inherited) -------------------------------------------------------------

    # --- vision model (llama-swap) ----------------------------------------------------------------------
    llama_swap_url: str | None = Field(None, description="unset: heuristic verifier, no vision model")
    vision_model: str = "vision"
    vision_vram_mib: int = VISION_VRAM_MIB
    text_model: str | None = Field(None, description="llama-swap id of the chat model (declared to vramctl)")
    text_vram_mib: int = TEXT_VRAM_MIB
    vision_timeout_s: float = 120.0
    llama_swap_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("MIKU_VRAM_LLAMA_SWAP_API_KEY", "llama_swap_api_key"),
        description="one of llama-swap's apiKeys: the vision check, doctor and vramctl send it as Authorization: Bearer",
    )

    # --- face detector ----------------------------------------------------------------------------------
    face_detector_url: str | None = Field(
        None,
        validation_alias=AliasChoices("FACE_DETECTOR_URL", "MIKU_FACE_DETECTOR_URL", "face_detector_url"),
        description="unset: detect in-process",
    )
    detector_backend: str = "animeface"
    detector_model_path: str | None = None
    detector_vram_mib: int = DETECTOR_VRAM_MIB
    detector_via: Literal["direct", "llama-swap"] = Field(
        "direct", description="how the bot reaches the detector service: direct (FACE_DETECTOR_URL; vramctl pauses "
        "and resumes it) or llama-swap (a llama-swap model, whose routing decides who holds the card; "
        "MIKU_LLAMA_SWAP_URL/upstream/<detector_model>)")
    detector_model: str = Field("face-detector", description="the detector's model id in llama-swap's config "
                                "(MIKU_DETECTOR_VIA=llama-swap)")

    # --- GPU probe (vramctl) ------------------------------------------------------------------------------
    vram_config: Path | None = Field(
        None, description="a vramctl YAML file declaring every VRAM consumer; unset: derived from the settings here"
    )
    gpu_probe: Literal["auto", "nvml", "nvidia-smi", "none", "emulator"] = "none"
    gpu_probe_url: str | None = None
    settle_s: float = Field(3.0, ge=0, description="wait after an unload when no probe can measure it")

    # --- Discord ------------------------------------------------------------------------------------------
    discord_token: SecretStr | None = None
    discord_api: str = "https://discord.com/api/v10"
    upload_max_wait_s: float = Field(60.0, ge=0, description="longest Discord 429 wait accepted before giving up "
                                     "(discord.py's max_ratelimit_timeout; it raises anything below 30 s to 30)")

    # --- the bot (`mikubot run`) ---------------------------------------------------------------------------
    admin_user_ids: IntList = Field(default_factory=list, description="Discord user ids allowed to use /pfp")
    admin_role_ids: IntList = Field(default_factory=list, description="role ids allowed to use /pfp (Manage Server always is)")
    guild_id: int | None = Field(None, description="register /pfp in this server only (instant); unset: globally")
    announce_channel_id: int | None = Field(None, description="post each new avatar, its credit and description here")
    colour_role_id: int | None = Field(None, description="a role in guild_id that takes the avatar's dominant colour")
    rotate_every_h: float | None = Field(None, gt=0, description="scheduled change every N hours")
    rotate_at: str | None = Field(None, description="scheduled change daily at HH:MM (local time)")
    rotate_jitter_min: float = Field(30.0, ge=0, description="scheduled changes start up to this many minutes late")
    guild_looks: Annotated[dict[int, GuildLook], NoDecode] = Field(
        default_factory=dict, description="a look per server: {guild id: {source, character_tag, character_name, "
        "hair_colours, bio_credit}} (JSON in the environment); /pfp change there changes that server's avatar "
        "and bio only; any other server: the global profile")

    # --- web panel: PanelSettings (inherited), but for its token -------------------------------------------
    web_token: SecretStr | None = None

    @field_validator("hair_colours", mode="before")
    @classmethod
    def _split_list(cls, v: Any) -> Any:
        return _text_list(v)

    @field_validator("admin_user_ids", "admin_role_ids", mode="before")
    @classmethod
    def _split_ids(cls, v: Any) -> Any:
        # Discord ids (snowflakes) from the environment: "123,456" or JSON; quoted JSON strings are fine too.
        if isinstance(v, str):
            v = json.loads(v) if v.strip().startswith("[") else [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("rotate_at")
    @classmethod
    def _daily_time(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        if not DAILY_TIME.match(v.strip()):
            raise ValueError(f"rotate_at must be HH:MM (24-hour clock), not {v!r}")
        return v.strip()

    @field_validator("hair_colours")
    @classmethod
    def _colours(cls, v: list[str]) -> list[str]:
        return _hex_colours(v)

    @field_validator("guild_looks", mode="before")
    @classmethod
    def _looks(cls, v: Any) -> Any:
        # The environment gives JSON text; the file a mapping. Keys are guild ids.
        if v is None or (isinstance(v, str) and not v.strip()):
            return {}
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError as exc:
                raise ValueError(f"guild_looks is not valid JSON ({exc})") from exc
        if not isinstance(v, dict):  # a ValueError: pydantic reports it as invalid input (a TypeError it does not)
            raise ValueError("guild_looks must map server (guild) ids to looks, e.g. "  # noqa: TRY004
                             '{"123456789012345678": {"source": "local:art/server", "bio_credit": true}}')
        bad = [k for k in v if not str(k).strip().isdigit() or int(k) <= 0]
        if bad:
            raise ValueError(f"guild_looks keys must be Discord server ids (numbers), not {', '.join(map(repr, bad))}")
        return {int(k): look for k, look in v.items()}

    @model_validator(mode="after")
    def _detector_via_needs_llama_swap(self) -> "Settings":
        if self.detector_via == "llama-swap" and not self.llama_swap_url:
            raise ValueError("MIKU_DETECTOR_VIA=llama-swap needs MIKU_LLAMA_SWAP_URL (the detector is one of its models)")
        return self

    @property
    def detector_service_url(self) -> str | None:
        """Where the bot sends detections: the detector service, or its llama-swap passthrough; None: in-process."""
        if self.detector_via == "llama-swap" and self.llama_swap_url:
            return f"{self.llama_swap_url}/upstream/{self.detector_model}"
        return self.face_detector_url

    @property
    def detector_api_key(self) -> str | None:
        """The bearer token the detector's address needs: llama-swap's key when it is reached through it."""
        if self.detector_via == "llama-swap" and self.llama_swap_api_key is not None:
            return self.llama_swap_api_key.get_secret_value()
        return None

    @field_validator("discord_token", "web_token", "llama_swap_api_key", mode="before")
    @classmethod
    def _empty_secret_is_unset(cls, v: Any) -> Any:
        # `MIKU_DISCORD_TOKEN=` (an empty line in .env or compose) means "no token", not a token of "".
        if isinstance(v, SecretStr):
            v = v.get_secret_value()
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("llama_swap_url", "face_detector_url", "gpu_probe_url", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("llama_swap_url", "face_detector_url", "gpu_probe_url", "discord_api")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v.rstrip("/")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = os.environ.get(CONFIG_ENV)
        if path:
            sources.append(_file_source(settings_cls, Path(path)))
        return tuple(sources)

    # --- derived ------------------------------------------------------------------------------------------
    @property
    def effective_dry_run(self) -> bool:
        """Dry-run when configured, and always without a token: no configuration never talks to Discord."""
        return self.dry_run_for(None)[0]

    def dry_run_for(self, asked: bool | None) -> tuple[bool, str | None]:
        """Whether one change stays off Discord, and why — the one rule everything follows.

        A request may ask for a dry run, never out of one: ``MIKU_DRY_RUN=true`` (and a missing token)
        is final, so ``?dry_run=false`` cannot make the panel upload while ``/health`` says dry run.
        """
        if asked:
            return True, "dry run (asked for)"
        if self.dry_run:
            return True, "dry run (MIKU_DRY_RUN)"
        if self.discord_token is None:
            return True, "dry run: no MIKU_DISCORD_TOKEN"
        return False, None

    def look_for(self, guild_id: int | None) -> GuildLook | None:
        """The configured look of ``guild_id``; None for the global profile and any server without one."""
        return self.guild_looks.get(guild_id) if guild_id is not None else None

    def for_guild(self, guild_id: int | None) -> Settings:
        """These settings with ``guild_id``'s look applied (itself when that server has none)."""
        look = self.look_for(guild_id)
        return self.model_copy(update=look.overrides()) if look is not None else self

    @property
    def history_path(self) -> Path:
        return self.data_dir / "history.sqlite3"

    @property
    def avatars_dir(self) -> Path:
        return self.data_dir / "avatars"

    def masked(self) -> dict[str, Any]:
        """Every setting as JSON-able values, secrets shown only as set/unset."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "**********"
            elif isinstance(value, Path):
                value = str(value)
            elif name == "guild_looks":
                value = {str(k): look.model_dump(exclude_none=True) for k, look in value.items()}
            out[name] = scrub(value)  # a URL's user:password@ is a secret too
        return out


def _file_source(settings_cls: type[BaseSettings], path: Path) -> PydanticBaseSettingsSource:
    if not path.is_file():
        raise ConfigFileError(f"{CONFIG_ENV}={path} does not exist; unset {CONFIG_ENV} or point it at a YAML/TOML file")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return YamlConfigSettingsSource(settings_cls, yaml_file=path)
    if suffix == ".toml":
        return TomlConfigSettingsSource(settings_cls, toml_file=path)
    raise ConfigFileError(f"{CONFIG_ENV}={path}: use a .yaml, .yml or .toml file")


def load_settings(**overrides: Any) -> Settings:
    """Settings from env + file, with ``overrides`` (e.g. CLI flags; ``None`` values ignored) on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
