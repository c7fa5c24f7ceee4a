"""One exception tree per package: every exception class in src/ derives from its package's root.

Read from the source (ast), so optional backends whose imports need extra packages are checked too."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest

from facedetect.errors import FaceDetectError
from httpretry import HttpRetryError, RetryLater
from mikubot.errors import MikubotError
from mikubot.storage import StorageError, StorageFull
from vramctl.errors import VramError
from vramctl.probes import ProbeError

SRC = Path(__file__).resolve().parent.parent / "src"
ROOTS = {"mikubot": "MikubotError", "facedetect": "FaceDetectError", "vramctl": "VramError",
         "httpretry": "HttpRetryError"}
BUILTIN_EXCEPTIONS = {name for name, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)}
# The pipeline's two errors (ChangeFailed, NoRoomForDetector) are reparented together with the pipeline's
# own restructuring; until then its module is the one place left out.


def _exception_classes(package: str) -> list[tuple[Path, ast.ClassDef, list[str]]]:
    found = []
    for path in sorted((SRC / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = [b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in node.bases]
                found.append((path, node, bases))
    return found


@pytest.mark.parametrize("package", sorted(ROOTS))
def test_every_exception_of_a_package_derives_from_its_root(package: str) -> None:
    classes = _exception_classes(package)
    local = {node.name for _, node, _ in classes}
    offenders = []
    for path, node, bases in classes:
        if node.name == ROOTS[package]:
            continue
        builtin = [b for b in bases if b in BUILTIN_EXCEPTIONS]
        if builtin and not any(b in local for b in bases):  # a built-in base with no base of the package's own
            offenders.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}({', '.join(bases)})")
    assert not offenders, f"exceptions outside {ROOTS[package]}'s tree: {offenders}"
    assert ROOTS[package] in local


def test_the_roots_keep_the_built_in_bases_callers_catch() -> None:
    assert issubclass(StorageFull, StorageError) and issubclass(StorageFull, OSError)
    assert issubclass(StorageFull, MikubotError)
    assert issubclass(ProbeError, VramError) and issubclass(ProbeError, RuntimeError)
    assert issubclass(RetryLater, HttpRetryError)
    full = StorageFull(Path("/data"), "No space left on device", 28)
    assert full.errno == 28 and str(full) == "cannot write /data: No space left on device"
    assert not issubclass(FaceDetectError, MikubotError)  # each package has its own tree


def test_no_cause_is_hidden() -> None:
    """``raise ... from None`` drops the foreign error that explains ours; none is left in src/."""
    hidden = [f"{p.relative_to(SRC)}:{n}" for p in sorted(SRC.rglob("*.py"))
              for n, line in enumerate(p.read_text().splitlines(), 1) if line.rstrip().endswith("from None")]
    assert not hidden, hidden
