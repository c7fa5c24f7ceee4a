"""Both HTTP APIs answer what their OpenAPI documents say, checked by schemathesis against the real
services over loopback: generated (and deliberately broken) requests for every operation, a bounded
number of examples each, and every answer held to the spec — no 5xx, only declared status codes, the
declared content type and body schema. The panel is called with its token, so its write routes run
(dry-run changes of a small sprite folder) instead of stopping at 401."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from facedetect.api import create_app as create_detector
from facedetect.settings import FaceDetectSettings
from mikubot.web import create_app as create_panel
import loopback
from panel_helpers import bearer, panel_settings, sprite_folder
from servers import serve_app

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# derandomize: the same examples on every run (hypothesis seeds them from the test), so a run's verdict is
# the code's, not the draw's; a new case reaches the suite when the spec or the code changes.
BOUNDED = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                   derandomize=True)


# The documents come from the apps themselves; the requests go to real servers (the fixtures below).
DETECTOR_SPEC = create_detector(FaceDetectSettings(preload=False)).openapi()
PANEL_SPEC = create_panel(panel_settings(Path("unused"), Path("unused"))).openapi()
detector = schemathesis.openapi.from_dict(DETECTOR_SPEC)
panel = schemathesis.openapi.from_dict(PANEL_SPEC)


@pytest.fixture(scope="module")
def detector_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings_ = FaceDetectSettings(outputs=tmp_path_factory.mktemp("det-out"), token="contract-token")
    with serve_app(create_detector(settings_)) as url:
        yield url


@pytest.fixture(scope="module")
def panel_url(art_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    art = sprite_folder(art_dir, tmp_path_factory.mktemp("art"))
    with serve_app(create_panel(panel_settings(tmp_path_factory.mktemp("data"), art))) as url:
        yield url


def test_the_specs_are_the_served_ones(detector_url: str, panel_url: str) -> None:
    assert loopback.get(f"{detector_url}/openapi.json").json() == DETECTOR_SPEC
    assert loopback.get(f"{panel_url}/openapi.json").json() == PANEL_SPEC


@detector.parametrize()
@BOUNDED
def test_the_detector_answers_what_its_spec_says(case: schemathesis.Case, detector_url: str) -> None:
    case.call_and_validate(base_url=detector_url, checks=CHECKS, timeout=300)


@panel.parametrize()
@BOUNDED
def test_the_panel_answers_what_its_spec_says(case: schemathesis.Case, panel_url: str) -> None:
    # ?wait=true runs a whole change (up to 9 candidates here) before answering: allow it the time.
    case.call_and_validate(base_url=panel_url, headers=bearer(), checks=CHECKS, timeout=300)
