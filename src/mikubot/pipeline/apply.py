"""The change's files and the upload stage: the kept avatar (and banner) written before Discord sees them
(a failed upload can be applied later), the annotated source drawn meanwhile, then the upload — to the
global profile or one server's own look — or, for a dry run, only where the files were written. A restore
uploads an earlier change's kept files the same way."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from mikubot.crop import avatar_png
from mikubot.discord_rest import DiscordError
from mikubot.events import DryRunSkip, UploadStart
from mikubot.guild_profile import set_guild_look
from mikubot.outputs import ChangeFiles, annotated_source, write_change_files
from mikubot.pipeline.services import Services
from mikubot.pipeline.state import ChangeFailed, ChangeState, Chosen
from mikubot.record import credit_of
from mikubot.record_parts import AppliedUpload, DryRunUpload, FailedUpload
from mikubot.storage import StorageError
from mikubot.upload import set_avatar

log = logging.getLogger(__name__)


async def write_and_apply(state: ChangeState, services: Services, chosen: Chosen, banner: bytes | None,
                          out: Path | None) -> None:
    """The chosen avatar's files, its post marked used, then the upload stage."""
    png = await asyncio.to_thread(avatar_png, chosen.crop)
    # The annotated source — drawing on a large picture and a JPEG, for people, not for Discord — is made
    # during the upload.
    files = await asyncio.to_thread(write_change_files, state.settings.avatars_dir, state.id, png, None, out,
                                    banner_png=banner)
    state.files, state.kept_avatar, state.banner.kept = files.to_json(), files.kept, files.kept_banner
    c = chosen.pick.candidate
    await asyncio.to_thread(services.history.mark_used, c.source, c.key, state.id)
    annotating = asyncio.create_task(asyncio.to_thread(_annotated_files, state, chosen, png, out, banner))
    try:
        await apply(state, png, files.avatar, banner=banner)
    finally:
        try:
            state.files = (await annotating).to_json()
        except StorageError as exc:  # the annotated copy is for people; the avatar is written already
            log.warning("change #%s: the annotated source was not written: %s", state.id, exc)


def _annotated_files(state: ChangeState, chosen: Chosen, png: bytes, out: Path | None,
                     banner: bytes | None) -> ChangeFiles:
    """All of the change's files, the annotated source included (worker thread)."""
    pick, cut = chosen.pick, chosen.crop
    annotated = annotated_source(pick.image, pick.faces.detections if pick.faces else [], cut.box) \
        if pick.image is not None else None
    return write_change_files(state.settings.avatars_dir, state.id, png, annotated, out, banner_png=banner)


async def reapply(state: ChangeState, path: Path, banner_path: Path | None, banner_reason: str | None) -> None:
    """A restore: the kept avatar (and banner) of an earlier change, uploaded again."""
    state.kept_avatar, state.banner.kept, state.banner.reason = path, banner_path, banner_reason
    state.files = {"avatar": str(path), "report": str(state.default_report), "annotated": None, "kept": str(path)}
    png = await asyncio.to_thread(path.read_bytes)
    banner = None
    if banner_path is not None:
        state.files["banner"] = str(banner_path)
        banner = await asyncio.to_thread(banner_path.read_bytes)
    await apply(state, png, path, banner=banner, restored_from=state.restored_from)


async def apply(state: ChangeState, png: bytes, written: Path, *, banner: bytes | None = None,
                restored_from: int | None = None) -> None:
    """The upload stage: the avatar (and the banner, in the same request) to Discord — to one server's
    own look when the change is for a server — or (dry run) only where they were written."""
    # Keys that do not apply are left out of the start event and the record's upload part (not sent as null).
    scope = {"guild_id": state.guild_id} if state.guild_id is not None else {}
    start = UploadStart(dry_run=state.dry_run, **({"banner": True} if banner is not None else {}), **scope,
                        **({"restored_from": restored_from} if restored_from is not None else {}))
    with state.stage("upload", start):
        if state.dry_run:
            banner_file = {"banner": state.files["banner"]} if banner is not None and state.files.get("banner") else {}
            state.upload.result = DryRunUpload(skipped=state.dry_reason, written=str(written), **scope, **banner_file)
            state.events.emit("upload", "skip", DryRunSkip(reason=state.dry_reason, avatar=str(written), **banner_file))
            return
        try:
            if state.guild_id is not None:
                result = await set_guild_look(state.settings, state.guild_id, png, credit=_bio_credit(state),
                                              banner=banner)
            else:
                result = await set_avatar(state.settings, png, banner)
        except DiscordError as exc:
            state.upload.result = FailedUpload(error=exc.message, status_code=exc.status_code, retryable=exc.retryable,
                                               kept=str(state.kept_avatar))
            raise ChangeFailed("upload", exc.message) from exc
        state.upload.result, state.upload.done = AppliedUpload.model_validate(result.to_json()), True


def _bio_credit(state: ChangeState) -> dict[str, Any] | None:
    """A server's bio: the credit to make its line from, when its look asks for one (None leaves the bio
    as it is)."""
    look = state.settings.look_for(state.guild_id)
    return credit_of(state).model_dump() if look is not None and look.bio_credit else None
