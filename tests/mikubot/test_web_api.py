"""The panel's JSON API over a real uvicorn server: the embedded default (in-process animeface, local
folder of test art, dry run), the one-change-at-a-time rule, Server-Sent Events, history and restore."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from mikubot.events import STAGES
from mikubot.history import History
import loopback
from panel_helpers import bearer, panel_server, panel_settings, read_sse, sprite_folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("panel-data")


@pytest.fixture(scope="module")
def base(art_dir: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    art = sprite_folder(art_dir, tmp_path_factory.mktemp("art"))
    with panel_server(panel_settings(data_dir, art)) as url:
        yield url


@pytest.fixture()
def client(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=60) as c:
        yield c


def wait_change(client: httpx.Client, **params: object) -> dict:
    r = client.post("/profile-picture/change", params={"wait": "true", **params}, headers=bearer())
    assert r.status_code == 200, r.text
    return r.json()


def test_health_is_open_and_says_dry_run(client: httpx.Client) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["dry_run"] is True


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "Basic abc"}])
def test_change_needs_the_token(client: httpx.Client, headers: dict[str, str]) -> None:
    r = client.post("/profile-picture/change", headers=headers)
    assert r.status_code == 401
    assert "Bearer" in r.json()["detail"] or "token" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"


def test_change_streams_its_stages_and_refuses_a_second_one(client: httpx.Client) -> None:
    r = client.post("/profile-picture/change", headers=bearer())
    assert r.status_code == 202, r.text
    cid = r.json()["change_id"]
    assert isinstance(cid, int) and r.json()["events_url"] == f"/profile-picture/changes/{cid}/events"

    busy = client.post("/profile-picture/change", headers=bearer())
    assert busy.status_code == 409
    assert busy.json()["running_change_id"] == cid
    assert "already running" in busy.json()["detail"]

    frames = read_sse(client, f"/profile-picture/changes/{cid}/events")
    progress = [d for e, _, d in frames if e == "progress"]
    assert frames[-1][0] == "end" and frames[-1][2]["status"] == "dry-run"
    assert [i for e, i, _ in frames if e == "progress"] == [str(n) for n in range(len(progress))]
    assert all(set(d) == {"change_id", "stage", "status", "t", "detail"} and d["change_id"] == cid for d in progress)
    started = [d["stage"] for d in progress if d["status"] == "start"]
    # every stage, in the pipeline's order; no vision model here, so the heuristic verifier reads the
    # detect stage's faces and detection comes before verify (one detection per image)
    assert sorted(started) == sorted(STAGES)
    assert started == ["search", "download", "reserve", "detect", "verify", "crop", "upload", "record"]
    assert progress[-1]["stage"] == "record" and progress[-1]["status"] == "done"
    times = [d["t"] for d in progress]
    assert times == sorted(times)

    # Finished: the same events again, from the history row; Last-Event-ID skips what was seen.
    replay = read_sse(client, f"/profile-picture/changes/{cid}/events")
    assert [(d["stage"], d["status"]) for e, _, d in replay if e == "progress"] == [(d["stage"], d["status"]) for d in progress]
    tail = read_sse(client, f"/profile-picture/changes/{cid}/events", headers={"Last-Event-ID": str(len(progress) - 3)})
    assert [d["stage"] for e, _, d in tail if e == "progress"] == [d["stage"] for d in progress[-2:]]


def test_wait_returns_the_record_with_avatar_files(client: httpx.Client) -> None:
    rec = wait_change(client)
    assert rec["status"] == "dry-run" and rec["error"] is None
    assert len(rec["face_box"]) == 4 and len(rec["crop_box"]) == 4
    row = client.get(f"/profile-picture/changes/{rec['id']}").json()
    assert row["status"] == "dry-run" and row["avatar_url"] == f"/avatars/{rec['id']}.png"
    png = client.get(row["avatar_url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    im = Image.open(io.BytesIO(png.content))
    assert im.width == im.height == rec["avatar_size"][0]
    ann = client.get(row["annotated_url"])
    assert ann.status_code == 200 and ann.headers["content-type"] == "image/jpeg"
    events = [e["event"] for e in row["vram_timeline"]]
    assert "request" in events and "granted" in events  # the detector's reservation, on the chart's clock
    assert row["events"][-1]["stage"] == "record"
    assert "owner_pid" not in row


def test_change_options_and_bad_requests(client: httpx.Client) -> None:
    r = client.post("/profile-picture/change", json={"source": "nonsense:x"}, headers=bearer())
    assert r.status_code == 400 and "bad source" in r.json()["detail"]
    r = client.post("/profile-picture/change", json={"candidates": 0}, headers=bearer())
    assert r.status_code == 422
    r = client.post("/profile-picture/change", json={"surprise": 1}, headers=bearer())
    assert r.status_code == 422
    r = client.post("/profile-picture/change", params={"candidates": "many"}, headers=bearer())
    assert r.status_code == 422
    assert client.get("/profile-picture/changes/999999").status_code == 404
    assert client.get("/profile-picture/changes/999999/events", headers=bearer()).status_code == 404
    assert client.get("/profile-picture/changes/abc").status_code == 422


def test_a_failing_change_is_reported_not_raised(client: httpx.Client, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    rec = wait_change(client, source=f"local:{empty}")
    assert rec["status"] == "failed" and rec["failed_stage"] == "search" and rec["error"]
    frames = read_sse(client, f"/profile-picture/changes/{rec['id']}/events")
    assert frames[-1] == ("end", None, {"change_id": rec["id"], "status": "failed", "error": rec["error"]})
    assert any(d["status"] == "fail" for e, _, d in frames if e == "progress")
    assert client.get(f"/profile-picture/changes/{rec['id']}").json()["avatar_url"] is None


def test_history_and_restore(client: httpx.Client) -> None:
    first = wait_change(client)
    second = wait_change(client)
    assert first["source"]["key"] != second["source"]["key"]  # a picture is not used twice
    hist = client.get("/profile-picture/history", params={"limit": 5}).json()["changes"]
    ids = [c["id"] for c in hist]
    assert ids == sorted(ids, reverse=True) and second["id"] in ids
    entry = next(c for c in hist if c["id"] == first["id"])
    assert "events" not in entry and entry["credit"]["source"] == "local" and entry["avatar_url"]

    assert client.post("/profile-picture/restore/999999", headers=bearer()).status_code == 404
    assert client.post(f"/profile-picture/restore/{first['id']}").status_code == 401
    r = client.post(f"/profile-picture/restore/{first['id']}", headers=bearer())
    assert r.status_code == 202 and r.json()["kind"] == "restore"
    frames = read_sse(client, r.json()["events_url"])
    assert frames[-1][2]["status"] == "dry-run"
    row = client.get(f"/profile-picture/changes/{r.json()['change_id']}").json()
    assert row["restored_from"] == first["id"] and row["annotated_url"] == f"/avatars/{row['id']}/annotated.jpg"
    assert client.get(row["avatar_url"]).content == client.get(f"/avatars/{first['id']}.png").content


def test_restore_of_a_change_without_avatar_is_422(client: httpx.Client, tmp_path: Path) -> None:
    empty = tmp_path / "nothing"
    empty.mkdir()
    failed = wait_change(client, source=f"local:{empty}")
    r = client.post(f"/profile-picture/restore/{failed['id']}", headers=bearer())
    assert r.status_code == 422 and "no avatar" in r.json()["detail"]


def test_avatars_are_served_only_from_the_data_dir(client: httpx.Client, data_dir: Path) -> None:
    history = History(data_dir / "history.sqlite3")
    cid = history.start("local:elsewhere", dry_run=True)
    history.finish(cid, "dry-run", avatar_path="/etc/passwd", page_url="javascript:alert(1)")
    assert client.get(f"/avatars/{cid}.png").status_code == 404
    row = client.get(f"/profile-picture/changes/{cid}").json()
    assert row["avatar_url"] is None and row["page_url"] is None and row["credit"]["link"] is None
    for path in ("/avatars/..%2Fhistory.sqlite3", "/avatars/../history.sqlite3", "/static/../history.sqlite3",
                 "/static/..%2F..%2Fconfig.py", "/avatars/1/..%2F..%2Fhistory.sqlite3"):
        r = client.get(path)
        assert r.status_code in (404, 422), (path, r.status_code)
        assert b"SQLite" not in r.content


def test_metrics_count_changes_and_refusals(client: httpx.Client) -> None:
    wait_change(client)
    text = client.get("/metrics").text
    assert 'mikubot_changes_total{status="dry-run"}' in text
    assert "mikubot_change_refused_busy_total" in text
    assert "vramctl_reservations_total" in text  # vramctl's own registry rides along
    assert 'mikubot_http_requests_total{code="200",method="POST",route="/profile-picture/change"}' in text
    client.get("/no/such/page")
    assert 'route="(unmatched)"' in client.get("/metrics").text  # unknown paths share one label, never one each


def test_openapi_documents_the_api(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/profile-picture/change", "/profile-picture/changes/{change_id}", "/profile-picture/changes/{change_id}/events",
                 "/profile-picture/history", "/profile-picture/restore/{change_id}", "/profile-picture/upload",
                 "/health", "/metrics"):
        assert path in spec["paths"], path
    assert "/login" not in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_status_reports_detector_and_vram(client: httpx.Client) -> None:
    s = client.get("/api/status").json()
    assert s["detector"] == {**s["detector"], "mode": "in-process", "backend": "animeface", "ok": True}
    assert s["vram"]["ok"] and s["vram"]["probe"] == "none"
    assert s["llama_swap"]["verifier"] == "heuristic"
    assert s["change"]["running"] is False


def test_events_of_a_change_run_by_another_process(client: httpx.Client, data_dir: Path) -> None:
    """A CLI run beside the panel writes the same history: its stream waits for the row, then replays it."""
    import threading

    history = History(data_dir / "history.sqlite3")
    cid = history.start("local:cli", dry_run=True)  # owned by a live process (this one), so never recovered
    result: list = []
    opened = threading.Event()
    reader = threading.Thread(target=lambda: result.extend(
        read_sse(client, f"/profile-picture/changes/{cid}/events", opened=opened)))
    reader.start()
    assert opened.wait(30), "the stream never opened"
    assert reader.is_alive() and not result  # open and still waiting: the change has not ended
    events = [{"change_id": cid, "stage": "search", "status": "start", "t": 0.0, "detail": {}},
              {"change_id": cid, "stage": "search", "status": "fail", "t": 0.1, "detail": {"error": "nothing"}}]
    history.finish(cid, "failed", events=events, error="nothing")
    reader.join(timeout=10)
    assert [d for e, _, d in result if e == "progress"] == events
    assert result[-1] == ("end", None, {"change_id": cid, "status": "failed", "error": "nothing"})


def test_concurrent_change_requests_start_exactly_one(base: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def post(_: int) -> httpx.Response:
        return loopback.post(f"{base}/profile-picture/change", headers=bearer(), timeout=60)

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(post, range(6)))
    codes = sorted(r.status_code for r in answers)
    assert codes == [202] + [409] * 5, codes
    winner = next(r for r in answers if r.status_code == 202).json()["change_id"]
    assert {r.json()["running_change_id"] for r in answers if r.status_code == 409} == {winner}  # every 409 says which
    with httpx.Client(base_url=base, timeout=60) as c:
        assert read_sse(c, f"/profile-picture/changes/{winner}/events")[-1][0] == "end"
