"""Configuration of the detector service, read from ``FACEDETECT_*`` environment variables.

One settings object feeds the API, the CLI and the UI, so ``FACEDETECT_BACKEND=cascade`` means the same
thing everywhere. Defaults are the embedded ones: animeface on CPU, outputs under ``./outputs``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from facedetect.imageio import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from httpserve import ServeLimits

BackendName = Literal["animeface", "yolo-onnx", "cascade", "hysts"]


class FaceDetectSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FACEDETECT_", extra="ignore")

    backend: BackendName = "animeface"
    model_path: Path | None = Field(None, description="weights for yolo-onnx / cascade XML (never downloaded); "
                                    "hysts: a directory of its checkpoints (unset: its own download)")
    outputs: Path = Field(Path("outputs"), description="where annotated images and result JSON are written")
    max_bytes: int = Field(DEFAULT_MAX_BYTES, gt=0, description="largest accepted upload, in bytes")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0, description="largest accepted width*height")
    workers: int = Field(1, ge=1, le=64, description="detections running at once")
    queue: int = Field(8, ge=0, le=10_000, description="detections allowed to wait; beyond: 503")
    retention: int = Field(500, ge=0, description="result pairs kept in outputs (0 = keep all)")
    host: str = Field("127.0.0.1", description="bind address of the API; a container sets 0.0.0.0 explicitly")
    ui_host: str = Field("127.0.0.1", description="bind address of the Gradio UI")
    port: int = Field(6078, ge=1, le=65535)
    ui_port: int = Field(7860, ge=1, le=65535)
    min_confidence: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    preload: bool = Field(True, description="load the model at start-up instead of on the first request")
    api_url: str | None = Field(None, description="the UI calls this API instead of detecting in-process")
    token: SecretStr | None = Field(None, description="when set, POST /load and /unload need Authorization: Bearer <token>; "
                                    "`serve` on an address other than loopback needs it")
    published_on_loopback: bool = Field(
        False, description="the ports reach only the host's loopback and a private compose network (a container "
        "published on 127.0.0.1): `serve` may then listen on 0.0.0.0 inside it without FACEDETECT_TOKEN")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Host names the API and UI answer besides loopback ones "
        "(localhost, 127.0.0.1, ::1), e.g. the compose service name; '*' answers any")
    # Slow and idle clients (httpserve.ServeLimits), for the API and the UI alike.
    header_timeout_s: float = Field(10.0, gt=0, le=3600, description="a request's headers must be complete within this")
    body_timeout_s: float = Field(60.0, gt=0, le=86400, description="a request's body must be complete within this "
                                  "after its headers")
    keep_alive_s: float = Field(5.0, gt=0, le=3600, description="an idle keep-alive connection is closed after this")
    max_connections: int = Field(1000, ge=1, le=1_000_000, description="open connections at most (also kept below "
                                 "the process's open-file limit)")
    ui_cache_s: int = Field(900, ge=1, le=7 * 86400, description="the UI deletes uploaded and drawn files older "
                            "than this (checked every minute, and all of them when it stops)")

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, v: object) -> object:
        # "a,b" as well as JSON from the environment.
        if isinstance(v, str):
            return json.loads(v) if v.strip().startswith("[") else [p.strip() for p in v.split(",") if p.strip()]
        return v

    def serve_limits(self) -> ServeLimits:
        return ServeLimits(header_timeout_s=self.header_timeout_s, body_timeout_s=self.body_timeout_s,
                           keep_alive_s=self.keep_alive_s, max_connections=self.max_connections)

    @field_validator("token", mode="before")
    @classmethod
    def _empty_token_is_unset(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v
