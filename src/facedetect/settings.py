"""Configuration of the detector service, read from ``FACEDETECT_*`` environment variables.

One settings object feeds the API, the CLI and the UI, so ``FACEDETECT_BACKEND=cascade`` means the same
thing everywhere. Defaults are the embedded ones: animeface on CPU, outputs under ``./outputs``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from facedetect.imageio import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

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
    token: SecretStr | None = Field(None, description="when set, POST /load and /unload need Authorization: Bearer <token>")

    @field_validator("token", mode="before")
    @classmethod
    def _empty_token_is_unset(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v
