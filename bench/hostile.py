"""Hostile-upload benchmark: the bar "/detect: 0 5xx under >= 10k hostile uploads; bounded
memory; 503 + Retry-After when saturated", measured against the real ``facedetect serve`` process.

1. Start ``facedetect serve`` on a free loopback port as its own process (default settings, except a
   small worker pool and queue so saturation is reachable, a 1 MiB byte limit so the oversize kinds stay
   cheap to send, and outputs in a temporary directory). Its log goes to a file that is searched for
   tracebacks at the end.
2. Send ``--n`` uploads from bench/hostile_corpus.py (every kind interleaved: empty, random, truncated,
   bit-flipped, decompression bombs, oversize and chunked bodies, broken multipart, hostile names, wrong
   types, weird-but-valid images, non-image formats, junk query parameters, plus valid images) with
   ``--concurrency`` requests in flight, sampling the server's VmRSS / VmHWM from /proc throughout.
3. Saturation: a burst of ``--burst`` valid uploads at once (more than workers + queue).
4. Afterwards the server must be alive, idle, and still find Eileen's face where the label says.
5. Large bodies in flight: a second ``facedetect serve`` with the default limits (20 MiB uploads,
   1 worker, queue 8) gets ``--large`` (80) uploads of a ~19 MB image at once, and a ``mikubot web``
   panel gets as many unauthenticated 60 MB JSON bodies. Each request is sent by a raw socket client
   that stops sending as soon as an answer arrives. The detector must answer every upload 200 or 503
   (refused at the gate, before its body is read) and the panel every body 401 (refused before a
   byte of it is read); neither process's high-water mark may rise by more than the bodies it admits
   at once can explain — (workers + queue + 1) x 2 x 20 MiB for the detector, 64 MiB for the panel —
   where reading every body first would cost 80 x 19 MB.
6. The panel under floods (``--streams``, ``--previews``; ``--floods-only`` runs just these, into their own
   "hostile-panel-floods" section): ``--streams`` (1000) event streams opened at once on a change another
   process runs — without the token (every one 401), under the default caps (the rest 429/503) and under
   caps raised to let all in — with ``/health`` timed and the panel's CPU measured while they sit open, and
   every open stream must end when the change does; then one 6300x6300 PNG upload preview alone and
   ``--previews`` (8) distinct ones at once, whose memory peak must stay within a quarter of the single
   one's, every answer 200 or 503 + Retry-After, and no more stored uploads than MIKU_UPLOADS_KEPT.

The bar is counted, never timed (other benchmarks share the cores): no status >= 500 except 503 with
Retry-After, no transport errors or timeouts, every response within the statuses its kind allows, bounded
memory (RSS is sampled every 0.1 s: neither the resting level — the median RSS of each later 2 000-upload
window — nor the high-water mark VmHWM may rise more than max(48 MiB, 10 %) above where they stood after
the first 2 000 uploads), some 503s (and
200s, and nothing else) in the burst, and a correct detection at the end.

    .venv/bin/python bench/hostile.py [--n 10000] [--concurrency 12] [--seed 0] [--large 80] [--no-write]
                                      [--streams 1000] [--previews 8] [--floods-only]

Writes the "hostile" section of bench/RESULTS.md; exits 1 when the bar is missed.

Slow clients (``--slow N``, instead of the uploads): ``mikubot web`` and ``facedetect serve``, each as its
own process with default settings under ``ulimit -n 1024``, get N attackers that send a partial header and
then a header line every 5 s, then ``--slow-bodies`` attackers that send a header with Content-Length
60000 and then a body byte every 5 s (``POST /login``, ``POST /detect``); each attacker connects once
(``--slow-reconnect``: again a second after the server drops it). Meanwhile a normal ``GET /health`` every 0.5 s must answer 200 within
1 s, the log must not fill with EMFILE (or any repeated) lines, and memory must stay bounded:

    .venv/bin/python bench/hostile.py --slow 1100 [--slow-bodies 3000] [--slow-seconds 30] [--no-write]

Writes the "hostile-slow" section of bench/RESULTS.md; exits 1 when the bar is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image

from facedetect.types import iou

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))  # tests/servers.py: the one way a server process is started and stopped

from hostile_corpus import HostileCorpus, Upload, encode  # noqa: E402
from results import table, write_section  # noqa: E402
from servers import free_port, run_command  # noqa: E402

WARMUP = 2000  # "peak after the first 2 000 uploads", the baseline of the bounded-memory check
RSS_SLACK_MIB = 48.0  # allowed rise of a later window's peak over the first's: at least this,
RSS_SLACK_SHARE = 0.10  # or this share of the first window's peak (when two big decodes happen to overlap)
FACE_FILE = "eileen happy.png"
FACE_SIZE = (160, 360)  # the corpus' valid images: Eileen at half size, face still found


# ---- the server process ----
def read_memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of ``pid`` in MiB (from /proc/<pid>/status)."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path
    workers: int
    queue: int
    max_bytes: int


@contextlib.contextmanager
def start_server(workers: int, queue: int, max_bytes: int, workdir: Path, timeout: float = 60.0) -> Iterator[Server]:
    """``facedetect serve`` on a free loopback port, its output in ``workdir/server.log``."""
    port = free_port()
    env = {**os.environ, "FACEDETECT_WORKERS": str(workers), "FACEDETECT_QUEUE": str(queue),
           "FACEDETECT_MAX_BYTES": str(max_bytes), "FACEDETECT_OUTPUTS": str(workdir / "outputs")}
    exe = os.path.join(os.path.dirname(sys.executable), "facedetect")
    log = workdir / "server.log"
    url = f"http://127.0.0.1:{port}"
    with run_command([exe, "serve", "--host", "127.0.0.1", "--port", str(port)], url=f"{url}/health", env=env,
                     timeout=timeout, log=log) as proc:
        yield Server(url, proc, log, workers, queue, max_bytes)


class MemorySampler:
    """Samples the server's memory every ``interval`` seconds in a thread; remembers the peak seen."""

    def __init__(self, pid: int, interval: float = 0.1):
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []  # (t, VmRSS MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.samples.append((time.monotonic(), read_memory(self.pid)["VmRSS"]))
            self._stop.wait(self.interval)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


# ---- firing ----
@dataclass
class Outcome:
    kind: str
    status: int | None  # None: no HTTP answer (transport error or timeout)
    problem: str | None = None  # what was wrong with the answer, if anything


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0
    hwm_at_warmup: float | None = None
    marks: list[float] = field(default_factory=list)  # monotonic time at every ``warmup`` answers

    @property
    def by_kind(self) -> dict[str, Counter]:
        out: dict[str, Counter] = defaultdict(Counter)
        for o in self.outcomes:
            out[o.kind][o.status if o.status is not None else "no answer"] += 1
        return dict(sorted(out.items()))

    @property
    def problems(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.problem]

    @property
    def server_errors(self) -> list[Outcome]:
        """Answers >= 500 other than the busy 503 with Retry-After, and requests without an answer."""
        return [o for o in self.outcomes if o.status is None or (o.status >= 500 and o.status != 503)
                or (o.status == 503 and o.problem)]


