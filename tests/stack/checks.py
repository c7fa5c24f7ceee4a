"""The stack test's checks, from the host, against the stack scripts/stack-test.sh started (its published
ports on 127.0.0.1, `compose exec` for what runs inside). One line per check as it passes; the first that
fails raises with what it saw.

    python tests/stack/checks.py --setup cpu|gpu -- docker-compose --project-directory DIR -f A.yml -f B.yml

`--setup cpu` (docker-compose.cpu.yml): the bot detects through the detector container itself. `--setup gpu`
(docker-compose.yml as a GPU host runs it, the card simulated): the detector is llama-swap's face-detector
model, so it is not loaded until llama-swap loads it, the bot's detections go through
http://llama-swap:8080/upstream/face-detector, and llama-swap's /running, sampled at 20 Hz all along, never
shows the vision model and the detector both holding the card (starting or ready).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from mikubot.web.auth import SESSION_COOKIE

PANEL = "http://127.0.0.1:3939"
DETECTOR = "http://127.0.0.1:6078"
LLAMA_SWAP = "http://127.0.0.1:8090"
TOKEN_FILE = "/data/web-token"  # MIKU_DATA_DIR=/data in docker-compose.yml, mikubot.web.auth.TOKEN_FILE
CHANGE_TIMEOUT_S = 300.0
DETECTOR_MODEL = "face-detector"  # llama-swap/config.yaml; the bot's MIKU_DETECTOR_MODEL default
HOLDING = ("starting", "ready")  # llama-swap states whose process holds (or is taking) its memory
SAMPLE_EVERY_S = 0.05


class CheckFailed(AssertionError):
    """A check saw something else than it expected."""


def passed(message: str) -> None:
    print(f"  ✓ {message}", flush=True)


def expect(condition: object, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


class Stack:
    def __init__(self, compose: Sequence[str]) -> None:
        self.compose = list(compose)

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.compose, *args], capture_output=True, text=True, timeout=timeout, check=False)

    def exec(self, service: str, *command: str) -> subprocess.CompletedProcess[str]:
        return self.run("exec", "-T", service, *command)


def running(http: httpx.Client) -> dict[str, str]:
    """llama-swap's /running: model id -> state."""
    r = http.get(f"{LLAMA_SWAP}/running")
    expect(r.status_code == 200, f"/running: HTTP {r.status_code} {r.text[:300]}")
    return {m["model"]: m["state"] for m in r.json()["running"]}


