"""Real-art face sets: hand-labelled pictures from public repositories, assembled from their git history.

The pictures are other people's art, so the repository commits only their labels and provenance
(``bench/realart/tune.json``, ``bench/realart/test.json``): for every picture the repository, the commit,
the path, the sha256 of the file's bytes at that commit, the licence the repository states, an optional
crop (one panel of a comparison figure) and scale (for huge images), and the hand-drawn face boxes in the
assembled picture's pixels. This script rebuilds the pictures from a folder of repositories::

    python bench/realart.py assemble --repos DIR [--out .cache/realart] [--split tune|test|all] [--clone]

``DIR`` holds one repository per source, checked out or bare, under any of these names:
``DIR/owner+name``, ``DIR/owner/name``, ``DIR/owner+name/repo`` (with or without a work tree; a bare
mirror's ``repo`` directory is itself the git directory). Files are read from git objects at the recorded
commit (``git cat-file``), never from the work tree, so a checkout on another branch does as well. With
``--clone`` a missing repository is cloned from GitHub into ``DIR/owner+name`` and a missing commit
fetched (needs a network). Every file's sha256 is checked before use.

Output: ``OUT/<split>/<id>.png`` (RGB; alpha flattened onto white, as the detector service does) and
``OUT/<split>/labels.json``::

    {"split": "tune", "convention": "...", "source": "bench/realart/tune.json",
     "images": {"<id>.png": {"repo": "owner/name", "size": [w, h], "kinds": [...],
                             "faces": [{"bbox": [x1, y1, x2, y2], "tags": [...]}]}}}

``python bench/realart.py check`` validates the committed labels files (schema, boxes inside the
pictures, unique ids, no repository in both splits, none of the reserved repositories).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ROOT = Path(__file__).resolve().parent.parent
LABELS_DIR = ROOT / "bench" / "realart"
SPLITS = ("tune", "test")
# Kept out of both splits: an independent evaluation of the detector runs on pictures from these.
RESERVED = frozenset(r.lower() for r in (
    "lllyasviel/style2paints", "lllyasviel/DanbooRegion", "lllyasviel/sketchKeras", "Mukosame/Anime2Sketch",
    "Kiteretsu77/APISR", "grapeot/AnimeHeadDetector", "Doubiiu/ToonCrafter", "Fuyucch1/yolov8_animeface",
    "bilibili/ailab", "xinntao/Real-ESRGAN", "nagadomi/waifu2x", "bloc97/Anime4K",
    "kanosawa/anime_face_landmark_detection", "ShuhongChen/bizarre-pose-estimator", "dmMaze/comic-text-detector",
    "rezoo/illustration2vec",
))
REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")


class RealArtError(Exception):
    """A labels file, repository or picture that cannot be used; the message says which and what to do."""


class Face(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bbox: tuple[int, int, int, int]
    tags: list[str] = Field(default_factory=list)

    @field_validator("bbox")
    @classmethod
    def _ordered(cls, b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        if not (b[0] < b[2] and b[1] < b[3]):
            raise ValueError(f"box {list(b)} is empty or inverted (x1 < x2 and y1 < y2 required)")
        return b


class Picture(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    repo: str = Field(pattern=REPO_RE.pattern)
    commit: str = Field(pattern=r"^[0-9a-f]{40}$")
    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    licence: str
    crop: tuple[int, int, int, int] | None = None
    scale: float = Field(default=1.0, gt=0, le=1.0)
    size: tuple[int, int]
    kinds: list[str]
    faces: list[Face]

    @model_validator(mode="after")
    def _boxes_inside(self) -> Picture:
        w, h = self.size
        for f in self.faces:
            x1, y1, x2, y2 = f.bbox
            if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
                raise ValueError(f"{self.id}: face box {list(f.bbox)} is not inside the {w}x{h} picture")
        if self.crop is not None and not (self.crop[0] < self.crop[2] and self.crop[1] < self.crop[3]):
            raise ValueError(f"{self.id}: crop {list(self.crop)} is empty or inverted")
        if self.repo.lower() in RESERVED:
            raise ValueError(f"{self.id}: {self.repo} is reserved for independent evaluation")
        return self


class LabelsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    split: Literal["tune", "test"]
    convention: str
    images: list[Picture]

    @model_validator(mode="after")
    def _unique_ids(self) -> LabelsFile:
        seen: set[str] = set()
        for p in self.images:
            if p.id in seen:
                raise ValueError(f"image id {p.id!r} appears twice")
            seen.add(p.id)
        return self


def load_labels(path: Path) -> LabelsFile:
    try:
        return LabelsFile.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise RealArtError(f"labels file {path} not found") from None
    except ValidationError as exc:
        raise RealArtError(f"{path} is not a valid real-art labels file:\n{exc}") from exc


def check_splits(files: list[LabelsFile]) -> None:
    """No repository (compared case-insensitively) in two splits, no id in two splits."""
    owner: dict[str, str] = {}
    ids: dict[str, str] = {}
    for f in files:
        for p in f.images:
            prev = owner.setdefault(p.repo.lower(), f.split)
            if prev != f.split:
                raise RealArtError(f"{p.repo} is in both the {prev} and the {f.split} split; a source belongs to one")
            if ids.setdefault(p.id, f.split) != f.split:
                raise RealArtError(f"image id {p.id!r} is in both splits")


# --- repositories ---------------------------------------------------------------------------------------


def _git(git_dir: Path, *args: str, data: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], capture_output=True, text=not data)


def _is_git_dir(p: Path) -> bool:
    return (p / "HEAD").is_file() and (p / "objects").is_dir()


def find_git_dir(repos: Path, repo: str) -> Path | None:
    """The git directory of ``repo`` under ``repos`` in any of the documented layouts, or None."""
    owner, name = repo.split("/")
    for base in (repos / f"{owner}+{name}", repos / owner / name, repos / f"{owner}+{name}" / "repo"):
        for cand in (base / ".git", base):
            if cand.is_dir() and _is_git_dir(cand):
                return cand
    # Names on disk may differ in case from the labels (GitHub names are case-insensitive).
    if repos.is_dir():
        want = {f"{owner}+{name}".lower()}
        for child in repos.iterdir():
            if child.name.lower() in want and child.is_dir():
                return find_git_dir(repos, child.name.replace("+", "/", 1))
    return None


def clone(repos: Path, repo: str) -> Path:
    dest = repos / repo.replace("/", "+")
    url = f"https://github.com/{repo}.git"
    print(f"cloning {url} into {dest}")
    proc = subprocess.run(["git", "clone", "--bare", "--quiet", url, str(dest)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RealArtError(f"could not clone {url}: {proc.stderr.strip()}")
    return dest


def read_blob(git_dir: Path, pic: Picture, fetch_missing: bool) -> bytes:
    spec = f"{pic.commit}:{pic.path}"
    if _git(git_dir, "cat-file", "-e", f"{pic.commit}^{{commit}}").returncode != 0:
        if fetch_missing:
            _git(git_dir, "fetch", "--quiet", "origin", pic.commit)
        if _git(git_dir, "cat-file", "-e", f"{pic.commit}^{{commit}}").returncode != 0:
            raise RealArtError(
                f"{pic.id}: commit {pic.commit} of {pic.repo} is not in {git_dir}; update it "
                f"(git --git-dir={git_dir} fetch origin {pic.commit}) or pass --clone"
            )
    proc = _git(git_dir, "cat-file", "blob", spec, data=True)
    if proc.returncode != 0:
        raise RealArtError(f"{pic.id}: {pic.path} does not exist at commit {pic.commit} of {pic.repo} ({git_dir})")
    return proc.stdout


def build_picture(pic: Picture, data: bytes) -> Image.Image:
    digest = hashlib.sha256(data).hexdigest()
    if digest != pic.sha256:
        raise RealArtError(
            f"{pic.id}: {pic.repo}:{pic.path} at {pic.commit[:12]} has sha256 {digest}, the labels say {pic.sha256}"
        )
    with Image.open(io.BytesIO(data)) as im:
        im.seek(0)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            image = Image.new("RGB", rgba.size, "white")
            image.paste(rgba, mask=rgba.getchannel("A"))
        else:
            image = im.convert("RGB")
    if pic.crop is not None:
        x1, y1, x2, y2 = pic.crop
        if x2 > image.width or y2 > image.height:
            raise RealArtError(f"{pic.id}: crop {list(pic.crop)} is outside the {image.width}x{image.height} file")
        image = image.crop(pic.crop)
    if pic.scale != 1.0:
        image = image.resize((round(image.width * pic.scale), round(image.height * pic.scale)), Image.LANCZOS)
    if image.size != tuple(pic.size):
        raise RealArtError(f"{pic.id}: assembled size {list(image.size)} differs from the labels' {list(pic.size)}")
    return image


def assemble(labels: list[LabelsFile], repos: Path, out: Path, *, do_clone: bool = False,
             sources: dict[str, Path] | None = None) -> dict[str, int]:
    """Write every split's pictures and labels.json under ``out``; returns pictures written per split.

    Every missing repository is named in one error before anything is written."""
    needed = sorted({p.repo for f in labels for p in f.images})
    dirs = {r: find_git_dir(repos, r) for r in needed}
    missing = [r for r, d in dirs.items() if d is None]
    if missing and do_clone:
        repos.mkdir(parents=True, exist_ok=True)
        for r in missing:
            dirs[r] = clone(repos, r)
        missing = []
    if missing:
        how = "\n".join(f"  git clone --bare https://github.com/{r}.git {repos / r.replace('/', '+')}" for r in missing)
        raise RealArtError(
            f"{len(missing)} of {len(needed)} repositories are not in {repos}: {', '.join(missing)}.\n"
            f"Get them (or pass --clone where a network exists):\n{how}"
        )
    written: dict[str, int] = {}
    for f in labels:
        split_dir = out / f.split
        split_dir.mkdir(parents=True, exist_ok=True)
        entries = {}
        for pic in f.images:
            git_dir = dirs[pic.repo]
            assert git_dir is not None
            image = build_picture(pic, read_blob(git_dir, pic, fetch_missing=do_clone))
            image.save(split_dir / f"{pic.id}.png")
            entries[f"{pic.id}.png"] = {
                "repo": pic.repo, "commit": pic.commit, "path": pic.path, "licence": pic.licence,
                "size": list(pic.size), "kinds": pic.kinds,
                "faces": [{"bbox": list(face.bbox), "tags": face.tags} for face in pic.faces],
            }
        source = (sources or {}).get(f.split)
        shown = None if source is None else str(source.relative_to(ROOT) if source.is_relative_to(ROOT) else source)
        doc = {"split": f.split, "convention": f.convention, "source": shown, "images": entries}
        (split_dir / "labels.json").write_text(json.dumps(doc, indent=1) + "\n")
        written[f.split] = len(entries)
    return written


def labels_paths(split: str, labels_dir: Path) -> list[Path]:
    return [labels_dir / f"{s}.json" for s in (SPLITS if split == "all" else (split,))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("assemble", help="rebuild the pictures from a folder of repositories")
    a.add_argument("--repos", type=Path, required=True,
                   help="folder of repositories: DIR/owner+name, DIR/owner/name or DIR/owner+name/repo, checked out or bare")
    a.add_argument("--out", type=Path, default=ROOT / ".cache" / "realart")
    a.add_argument("--split", choices=(*SPLITS, "all"), default="all")
    a.add_argument("--labels-dir", type=Path, default=LABELS_DIR, help="where tune.json / test.json live")
    a.add_argument("--clone", action="store_true", help="clone missing repositories from GitHub (needs a network)")
    c = sub.add_parser("check", help="validate the labels files")
    c.add_argument("--labels-dir", type=Path, default=LABELS_DIR)
    args = ap.parse_args(argv)
    try:
        if args.command == "check":
            files = [load_labels(p) for p in labels_paths("all", args.labels_dir) if p.exists()]
            check_splits(files)
            for f in files:
                print(f"{f.split}: {len(f.images)} pictures, {sum(len(p.faces) for p in f.images)} faces, "
                      f"{len({p.repo for p in f.images})} sources")
            return 0
        paths = labels_paths(args.split, args.labels_dir)
        present = [p for p in paths if p.exists()]
        if not present:
            raise RealArtError(f"no labels file: {', '.join(map(str, paths))}")
        for p in set(paths) - set(present):
            print(f"{p} not found; that split is skipped")
        files = [load_labels(p) for p in present]
        check_splits(files)
        if not args.repos.is_dir() and not args.clone:
            raise RealArtError(f"--repos {args.repos} is not a directory")
        written = assemble(files, args.repos, args.out, do_clone=args.clone,
                           sources={f.split: p for f, p in zip(files, present)})
    except RealArtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for split, n in written.items():
        print(f"{split}: {n} pictures in {args.out / split}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