def judge(up: Upload, r: httpx.Response) -> str | None:
    """Why this answer is wrong for this upload, or None."""
    try:
        body = r.json()
    except ValueError:
        return f"{r.status_code} with a body that is not JSON: {r.text[:120]!r}"
    if r.status_code == 503:
        if not r.headers.get("retry-after", "").isdigit():
            return "503 without a numeric Retry-After"
        return None if isinstance(body.get("detail"), str) else "503 without a detail message"
    if r.status_code not in up.expect:
        return f"{r.status_code} where {sorted(up.expect)} was expected: {str(body)[:200]}"
    if r.status_code >= 400 and not isinstance(body.get("detail"), str):
        return f"{r.status_code} without a detail message"
    if r.status_code == 200:
        if not isinstance(body.get("count"), int) or body["count"] != len(body.get("detections", [])):
            return f"200 with an inconsistent body: {str(body)[:200]}"
        if up.wants_face and body["count"] < 1:
            return "200 but no face in an image that has one"
    return None


async def send(client: httpx.AsyncClient, url: str, up: Upload) -> Outcome:
    try:
        r = await client.post(f"{url}/detect", content=up.body(), headers=up.headers, params=up.params)
    except httpx.TimeoutException as exc:
        return Outcome(up.kind, None, f"timeout ({type(exc).__name__})")
    except httpx.TransportError as exc:
        return Outcome(up.kind, None, f"transport error {type(exc).__name__}: {exc}")
    return Outcome(up.kind, r.status_code, judge(up, r))


async def fire(url: str, uploads: Iterable[Upload], *, concurrency: int, timeout: float = 120.0,
               pid: int | None = None, warmup: int = WARMUP) -> Tally:
    """Send every upload with ``concurrency`` in flight; note the server's VmHWM after ``warmup`` answers."""
    tally = Tally()
    stream = iter(uploads)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        for up in stream:  # one shared iterator: each upload is taken by exactly one worker
            tally.outcomes.append(await send(client, url, up))
            if len(tally.outcomes) % warmup == 0:
                tally.marks.append(time.monotonic())
                if pid is not None and len(tally.outcomes) == warmup:
                    tally.hwm_at_warmup = read_memory(pid)["VmHWM"]

    start = time.perf_counter()
    tally.marks.append(time.monotonic())
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    tally.wall_s = time.perf_counter() - start
    if len(tally.outcomes) % warmup:
        tally.marks.append(time.monotonic())
    return tally


def window_peaks(samples: list[tuple[float, float]], marks: list[float]) -> list[float]:
    """The highest sampled VmRSS between consecutive marks (one value per ``WARMUP`` uploads)."""
    return [max((rss for t, rss in samples if a <= t <= b), default=0.0) for a, b in zip(marks, marks[1:])]


