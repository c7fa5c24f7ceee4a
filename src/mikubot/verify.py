"""Is this picture the character? Two verifiers behind one ``verify(picture) -> Verification``.

A ``CandidatePicture`` carries all any verifier needs: the downloaded candidate (bytes, tags, source), its
decoded image, the faces the detect stage found (None: not detected yet) and what the verifier prepared
for it ahead (``prepare``, run in a worker thread as soon as the picture is decoded). A verifier says
what it needs of the flow: ``reserves`` (the VRAM consumer to hold around its K calls, or None) and
``uses_faces`` (it reads the detect stage's faces, so the flow detects first).

``VisionVerifier`` asks the vision model through llama-swap's OpenAI-compatible
``/v1/chat/completions`` (the image as a data URI). It asks for JSON, but small local vision models
often wrap JSON in prose or code fences, or answer in prose only; ``parse_answer`` takes all of those.
The caller holds one vramctl reservation of the vision model around all K calls (mikubot/pipeline/verify.py).

``HeuristicVerifier`` needs no model: a booru post's character tag is strong evidence, and the hair
colour read around each face (``mikubot.hair``) can be compared with the character's configured colours
(teal for Miku). It takes the faces from the detect stage's detections when it is given them (one
detection per image: the pipeline detects first when the heuristic verifies) and runs its own animeface
pass only when it is not.
Images from sources without tags (a local folder, a URL, an uploaded file) were chosen by the
operator; the heuristic cannot refute them, so it accepts them with a confidence that says how much
the hair colour agrees.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from PIL import Image

from facedetect.backends.base import Detector
from facedetect.errors import FaceDetectError
from facedetect.imageio import load_image
from facedetect.types import Detection
from httpretry import tls_context
from mikubot.colour import DEFAULT_TOLERANCE, colour_matches, hair_nearness, hair_rank
from mikubot.crop import hair_of
from mikubot.errors import MikubotError
from mikubot.record_parts import Verification
from mikubot.hair import with_hair
from mikubot.sources.base import Candidate
from mikubot.vram import VISION

TAGGED_SOURCES = frozenset({"danbooru", "safebooru", "gelbooru"})
VISION_MAX_SIDE = 768  # vision encoders work at ~448-896 px; sending more only costs upload and decode time
HAIR_PROBE_SIDE = 800  # animeface needs a face ~40 px wide, not full resolution: keeps the check well under a second

PROMPT = (
    "Look at this picture. Is the main character {name}? Answer with JSON only, exactly this shape: "
    '{{"is_character": true or false, "confidence": a number from 0 to 1, '
    '"description": "one short sentence describing the picture"}}'
)


class VisionUnavailable(MikubotError):
    """The vision model cannot be asked (llama-swap down, model missing, 5xx, timeout)."""


@dataclass
class CandidatePicture:
    """One downloaded picture as a verifier sees it."""

    candidate: Candidate
    image: Image.Image | None = None
    faces: list[Detection] | None = None  # the detect stage's detections; None when it has not run yet
    prepared: Any = None  # what ``Verifier.prepare`` made for it ahead (None: the verifier makes it itself)

    @property
    def data(self) -> bytes:
        if self.candidate.data is None:
            raise ValueError("verify needs a downloaded candidate")
        return self.candidate.data


class Verifier(Protocol):
    method: str
    reserves: str | None  # the VRAM consumer held around all K verifications (None: it needs no VRAM)
    uses_faces: bool  # it reads the detect stage's faces: the flow detects before it verifies

    def prepare(self, picture: CandidatePicture) -> Any:
        """CPU work for one picture, done ahead in a worker thread (its result becomes ``picture.prepared``)."""

    async def verify(self, picture: CandidatePicture) -> Verification: ...


# --- answer parsing -------------------------------------------------------------------------------------------

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)
_TRUE = {"true", "yes", "y", "1"}
_FALSE = {"false", "no", "n", "0"}


def _json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object embedded in ``text`` (balanced-brace scan; strings respected)."""
    found: list[dict[str, Any]] = []
    decoder = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch != "{":
            continue
        try:
            obj, _ = decoder.raw_decode(text[i:])
        except ValueError:
            continue
        if isinstance(obj, dict):
            found.append(obj)
    return found


def _as_bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return bool(v)
    if isinstance(v, str):
        s = v.strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
    return None


def _as_confidence(v: Any) -> float | None:
    if isinstance(v, str):
        m = re.search(r"(\d+(?:\.\d+)?)\s*(%)?", v)
        if not m:
            return {"high": 0.9, "medium": 0.6, "low": 0.3}.get(v.strip().lower())
        x = float(m.group(1))
        x = x / 100 if m.group(2) else x
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        x = float(v)
    else:
        return None
    if x > 1:
        x = x / 100 if x <= 100 else 1.0
    return max(0.0, min(1.0, x)) if math.isfinite(x) else None


