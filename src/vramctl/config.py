"""What the coordinator knows about the card and its consumers.

Settings come from the environment (prefix ``MIKU_VRAM_``; the llama-swap URL also from ``MIKU_LLAMA_SWAP_URL``,
the variable the rest of the project uses), from a YAML file (`VramSettings.from_yaml`) or from a dict
(`VramSettings.from_mapping`). Without any configuration the consumers are the default deployment: llama-swap's
`llama3.1` text model and `vision` model, and the face detector service on :6078.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ConsumerKind = Literal["llama-swap", "ollama", "facedetect", "external"]
ProbeName = Literal["auto", "nvml", "nvidia-smi", "none", "emulator"]


class Consumer(BaseModel):
    """Something that holds VRAM when loaded, and how to make it let go."""

    name: str = Field(min_length=1)  # e.g. "vision", "text", "face-detector"
    vram_mib: int = Field(ge=0)  # what it needs when loaded
    kind: ConsumerKind
    model: str | None = None  # llama-swap model id / Ollama model name
    url: str | None = None  # base URL of its server; llama-swap consumers default to settings.llama_swap_url
    priority: int = 0  # higher = evicted last
    # A llama-swap model whose room llama-swap's routing makes when it is requested (the detector as a
    # llama-swap model, and the models it is routed against): reserving it unloads nothing and waits for
    # nothing — llama-swap stops what may not run beside it, and `vramctl hold` waits for the memory.
    routed: bool = False

    @model_validator(mode="after")
    def _needs_what_it_controls(self) -> "Consumer":
        if self.kind in ("llama-swap", "ollama") and not self.model:
            raise ValueError(f"consumer {self.name!r} of kind {self.kind} needs `model` (the id its server knows)")
        if self.routed and self.kind != "llama-swap":
            raise ValueError(f"consumer {self.name!r}: only a llama-swap model can be routed by llama-swap")
        if self.kind in ("ollama", "facedetect") and not self.url:
            raise ValueError(f"consumer {self.name!r} of kind {self.kind} needs `url` (its server's base URL)")
        return self

    @property
    def controllable(self) -> bool:
        """External consumers are only accounted for: vramctl cannot unload them."""
        return self.kind != "external"


# What the default models of llama-swap/config.yaml need in VRAM, in MiB: the one home of these sizes
# (mikubot's settings and the consumers below read them). Estimates: GGUF file + mmproj + KV cache at the
# configured context + 768 MiB of CUDA context and compute buffers, rounded up to 64 MiB; the table of
# every quantisation is in docs/operations.md ("Models and VRAM"). Measure yours with `vramctl watch`.
TEXT_VRAM_MIB = 6528  # Llama 3.1 8B Instruct Q4_K_M, 8192-token context
VISION_VRAM_MIB = 6464  # MiniCPM-V 2.6 Q4_K_M + f16 mmproj, 4096-token context
DETECTOR_VRAM_MIB = 1024  # the face detector's yolo-onnx session on CUDA


def default_consumers() -> list[Consumer]:
    """The default deployment: the text and vision models of llama-swap/config.yaml, the detector on :6078."""
    return [
        Consumer(name="text", kind="llama-swap", model="llama3.1", vram_mib=TEXT_VRAM_MIB, priority=0),
        Consumer(name="vision", kind="llama-swap", model="vision", vram_mib=VISION_VRAM_MIB, priority=1),
        Consumer(name="face-detector", kind="facedetect", url="http://localhost:6078",
                 vram_mib=DETECTOR_VRAM_MIB, priority=2),
    ]


class VramSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MIKU_VRAM_", extra="ignore", populate_by_name=True)

    consumers: list[Consumer] = Field(default_factory=default_consumers)
    probe: ProbeName = "auto"
    probe_url: str | None = None  # the llama-swap emulator's base URL for probe "emulator"
    gpu_index: int = Field(default=0, ge=0)
    # Without a probe the coordinator cannot measure; with the card's size it can at least estimate.
    gpu_total_mib: int | None = Field(default=None, ge=1)
    safety_margin_mib: int = Field(default=256, ge=0)
    settle_s: float = Field(default=3.0, ge=0)  # a fixed wait after an unload: used only when nothing can be measured
    poll_s: float = Field(default=0.1, gt=0)
    timeout_s: float = Field(default=60.0, gt=0)
    llama_swap_url: str = Field(
        default="http://localhost:8090",
        validation_alias=AliasChoices("llama_swap_url", "MIKU_LLAMA_SWAP_URL", "MIKU_VRAM_LLAMA_SWAP_URL"),
    )
    llama_swap_api_key: SecretStr | None = None
    # Sent as Authorization: Bearer to the face detector's /load and /unload (the service's FACEDETECT_TOKEN).
    facedetect_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("facedetect_token", "FACEDETECT_TOKEN", "MIKU_VRAM_FACEDETECT_TOKEN"),
    )
    http_timeout_s: float = Field(default=30.0, gt=0)  # one HTTP call; an unload waits for the process to exit
    # The host lease (lease.py): a file every process of ours on the host can open; unset, reservations are
    # ordered within this process only.
    lease_file: Path | None = None

    @field_validator("llama_swap_url", "probe_url")
    @classmethod
    def _strip_slash(cls, v: str | None) -> str | None:
        return v.rstrip("/") if v else v

    @model_validator(mode="after")
    def _unique_names(self) -> "VramSettings":
        names = [c.name for c in self.consumers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"consumer names must be unique; repeated: {', '.join(dupes)}")
        if self.probe == "emulator" and not self.probe_url:
            raise ValueError("probe 'emulator' needs probe_url (the emulator's base URL)")
        return self

    def consumer(self, name: str) -> Consumer:
        from .errors import UnknownConsumer

        for c in self.consumers:
            if c.name == name:
                return c
        known = ", ".join(c.name for c in self.consumers) or "none"
        raise UnknownConsumer(f"unknown consumer {name!r}; configured: {known}")

    def server_url(self, consumer: Consumer) -> str:
        """The base URL of the server that controls `consumer`."""
        return (consumer.url or (self.llama_swap_url if consumer.kind == "llama-swap" else "")).rstrip("/")

    @classmethod
    def from_mapping(cls, data: dict[str, Any], **overrides: Any) -> "VramSettings":
        """Build from a dict (a parsed YAML file); explicit overrides win, the environment fills the rest."""
        merged = {**(data or {}), **{k: v for k, v in overrides.items() if v is not None}}
        return cls(**merged)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "VramSettings":
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        # A config may nest everything under `vram:` so it can live in a bigger file.
        if isinstance(data.get("vram"), dict):
            data = data["vram"]
        return cls.from_mapping(data, **overrides)
