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

The bar is counted, never timed (other benchmarks share the cores): no status >= 500 except 503 with
Retry-After, no transport errors or timeouts, every response within the statuses its kind allows, bounded
memory (RSS is sampled every 0.1 s: neither the resting level — the median RSS of each later 2 000-upload
window — nor the high-water mark VmHWM may rise more than max(48 MiB, 10 %) above where they stood after
the first 2 000 uploads), some 503s (and
200s, and nothing else) in the burst, and a correct detection at the end.

    .venv/bin/python bench/hostile.py [--n 10000] [--concurrency 12] [--seed 0] [--no-write]

Writes the "hostile" section of bench/RESULTS.md; exits 1 when the bar is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import socket
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from hostile_corpus import HostileCorpus, Upload, encode  # noqa: E402
from results import table, write_section  # noqa: E402

WARMUP = 2000  # "peak after the first 2 000 uploads", the baseline of the bounded-memory check
RSS_SLACK_MIB = 48.0  # allowed rise of a later window's peak over the first's: at least this,
RSS_SLACK_SHARE = 0.10  # or this share of the first window's peak (when two big decodes happen to overlap)
FACE_FILE = "eileen happy.png"
FACE_SIZE = (160, 360)  # the corpus' valid images: Eileen at half size, face still found


# ---- the server process ----
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    with open(log, "w") as sink:
        proc = subprocess.Popen([exe, "serve", "--host", "127.0.0.1", "--port", str(port)], env=env,
                                stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"facedetect serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"facedetect serve did not answer within {timeout}s")
            time.sleep(0.1)
        yield Server(url, proc, log, workers, queue, max_bytes)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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


# ---- afterwards ----
def iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


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
    parser.add_argument("--no-write", action="store_true", help="print the table instead of writing RESULTS.md")
    args = parser.parse_args()
    args.burst = args.burst or 3 * (args.workers + args.queue)
    if not (args.art / FACE_FILE).exists():
        parser.error(f"{args.art / FACE_FILE} not found; run `make art`")

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

    hwm_warm = main_tally.hwm_at_warmup if main_tally.hwm_at_warmup is not None else mem_end["VmHWM"]
    rss = {"start": rss_start, "hwm_warmup": hwm_warm, "hwm_end": mem_end["VmHWM"], "end": mem_end["VmRSS"],
           "after_burst": after_burst}
    peaks = window_peaks(sampler.samples, main_tally.marks)
    medians = window_medians(sampler.samples, main_tally.marks)
    verdicts = bar(main_tally, sat, after, rss, medians, args)
    md = report(args, server, main_tally, sat, after, rss, peaks, medians, verdicts)
    if args.no_write:
        print(md)
    else:
        write_section("hostile", md)
        print(md)
        print("\nwrote the 'hostile' section of bench/RESULTS.md")
    return 0 if all(ok for _, ok, _ in verdicts) else 1


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