def parse_answer(text: str, character: str) -> tuple[bool | None, float | None, str]:
    """(is_character, confidence, description) from a model answer; ``None`` where it did not say."""
    body = "\n".join(_FENCE.findall(text)) or text
    for obj in reversed(_json_objects(body) or _json_objects(text)):
        lowered = {str(k).lower(): v for k, v in obj.items()}
        verdict = None
        names = ["is_" + w.lower() for w in character.split()] + ["is_" + character.lower().replace(" ", "_")]
        for key in ("is_character", *names, "match", "answer", "result", "character"):
            if key in lowered:
                verdict = _as_bool(lowered[key])
                if verdict is not None:
                    break
        if verdict is None:
            continue
        conf = _as_confidence(lowered.get("confidence", lowered.get("certainty", lowered.get("score"))))
        desc = str(lowered.get("description") or lowered.get("caption") or "").strip()
        return verdict, conf, desc
    return _parse_prose(text, character)


def _parse_prose(text: str, character: str) -> tuple[bool | None, float | None, str]:
    clean = text.strip()
    low = clean.lower()
    first = re.match(r"\W*(yes|no)\b", low)
    verdict: bool | None = None
    if first:
        verdict = first.group(1) == "yes"
    else:
        names = "|".join(re.escape(n) for n in [character.lower(), *character.lower().split()])
        if re.search(rf"\b(?:not|isn't|is not|no)\b[^.;]*\b(?:{names})\b", low) or re.search(
            rf"\b(?:{names})\b[^.;]*\b(?:not|isn't)\b", low
        ):
            verdict = False
        elif re.search(rf"\b(?:{names})\b", low):
            verdict = True
    conf = None
    m = re.search(r"confiden\w*\D{0,20}?(\d+(?:\.\d+)?\s*%?)", low) or re.search(r"(\d+(?:\.\d+)?\s*%)", low)
    if m:
        conf = _as_confidence(m.group(1))
    desc = ""
    m = re.search(r"description\W*(.+)", clean, re.I)
    if m:
        desc = m.group(1).strip().strip('"')
    else:
        sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", clean) if s.strip()]
        rest = [s for s in sentences if not re.match(r"\W*(yes|no)\W*$", s, re.I)]
        desc = rest[0] if rest else ""
    return verdict, conf, desc[:300]


# --- the vision model -----------------------------------------------------------------------------------------------