def window_medians(samples: list[tuple[float, float]], marks: list[float]) -> list[float]:
    """The median sampled VmRSS per window: the resting level, where a per-upload leak would show first."""
    out = []
    for a, b in zip(marks, marks[1:]):
        inside = sorted(rss for t, rss in samples if a <= t <= b)
        out.append(inside[len(inside) // 2] if inside else 0.0)
    return out


async def saturate(url: str, image: bytes, burst: int, timeout: float = 300.0) -> Tally:
    """``burst`` valid uploads at once: each must answer 200 or 503 + Retry-After, none hang or reset."""
    up = Upload("saturation", encode_form(image), {"content-type": "multipart/form-data; boundary=sat"},
                expect=frozenset({200}), wants_face=True)
    tally = Tally()
    limits = httpx.Limits(max_connections=burst, max_keepalive_connections=burst)
    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        tally.outcomes = list(await asyncio.gather(*(send(client, url, up) for _ in range(burst))))
    tally.wall_s = time.perf_counter() - start
    return tally


def encode_form(image: bytes) -> bytes:
    return (b'--sat\r\nContent-Disposition: form-data; name="file"; filename="burst.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + image + b"\r\n--sat--\r\n")


# ---- large bodies in flight ----
LARGE_BYTES = 19 * 1000 * 1000  # 19 MB uploads, the hardening case; under the detector's default 20 MiB limit
PANEL_BODY = 60 * 1000 * 1000  # a 60 MB JSON body to POST /profile-picture/change
CHUNK = 256 * 1024


@dataclass
class RawAnswer:
    status: int | None
    sent: int  # body bytes written before the answer came (or the connection closed)
    problem: str | None = None


async def raw_post(url: str, path: str, headers: dict[str, str], body: bytes, timeout: float = 600.0) -> RawAnswer:
    """POST ``body`` over a plain socket, stopping as soon as the server answers: a server that refuses
    before reading (the point of the gate) is seen as such instead of as a reset mid-upload."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n" + \
        "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    writer.write(head.encode())
    answer = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
    sent = 0
    try:
        async with asyncio.timeout(timeout):
            view = memoryview(body)
            while sent < len(body) and not answer.done():
                writer.write(view[sent:sent + CHUNK])
                sent += min(CHUNK, len(body) - sent)
                drain = asyncio.ensure_future(writer.drain())
                await asyncio.wait({drain, answer}, return_when=asyncio.FIRST_COMPLETED)
                if not drain.done():
                    drain.cancel()
                    break  # the server answered and stopped reading
                drain.result()
            raw = await answer
        status = int(raw.split(b" ", 2)[1])
        return RawAnswer(status, sent)
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
        if answer.done() and not answer.cancelled() and answer.exception() is None:
            return RawAnswer(int(answer.result().split(b" ", 2)[1]), sent)
        return RawAnswer(None, sent, f"{type(exc).__name__}: {exc}")
    finally:
        answer.cancel()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def large_image(art: Path) -> bytes:
    """A real PNG of about ``LARGE_BYTES``: Eileen on noise (noise does not compress)."""
    import numpy as np

    rng = np.random.default_rng(0)
    side = int((LARGE_BYTES / 3) ** 0.5)
    noise = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), "RGB")
    noise.paste(Image.open(art / FACE_FILE).convert("RGB"), (side // 3, side // 3))
    return encode(noise, "PNG")


@dataclass
class LargePhase:
    name: str
    n: int
    body_mb: float
    statuses: Counter
    problems: list[str]
    rss_before: float
    hwm_after: float
    limit_mib: float
    sent_mb: float
    logged: Counter = field(default_factory=Counter)  # what the server's access log says it answered

    @property
    def rise(self) -> float:
        return self.hwm_after - self.rss_before


async def _many(url: str, path: str, headers: dict[str, str], body: bytes, n: int) -> list[RawAnswer]:
    return list(await asyncio.gather(*(raw_post(url, path, headers, body) for _ in range(n))))


def large_detector_phase(n: int, art: Path, workdir: Path) -> LargePhase:
    image = large_image(art)
    form = (b'--big\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + image + b"\r\n--big--\r\n")
    workers, queue, max_bytes = 1, 8, 20 * 1024 * 1024  # FacedetectSettings' defaults
    with start_server(workers, queue, max_bytes, workdir) as server:
        pid = server.proc.pid
        before = read_memory(pid)["VmRSS"]
        answers = asyncio.run(_many(server.url, "/detect", {"Content-Type": "multipart/form-data; boundary=big"},
                                    form, n))
        hwm = read_memory(pid)["VmHWM"]
        logged = logged_statuses(server.log, "/detect")
    statuses = Counter(a.status if a.status is not None else "no answer" for a in answers)
    problems = refusal_problems(answers, logged, {200, 503}, n)
    return LargePhase("detector: multipart image uploads to /detect", n, len(form) / 1e6, statuses, problems,
                      before, hwm, (workers + queue + 1) * 2 * max_bytes / 2**20, sum(a.sent for a in answers) / 1e6,
                      logged)


PANEL_TOKEN = "hostile-bench-token-0123456789"


@dataclass
class Panel:
    url: str
    proc: subprocess.Popen
    log: Path
    data_dir: Path


@contextlib.contextmanager
def start_panel(workdir: Path, **settings: str) -> Iterator[Panel]:
    """``mikubot web`` (dry run, the token set, ``settings`` as MIKU_* variables) on a free loopback port, its
    data under ``workdir/panel-data`` and its output in ``workdir/panel.log``."""
    port = free_port()
    data = workdir / "panel-data"
    env = {**os.environ, "MIKU_DATA_DIR": str(data), "MIKU_WEB_TOKEN": PANEL_TOKEN,
           "MIKU_SOURCE": f"local:{workdir}", "MIKU_DRY_RUN": "true", **settings}
    exe = os.path.join(os.path.dirname(sys.executable), "mikubot")
    log = workdir / "panel.log"
    with run_command([exe, "web", "--host", "127.0.0.1", "--port", str(port)], url=f"http://127.0.0.1:{port}/health",
                     env=env, timeout=120, log=log) as proc:
        yield Panel(f"http://127.0.0.1:{port}", proc, log, data)


def publish(section: str, md: str, no_write: bool) -> None:
    """Print ``md`` and, unless ``no_write``, write it as ``section`` of bench/RESULTS.md."""
    if not no_write:
        write_section(section, md)
    print(md)
    if not no_write:
        print(f"\nwrote the '{section}' section of bench/RESULTS.md")


def large_panel_phase(n: int, workdir: Path) -> LargePhase:
    with start_panel(workdir) as panel:
        proc, url, log = panel.proc, panel.url, panel.log
        before = read_memory(proc.pid)["VmRSS"]
        body = b'{"source": "' + b"a" * (PANEL_BODY - 14) + b'"}'
        answers = asyncio.run(_many(url, "/profile-picture/change", {"Content-Type": "application/json"}, body, n))
        alive = httpx.get(f"{url}/health", timeout=10).status_code == 200
        hwm = read_memory(proc.pid)["VmHWM"]
    statuses = Counter(a.status if a.status is not None else "no answer" for a in answers)
    logged = logged_statuses(log, "/profile-picture/change")
    problems = refusal_problems(answers, logged, {401}, n)
    if not alive:
        problems.append("/health did not answer afterwards")
    return LargePhase("panel: unauthenticated JSON bodies to /profile-picture/change", n, len(body) / 1e6, statuses,
                      problems, before, hwm, 64.0, sum(a.sent for a in answers) / 1e6, logged)


def logged_statuses(log: Path, path: str) -> Counter:
    """The statuses uvicorn's access log shows for POSTs to ``path`` (what the server really answered)."""
    found = re.findall(rf'"POST {re.escape(path)}\S* HTTP/1\.1" (\d{{3}})', log.read_text(errors="replace"))
    return Counter(int(code) for code in found)


def refusal_problems(answers: list[RawAnswer], logged: Counter, allowed: set[int], n: int) -> list[str]:
    """What is wrong with a large-body phase. A refused body's connection may be reset before the client
    reads the answer (the server closes with the unread rest of the body in its receive buffer, and TCP
    then sends RST); such a request counts when the server's access log shows it answered — every
    request must appear there with an allowed status, and every client-side failure must be a reset."""
    problems = [f"status {a.status}" for a in answers if a.status is not None and a.status not in allowed]
    problems += [a.problem for a in answers if a.status is None and a.problem and "reset" not in a.problem.lower()
                 and "broken pipe" not in a.problem.lower()]
    if sum(logged.values()) != n or set(logged) - allowed:
        problems.append(f"the server's access log shows {dict(logged)} for {n} requests")
    return problems


def large_report(phases: list[LargePhase]) -> list[str]:
    rows = [[p.name, p.n, f"{p.body_mb:.0f}", f"{p.n * p.body_mb:.0f}", f"{p.sent_mb:.0f}", status_cell(p.statuses),
             status_cell(p.logged),
             f"{p.rss_before:.0f}", f"{p.hwm_after:.0f}", f"{p.rise:+.0f}", f"{p.limit_mib:.0f}"] for p in phases]
    return ["", f"Large bodies in flight (all {phases[0].n} sent at once by raw-socket clients that stop sending "
                "when the answer comes; \"no answer\" is a connection the server reset after refusing — it closes "
                "with the unread rest of the body in its receive buffer — and is counted from the server's access "
                "log):", "",
            table(["target", "requests", "MB each", "MB offered", "MB actually sent", "statuses the client read",
                   "statuses the server logged",
                   "RSS before MiB", "VmHWM after MiB", "rise MiB", "allowed rise MiB"], rows)]


# ---- the panel under floods: event streams, upload previews ----
STREAM_PROBE_S = 10.0  # how long /health is timed and the panel's CPU measured while the streams are open
PREVIEW_SIDE = 6300  # 39.7 Mpx: just under the decoder's 40-Mpx limit, a PNG of ~130 KB
PREVIEW_KEPT = 4  # MIKU_UPLOADS_KEPT for the preview flood: fewer than it sends, so pruning shows


def raise_file_limit() -> int:
    """The soft open-file limit raised to the hard one (for this process and the servers it starts)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def open_stream(url: str, path: str, token: str | None, source: str) -> tuple[int | None, asyncio.StreamReader | None,
                                                                                    asyncio.StreamWriter | None]:
    """GET an event stream from local address ``source`` and read its head; the connection stays open."""
    host, port = url.removeprefix("http://").split(":")
    try:
        reader, writer = await asyncio.open_connection(host, int(port), local_addr=(source, 0))
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}Accept: text/event-stream\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        return int(head.split(b" ", 2)[1]), reader, writer
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
        return None, None, None


async def read_until_end(reader: asyncio.StreamReader, timeout: float) -> bool:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError, asyncio.LimitOverrunError):
        await asyncio.wait_for(reader.readuntil(b"event: end"), timeout)
        return True
    return False


async def time_health(url: str, seconds: float) -> list[float]:
    """GET /health every 0.1 s for ``seconds``: each answer's latency in ms."""
    out: list[float] = []
    async with httpx.AsyncClient(timeout=60) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            r = await client.get(f"{url}/health")
            out.append((time.perf_counter() - t0) * 1000 if r.status_code == 200 else float("inf"))
            await asyncio.sleep(0.1)
    return out


@dataclass
class StreamFlood:
    name: str
    n: int
    statuses: Counter  # of the authenticated streams
    anonymous: Counter  # of the same number sent without the token
    rest_ms: list[float]
    open_ms: list[float]  # /health while the accepted streams sit open
    cores: float  # the panel's CPU while they sit open (1.0 = one core)
    opened: int
    ended: int  # of the opened, how many got `event: end` once the change finished
    polls: str
    tracebacks: int


def stream_flood_phase(n: int, workdir: Path, *, addresses: int, **caps: str) -> StreamFlood:
    """``n`` event streams opened at once on a change that another process (this one) runs, from
    ``addresses`` loopback addresses, under the panel's stream caps (``caps``: MIKU_WEB_MAX_STREAMS...)."""
    sys.path.insert(0, str(ROOT / "src"))
    from mikubot.history import History

    with start_panel(workdir, **caps) as panel:
        history = History(panel.data_dir / "history.sqlite3")
        cid = history.start("local:bench", dry_run=True)  # a CLI's change beside the panel, polled by it
        path = f"/profile-picture/changes/{cid}/events"

        async def flood() -> StreamFlood:
            rest = await time_health(panel.url, 2.0)
            sources = [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(addresses)]
            anonymous = await asyncio.gather(*(open_stream(panel.url, path, None, sources[i % addresses])
                                               for i in range(n)))
            for _, _, w in anonymous:
                if w is not None:
                    w.close()
            opened = await asyncio.gather(*(open_stream(panel.url, path, PANEL_TOKEN, sources[i % addresses])
                                            for i in range(n)))
            live = [(r, w) for status, r, w in opened if status == 200]
            for status, _, w in opened:
                if status != 200 and w is not None:
                    w.close()
            cpu0, t0 = cpu_seconds(panel.proc.pid), time.monotonic()
            busy = await time_health(panel.url, STREAM_PROBE_S)
            cores = (cpu_seconds(panel.proc.pid) - cpu0) / (time.monotonic() - t0)
            await asyncio.to_thread(history.finish, cid, "dry-run", events=[])
            ended = await asyncio.gather(*(read_until_end(r, 60) for r, _ in live))
            for _, w in live:
                w.close()
            return StreamFlood(
                f"{n} streams from {addresses} address(es), {', '.join(f'{k}={v}' for k, v in caps.items()) or 'default caps'}",
                n, Counter(s if s is not None else "no answer" for s, _, _ in opened),
                Counter(s if s is not None else "no answer" for s, _, _ in anonymous), rest, busy, cores, len(live),
                sum(ended), "one per change", 0)

        result = asyncio.run(flood())
    result.tracebacks = panel.log.read_text(errors="replace").count("Traceback")
    return result


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def preview_images(art: Path, n: int) -> list[bytes]:
    """``n`` distinct PNGs of PREVIEW_SIDE² pixels: Eileen at a different place on white in each (~130 KB)."""
    sprite = Image.open(art / FACE_FILE).convert("RGBA")
    out = []
    for i in range(n):
        canvas = Image.new("RGB", (PREVIEW_SIDE, PREVIEW_SIDE), "white")
        canvas.paste(sprite, (400 + 600 * i, 2000 + 200 * i), sprite)
        out.append(encode(canvas, "PNG"))
    return out


@dataclass
class PreviewFlood:
    n: int
    mb_each: float
    single_status: int | None
    single_s: float
    single_rise: float  # VmHWM over the resting RSS after one preview alone
    statuses: Counter
    retry_after: bool  # every 503 carried Retry-After
    flood_s: float
    flood_rise: float  # VmHWM over the same resting RSS after the flood
    stored: int  # upload folders left in <data dir>/uploads
    tracebacks: int


def preview_flood_phase(n: int, art: Path, workdir: Path) -> PreviewFlood:
    """One 39.7-Mpx upload preview alone, then ``n`` distinct ones at once, against a default panel (two
    previews at work, four waiting, a 40-Mpx decode budget) that keeps ``PREVIEW_KEPT`` uploads."""
    images = preview_images(art, n + 1)
    with start_panel(workdir, MIKU_UPLOADS_KEPT=str(PREVIEW_KEPT)) as panel:
        pid = panel.proc.pid

        async def upload(client: httpx.AsyncClient, data: bytes, i: int) -> httpx.Response:
            return await client.post(f"{panel.url}/profile-picture/upload", headers={"Authorization": f"Bearer {PANEL_TOKEN}"},
                                     files={"file": (f"big-{i}.png", data, "image/png")})

        async def run() -> PreviewFlood:
            async with httpx.AsyncClient(timeout=900) as client:
                rest = read_memory(pid)["VmRSS"]
                t0 = time.monotonic()
                single = await upload(client, images[0], 0)
                single_s, single_hwm = time.monotonic() - t0, read_memory(pid)["VmHWM"]
                t0 = time.monotonic()
                answers = await asyncio.gather(*(upload(client, data, i) for i, data in enumerate(images[1:], 1)))
                flood_s, flood_hwm = time.monotonic() - t0, read_memory(pid)["VmHWM"]
            stored = len(list((panel.data_dir / "uploads").iterdir()))
            return PreviewFlood(n, len(images[1]) / 1e6, single.status_code, single_s, single_hwm - rest,
                                Counter(r.status_code for r in answers),
                                all("retry-after" in r.headers for r in answers if r.status_code == 503), flood_s,
                                flood_hwm - rest, stored, 0)

        result = asyncio.run(run())
    result.tracebacks = panel.log.read_text(errors="replace").count("Traceback")
    return result


def flood_verdicts(streams: list[StreamFlood], previews: PreviewFlood | None) -> list[tuple[str, bool, str]]:
    out = []
    for f in streams:
        bad = {s: c for s, c in f.statuses.items() if s not in (200, 429, 503)}
        out.append((f"{f.name}: only 200/429/503, none without the token, every opened stream ended, /health "
                    "median ≤ 50 ms and worst ≤ 1 s while they are open, no traceback",
                    not bad and set(f.anonymous) == {401} and f.ended == f.opened and median(f.open_ms) <= 50
                    and max(f.open_ms) <= 1000 and not f.tracebacks,
                    f"{status_cell(f.statuses)}; anonymous {status_cell(f.anonymous)}; {f.ended}/{f.opened} ended; "
                    f"/health median {median(f.open_ms):.1f} ms, worst {max(f.open_ms):.0f} ms; "
                    f"{f.cores:.2f} core; {f.tracebacks} traceback(s)"))
    if previews is not None:
        p = previews
        out.append((f"{p.n} previews at once: 200 or 503 + Retry-After only, memory rise ≤ one preview's + 25 %, "
                    f"at most {PREVIEW_KEPT} uploads kept, no traceback",
                    set(p.statuses) <= {200, 503} and p.retry_after and p.single_status == 200
                    and p.flood_rise <= 1.25 * p.single_rise and p.stored <= PREVIEW_KEPT and not p.tracebacks,
                    f"{status_cell(p.statuses)}; VmHWM +{p.flood_rise:.0f} MiB (one alone +{p.single_rise:.0f}); "
                    f"{p.stored} kept; {p.tracebacks} traceback(s)"))
    return out


def flood_report(streams: list[StreamFlood], previews: PreviewFlood | None,
                 verdicts: list[tuple[str, bool, str]], file_limit: int) -> str:
    lines = ["## The panel under floods: event streams and upload previews (bench/hostile.py)", "",
             f"`mikubot web` as its own process (dry run, the token set), measured on {platform.machine()} "
             f"{platform.system()}, {os.cpu_count()} CPUs, {dt.date.today()}; open-file limit {file_limit}.", "",
             table(["criterion", "met", "measured"], [[c, "yes" if ok else "**no**", m] for c, ok, m in verdicts])]
    if streams:
        lines += ["", "Event streams on a change another process runs (its row polled by the panel until it "
                  f"ends): /health timed every 0.1 s for 2 s at rest and {STREAM_PROBE_S:.0f} s with the streams open, "
                  "the panel's CPU over the same window; then the change ends and every open stream must get "
                  "`event: end`.", "",
                  table(["run", "with the token", "without", "open", "/health at rest median ms",
                         "/health open median ms", "worst ms", "panel CPU (cores)", "ended"],
                        [[f.name, status_cell(f.statuses), status_cell(f.anonymous), f.opened,
                          f"{median(f.rest_ms):.1f}", f"{median(f.open_ms):.1f}", f"{max(f.open_ms):.0f}",
                          f"{f.cores:.2f}", f"{f.ended}/{f.opened}"] for f in streams])]
    if previews is not None:
        p = previews
        lines += ["", f"Upload previews of distinct {PREVIEW_SIDE}×{PREVIEW_SIDE} PNGs ({p.mb_each:.2f} MB each; "
                  "MIKU_UPLOAD_PREVIEW_QUEUE 4, MIKU_UPLOAD_PREVIEW_MPX 40, two at work): one alone, then "
                  f"{p.n} at once. Rise = VmHWM over the resting RSS before the first.", "",
                  table(["run", "statuses", "wall s", "VmHWM rise MiB"],
                        [["one alone", str(p.single_status), f"{p.single_s:.1f}", f"{p.single_rise:+.0f}"],
                         [f"{p.n} at once", status_cell(p.statuses), f"{p.flood_s:.1f}", f"{p.flood_rise:+.0f}"]]),
                  "", f"Stored uploads afterwards: {p.stored} (MIKU_UPLOADS_KEPT={PREVIEW_KEPT})."]
    return "\n".join(lines)


def run_floods(args: argparse.Namespace) -> list[tuple[str, bool, str]]:
    """The panel floods (``--streams``, ``--previews``): their section of RESULTS.md and their verdicts."""
    file_limit = raise_file_limit()
    streams: list[StreamFlood] = []
    previews = None
    with tempfile.TemporaryDirectory(prefix="hostile-floods-") as tmp:
        if args.streams:
            for name, addresses, caps in (
                    ("default", 1, {}),
                    ("raised", 8, {"MIKU_WEB_MAX_STREAMS": str(args.streams),
                                   "MIKU_WEB_MAX_STREAMS_PER_CLIENT": str(args.streams)})):
                print(f"stream flood ({name} caps): {args.streams} streams", flush=True)
                work = Path(tmp) / f"streams-{name}"
                work.mkdir()
                streams.append(stream_flood_phase(args.streams, work, addresses=addresses, **caps))
        if args.previews:
            print(f"preview flood: one, then {args.previews} × {PREVIEW_SIDE}² PNG previews at once", flush=True)
            work = Path(tmp) / "previews"
            work.mkdir()
            previews = preview_flood_phase(args.previews, args.art, work)
    verdicts = flood_verdicts(streams, previews)
    md = flood_report(streams, previews, verdicts, file_limit)
    publish("hostile-panel-floods", md, args.no_write)
    return verdicts


# ---- afterwards ----
def check_after(server: Server, art: Path) -> dict[str, object]:
    """The server is alive and idle, still finds Eileen's face, never answered a 5xx but 503, logged no traceback."""
    label = json.loads((ROOT / "tests" / "labels" / "renpy.json").read_text())["images"][FACE_FILE][0]
    with httpx.Client(timeout=120) as client:
        r = client.post(f"{server.url}/detect", files={"file": (FACE_FILE, (art / FACE_FILE).read_bytes())})
        health = client.get(f"{server.url}/health").json()
        metrics = client.get(f"{server.url}/metrics").text
    body = r.json() if r.status_code == 200 else {}
    best = max((iou(d["bbox"], label) for d in body.get("detections", [])), default=0.0)
    bad_metrics = [line for line in metrics.splitlines() if line.startswith("facedetect_requests_total")
                   and 'status="5' in line and 'status="503"' not in line]
    log = server.log.read_text(errors="replace")
    return {
        "alive": server.proc.poll() is None,
        "face_status": r.status_code,
        "face_count": body.get("count", 0),
        "face_iou": round(best, 3),
        "idle": health.get("queue", {}).get("running") == 0 and health.get("queue", {}).get("waiting") == 0,
        "detector_loaded": health.get("detector_loaded") is True,
        "metrics_5xx": bad_metrics,
        "tracebacks": log.count("Traceback"),
    }


# ---- report ----
def status_cell(counts: Counter) -> str:
    return ", ".join(f"{k}×{v}" for k, v in sorted(counts.items(), key=lambda kv: str(kv[0])))


def report(args: argparse.Namespace, server: Server, main: Tally, sat: Tally, after: dict[str, object],
           rss: dict[str, float], peaks: list[float], medians: list[float],
           verdicts: list[tuple[str, bool, str]]) -> str:
    rows = []
    problems_by_kind = Counter(o.kind for o in main.problems)
    for kind, counts in main.by_kind.items():
        rows.append([kind, sum(counts.values()), status_cell(counts), problems_by_kind.get(kind, 0)])
    all_status = Counter(o.status if o.status is not None else "no answer" for o in main.outcomes)
    sat_status = Counter(o.status if o.status is not None else "no answer" for o in sat.outcomes)
    rate = len(main.outcomes) / main.wall_s if main.wall_s else 0.0
    lines = [
        "## /detect under hostile uploads (bench/hostile.py)",
        "",
        f"`facedetect serve` as its own process on loopback: FACEDETECT_WORKERS={server.workers}, "
        f"FACEDETECT_QUEUE={server.queue}, FACEDETECT_MAX_BYTES={server.max_bytes}, other settings default "
        f"(animeface, 40 Mpx pixel limit). {len(main.outcomes)} generated uploads (seed {args.seed}), "
        f"{args.concurrency} in flight; then a burst of {args.burst} valid uploads at once. "
        f"{platform.python_version()} on {os.cpu_count()} CPU(s), {dt.date.today().isoformat()}.",
        "",
        table(["bar", "met", "measured"], [[name, "yes" if ok else "**NO**", how] for name, ok, how in verdicts]),
        "",
        table(["phase", "uploads", "statuses", "wall s", "uploads/s"], [
            ["hostile", len(main.outcomes), status_cell(all_status), f"{main.wall_s:.1f}", f"{rate:.0f}"],
            ["saturation burst", len(sat.outcomes), status_cell(sat_status), f"{sat.wall_s:.1f}", ""],
        ]),
        "",
        table(["server memory", "MiB"], [
            ["VmRSS at start (model loaded, idle)", f"{rss['start']:.0f}"],
            [f"peak (VmHWM) after the first {min(WARMUP, len(main.outcomes))} uploads", f"{rss['hwm_warmup']:.0f}"],
            [f"peak (VmHWM) after all {len(main.outcomes)} uploads", f"{rss['hwm_end']:.0f}"],
            ["VmRSS at the end of the hostile phase", f"{rss['end']:.0f}"],
            ["VmRSS after the saturation burst", f"{rss['after_burst']:.0f}"],
            [f"highest sampled VmRSS in each {WARMUP} uploads", " / ".join(f"{p:.0f}" for p in peaks)],
            [f"median sampled VmRSS in each {WARMUP} uploads", " / ".join(f"{m:.0f}" for m in medians)],
        ]),
        "",
        "Statuses by kind (`problems`: answers outside the statuses the kind allows, or a 200 without the "
        "face the image has):",
        "",
        table(["kind", "n", "statuses", "problems"], rows),
    ]
    examples = [f"- `{o.kind}`: {o.problem}" for o in (main.problems + sat.problems)[:10]]
    if examples:
        lines += ["", "First problems:", "", *examples]
    return "\n".join(lines)


# ---- slow clients ----
SLOW_FILE_LIMIT = 1024  # `ulimit -n 1024`, systemd's usual soft limit, as both soft and hard limit here
SLOW_EVERY_S = 5.0  # the attackers send one header line (or one body byte) this often
PROBE_EVERY_S = 0.5
PROBE_BAR_S = 1.0
REST_S = 10.0  # probes before the attack: the same request's latency on this machine at rest
ACCESS_LINE = re.compile(r'INFO: +[\d.]+:\d+ - "')


@dataclass
class SlowRun:
    target: str
    attack: str
    n: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # of the normal requests that were answered
    rest: list[float] = field(default_factory=list)  # the same requests before the attack (what the machine gives)
    statuses: Counter = field(default_factory=Counter)  # theirs ("error" when none came)
    attacker: Counter = field(default_factory=Counter)  # opened / answered with <status> / closed / refused
    fds_max: int = 0
    rss_before: float = 0.0
    hwm_after: float = 0.0
    access_lines: int = 0  # uvicorn's one line per answered request
    log_lines: int = 0  # every other line: warnings, errors, tracebacks
    log_kb: float = 0.0  # of those
    emfile_lines: int = 0

    def quantile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def accept_queue(port: int) -> int:
    """Connections the kernel holds for the listening socket on ``port`` until the server accepts them
    (the rx_queue of its LISTEN row in /proc/net/tcp)."""
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
            return int(fields[4].split(":")[1], 16)
    raise RuntimeError(f"nothing listens on {port}")


def _file_limit() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (SLOW_FILE_LIMIT, SLOW_FILE_LIMIT))


@contextlib.contextmanager
def limited_service(target: str, workdir: Path) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """``mikubot web`` or ``facedetect serve`` with default settings under ``ulimit -n 1024``."""
    port = free_port()
    bin_dir = os.path.dirname(sys.executable)
    if target == "panel":
        env = {**os.environ, "MIKU_DATA_DIR": str(workdir / "panel-data"), "MIKU_SOURCE": f"local:{workdir}",
               "MIKU_DRY_RUN": "true"}
        args = [os.path.join(bin_dir, "mikubot"), "web", "--host", "127.0.0.1", "--port", str(port)]
    else:
        env = {**os.environ, "FACEDETECT_OUTPUTS": str(workdir / "outputs")}
        args = [os.path.join(bin_dir, "facedetect"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    log = workdir / f"{target}-slow.log"
    with run_command(args, url=f"http://127.0.0.1:{port}/health", env=env, timeout=120, log=log,
                     preexec_fn=_file_limit) as proc:
        yield f"http://127.0.0.1:{port}", proc, log


async def _slow_client(host: str, port: int, head: bytes, trickle: bytes, stop: asyncio.Event,
                       tally: Counter, reconnect: bool) -> None:
    """One attacker: open, send ``head``, then ``trickle`` every SLOW_EVERY_S until the server answers or
    closes; with ``reconnect``, then open again (after a second), until ``stop``."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            tally["refused"] += 1
            await asyncio.sleep(1)
            continue
        tally["opened"] += 1
        tally["open"] += 1
        try:
            writer.write(head)
            while not stop.is_set():
                try:
                    data = await asyncio.wait_for(reader.read(4096), SLOW_EVERY_S)
                except TimeoutError:
                    writer.write(trickle)
                    await writer.drain()
                    continue
                status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else None
                tally[f"answered {status}" if status else "closed"] += 1
                break
        except OSError:
            tally["closed"] += 1
        finally:
            tally["open"] -= 1
            writer.close()
        if not reconnect:
            return
        await asyncio.sleep(1)


def _attack(url: str, n: int, head: bytes, trickle: bytes, tally: Counter, ready: threading.Event,
            done: threading.Event, reconnect: bool) -> None:
    host, port = url.removeprefix("http://").split(":")

    async def run() -> None:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(_slow_client(host, int(port), head, trickle, stop, tally, reconnect))
                 for _ in range(n)]
        ready.set()
        await asyncio.to_thread(done.wait)
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())


def slow_phase(target: str, attack: str, n: int, seconds: float, workdir: Path, reconnect: bool = False) -> SlowRun:
    run = SlowRun(target, attack + (", reconnecting" if reconnect else ""), n, seconds)
    with limited_service(target, workdir) as (url, proc, log):
        host_port = url.removeprefix("http://")
        if attack == "headers":
            head, trickle = f"GET /health HTTP/1.1\r\nHost: {host_port}\r\n".encode(), b"X-Slow: 1\r\n"
        elif target == "panel":
            head = (f"POST /login HTTP/1.1\r\nHost: {host_port}\r\nContent-Type: application/x-www-form-urlencoded"
                    f"\r\nContent-Length: 60000\r\n\r\ntoken=").encode()
            trickle = b"a"
        else:
            head = (f"POST /detect HTTP/1.1\r\nHost: {host_port}\r\nContent-Type: multipart/form-data; boundary=b"
                    f"\r\nContent-Length: 60000\r\n\r\n--b\r\n").encode()
            trickle = b"a"
        run.rss_before = read_memory(proc.pid)["VmRSS"]
        run.rest = [t for t in _probe(url, REST_S, Counter(), proc.pid, run) if t is not None]
        ready, done = threading.Event(), threading.Event()
        attacker = threading.Thread(target=_attack, args=(url, n, head, trickle, run.attacker, ready, done, reconnect),
                                    daemon=True)
        attacker.start()
        ready.wait()
        ramp = time.monotonic() + 60
        port = int(url.rsplit(":", 1)[1])
        # All connected, and all accepted: the probes measure the server holding them, not the burst.
        while (run.attacker["opened"] < n or accept_queue(port)) and time.monotonic() < ramp:
            time.sleep(0.2)
        try:
            run.latencies = [t for t in _probe(url, seconds, run.statuses, proc.pid, run) if t is not None]
            run.hwm_after = read_memory(proc.pid)["VmHWM"]
        finally:
            done.set()
            attacker.join(timeout=30)
    lines = log.read_text(errors="replace").splitlines()
    others = [line for line in lines if not ACCESS_LINE.match(line)]
    run.access_lines = len(lines) - len(others)
    run.log_lines, run.log_kb = len(others), sum(len(line) + 1 for line in others) / 1024
    run.emfile_lines = sum("Too many open files" in line for line in lines)
    return run


def _probe(url: str, seconds: float, statuses: Counter, pid: int, run: SlowRun) -> list[float | None]:
    """A normal ``GET /health`` on a fresh connection every PROBE_EVERY_S for ``seconds``: each one's
    latency (None when it failed), its status counted in ``statuses``; the server's descriptors sampled."""
    out: list[float | None] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        run.fds_max = max(run.fds_max, len(os.listdir(f"/proc/{pid}/fd")))
        start = time.monotonic()
        try:
            r = httpx.get(f"{url}/health", timeout=10)
            statuses[r.status_code] += 1
            out.append(time.monotonic() - start)
        except httpx.HTTPError:
            statuses["error"] += 1
            out.append(None)
        time.sleep(max(0.0, PROBE_EVERY_S - (time.monotonic() - start)))
    return out


def slow_verdict(run: SlowRun) -> tuple[bool, list[str]]:
    problems = []
    late = [t for t in run.latencies if t > PROBE_BAR_S]
    if set(run.statuses) != {200}:
        problems.append(f"normal requests: {status_cell(run.statuses)}")
    if late:
        problems.append(f"{len(late)} normal request(s) over {PROBE_BAR_S:.0f} s")
    if run.emfile_lines:
        problems.append(f"{run.emfile_lines} 'Too many open files' in the log")
    if run.log_kb > 64:
        problems.append(f"{run.log_kb:.0f} KB of log lines besides the access log")
    if run.hwm_after - run.rss_before > 64:
        problems.append(f"VmHWM rose {run.hwm_after - run.rss_before:.0f} MiB")
    return not problems, problems


def slow_report(runs: list[SlowRun]) -> str:
    lines = [
        "## Slow clients (bench/hostile.py --slow)",
        "",
        f"Each service as its own process with default settings under `ulimit -n {SLOW_FILE_LIMIT}` (soft and hard): "
        f"`mikubot web` and `facedetect serve`. Attackers open connections that send a partial request header "
        f"and then one header line every {SLOW_EVERY_S:.0f} s (`headers`), or a complete header with "
        f"`Content-Length: 60000` and then one body byte every {SLOW_EVERY_S:.0f} s (`bodies`: `POST /login`, "
        f"`POST /detect`), each opened once (with `--slow-reconnect`, again a second after the server drops it). "
        f"Once all are connected and accepted, a normal request is timed: "
        f"`GET /health` on a fresh connection every {PROBE_EVERY_S} s for the "
        f"run's length (and for {REST_S:.0f} s before the attack, to show what the machine gives at rest: "
        f"other work shares its cores). The bar: every normal request 200 within {PROBE_BAR_S:.0f} s, no EMFILE, under 64 KB "
        f"of log besides the access log (one line per answered request), the high-water mark up by at most "
        f"64 MiB. "
        f"{platform.python_version()} on {os.cpu_count()} CPU(s), {dt.date.today().isoformat()}.",
        "",
        table(["target", "attack", "attackers", "s", "normal requests", "median s", "p95 s", "max s",
               f"at rest ({REST_S:.0f} s before): median / max s",
               "attacker connections: opened / dropped by the server", "server fds max", "VmRSS → VmHWM MiB",
               "access log lines", "other log lines (KB)", "EMFILE lines", "bar"],
              [[r.target, r.attack, r.n, f"{r.seconds:.0f}", status_cell(r.statuses),
                _seconds(r.quantile(0.5)), _seconds(r.quantile(0.95)), _seconds(max(r.latencies, default=None)),
                f"{_seconds(sorted(r.rest)[len(r.rest) // 2] if r.rest else None)} / {_seconds(max(r.rest, default=None))}",
                f"{r.attacker['opened']} / "
                + (", ".join(f"{k} ×{v}" for k, v in sorted(r.attacker.items()) if k.startswith(("answered", "closed")))
                   or "0"),
                r.fds_max, f"{r.rss_before:.0f} → {r.hwm_after:.0f}", r.access_lines, f"{r.log_lines} ({r.log_kb:.0f})",
                r.emfile_lines, "met" if slow_verdict(r)[0] else "missed: " + "; ".join(slow_verdict(r)[1])]
               for r in runs]),
        "",
        "The connection cap under this limit is 512 (half the descriptors stay free); a connection "
        "beyond it drops the one that has waited longest for its request (503), the header deadline (10 s) and "
        "the body deadline (60 s) close the rest (408). Before this policy, 1100 such header attackers made "
        "every normal panel request fail for 20 s and the log grow 46 MB of `OSError: [Errno 24] Too many open "
        "files` in 20 s; 3000 slow `/login` bodies cost the panel +90 MB.",
    ]
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def slow_main(args: argparse.Namespace) -> int:
    runs: list[SlowRun] = []
    plan = [(t, "headers", args.slow) for t in ("panel", "detector")]
    plan += [(t, "bodies", args.slow_bodies) for t in ("panel", "detector") if args.slow_bodies]
    for target, attack, n in plan:
        with tempfile.TemporaryDirectory(prefix="hostile-slow-") as tmp:
            print(f"slow clients: {n} {attack} attackers against the {target} for {args.slow_seconds:.0f} s", flush=True)
            runs.append(slow_phase(target, attack, n, args.slow_seconds, Path(tmp), args.slow_reconnect))
            ok, problems = slow_verdict(runs[-1])
            print(f"  normal requests {status_cell(runs[-1].statuses)}, max {_seconds(max(runs[-1].latencies, default=None))} s;"
                  f" {'met' if ok else 'missed: ' + '; '.join(problems)}", flush=True)
    md = slow_report(runs)
    publish("hostile-slow", md, args.no_write)
    return 0 if all(slow_verdict(r)[0] for r in runs) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="hostile uploads (default 10000)")
    parser.add_argument("--concurrency", type=int, default=12, help="requests in flight (default 12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="FACEDETECT_WORKERS (default 1)")
    parser.add_argument("--queue", type=int, default=16, help="FACEDETECT_QUEUE (default 16)")
    parser.add_argument("--max-bytes", type=int, default=1 << 20, help="FACEDETECT_MAX_BYTES (default 1 MiB)")
    parser.add_argument("--burst", type=int, default=None, help="saturation burst (default 3 x (workers + queue))")
    parser.add_argument("--art", type=Path, default=Path(os.environ.get("MIKU_TEST_ART", ROOT / ".cache/art/images")))
    parser.add_argument("--large", type=int, default=80, help="large bodies sent at once to a default detector "
                        "and to the panel (default 80; 0 skips the phase)")
    parser.add_argument("--large-targets", default="detector,panel",
                        help="which services get the large bodies (default detector,panel)")
    parser.add_argument("--streams", type=int, default=1000, help="event streams opened at once on the panel, "
                        "under the default caps and under caps raised to let them all in (default 1000; 0 skips)")
    parser.add_argument("--previews", type=int, default=8, help="distinct 6300x6300 PNG upload previews sent to the "
                        "panel at once (default 8; 0 skips)")
    parser.add_argument("--floods-only", action="store_true", help="run only the panel floods (--streams, --previews)")
    parser.add_argument("--no-write", action="store_true", help="print the table instead of writing RESULTS.md")
    parser.add_argument("--slow", type=int, default=0, metavar="N",
                        help="instead of the uploads: N slow-header attackers (e.g. 1100) against the panel and the "
                             "detector, each under ulimit -n 1024; writes the 'hostile-slow' section")
    parser.add_argument("--slow-bodies", type=int, default=3000, metavar="N",
                        help="with --slow: N slow-body attackers too (default 3000; 0 skips)")
    parser.add_argument("--slow-seconds", type=float, default=30.0, help="with --slow: length of each run (default 30)")
    parser.add_argument("--slow-reconnect", action="store_true",
                        help="with --slow: each attacker reconnects a second after the server drops it (a flood)")
    args = parser.parse_args()
    if args.slow:
        return slow_main(args)
    args.burst = args.burst or 3 * (args.workers + args.queue)
    if not (args.art / FACE_FILE).exists():
        parser.error(f"{args.art / FACE_FILE} not found; run `make art`")

    if args.floods_only:
        return 0 if all(ok for _, ok, _ in run_floods(args)) else 1

    sprite = Image.open(args.art / FACE_FILE).convert("RGB")
    corpus = HostileCorpus(sprite.resize(FACE_SIZE), max_bytes=args.max_bytes)
    _ = corpus.seeds, corpus.valid, corpus.weird, corpus.not_images  # build shared material before timing
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp, \
            start_server(args.workers, args.queue, args.max_bytes, Path(tmp)) as server:
        pid = server.proc.pid
        rss_start = read_memory(pid)["VmRSS"]
        print(f"server {server.url} pid {pid}: VmRSS {rss_start:.0f} MiB; sending {args.n} uploads", flush=True)
        with MemorySampler(pid) as sampler:
            main_tally = asyncio.run(fire(server.url, corpus.uploads(args.n, args.seed),
                                          concurrency=args.concurrency, pid=pid))
        mem_end = read_memory(pid)
        print(f"hostile phase: {len(main_tally.outcomes)} in {main_tally.wall_s:.1f}s; "
              f"peak {mem_end['VmHWM']:.0f} MiB; burst of {args.burst}", flush=True)
        sat = asyncio.run(saturate(server.url, encode(sprite, "PNG"), args.burst))
        after_burst = read_memory(pid)["VmRSS"]
        after = check_after(server, args.art)

    large: list[LargePhase] = []
    if args.large:
        with tempfile.TemporaryDirectory(prefix="hostile-large-") as tmp:
            targets = {t.strip() for t in args.large_targets.split(",")}
            if "detector" in targets:
                print(f"large bodies: {args.large} x ~19 MB uploads to a default detector", flush=True)
                large.append(large_detector_phase(args.large, args.art, Path(tmp)))
                print(large_report(large[-1:])[-1], flush=True)
            if "panel" in targets:
                print(f"large bodies: {args.large} x 60 MB unauthenticated JSON bodies to the panel", flush=True)
                large.append(large_panel_phase(args.large, Path(tmp)))

    hwm_warm = main_tally.hwm_at_warmup if main_tally.hwm_at_warmup is not None else mem_end["VmHWM"]
    rss = {"start": rss_start, "hwm_warmup": hwm_warm, "hwm_end": mem_end["VmHWM"], "end": mem_end["VmRSS"],
           "after_burst": after_burst}
    peaks = window_peaks(sampler.samples, main_tally.marks)
    medians = window_medians(sampler.samples, main_tally.marks)
    verdicts = bar(main_tally, sat, after, rss, medians, args) + [
        (f"{p.name}: every answer {'200 or 503' if 'detector' in p.name else '401'}, memory rise ≤ "
         f"{p.limit_mib:.0f} MiB", not p.problems and p.rise <= p.limit_mib,
         f"{status_cell(p.statuses)}; VmHWM {p.rise:+.0f} MiB over {p.n} × {p.body_mb:.0f} MB offered"
         + (f"; {p.problems[0]}" if p.problems else "")) for p in large]
    md = report(args, server, main_tally, sat, after, rss, peaks, medians, verdicts)
    if large:
        md += "\n" + "\n".join(large_report(large))
    publish("hostile", md, args.no_write)
    floods = run_floods(args) if args.streams or args.previews else []
    return 0 if all(ok for _, ok, _ in verdicts + floods) else 1


def bar(main: Tally, sat: Tally, after: dict[str, object], rss: dict[str, float], medians: list[float],
        args: argparse.Namespace) -> list[tuple[str, bool, str]]:
    """(criterion, met, what was measured) for every part of the bar."""
    fivexx = main.server_errors + sat.server_errors
    busy = [o for o in main.outcomes + sat.outcomes if o.status == 503]
    # Growth with the upload count shows two ways: the resting level (median sampled RSS of each window)
    # creeping up, and the true high-water mark (VmHWM, which no 0.1-s sampling can miss) rising after the
    # first window. Sampled window peaks are not used: whether a sample lands on the instant a large image
    # is in memory is luck (they varied 503-576 MiB between windows of one run with no growth at all).
    first = medians[0] if medians else 0.0
    rest_growth = max(medians[1:], default=first) - first
    rest_slack = max(RSS_SLACK_MIB, RSS_SLACK_SHARE * first)
    hwm_growth = rss["hwm_end"] - rss["hwm_warmup"]
    hwm_slack = max(RSS_SLACK_MIB, RSS_SLACK_SHARE * rss["hwm_warmup"])
    sat_status = Counter(o.status for o in sat.outcomes)
    return [
        (f"≥ {args.n} hostile uploads answered", len(main.outcomes) >= args.n, f"{len(main.outcomes)}"),
        ("0 responses ≥ 500 except 503 + Retry-After; no resets or timeouts", not fivexx,
         f"{len(fivexx)} (503 with Retry-After: {len(busy)})"),
        ("every answer within its kind's statuses, JSON detail on errors", not main.problems,
         f"{len(main.problems)} off"),
        (f"bounded memory: after the first {WARMUP} uploads neither the resting RSS (+{rest_slack:.0f} MiB) "
         f"nor the high-water mark (+{hwm_slack:.0f} MiB) grows",
         rest_growth <= rest_slack and hwm_growth <= hwm_slack,
         f"resting {first:.0f} → max later {first + rest_growth:.0f} MiB ({rest_growth:+.0f}); "
         f"VmHWM {rss['hwm_warmup']:.0f} after {WARMUP}, {rss['hwm_end']:.0f} at the end ({hwm_growth:+.0f})"),
        (f"saturation: burst of {args.burst} > workers + queue gets 503 + Retry-After, the rest 200",
         sat_status.get(503, 0) > 0 and sat_status.get(200, 0) > 0 and not sat.problems
         and set(sat_status) <= {200, 503},
         status_cell(Counter(o.status if o.status is not None else "no answer" for o in sat.outcomes))),
        ("afterwards: alive, idle, Eileen's face found (IoU ≥ 0.5)",
         bool(after["alive"] and after["idle"] and after["detector_loaded"] and after["face_status"] == 200
              and float(after["face_iou"]) >= 0.5),
         f"status {after['face_status']}, {after['face_count']} face(s), IoU {after['face_iou']}"),
        ("no traceback in the server log, no 5xx in /metrics", not after["tracebacks"] and not after["metrics_5xx"],
         f"{after['tracebacks']} traceback(s), {len(after['metrics_5xx'])} 5xx metric line(s)"),
    ]


if __name__ == "__main__":
    sys.exit(main())
