"""One avatar change: search → download ∥ verify → reserve → detect → crop → upload → record.

Data flows one way through the stages and every stage reports progress events. The VRAM discipline is
the point of the design: the vision model is reserved ONCE around all K verifications, then the face
detector ONCE around all detections (vramctl frees the vision model in between and *measures* that it
is gone) — K candidates cost one swap, not K. Without a vision model the heuristic verifier reads the
hair colour from the detect stage's faces, so detection runs first (flow.py decides the order).

Each external part can fail without making the change inconsistent:
vision model down → heuristic verifier; detector service down → in-process detection → saliency crop;
Discord refusing → the avatar is kept and the row says why. Every change ends in exactly one finished
history row ("applied", "dry-run" or "failed"), whatever happened in between.

The package, one module per stage group, each stage a function handed the change's state
(``state.ChangeState``) and the long-lived parts (``services.Services``):

- ``flow``: the stage order, in one place, and ``AvatarPipeline`` (``change()``, ``restore()``)
- ``find``: search · ``verify``: download and verify · ``detect``: reserve + detect
- ``framing``: the crop choice (``frame_best``) and the banner · ``apply``: the files and the upload
- ``finish``: the one way a change ends and the record stage (the record itself: ``mikubot.record``)
"""

from mikubot.pipeline.detect import NoRoomForDetector, face_finder, reserve_detector
from mikubot.pipeline.flow import AvatarPipeline, stage_order
from mikubot.pipeline.framing import Framing, Picture, frame_best
from mikubot.pipeline.services import Services
from mikubot.pipeline.state import ChangeFailed, ChangeState

__all__ = ["AvatarPipeline", "ChangeFailed", "ChangeState", "Framing", "NoRoomForDetector", "Picture", "Services",
           "face_finder", "frame_best", "reserve_detector", "stage_order"]
