"""Where annotated images and result JSON go: one ``<base>_annotated.jpg`` + ``<base>_results.json`` pair
per detection.

Two naming schemes share the writer. The service names pairs ``<UTC timestamp>_<8 hex>_<sanitised stem>``
so concurrent uploads of ``image.png`` never overwrite each other, and keeps only the newest
``retention`` pairs so a long-running container cannot fill its disk. The CLI names them after the input
file (``eileen happy_annotated.jpg``) because a person asked for those files by name.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image

from facedetect.annotate import jpeg_ready

ANNOTATED_SUFFIX = "_annotated.jpg"
RESULTS_SUFFIX = "_results.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_STEM = 48


def sanitize_stem(filename: str | None) -> str:
    """The stem of an untrusted upload name, reduced to ``[A-Za-z0-9._-]`` (no paths, no dot-files)."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name.strip(".") else name
    stem = _UNSAFE.sub("_", stem).strip("._-")[:MAX_STEM].strip("._-")
    return stem or "image"


@dataclass(frozen=True)
class OutputPaths:
    annotated: Path | None
    results: Path


class OutputStore:
    """Writes result pairs into ``directory``.

    ``unique=True`` (the service): collision-free names and pruning to the newest ``retention`` pairs
    (0 keeps everything). ``unique=False`` (the CLI): names from the input stem, de-duplicated per store.
    """

    def __init__(self, directory: Path | str, *, retention: int = 500, unique: bool = True):
        self.directory = Path(directory)
        self.retention = retention
        self.unique = unique
        self._lock = threading.Lock()
        self._used: set[str] = set()

    def allocate(self, filename: str | None) -> str:
        """A base name for the pair of ``filename``'s results."""
        if self.unique:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
            return f"{stamp}_{uuid.uuid4().hex[:8]}_{sanitize_stem(filename)}"
        stem = Path(filename or "image").stem or "image"
        with self._lock:
            base, n = stem, 1
            while base in self._used:
                n += 1
                base = f"{stem}-{n}"
            self._used.add(base)
        return base

    def paths(self, base: str, *, annotated: bool) -> OutputPaths:
        return OutputPaths(
            annotated=self.directory / f"{base}{ANNOTATED_SUFFIX}" if annotated else None,
            results=self.directory / f"{base}{RESULTS_SUFFIX}",
        )

    def write(self, paths: OutputPaths, payload: dict[str, Any], annotated: Image.Image | None) -> None:
        """Write the pair (image first, so a results file never points at a missing image), then prune."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if paths.annotated is not None and annotated is not None:
            jpeg_ready(annotated).save(paths.annotated, format="JPEG", quality=90)
        tmp = paths.results.with_name(paths.results.name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2))
        tmp.replace(paths.results)
        if self.unique and self.retention > 0:
            self.prune()

    def prune(self) -> int:
        """Delete all but the newest ``retention`` pairs; returns how many pairs went.

        Unique names start with a sortable UTC timestamp, so name order is age order.
        """
        with self._lock:
            bases = sorted(
                {p.name[: -len(RESULTS_SUFFIX)] for p in self.directory.glob(f"*{RESULTS_SUFFIX}")}
                | {p.name[: -len(ANNOTATED_SUFFIX)] for p in self.directory.glob(f"*{ANNOTATED_SUFFIX}")}
            )
            doomed = bases[: max(0, len(bases) - self.retention)]
            for base in doomed:
                for suffix in (ANNOTATED_SUFFIX, RESULTS_SUFFIX):
                    (self.directory / f"{base}{suffix}").unlink(missing_ok=True)
            return len(doomed)
