"""The nested parts of a change record (``mikubot.record.ChangeRecord``), typed: the verifier's answer,
the VRAM reservations, the candidates (their faces and the chosen one's framing) and Discord's answer to
the upload. The history row (``mikubot.history.HistoryRow``) reads its JSON columns back into the same
models, so a row written by an older version loads as long as its keys fit (missing optional keys stay
unset, unknown ones are ignored). Each part dumps the keys its producer gave (``mikubot.wire.Sparse``):
the record's JSON is unchanged by the typing.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from mikubot.wire import Sparse


class Verification(Sparse):
    """A verifier's answer about one picture (``mikubot.verify``): is it the character, how sure, why."""

    is_character: bool
    confidence: float
    description: str = ""
    method: str = Field("", description="vision | heuristic")
    raw: str | None = Field(None, description="the model's answer text, kept for the history")
    evidence: dict[str, Any] = Field(default_factory=dict, description="what the verifier measured (free-form per method)")
    duration_s: float = 0.0

    @field_serializer("confidence", "duration_s")
    def _rounded(self, value: float) -> float:
        return round(value, 4)


class ReservationSummary(Sparse):
    """One VRAM reservation a change held: for whom, how long it waited, what was unloaded for it."""

    consumer: str
    waited_s: float
    unloaded: list[str] = Field(default_factory=list)


class Face(Sparse):
    """A detected face as the detector reports it (``facedetect.types.Detection.to_json``)."""

    bbox: list[float]
    confidence: float
    keypoints: list[list[float]] = Field(default_factory=list)
    attributes: dict[str, Any] | None = Field(None, description="detector-specific extras (hair colour, ...)")


class FaceChoice(Sparse):
    """One usable face of the chosen picture, ranked by the crop (``mikubot.crop``)."""

    rank: int
    bbox: list[float]
    confidence: float | None = None
    score: float | None = None
    hair: str | None = None
    hair_detector: str | None = None
    hair_distance: float | None = None
    hair_match: bool | None = None
    chosen: bool = False
    refused: str | None = Field(None, description="why this face cannot be the avatar's")


class FramingSummary(Sparse):
    """How the chosen picture is cut (``mikubot.crop.CropResult.to_json``)."""

    method: str
    box: list[int] = Field(description="the square crop in source pixels [x1, y1, x2, y2]")
    size: list[int] | None = None
    upscale: float | None = None
    score: float | None = None
    face: Face | None = None
    face_inside: bool | None = None
    face_share: float | None = None
    padded: bool = False
    reason: str = ""
    choice: list[FaceChoice] | None = None


class CandidateSummary(Sparse):
    """One candidate picture of a change and how far it got (``mikubot.pipeline.state.Pick.summary``)."""

    source: str | None = None
    key: str
    page_url: str | None = None
    filename: str | None = None
    verification: Verification | None = None
    faces: list[Face] | None = None
    detected_via: str | None = None
    skipped: str | None = Field(None, description="why it dropped out")
    lost: str | None = Field(None, description="a survivor the crop did not choose: why not")
    framing: FramingSummary | None = Field(None, description="the chosen one's crop")
    picture: str | None = Field(None, description="its thumbnail's file name in the avatars folder")
    size: list[int] | None = None


class RateLimit(BaseModel):
    """A 429 Discord answered on the way (``mikubot.discord_rest``)."""

    model_config = ConfigDict(frozen=True, serialize_by_alias=True, validate_by_name=True)

    retry_after: float | None = None
    bucket: str | None = None
    global_: bool | None = Field(None, alias="global")


class AppliedUpload(Sparse):
    """Discord took the look: whose profile it is now (``guild_id`` for one server's look) and the hashes."""

    guild_id: int | None = None
    user_id: str | int | None = None
    username: str | None = None
    avatar: str | None = Field(None, description="the new avatar's hash")
    banner: str | None = Field(None, description="the new banner's hash")
    bio: str | None = Field(None, description="a server look's bio (the credit line), when it sets one")
    attempts: int
    rate_limits: list[RateLimit] = Field(default_factory=list)


class DryRunUpload(Sparse):
    """A dry run: why nothing was uploaded and where the avatar (and banner) were written instead."""

    skipped: str | None
    written: str
    guild_id: int | None = None
    banner: str | None = None


class FailedUpload(Sparse):
    """Discord refused the upload: its message, its HTTP status and whether trying later may work."""

    error: str
    status_code: int | None = None
    retryable: bool = False
    kept: str | None = Field(None, description="the kept avatar, for a later restore")


UploadOutcome = AppliedUpload | DryRunUpload | FailedUpload