def image_data_uri(data: bytes, max_side: int = VISION_MAX_SIDE, image: Image.Image | None = None) -> str:
    """A JPEG data URI of the picture scaled to ``max_side`` (transparency flattened by load_image).
    ``image``: the picture already decoded by load_image (the pipeline has it), to skip decoding it again."""
    image = image.copy() if image is not None else load_image(data)[0]
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class VisionVerifier:
    method = "vision"
    reserves: str | None = VISION
    uses_faces = False

    def __init__(
        self,
        llama_swap_url: str,
        model: str,
        character: str,
        *,
        http: httpx.AsyncClient | None = None,
        timeout_s: float = 120.0,
        api_key: str | None = None,
    ) -> None:
        self.url = llama_swap_url.rstrip("/") + "/v1/chat/completions"
        self.model = model
        self.character = character
        self._http = http
        self.timeout_s = timeout_s
        self._api_key = api_key

    def prepare(self, picture: CandidatePicture) -> dict[str, Any]:
        """The picture's chat request, built ahead: callers that verify K pictures build them in threads and
        the answers follow each other."""
        return self.request_body(picture.data, picture.image)

    def request_body(self, data: bytes, image: Image.Image | None = None) -> dict[str, Any]:
        """The chat request for one picture. CPU work (scale + JPEG)."""
        return {
            "model": self.model,
            "temperature": 0,
            "max_tokens": 200,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": PROMPT.format(name=self.character)},
                        {"type": "image_url", "image_url": {"url": image_data_uri(data, image=image)}},
                    ],
                }
            ],
        }

    async def _post(self, body: dict[str, Any]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        try:
            if self._http is not None:
                return await self._http.post(self.url, json=body, headers=headers, timeout=self.timeout_s)
            async with httpx.AsyncClient(verify=tls_context()) as client:
                return await client.post(self.url, json=body, headers=headers, timeout=self.timeout_s)
        except httpx.TimeoutException as exc:
            raise VisionUnavailable(f"the vision model did not answer within {self.timeout_s:.0f} s ({self.url})") from exc
        except httpx.HTTPError as exc:
            raise VisionUnavailable(f"cannot reach llama-swap at {self.url}: {exc}") from exc

    async def verify(self, picture: CandidatePicture) -> Verification:
        """Ask the model about the picture (its request built ahead by ``prepare``, or here)."""
        data = picture.data
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        body = picture.prepared
        if body is None:
            body = await asyncio.to_thread(self.request_body, data, picture.image)
        r = await self._post(body)
        if r.status_code == 404 or (r.status_code == 400 and "model" in r.text.lower()):
            raise VisionUnavailable(f"llama-swap does not know the model {self.model!r} ({r.status_code}: {r.text[:200]}); set MIKU_VISION_MODEL")
        if r.status_code >= 400:
            raise VisionUnavailable(f"llama-swap answered {r.status_code}: {r.text[:200]}")
        try:
            text = r.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise VisionUnavailable(f"llama-swap's answer is not an OpenAI chat completion: {r.text[:200]}") from exc
        if isinstance(text, list):  # some servers return content parts
            text = " ".join(str(p.get("text", "")) for p in text if isinstance(p, dict))
        text = str(text or "")
        verdict, conf, desc = parse_answer(text, self.character)
        evidence: dict[str, Any] = {"model": self.model, "parsed": verdict is not None}
        if verdict is None:
            # An answer we cannot read is not a yes: the candidate is skipped, and the text is kept.
            return Verification(is_character=False, confidence=0.0, description=desc or "the model's answer could not be read",
                                method="vision", raw=text, evidence=evidence, duration_s=loop.time() - t0)
        if conf is None:
            conf = 0.8 if verdict else 0.2
            evidence["confidence_assumed"] = True
        return Verification(is_character=verdict, confidence=conf, description=desc, method="vision", raw=text,
                            evidence=evidence, duration_s=loop.time() - t0)


# --- without a model -------------------------------------------------------------------------------------------------

class HeuristicVerifier:
    method = "heuristic"
    reserves: str | None = None
    uses_faces = True

    def __init__(
        self,
        character: str,
        character_tag: str,
        hair_colours: list[str],
        detector: Detector | None,
        *,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> None:
        self.character = character
        self.character_tag = character_tag
        self.hair_colours = hair_colours
        self.detector = detector  # only for pictures verified without the detect stage's faces
        self.tolerance = tolerance

    def hair(self, data: bytes, faces: list[Detection] | None = None) -> tuple[str | None, float | None]:
        """The hair colour to judge the picture by, and its difference to the nearest configured colour
        (``mikubot.colour.hair_nearness``); (None, None) when no face reports a colour. ``faces``: the
        picture's detections, when already made (else animeface runs on a thumbnail here). With several
        faces, the one the crop would take for the character's speaks for the picture: the best
        ``mikubot.colour.hair_rank``, then the detector's confidence; the most confident one when no
        colours are configured."""
        if faces is None or (faces and not any(hair_of(f) for f in faces)):
            faces = self._detect(data)  # not detected yet, or without a colour read
        coloured = [(f, colour) for f in faces if (colour := hair_of(f))]
        if not coloured:
            return None, None
        if not self.hair_colours:
            return max(coloured, key=lambda fc: fc[0].confidence)[1], None
        _, colour = max(coloured, key=lambda fc: (hair_rank(fc[1], self.hair_colours, self.tolerance), fc[0].confidence))
        distance = hair_nearness(colour, self.hair_colours)
        return colour, None if math.isinf(distance) else distance

    def _detect(self, data: bytes) -> list[Detection]:
        try:
            image, _ = load_image(data)
        except FaceDetectError:
            return []
        if self.detector is None:
            return []
        image.thumbnail((HAIR_PROBE_SIDE, HAIR_PROBE_SIDE), Image.Resampling.LANCZOS)
        return with_hair(image, self.detector.detect(image))

    def prepare(self, picture: CandidatePicture) -> None:
        """Nothing to build ahead: the hair colour is read from the detect stage's faces."""
        return None

    async def verify(self, picture: CandidatePicture) -> Verification:
        """The picture's tags and hair colour (read from its detect-stage faces; its own detection without)."""
        candidate, faces = picture.candidate, picture.faces
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        colour, distance = await asyncio.to_thread(self.hair, picture.data, faces)
        hair_match = distance is not None and colour_matches(colour, self.hair_colours, self.tolerance)
        tags = [t.lower() for t in candidate.tags]
        tagged = candidate.source in TAGGED_SOURCES
        evidence: dict[str, Any] = {
            "tagged_source": tagged,
            "character_tag": self.character_tag in tags if tagged else None,
            "hair_color": colour,
            "hair_distance": round(distance, 1) if distance is not None else None,
            "hair_match": hair_match if colour else None,
            "faces_from": "detect stage" if faces is not None else "own detection",
        }
        hair_note = (
            f"hair {colour} {'matches' if hair_match else 'does not match'} {self.character}'s colours"
            if colour else "no face found to read the hair colour from"
        )
        if tagged:
            has_tag = self.character_tag in tags
            if has_tag:
                conf = 0.95 if hair_match else 0.75
                desc = f"{candidate.source} post tagged {self.character_tag}; {hair_note}"
            else:
                conf = 0.05
                desc = f"{candidate.source} post without the tag {self.character_tag}; {hair_note}"
            verdict = has_tag
        else:
            verdict = True
            conf = 0.85 if hair_match else 0.5
            name = candidate.filename or candidate.key
            desc = f"operator-chosen {candidate.source} image {name}; {hair_note}"
        return Verification(is_character=verdict, confidence=conf, description=desc, method="heuristic", raw=None,
                            evidence=evidence, duration_s=loop.time() - t0)
