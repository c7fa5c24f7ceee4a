"""The stack test's checks, from the host, against the stack scripts/stack-test.sh started (its published
ports on 127.0.0.1, `compose exec` for what runs inside). One line per check as it passes; the first that
fails raises with what it saw.

    python tests/stack/checks.py -- docker-compose --project-directory DIR -f A.yml -f B.yml
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence

import httpx
from prometheus_client.parser import text_string_to_metric_families

from mikubot.web.auth import SESSION_COOKIE

PANEL = "http://127.0.0.1:3939"
DETECTOR = "http://127.0.0.1:6078"
LLAMA_SWAP = "http://127.0.0.1:8090"
TOKEN_FILE = "/data/web-token"  # MIKU_DATA_DIR=/data in docker-compose.yml, mikubot.web.auth.TOKEN_FILE
CHANGE_TIMEOUT_S = 300.0


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


def check_change(http: httpx.Client, token: str) -> None:
    before = detections(http)
    r = http.post(f"{PANEL}/profile-picture/change", params={"wait": "true"}, json={"dry_run": True},
                  headers={"Authorization": f"Bearer {token}"}, timeout=CHANGE_TIMEOUT_S)
    expect(r.status_code == 200, f"dry-run change: HTTP {r.status_code} {r.text[:500]}")
    record = r.json()
    record = record.get("record", record)
    expect(record.get("status") == "dry-run", f"the change ended {record.get('status')}: {record.get('error')} "
                                             f"(failed at {record.get('failed_stage')})")
    fallbacks = record.get("fallbacks") or []
    expect(not any(f.startswith("detect:") for f in fallbacks), f"detection fell back: {fallbacks}")
    expect(detections(http) > before, "the detector container answered no /detect during the change")
    expect(record.get("verifier") == "vision", f"verified by {record.get('verifier')!r}, not the vision model "
                                               f"behind llama-swap (fallbacks {fallbacks})")
    reserved = [x.get("consumer") or x.get("name") for x in record.get("reservations") or []]
    avatar = http.get(f"{PANEL}/avatars/{record['id']}.png")
    expect(avatar.status_code == 200 and avatar.content[:8] == b"\x89PNG\r\n\x1a\n", f"avatar: HTTP {avatar.status_code}")
    passed(f"dry-run change #{record['id']} through the panel API: avatar {record.get('avatar_size')} from "
           f"{(record.get('source') or {}).get('name')}, faces by the detector container "
           f"({record.get('detector_backend')}), verified by the vision model through llama-swap, "
           f"reservations {reserved}, fallbacks {fallbacks or 'none'}")


def check_llama_swap(http: httpx.Client) -> None:
    running = http.get(f"{LLAMA_SWAP}/running")
    expect(running.status_code == 200 and isinstance(running.json().get("running"), list), f"/running: {running.text[:300]}")
    version = http.get(f"{LLAMA_SWAP}/api/version")
    expect(version.status_code == 200 and {"version", "commit", "build_date"} <= set(version.json()),
           f"/api/version: {version.text[:300]}")
    models = {m["id"] for m in http.get(f"{LLAMA_SWAP}/v1/models").json()["data"]}
    expect({"llama3.1", "vision"} <= models, f"/v1/models lists {sorted(models)}")
    now = [(m["model"], m["state"]) for m in running.json()["running"]]
    passed(f"llama-swap (the real binary) /running {now}, /api/version {version.json()}, models {sorted(models)}")


def check_vramctl(stack: Stack) -> None:
    got = stack.exec("miku-bot", "vramctl", "status", "--json")
    expect(got.returncode == 0, f"vramctl status inside the bot container: exit {got.returncode}: {got.stderr.strip()}")
    status = json.loads(got.stdout)
    gpu = status.get("gpu") or {}
    expect(status["probe"] == "emulator" and gpu.get("total_mib") == 8192,
           f"vramctl reads {status['probe']!r} ({status.get('probe_error')}), card {gpu}")
    names = {c["name"]: c["loaded"] for c in status["consumers"]}
    expect(set(names) == {"text", "vision", "face-detector"}, f"vramctl's consumers: {names}")
    expect(names["face-detector"] is True, f"vramctl cannot see the detector container loaded: {status['consumers']}")
    passed(f"`vramctl status` inside the bot container: simulated card {gpu['used_mib']:g}/{gpu['total_mib']:g} MiB "
           f"used, consumers {names}")


def main(argv: list[str]) -> int:
    compose = argv[argv.index("--") + 1:] if "--" in argv else []
    if not compose:
        print(__doc__, file=sys.stderr)
        return 2
    stack = Stack(compose)
    try:
        token = check_token(stack)
        check_doctor(stack)
        check_login(token)
        with httpx.Client(timeout=30) as http:
            check_change(http, token)
            check_llama_swap(http)
        check_vramctl(stack)
    except (CheckFailed, httpx.HTTPError, json.JSONDecodeError, subprocess.TimeoutExpired) as exc:
        print(f"  ✗ {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
