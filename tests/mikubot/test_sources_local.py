"""Local folder and file sources, and the spec parser."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from mikubot.sources import (
    DanbooruSource, DapiSource, FileSource, LocalFolderSource, SourceConfigError, SourceError, UrlSource,
    source_from_spec,
)


@pytest.fixture
def folder(tmp_path: Path, art_dir: Path) -> Path:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    shutil.copy(art_dir / "eileen happy.png", tmp_path / "a.png")
    shutil.copy(art_dir / "lucy mad.png", tmp_path / "sub" / "b.PNG")
    shutil.copy(art_dir / "bg club.jpg", tmp_path / "sub" / "c.jpeg")
    shutil.copy(art_dir / "eileen happy.png", tmp_path / "sub" / "copy-of-a.png")  # same content as a.png
    shutil.copy(art_dir / "lucy happy.png", tmp_path / ".hidden" / "secret.png")
    shutil.copy(art_dir / "lucy happy.png", tmp_path / ".dotfile.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "fake.png").write_text("<!doctype html> no")
    return tmp_path


async def test_local_folder_recursive_with_content_keys(folder: Path, art_dir: Path) -> None:
    src = source_from_spec(f"local:{folder}", rng=1)
    assert isinstance(src, LocalFolderSource)
    found = await src.search(10, set())
    assert {c.filename for c in found} - {"a.png", "copy-of-a.png"} == {"b.PNG", "c.jpeg"}
    assert len(found) == 3  # duplicate content counted once; hidden, text and fake files skipped
    key_a = "local:" + hashlib.sha256((art_dir / "eileen happy.png").read_bytes()).hexdigest()
    assert key_a in {c.key for c in found}
    assert src.last_search.rejected == {"duplicate file": 1, "not a readable image": 1}
    exts = {c.filename: c.file_ext for c in found}
    assert exts.get("c.jpeg") == "jpg" and exts.get("b.PNG") == "png"
    cand = next(c for c in found if c.key == key_a)
    got = await src.download(cand)
    assert got.data == (art_dir / "eileen happy.png").read_bytes() and (got.width, got.height) == (320, 720)
    rest = await src.search(10, {key_a})
    assert key_a not in {c.key for c in rest} and len(rest) == 2
    assert len(await src.search(1, set())) == 1


async def test_local_folder_order_is_random(folder: Path) -> None:
    orders = {tuple(c.key for c in await source_from_spec(f"local:{folder}", rng=seed).search(3, set()))
              for seed in range(8)}
    assert len(orders) > 1


async def test_local_changes_and_missing_folders(folder: Path, tmp_path: Path) -> None:
    src = source_from_spec(f"local:{folder}")
    cand = next(c for c in await src.search(10, set()) if c.filename == "c.jpeg")
    Path(cand.extra["path"]).write_bytes(b"changed")
    with pytest.raises(SourceError) as info:
        await src.download(cand)
    assert "changed" in info.value.message and info.value.retryable
    with pytest.raises(SourceError, match="does not exist"):
        await source_from_spec(f"local:{tmp_path / 'nope'}").search(1, set())
    with pytest.raises(SourceError, match="not a folder"):
        await source_from_spec(f"local:{folder / 'a.png'}").search(1, set())
    assert await source_from_spec(f"local:{folder / 'sub'}", max_download_mib=1000 / 2**20).search(5, set()) == []


async def test_file_source(art_dir: Path, tmp_path: Path) -> None:
    path = art_dir / "sylvie blue smile.png"
    src = source_from_spec(f"file:{path}")
    assert isinstance(src, FileSource)
    [cand] = await src.search(5, set())
    assert cand.key == "file:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert (cand.filename, cand.width, cand.height) == ("sylvie blue smile.png", 334, 700)
    assert (await src.download(cand)).data == path.read_bytes()
    assert await src.search(5, {cand.key}) == []
    with pytest.raises(SourceError, match="does not exist"):
        await source_from_spec(f"file:{tmp_path / 'x.png'}").search(1, set())
    (tmp_path / "t.png").write_text("hello")
    with pytest.raises(SourceError, match="not a JPEG, PNG"):
        await source_from_spec(f"file:{tmp_path / 't.png'}").search(1, set())


def test_spec_parsing() -> None:
    assert isinstance(source_from_spec("danbooru"), DanbooruSource)
    assert isinstance(source_from_spec("Safebooru"), DapiSource)
    assert source_from_spec("gelbooru").name == "gelbooru"
    assert isinstance(source_from_spec("url:https://example.com/a.png"), UrlSource)
    for bad in ("", "pixiv", "local:", "file:", "url:", "danbooru:x"):
        with pytest.raises(SourceConfigError):
            source_from_spec(bad)
    with pytest.raises(SourceConfigError, match="unknown source option"):
        source_from_spec("danbooru", colour="teal")
    with pytest.raises(SourceConfigError, match="ratings"):
        source_from_spec("danbooru", ratings=["nice"])
    with pytest.raises(ValueError):  # a SourceConfigError is also a ValueError
        source_from_spec("danbooru", extra_tag="solo 1girl")
    src = source_from_spec("danbooru", ratings="general,sensitive", min_side=256, max_download_mib=2,
                           danbooru_api_key="k", danbooru_login="me", character_tag="Hatsune Miku")
    assert src.options.ratings == ["g", "s"] and src.options.min_side == 256
    assert src.options.max_download_bytes == 2 * 1024 * 1024 and src.options.character_tag == "hatsune_miku"
    assert "k" not in repr(src.options.danbooru_api_key)