@dataclass
class Residency:
    """What /running showed while it was sampled: how often, each model seen holding the card, and the samples
    with the vision model and the detector holding it at once."""

    samples: int = 0
    seen: set[str] = field(default_factory=set)
    co_resident: list[dict[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@contextmanager
def sampling_running() -> Iterator[Residency]:
    """Sample /running every 50 ms in a thread for the duration of the block."""
    seen, stop = Residency(), threading.Event()

    def sample() -> None:
        with httpx.Client(timeout=5) as http:
            while not stop.is_set():
                try:
                    now = running(http)
                except (httpx.HTTPError, CheckFailed, ValueError, KeyError) as exc:
                    seen.errors.append(str(exc)[:200])
                else:
                    seen.samples += 1
                    holding = {m for m, state in now.items() if state in HOLDING}
                    seen.seen |= holding
                    if {"vision", DETECTOR_MODEL} <= holding:
                        seen.co_resident.append(now)
                stop.wait(SAMPLE_EVERY_S)

    thread = threading.Thread(target=sample, name="running-sampler", daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(10)


def detections(http: httpx.Client) -> float:
    """How many /detect requests the detector container answered with 200 (its Prometheus counter)."""
    r = http.get(f"{DETECTOR}/metrics")
    expect(r.status_code == 200, f"detector /metrics: HTTP {r.status_code}")
    return sum(s.value for family in text_string_to_metric_families(r.text) for s in family.samples
               if s.name == "facedetect_requests_total" and s.labels.get("endpoint") == "/detect"
               and s.labels.get("status") == "200")


def check_token(stack: Stack) -> str:
    got = stack.exec("miku-bot", "cat", TOKEN_FILE)
    expect(got.returncode == 0 and got.stdout.strip(), f"no generated panel token in {TOKEN_FILE}: {got.stderr.strip()}")
    logs = stack.run("logs", "miku-bot").stdout
    expect(f"changes need the token from {TOKEN_FILE}" in logs, "the bot's log does not say where the panel token is")
    passed(f"no .env: the bot generated its panel token in the data volume ({TOKEN_FILE}) and its log says so")
    return got.stdout.strip()


def check_doctor(stack: Stack) -> None:
    got = stack.exec("miku-bot", "mikubot", "doctor", "--json")
    expect(got.stdout.strip(), f"mikubot doctor printed nothing: {got.stderr.strip()}")
    checks = json.loads(got.stdout)
    failed = [c for c in checks if c["state"] == "fail"]
    expect(got.returncode == 0 and not failed, f"mikubot doctor inside the bot container failed: {failed}")
    states = ", ".join(f"{c['name']} {c['state']}" for c in checks)
    passed(f"`mikubot doctor` inside the bot container: no failure ({states})")


def check_login(token: str) -> None:
    with httpx.Client(base_url=PANEL, timeout=10) as browser:
        wrong = browser.post("/login", data={"token": "not-the-token", "next": "/"})
        expect(wrong.status_code == 401, f"a wrong token at /login: HTTP {wrong.status_code}, not 401")
        r = browser.post("/login", data={"token": token, "next": "/"})
        expect(r.status_code == 303 and SESSION_COOKIE in browser.cookies,
               f"login: HTTP {r.status_code}, cookies {sorted(browser.cookies)}")
        page = browser.get("/", follow_redirects=True)
        expect(page.status_code == 200 and 'id="logout"' in page.text, "after logging in the panel shows no log-out button")
    passed("panel login with the generated token (a wrong one is refused with 401)")


def change(http: httpx.Client, token: str) -> dict:
    """A dry-run change through the panel API, waited for; its record."""
    r = http.post(f"{PANEL}/profile-picture/change", params={"wait": "true"}, json={"dry_run": True},
                  headers={"Authorization": f"Bearer {token}"}, timeout=CHANGE_TIMEOUT_S)
    expect(r.status_code == 200, f"dry-run change: HTTP {r.status_code} {r.text[:500]}")
    record = r.json()
    record = record.get("record", record)
    expect(record.get("status") == "dry-run", f"the change ended {record.get('status')}: {record.get('error')} "
                                             f"(failed at {record.get('failed_stage')})")
    fallbacks = record.get("fallbacks") or []
    expect(not any(f.startswith("detect:") for f in fallbacks), f"detection fell back: {fallbacks}")
    expect(record.get("verifier") == "vision", f"verified by {record.get('verifier')!r}, not the vision model "
                                               f"behind llama-swap (fallbacks {fallbacks})")
    avatar = http.get(f"{PANEL}/avatars/{record['id']}.png")
    expect(avatar.status_code == 200 and avatar.content[:8] == b"\x89PNG\r\n\x1a\n", f"avatar: HTTP {avatar.status_code}")
    return record


def describe(record: dict) -> str:
    reserved = [x.get("consumer") or x.get("name") for x in record.get("reservations") or []]
    return (f"dry-run change #{record['id']} through the panel API: avatar {record.get('avatar_size')} from "
            f"{(record.get('source') or {}).get('name')}, faces by the detector container "
            f"({record.get('detector_backend')}), verified by the vision model through llama-swap, "
            f"reservations {reserved}, fallbacks {record.get('fallbacks') or 'none'}")


def check_change(http: httpx.Client, token: str) -> None:
    """CPU setup: the bot sends its detections to the detector container itself."""
    before = detections(http)
    record = change(http, token)
    expect(detections(http) > before, "the detector container answered no /detect during the change")
    passed(describe(record))


def detector_state(http: httpx.Client) -> tuple[int, int]:
    """(the detector container's own /ready, /upstream/face-detector/health through llama-swap): 200/200
    loaded under llama-swap, 503/409 not loaded and not running (reading it through llama-swap loads nothing)."""
    return (http.get(f"{DETECTOR}/ready").status_code,
            http.get(f"{LLAMA_SWAP}/upstream/{DETECTOR_MODEL}/health").status_code)


def expect_apart(seen: Residency, what: str) -> None:
    expect(seen.samples > 0, f"/running could not be read while {what}: {seen.errors[:3]}")
    expect(not seen.co_resident, f"the vision model and the detector held the card together while {what} "
                                 f"({len(seen.co_resident)} of {seen.samples} samples of /running, e.g. "
                                 f"{seen.co_resident[0] if seen.co_resident else None})")


def check_change_through_llama_swap(http: httpx.Client, token: str) -> None:
    """GPU setup: the detector is llama-swap's model. Not loaded until asked for; the change's detections go
    through llama-swap's /upstream/face-detector, which loads it (after stopping the vision model the change
    verified with); vision and detector never hold the card together."""
    expect(DETECTOR_MODEL not in running(http) and detector_state(http) == (503, 409),
           f"before any change the detector is already loaded or running: /running {running(http)}, "
           f"(/ready, /upstream/{DETECTOR_MODEL}/health) = {detector_state(http)}")
    before = detections(http)
    with sampling_running() as seen:
        record = change(http, token)
    expect(detections(http) > before, "the detector container answered no /detect during the change")
    now = running(http)
    expect(now.get(DETECTOR_MODEL) == "ready" and "vision" not in now,
           f"after the change llama-swap's /running is {now}, not the detector alone")
    expect(detector_state(http) == (200, 200), f"the detector is not loaded under llama-swap after the change: "
                                               f"(/ready, /upstream/{DETECTOR_MODEL}/health) = {detector_state(http)}")
    expect({"vision", DETECTOR_MODEL} <= seen.seen, f"/running never showed both models in turn: {sorted(seen.seen)}")
    expect_apart(seen, "the change ran")
    passed(describe(record))
    passed(f"the detector under llama-swap: not loaded before the change (its /ready 503, /upstream/{DETECTOR_MODEL}"
           f"/health 409), loaded by llama-swap for the change's detections through /upstream/{DETECTOR_MODEL} "
           f"(/running now {now}); vision and detector never held the card together in {seen.samples} "
           f"samples of /running at 20 Hz")


def chat(http: httpx.Client, model: str) -> None:
    r = http.post(f"{LLAMA_SWAP}/v1/chat/completions", timeout=120,
                  json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})
    expect(r.status_code == 200, f"a chat with {model!r} through llama-swap: HTTP {r.status_code} {r.text[:300]}")


def holding(http: httpx.Client) -> set[str]:
    return {m for m, state in running(http).items() if state in HOLDING}


def check_routing(http: httpx.Client, token: str) -> None:
    """GPU setup, as another client of llama-swap (Open WebUI, a chat bot) sees it: the text model runs beside
    the detector, the vision model alone, whoever asks; a change after that still gets both in turn."""
    with sampling_running() as seen:
        chat(http, "llama3.1")
        beside = holding(http)
        expect(beside == {"llama3.1", DETECTOR_MODEL}, f"asking for the text model left {running(http)}, "
                                                       "not the text model beside the detector")
        chat(http, "vision")
        alone = holding(http)
        expect(alone == {"vision"}, f"asking for the vision model left {running(http)}, not vision alone")
        expect(detector_state(http) == (503, 409), "the vision model runs but the detector is still loaded: "
                                                   f"(/ready, /upstream/{DETECTOR_MODEL}/health) = {detector_state(http)}")
        chat(http, "llama3.1")
        expect(holding(http) == {"llama3.1"}, f"asking for the text model after vision left {running(http)}")
        record = change(http, token)
        after = holding(http)
        expect(after == {DETECTOR_MODEL}, f"after a change from the text model llama-swap runs {running(http)}, "
                                          "not the detector alone (vision stopped the text model, the detector vision)")
    expect_apart(seen, "clients swapped text, vision and the detector")
    passed(f"llama-swap's routing for any client: text beside the detector {sorted(beside)}, vision alone "
           f"{sorted(alone)} (the hold unloaded the detector), change #{record['id']} from the text model "
           f"again detected through llama-swap ({sorted(after)}); never vision with the detector in "
           f"{seen.samples} samples")


def check_llama_swap(http: httpx.Client) -> None:
    running_now = http.get(f"{LLAMA_SWAP}/running")
    expect(running_now.status_code == 200 and isinstance(running_now.json().get("running"), list),
           f"/running: {running_now.text[:300]}")
    version = http.get(f"{LLAMA_SWAP}/api/version")
    expect(version.status_code == 200 and {"version", "commit", "build_date"} <= set(version.json()),
           f"/api/version: {version.text[:300]}")
    models = {m["id"] for m in http.get(f"{LLAMA_SWAP}/v1/models").json()["data"]}
    expect({"llama3.1", "vision", DETECTOR_MODEL} <= models, f"/v1/models lists {sorted(models)}")
    now = [(m["model"], m["state"]) for m in running_now.json()["running"]]
    passed(f"llama-swap (the real binary, in our image) /running {now}, /api/version {version.json()}, "
           f"models {sorted(models)}")


def check_vramctl(stack: Stack, http: httpx.Client, setup: str) -> None:
    got = stack.exec("miku-bot", "vramctl", "status", "--json")
    expect(got.returncode == 0, f"vramctl status inside the bot container: exit {got.returncode}: {got.stderr.strip()}")
    status = json.loads(got.stdout)
    gpu = status.get("gpu") or {}
    expect(status["probe"] == "emulator" and gpu.get("total_mib") == 8192,
           f"vramctl reads {status['probe']!r} ({status.get('probe_error')}), card {gpu}")
    consumers = {c["name"]: c for c in status["consumers"]}
    names = {name: c["loaded"] for name, c in consumers.items()}
    expect(set(names) == {"text", "vision", "face-detector"}, f"vramctl's consumers: {names}")
    detector = consumers["face-detector"]
    expect(detector["loaded"] is True, f"vramctl cannot see the detector loaded: {detector}")
    if setup == "gpu":
        state = running(http).get(DETECTOR_MODEL)
        expect(detector["kind"] == "llama-swap" and detector["detail"] == f"llama-swap: {state}",
               f"vramctl shows the detector as {detector['kind']} {detector['detail']!r}, llama-swap's /running "
               f"says {state!r}")
        how = f"the detector as llama-swap reports it ({detector['detail']!r})"
    else:
        expect(detector["kind"] == "facedetect", f"vramctl sees the detector as {detector['kind']}, not the service")
        how = f"the detector service ({detector['detail']!r})"
    passed(f"`vramctl status` inside the bot container: simulated card {gpu['used_mib']:g}/{gpu['total_mib']:g} MiB "
           f"used, consumers {names}, {how}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", choices=("cpu", "gpu"), required=True,
                        help="cpu: docker-compose.cpu.yml's stack; gpu: docker-compose.yml's (the card simulated)")
    parser.add_argument("compose", nargs="+", help="the compose command line after --")
    args = parser.parse_args(argv)
    stack = Stack(args.compose)
    try:
        token = check_token(stack)
        check_doctor(stack)
        check_login(token)
        with httpx.Client(timeout=30) as http:
            if args.setup == "gpu":
                check_change_through_llama_swap(http, token)
            else:
                check_change(http, token)
            check_llama_swap(http)
            check_vramctl(stack, http, args.setup)
            if args.setup == "gpu":
                check_routing(http, token)
    except (CheckFailed, httpx.HTTPError, json.JSONDecodeError, subprocess.TimeoutExpired) as exc:
        print(f"  ✗ {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
