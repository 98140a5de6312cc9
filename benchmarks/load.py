"""`make bench`: the null service and musicrec under the same Locust load, and their ratios.

Steps: build the artefacts if missing (the 114k file, or a synthetic catalog with --demo N);
use the Redis on --redis-url, or start a private one when none answers; start the null service
(the same uvicorn, workers, loop and parser with an ASGI app that answers fixed bodies) and run
Locust headless (benchmarks/locustfile.py, FastHttpUser, paced) against it, then stop it and do
the same with musicrec (`python -m musicrec.service`, WORKERS from the core count): for the
`make bench` mix and for the player mix (every ask follows a new event: POST /events with
"next"), at one offered rate. The rate is --rate, stepped down while the null service's p99
there is above --null-p99-ms, so on a slower machine the comparison is still made where the
floor itself is fast. Each run reads Locust's CSV statistics and the exact per-request
latencies the locustfile keeps after the warm-up; one table prints both services with ratios.

Exit status 1 when a goal is missed: musicrec's service CPU per request above --cpu-ratio × the
null's, its recommendation p99 above --p99-ratio × the null's or above --max-p99-ms, any failed
request (a shed 503/429 included), or an achieved rate below 95 % of the offered one. The
absolute --p99-ms (10) is printed as information. --ceiling R1,R2,… steps the offered rate up
against both and prints the highest rate each kept p99 ≤ --ceiling-p99-ms without failures,
and musicrec's ÷ the null's. --framework-floor adds a third service, the null's answers from a
bare Litestar app, as information on what the framework alone costs.

    python -m benchmarks.load                                   # both mixes, null and musicrec
    python -m benchmarks.load --framework-floor                 # and the Litestar floor between them
    python -m benchmarks.load --ceiling 1000,1500,2000,2500,3000   # Locust on every core
    python -m benchmarks.load --artifacts artifacts/bench/1m --demo 1000000
    python -m benchmarks.load --no-null --rate 1000             # musicrec alone, p99 ≤ --p99-ms
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np

from musicrec.service.settings import usable_cores

REPO = Path(__file__).resolve().parents[1]
LOCUSTFILE = REPO / "benchmarks" / "locustfile.py"
SHARED_CSV = REPO.parent / "shared" / "data" / "spotify_tracks_114k.csv.gz"
RECOMMENDATIONS = ("GET /api/songs_recommendations", "POST /api/recommendations")
PLAYER_RECOMMENDATIONS = ("POST /events next [play]", "POST /events next [skip]")
EVENTS = ("POST /events [skip]", "POST /events [like]", "POST /events [session view]")


@dataclass(frozen=True)
class Mix:
    """A traffic mix: the locustfile's user class, and which of its requests are recommendations (held to p99)."""

    name: str
    user_class: str
    recommendations: tuple[str, ...]


MIXES = {
    "bench": Mix("bench", "Listener", RECOMMENDATIONS),
    "player": Mix("player", "Player", PLAYER_RECOMMENDATIONS),
}


class BenchError(RuntimeError):
    """The benchmark could not run (as opposed to: it ran and missed the budget)."""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- processes we start, and only those --------------------------------------------------------
@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path

    def pids(self) -> list[int]:
        """The process and its descendants (uvicorn workers, Locust's worker processes)."""
        pgid = self.popen.pid  # started with start_new_session: its own process group
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == pgid:
                    found.append(int(entry.name))
        return found

    def stop(self, grace_s: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGINT)
            self.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
        except ProcessLookupError:
            pass


@contextmanager
def started(name: str, cmd: list[str], env: dict[str, str], workdir: Path) -> Iterator[Proc]:
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as out:
        popen = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    proc = Proc(name, popen, log_path)
    try:
        yield proc
    finally:
        proc.stop()


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) so far of each process."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        except OSError:
            continue
    return out


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_by_pid(pids).values())


def memory_mb(pids: list[int]) -> tuple[float, float]:
    """(sum of RSS, sum of PSS) in MiB: RSS counts the shared memory-mapped pages once per process."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss / 1024, pss / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str, timeout: float = 2.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


# -- set-up -------------------------------------------------------------------------------------
def ensure_artifacts(args: argparse.Namespace) -> Path:
    from musicrec.index.artifacts import ArtifactError, resolve_version_dir

    try:
        return resolve_version_dir(args.artifacts)
    except ArtifactError:
        pass
    cmd = [sys.executable, "-m", "musicrec.indexer", "build", "--out", str(args.artifacts), "--quiet"]
    if args.demo:
        cmd += ["--demo", str(args.demo)]
    else:
        if not args.csv.is_file():
            raise BenchError(f"{args.csv}: the 114k catalog is missing (pass --csv, or --demo N for a synthetic one)")
        cmd += ["--csv", str(args.csv)]
    if args.index_type:
        cmd += ["--index-type", args.index_type]
    log(f"building artefacts: {' '.join(cmd[1:])}")
    started_at = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    log(f"built {args.artifacts} in {time.perf_counter() - started_at:.0f}s")
    return resolve_version_dir(args.artifacts)


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@contextmanager
def redis_server(url: str, workdir: Path) -> Iterator[str]:
    """The given Redis if it answers, else a private, non-persistent one on a free port."""
    if redis_answers(url):
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError(f"no Redis answers at {url} and redis-server is not installed")
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with started("redis", cmd, dict(os.environ), workdir):
        private = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while not redis_answers(private):
            if time.monotonic() > deadline:
                raise BenchError("the private redis-server did not start")
            time.sleep(0.1)
        log(f"started a private Redis on port {port}")
        yield private


# -- the null service: the load generator's own floor on this machine ---------------------------------
_NULL_IDS = [f"null{i:018d}" for i in range(20)]
_NULL_RECS = json.dumps([{"id": i, "name": "Null Track", "artist": "Null Artist", "genre": "null", "popularity": 50,
                          "score": 0.5, "because": i} for i in _NULL_IDS]).encode()
_NULL_PLAYLIST = json.dumps({"items": json.loads(_NULL_RECS), "model_version": "null", "unknown_ids": []}).encode()
_NULL_EVENT = b'{"event_id":"0","client_id":"null","type":"track_view"}'
_NULL_EVENT_NEXT = _NULL_EVENT[:-1] + b',"next":' + _NULL_RECS + b"}"
_NULL_READY = json.dumps({"status": "ok", "redis": "none", "artifacts": {"n_tracks": 0, "index_type": "none"}}).encode()


async def null_app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
    """An ASGI app answering the benchmarked routes with fixed bodies and no work at all.

    `--null-service` serves it (same uvicorn, workers, loop and parser as the service) to measure
    what the load generator and the HTTP stack cost by themselves at a given rate on this machine.
    """
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            done = "startup" if message["type"] == "lifespan.startup" else "shutdown"
            await send({"type": f"lifespan.{done}.complete"})
            if done == "shutdown":
                return
    request_body = b""
    while True:
        message = await receive()
        request_body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path, method = scope["path"], scope["method"]
    status, body = 404, b"{}"
    if path == "/api/songs_recommendations":
        status, body = 200, _NULL_RECS
    elif path == "/api/recommendations" and method == "POST":
        status, body = 200, _NULL_PLAYLIST
    elif path == "/events" and method == "POST":
        status, body = (200, _NULL_EVENT_NEXT) if b'"next"' in request_body else (202, _NULL_EVENT)
    elif path == "/readyz":
        status, body = 200, _NULL_READY
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def litestar_floor():  # type: ignore[no-untyped-def]
    """``null_app``'s fixed answers from a bare Litestar app: the framework's own cost (``--framework-floor``).

    Same routes, bodies and server stack as the null service, but each request goes through Litestar's
    routing, parameter extraction and response building; musicrec's middleware, Redis and scoring are
    not here. A uvicorn factory (``--factory``), so importing this module does not import Litestar.
    """
    from litestar import Litestar, Request, get, post
    from litestar.response import Response

    def answer(body: bytes, status: int = 200) -> Response:
        return Response(body, status_code=status, media_type="application/json")

    @get("/api/songs_recommendations", sync_to_thread=False)
    def recs(k: int = 20, diversity: float = 0.0) -> Response:
        return answer(_NULL_RECS)

    @post("/api/recommendations", status_code=200)
    async def playlist(request: Request) -> Response:
        await request.body()
        return answer(_NULL_PLAYLIST)

    @post("/events", status_code=202)
    async def event(request: Request) -> Response:
        return answer(_NULL_EVENT_NEXT) if b'"next"' in await request.body() else answer(_NULL_EVENT, 202)

    @get("/readyz", sync_to_thread=False)
    def readyz() -> Response:
        return answer(_NULL_READY)

    # The handlers' annotations are strings here (``from __future__ import annotations``): name their types.
    return Litestar([recs, playlist, event, readyz], signature_namespace={"Request": Request, "Response": Response})


@dataclass
class Service:
    proc: Proc
    url: str
    workers: int
    ready_s: float        # spawn → first /readyz 200
    all_ready_s: float    # spawn → every worker has finished its start-up
    readyz: dict


@contextmanager
def service(version_dir: Path, redis_url: str, workers: int, workdir: Path, timeout_s: float,
            null: bool = False, env: dict[str, str] | None = None, floor: bool = False) -> Iterator[Service]:
    """The service (or the null app, or with ``floor`` the Litestar floor) on a free port, ready; ``env`` adds to or
    overrides its settings."""
    port = free_port()
    env = dict(os.environ, ARTIFACTS_DIR=str(version_dir), HOST="127.0.0.1", PORT=str(port), WORKERS=str(workers),
               REDIS_URL=redis_url, KAFKA_BOOTSTRAP_SERVERS="", LOG_LEVEL="INFO", PYTHONUNBUFFERED="1",
               # Locust is one address: the per-address limit is counted as in production but set out of reach.
               RATE_LIMIT_PER_MIN="10000000") | (env or {})
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "musicrec.service"]
    if null or floor:
        app = ["--factory", "benchmarks.load:litestar_floor"] if floor else ["benchmarks.load:null_app"]
        cmd = [sys.executable, "-m", "uvicorn", *app, "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(workers), "--loop", "uvloop", "--http", "httptools", "--no-access-log"]
    spawned = time.monotonic()
    with started("service", cmd, env, workdir) as proc:
        readyz, ready_s = None, 0.0
        while True:
            if proc.popen.poll() is not None:
                raise BenchError(f"the service exited with {proc.popen.returncode}:\n{_tail(proc.log_path)}")
            if time.monotonic() - spawned > timeout_s:
                raise BenchError(f"the service was not ready in {timeout_s:.0f}s:\n{_tail(proc.log_path)}")
            try:
                if readyz is None:
                    readyz = http_json(f"{url}/readyz")
                    ready_s = time.monotonic() - spawned
                if proc.log_path.read_text(errors="replace").count("Application startup complete") >= workers:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        svc = Service(proc, url, workers, ready_s, time.monotonic() - spawned, readyz)
        log(f"service ready at {url} in {svc.ready_s:.1f}s (all {workers} workers {svc.all_ready_s:.1f}s), "
            f"{readyz.get('artifacts', {}).get('n_tracks')} tracks, index {readyz.get('artifacts', {}).get('index_type')}, "
            f"redis {readyz.get('redis')}")
        yield svc


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- one run at one rate ------------------------------------------------------------------------
@dataclass
class Endpoint:
    name: str
    count: int
    failures: int
    rate: float
    p50: float
    p95: float
    p99: float
    max: float


@dataclass
class RunResult:
    mix: str
    rate: float
    users: int
    duration_s: float
    endpoints: list[Endpoint]
    achieved: float
    failures: int                      # Locust's count over the whole run, warm-up included
    failure_kinds: list[str]
    service_cpu_ms: float              # per request, measured window
    locust_cpu_ms: float
    redis_cpu_ms: float | None
    service_cores: float               # CPU seconds per second of the measured window
    locust_cores: float
    locust_p99_csv: dict[str, float] = field(default_factory=dict)
    service_cores_by_process: list[float] = field(default_factory=list)  # busiest first (workers, supervisor)
    shed: int = 0                      # of ``failures``: requests refused with 503/429 (load shedding)

    @property
    def measured_failures(self) -> int:
        """Failed requests after the warm-up (the window every latency is measured in)."""
        return sum(e.failures for e in self.endpoints if e.name not in ("all recommendations", "all requests"))

    @property
    def warmup_shed(self) -> int:
        """Requests shed during the warm-up: the spawn burst (each listener's 20 plays at once) offers more
        than the steady rate, and a service that sheds refuses some of it by design."""
        return max(0, min(self.shed, self.failures - self.measured_failures))

    def endpoint(self, name: str) -> Endpoint | None:
        return next((e for e in self.endpoints if e.name == name), None)


def _percentiles(values: np.ndarray) -> tuple[float, float, float, float]:
    if not len(values):
        return (float("nan"),) * 4  # type: ignore[return-value]
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return float(p50), float(p95), float(p99), float(values.max())


def _redis_cpu(url: str) -> float | None:
    import redis

    try:
        info = redis.Redis.from_url(url).info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    except redis.RedisError:
        return None


def run_locust(svc: Service, redis_url: str, rate: float, args: argparse.Namespace, workdir: Path,
               ids_file: Path, tag: str, mix: Mix = MIXES["bench"]) -> RunResult:
    users = max(1, round(rate / args.user_rate))
    samples = workdir / f"samples-{tag}"
    samples.mkdir()
    run_time = args.warmup + args.duration
    env = dict(os.environ, BENCH_TRACK_IDS=str(ids_file), BENCH_USER_RATE=str(args.user_rate),
               BENCH_SAMPLES=str(samples), BENCH_WARMUP_S=str(args.warmup), PYTHONUNBUFFERED="1")
    prefix = workdir / f"locust-{tag}"
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), mix.user_class, "--headless", "--host", svc.url,
           "-u", str(users), "-r", str(max(1, users / max(1.0, args.warmup / 2))), "--run-time", f"{run_time:.0f}s",
           "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "5"]
    if args.processes != 1:
        cmd += ["--processes", str(args.processes)]
    log(f"{tag} ({mix.name} mix): offering {rate:,.0f} req/s ({users} listeners × {args.user_rate}/s) for {args.warmup:.0f}s warm-up "
        f"+ {args.duration:.0f}s measured")
    with started(f"locust-{tag}", cmd, env, workdir) as locust:
        time.sleep(args.warmup)
        service_pids, locust_pids = svc.proc.pids(), locust.pids()
        per0 = cpu_by_pid(service_pids)
        cpu0 = (sum(per0.values()), cpu_seconds(locust_pids), _redis_cpu(redis_url), time.monotonic())
        time.sleep(args.duration)
        per1 = cpu_by_pid(service_pids)
        cpu1 = (sum(per1.values()), cpu_seconds(locust_pids), _redis_cpu(redis_url), time.monotonic())
        try:
            locust.popen.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise BenchError(f"locust did not stop:\n{_tail(locust.log_path)}")
    if svc.proc.popen.poll() is not None:
        raise BenchError(f"the service died during the run:\n{_tail(svc.proc.log_path)}")
    merged: dict[str, list[float]] = {}
    failures_window: dict[str, int] = {}
    window = [float("inf"), float("-inf")]
    for file in samples.glob("samples-*.json"):
        doc = json.loads(file.read_text())
        for name, values in doc["latencies"].items():
            merged.setdefault(name, []).extend(values)
        for name, count in doc["failures"].items():
            failures_window[name] = failures_window.get(name, 0) + count
        if doc["window"]:
            window = [min(window[0], doc["window"][0]), max(window[1], doc["window"][1])]
    if not merged:
        raise BenchError(f"locust recorded no requests:\n{_tail(locust.log_path)}")
    span = max(window[1] - window[0], 1e-9)
    endpoints = []
    order = [*mix.recommendations, *EVENTS]
    for name in sorted(merged, key=lambda n: order.index(n) if n in order else len(order)):
        values = np.asarray(merged[name])
        endpoints.append(Endpoint(name, len(values), failures_window.get(name, 0), len(values) / span,
                                  *_percentiles(values)))
    recs = np.concatenate([np.asarray(merged[n]) for n in mix.recommendations if n in merged] or [np.empty(0)])
    endpoints.append(Endpoint("all recommendations", len(recs), sum(failures_window.get(n, 0) for n in mix.recommendations),
                              len(recs) / span, *_percentiles(recs)))
    every = np.concatenate([np.asarray(v) for v in merged.values()])
    endpoints.append(Endpoint("all requests", len(every), sum(failures_window.values()), len(every) / span,
                              *_percentiles(every)))
    total_failures, kinds, csv_p99, shed = _read_locust_csv(prefix)
    elapsed = cpu1[3] - cpu0[3]
    per_process = sorted(((per1.get(pid, 0.0) - busy) / elapsed for pid, busy in per0.items()), reverse=True)
    handled = len(every) * elapsed / span if span > 0 else len(every)
    redis_ms = None if cpu0[2] is None or cpu1[2] is None else (cpu1[2] - cpu0[2]) / handled * 1e3
    return RunResult(mix.name, rate, users, span, endpoints, len(every) / span, total_failures, kinds,
                     (cpu1[0] - cpu0[0]) / handled * 1e3, (cpu1[1] - cpu0[1]) / handled * 1e3, redis_ms,
                     (cpu1[0] - cpu0[0]) / elapsed, (cpu1[1] - cpu0[1]) / elapsed, csv_p99,
                     [round(c, 2) for c in per_process if c >= 0.005], shed)


def _read_locust_csv(prefix: Path) -> tuple[int, list[str], dict[str, float], int]:
    """(failures, their kinds, p99 per name, shed 503/429s among the failures), all over the whole run."""
    failures, p99, shed = 0, {}, 0
    stats = Path(f"{prefix}_stats.csv")
    if stats.is_file():
        with open(stats, newline="") as fh:
            for row in csv.DictReader(fh):
                if row["Name"] == "Aggregated":
                    failures = int(row["Failure Count"])
                p99[row["Name"]] = float(row.get("99%") or "nan")
    kinds = []
    failed = Path(f"{prefix}_failures.csv")
    if failed.is_file():
        with open(failed, newline="") as fh:
            rows = list(csv.DictReader(fh))
        kinds = [f"{r['Name']}: {r['Error']} ×{r['Occurrences']}" for r in rows]
        shed = sum(int(r["Occurrences"]) for r in rows if "shed: HTTP" in r["Error"])
    return failures, kinds, p99, shed


# -- report ---------------------------------------------------------------------------------------
def budget_misses(result: RunResult, p99_ms: float) -> list[str]:
    misses = []
    for name in MIXES[result.mix].recommendations:
        e = result.endpoint(name)
        if e is None or not e.count:
            misses.append(f"{name}: no requests measured")
        elif e.p99 > p99_ms:
            misses.append(f"{name}: p99 {e.p99:.2f} ms > {p99_ms:g} ms")
    if result.measured_failures or result.failures - result.warmup_shed:
        misses.append(f"{result.failures - result.warmup_shed} failed requests ({result.measured_failures} after the "
                      f"warm-up): {'; '.join(result.failure_kinds[:5])}")
    if result.achieved < 0.95 * result.rate:
        misses.append(f"achieved {result.achieved:,.0f} req/s < 95% of the {result.rate:,.0f} offered")
    return misses


def summary(result: RunResult, svc: Service, rss: tuple[float, float], args: argparse.Namespace) -> str:
    lines = [
        f"# load test, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores: "
        f"{svc.readyz.get('artifacts', {}).get('n_tracks'):,} tracks "
        f"({svc.readyz.get('artifacts', {}).get('index_type')} index), {svc.workers} service workers, "
        f"Locust FastHttpUser × {result.users} in {_locust_processes(args)} process(es)",
        f"# offered {result.rate:,.0f} req/s, achieved {result.achieved:,.0f} req/s over {result.duration_s:.0f}s "
        f"after a {args.warmup:.0f}s warm-up; latency as Locust's client sees it (ms)",
        "| endpoint | requests | req/s | failures | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in result.endpoints:
        lines.append(f"| {e.name} | {e.count:,} | {e.rate:,.0f} | {e.failures} | {e.p50:.2f} | {e.p95:.2f} | "
                     f"{e.p99:.2f} | {e.max:.1f} |")
    redis = f", Redis {result.redis_cpu_ms:.3f}" if result.redis_cpu_ms is not None else ""
    lines += [
        f"# CPU per request (ms): service {result.service_cpu_ms:.3f}, Locust {result.locust_cpu_ms:.3f}{redis}; "
        f"cores busy: service {result.service_cores:.2f} (by process {result.service_cores_by_process}), "
        f"Locust {result.locust_cores:.2f} (of {os.cpu_count()})",
        f"# service start-up: /readyz after {svc.ready_s:.1f}s, all workers after {svc.all_ready_s:.1f}s; "
        f"memory after the run: RSS {rss[0]:,.0f} MiB, PSS {rss[1]:,.0f} MiB (all service processes)",
        "# Locust's own CSV p99 (whole run, rounded): "
        + ", ".join(f"{k} {v:g}" for k, v in result.locust_p99_csv.items()
                    if k in (*MIXES[result.mix].recommendations, "Aggregated")),
    ]
    return "\n".join(lines)


def _locust_processes(args: argparse.Namespace) -> int:
    return (os.cpu_count() or 1) if args.processes == -1 else args.processes


def ceiling_table(steps: list[tuple[RunResult, list[str]]], p99_ms: float, args: argparse.Namespace,
                  what: str = "") -> str:
    lines = [f"# ceiling{', ' + what if what else ''}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, {args.workers} "
             f"service workers, Locust in {_locust_processes(args)} process(es): offered rate stepped up; a step passes "
             f"with p99 ≤ {p99_ms:g} ms on both recommendation endpoints, no failures and ≥ 95% of the rate achieved",
             "| offered req/s | achieved req/s | rec p50 ms | rec p95 ms | rec p99 ms | failures | shed in warm-up | "
             "service cores | Locust cores | pass |", "|---|---|---|---|---|---|---|---|---|---|"]
    for result, misses in steps:
        rec = result.endpoint("all recommendations")
        lines.append(f"| {result.rate:,.0f} | {result.achieved:,.0f} | {rec.p50:.2f} | {rec.p95:.2f} | {rec.p99:.2f} | "
                     f"{result.failures - result.warmup_shed} | {result.warmup_shed} | {result.service_cores:.2f} | "
                     f"{result.locust_cores:.2f} | "
                     f"{'yes' if not misses else 'no: ' + '; '.join(misses)} |")
    passed = [r.rate for r, m in steps if not m]
    lines.append(f"# highest passing offered rate: {max(passed):,.0f} req/s" if passed else "# no step passed")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", type=Path, default=REPO / "artifacts" / "bench" / "114k",
                   help="artefact version to serve; built here if missing (default artifacts/bench/114k)")
    p.add_argument("--csv", type=Path, default=SHARED_CSV, help="catalog to build from (default: the shared 114k)")
    p.add_argument("--demo", type=int, metavar="N", help="build a synthetic catalog of N tracks instead")
    p.add_argument("--index-type", help="index of a fresh build (default: the indexer's default)")
    p.add_argument("--rate", type=float, default=1000.0,
                   help="offered requests/s, all kinds together (1000); stepped down while the null service's "
                        "p99 there is above --null-p99-ms, so the rate means the same on a slower machine")
    p.add_argument("--mix", choices=("both", *MIXES), default="both",
                   help="traffic: the `make bench` mix, the player mix (every ask after a new event), or both")
    p.add_argument("--p99-ms", type=float, default=10.0,
                   help="information: the absolute p99 of each recommendation endpoint to compare with (10)")
    p.add_argument("--null-p99-ms", type=float, default=10.0,
                   help="the offered rate is one where the null service's recommendation p99 is at most this (10)")
    p.add_argument("--max-p99-ms", type=float, default=25.0,
                   help="goal: musicrec's p99 of each recommendation endpoint at most this (25)")
    p.add_argument("--cpu-ratio", type=float, default=2.0, help="goal: service CPU per request ≤ this × the null's (2)")
    p.add_argument("--p99-ratio", type=float, default=2.5, help="goal: recommendation p99 ≤ this × the null's (2.5)")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds per run (30)")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring: spawn, sessions (10)")
    p.add_argument("--user-rate", type=float, default=2.0, help="requests/s per simulated listener (2)")
    p.add_argument("--processes", type=int,
                   help="Locust processes (-1 = one per core); default 1, and one per core with --ceiling: one "
                        "gevent process offering 3,000/s adds its own queueing (p99 52 ms against a null service)")
    p.add_argument("--workers", type=int, default=usable_cores(),
                   help="service workers (default: one per usable core, as the service's WORKERS=auto)")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--ready-timeout", type=float, default=180.0)
    p.add_argument("--ceiling", help="comma-separated offered rates to step through (e.g. 1000,2000,3000)")
    p.add_argument("--ceiling-p99-ms", type=float, default=25.0)
    p.add_argument("--ceiling-duration", type=float, default=20.0, help="measured seconds per ceiling step (20)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--workdir", type=Path, help="keep the service log and Locust CSVs under this folder")
    p.add_argument("--null-service", action="store_true", help="only the null service (fixed answers, no work)")
    p.add_argument("--no-null", action="store_true", help="only musicrec, against the absolute --p99-ms budget")
    p.add_argument("--framework-floor", action="store_true",
                   help="also run the null service's answers from a bare Litestar app, and print musicrec's ratio "
                        "to it (information: what the framework alone costs)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting for musicrec (e.g. --env ANSWER_CACHE_SIZE=0); repeatable")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.processes is None:
        args.processes = -1 if args.ceiling else 1
    if args.null_service and args.no_null:
        print("bench error: --null-service and --no-null exclude each other", file=sys.stderr)
        return 2
    if args.framework_floor and (args.null_service or args.no_null or args.ceiling):
        print("bench error: --framework-floor is compared with the null service and musicrec in one budget run "
              "(not with --null-service, --no-null or --ceiling)", file=sys.stderr)
        return 2
    mixes = list(MIXES.values()) if args.mix == "both" else [MIXES[args.mix]]
    try:
        service_env = dict(item.split("=", 1) for item in args.env)
    except ValueError:
        print("bench error: --env takes NAME=VALUE", file=sys.stderr)
        return 2
    try:
        version_dir = ensure_artifacts(args)
        with ExitStack() as stack:
            if args.workdir:
                args.workdir.mkdir(parents=True, exist_ok=True)
                workdir = Path(tempfile.mkdtemp(prefix="run-", dir=args.workdir))
                log(f"logs and Locust CSVs kept in {workdir}")
            else:
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="musicrec-bench-")))
            ids_file = workdir / "track_ids.txt"
            import pyarrow.parquet as pq

            from musicrec.index.artifacts import TRACKS
            ids_file.write_text("\n".join(pq.read_table(version_dir / TRACKS, columns=["id"]).column(0).to_pylist()))
            redis_url = stack.enter_context(redis_server(args.redis_url, workdir))
            run = _Runner(args, version_dir, redis_url, workdir, ids_file, service_env)
            if args.ceiling:
                return _ceiling(run, mixes[0])
            return _budget(run, mixes)
    except (BenchError, subprocess.CalledProcessError) as exc:
        print(f"bench error: {exc}", file=sys.stderr)
        return 2


@dataclass
class _Runner:
    """What every run of one invocation shares: the artefacts, Redis, the work folder, musicrec's settings."""

    args: argparse.Namespace
    version_dir: Path
    redis_url: str
    workdir: Path
    ids_file: Path
    env: dict[str, str]

    @contextmanager
    def serving(self, null: bool, floor: bool = False) -> Iterator[Service]:
        """The null service, the Litestar floor or musicrec, started fresh (one at a time, so none takes another's CPU)."""
        with service(self.version_dir, self.redis_url, self.args.workers, self.workdir, self.args.ready_timeout,
                     null=null, env=None if null or floor else self.env, floor=floor) as svc:
            yield svc

    def load(self, svc: Service, rate: float, mix: Mix, tag: str, args: argparse.Namespace | None = None) -> RunResult:
        return run_locust(svc, self.redis_url, rate, args or self.args, self.workdir, self.ids_file, tag, mix)


def _null_rate(run: _Runner, svc: Service, mix: Mix, rate: float) -> tuple[float, RunResult]:
    """The offered rate, stepped down (× 0.7, at most 4 times) until the null service's p99 there is ≤ --null-p99-ms.

    The goals are ratios to this floor, and they are only meaningful where the floor itself is fast:
    on a slower machine one Locust process queues its own requests at rates a faster one offers easily.
    """
    for attempt in range(5):
        result = run.load(svc, rate, mix, f"null-{mix.name}-{rate:.0f}")
        rec = result.endpoint("all recommendations")
        if rec is not None and rec.p99 <= run.args.null_p99_ms and not budget_misses(result, math.inf):
            return rate, result
        log(f"null service at {rate:,.0f}/s: p99 {rec.p99 if rec else float('nan'):.2f} ms > "
            f"{run.args.null_p99_ms:g} ms (or it missed the rate): stepping the rate down")
        if attempt == 4:
            break
        rate = max(50.0, round(rate * 0.7 / 50) * 50)
    raise BenchError(f"the null service's p99 stayed above {run.args.null_p99_ms:g} ms down to {rate:,.0f} req/s: "
                     "this machine cannot offer a measurable load")


def _budget(run: _Runner, mixes: list[Mix]) -> int:
    args = run.args
    nulls: dict[str, RunResult] = {}
    rate = args.rate
    if not args.no_null:
        with run.serving(null=True) as svc:
            for i, mix in enumerate(mixes):
                if i == 0:
                    rate, nulls[mix.name] = _null_rate(run, svc, mix, rate)
                else:
                    nulls[mix.name] = run.load(svc, rate, mix, f"null-{mix.name}-{rate:.0f}")
        if args.null_service:
            for result in nulls.values():
                print(summary(result, svc, (0.0, 0.0), args))
            return 0
    floors: dict[str, RunResult] = {}
    if args.framework_floor:
        with run.serving(null=False, floor=True) as svc:
            for mix in mixes:
                floors[mix.name] = run.load(svc, rate, mix, f"floor-{mix.name}-{rate:.0f}")
    results: dict[str, RunResult] = {}
    with run.serving(null=False) as svc:
        startup_rss = memory_mb(svc.proc.pids())
        log(f"service memory at start: RSS {startup_rss[0]:,.0f} MiB, PSS {startup_rss[1]:,.0f} MiB")
        for mix in mixes:
            results[mix.name] = run.load(svc, rate, mix, f"musicrec-{mix.name}-{rate:.0f}")
        rss = memory_mb(svc.proc.pids())
    misses: dict[str, list[str]] = {}
    for mix in mixes:
        print(summary(results[mix.name], svc, rss, args))
        misses[mix.name] = goal_misses(results[mix.name], nulls.get(mix.name), args)
    if nulls:
        print(comparison_table(mixes, nulls, results, args, floors))
    if args.json:
        args.json.write_text(json.dumps({
            "rate": rate, "musicrec": {k: _as_dict(v) for k, v in results.items()},
            "null": {k: _as_dict(v) for k, v in nulls.items()}, "misses": misses, "ready_s": svc.ready_s,
            "all_ready_s": svc.all_ready_s, "rss_mb": rss, "startup_rss_mb": startup_rss}, indent=1))
    missed = [f"{mix}: {m}" for mix, ms in misses.items() for m in ms]
    if missed:
        print("GOALS MISSED: " + "; ".join(missed))
        return 1
    print(f"goals met at {rate:,.0f} req/s offered: " + ("; ".join(
        f"{mix.name} mix CPU/request {ratio(results[mix.name].service_cpu_ms, nulls[mix.name].service_cpu_ms):.2f}× "
        f"the null's, p99 {ratio(_rec_p99(results[mix.name]), _rec_p99(nulls[mix.name])):.2f}×" for mix in mixes)
        if nulls else f"p99 ≤ {args.p99_ms:g} ms, no failures"))
    return 0


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.inf


def _rec_p99(result: RunResult) -> float:
    rec = result.endpoint("all recommendations")
    return rec.p99 if rec is not None else math.nan


def goal_misses(result: RunResult, null: RunResult | None, args: argparse.Namespace) -> list[str]:
    """Failures and the rate always; against the null: the CPU and p99 ratios and the p99 cap; alone: --p99-ms."""
    if null is None:
        return budget_misses(result, args.p99_ms)
    misses = budget_misses(result, args.max_p99_ms)
    cpu = ratio(result.service_cpu_ms, null.service_cpu_ms)
    if cpu > args.cpu_ratio:
        misses.append(f"service CPU per request {result.service_cpu_ms:.3f} ms = {cpu:.2f}× the null's "
                      f"{null.service_cpu_ms:.3f} ms > {args.cpu_ratio:g}×")
    p99 = ratio(_rec_p99(result), _rec_p99(null))
    if p99 > args.p99_ratio:
        misses.append(f"recommendation p99 {_rec_p99(result):.2f} ms = {p99:.2f}× the null's "
                      f"{_rec_p99(null):.2f} ms > {args.p99_ratio:g}×")
    return misses


def comparison_table(mixes: list[Mix], nulls: dict[str, RunResult], results: dict[str, RunResult],
                     args: argparse.Namespace, floors: dict[str, RunResult] | None = None) -> str:
    floors = floors or {}
    lines = [f"# null service vs musicrec, same harness and rate, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
             f"{os.cpu_count()} cores; goals: CPU/request ≤ {args.cpu_ratio:g}× the null's, recommendation p99 ≤ "
             f"{args.p99_ratio:g}× the null's and ≤ {args.max_p99_ms:g} ms (the {args.p99_ms:g} ms is information)",
             "| mix | service | offered req/s | achieved | rec p50 ms | rec p99 ms | rec max ms | failures | "
             "shed in warm-up | service CPU ms/req | service cores | Locust CPU ms/req |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mix in mixes:
        runs = [("null", nulls[mix.name]), *([("Litestar floor", floors[mix.name])] if mix.name in floors else []),
                ("musicrec", results[mix.name])]
        for who, r in runs:
            rec = r.endpoint("all recommendations")
            lines.append(f"| {mix.name} | {who} | {r.rate:,.0f} | {r.achieved:,.0f} | {rec.p50:.2f} | {rec.p99:.2f} | "
                         f"{rec.max:.1f} | {r.failures - r.warmup_shed} | {r.warmup_shed} | {r.service_cpu_ms:.3f} | "
                         f"{r.service_cores:.2f} | "
                         f"{r.locust_cpu_ms:.3f} |")
    for mix in mixes:
        n, m = nulls[mix.name], results[mix.name]
        lines.append(f"# {mix.name} mix: service CPU per request {ratio(m.service_cpu_ms, n.service_cpu_ms):.2f}× the "
                     f"null's (goal ≤ {args.cpu_ratio:g}), recommendation p99 {ratio(_rec_p99(m), _rec_p99(n)):.2f}× "
                     f"(goal ≤ {args.p99_ratio:g}); musicrec p99 {_rec_p99(m):.2f} ms (goal ≤ {args.max_p99_ms:g}; "
                     f"{'within' if _rec_p99(m) <= args.p99_ms else 'above'} the {args.p99_ms:g} ms of information)")
        if mix.name in floors:
            f = floors[mix.name]
            lines.append(f"# {mix.name} mix, information: the Litestar floor's CPU per request is "
                         f"{ratio(f.service_cpu_ms, n.service_cpu_ms):.2f}× the null's; musicrec's is "
                         f"{ratio(m.service_cpu_ms, f.service_cpu_ms):.2f}× the floor's, p99 "
                         f"{ratio(_rec_p99(m), _rec_p99(f)):.2f}× the floor's")
    return "\n".join(lines)


def _ceiling(run: _Runner, mix: Mix) -> int:
    """Step the offered rate up against the null service, then musicrec; print both and the ratio of their ceilings."""
    args = run.args
    step_args = argparse.Namespace(**{**vars(args), "duration": args.ceiling_duration})
    rates = [float(r) for r in args.ceiling.split(",")]
    tables, highest = [], {}
    whos = ["null"] if args.null_service else ["musicrec"] if args.no_null else ["null", "musicrec"]
    for who in whos:
        steps: list[tuple[RunResult, list[str]]] = []
        with run.serving(null=who == "null") as svc:
            for rate in rates:
                result = run.load(svc, rate, mix, f"ceiling-{who}-{mix.name}-{rate:.0f}", step_args)
                misses = budget_misses(result, args.ceiling_p99_ms)
                steps.append((result, misses))
                rec = result.endpoint("all recommendations")
                log(f"{who} {rate:,.0f}/s: achieved {result.achieved:,.0f}, rec p99 {rec.p99:.2f} ms, "
                    f"{'pass' if not misses else 'miss: ' + '; '.join(misses)}")
                if misses and result.achieved < 0.95 * rate:
                    break  # the machine cannot offer more; higher steps would only say so again
        tables.append(ceiling_table(steps, args.ceiling_p99_ms, args, f"{who}, {mix.name} mix"))
        passed = [r.rate for r, m in steps if not m]
        highest[who] = (max(passed) if passed else 0.0, len(passed) == len(rates))
    print("\n".join(tables))
    if "null" in highest and "musicrec" in highest:
        (mr, _), (nl, nl_all) = highest["musicrec"], highest["null"]
        bound = " (the null passed every step: its true ceiling is higher, so the ratio is at most this)" if nl_all else ""
        print(f"# ceiling ratio, {mix.name} mix: musicrec {mr:,.0f} ÷ null {nl:,.0f} req/s = {ratio(mr, nl):.2f}{bound}")
    if args.json:
        args.json.write_text(json.dumps({k: v[0] for k, v in highest.items()}, indent=1))
    return 0 if highest.get("musicrec", highest.get("null", (0.0, False)))[0] > 0 else 1


def _as_dict(result: RunResult) -> dict:
    from dataclasses import asdict

    return asdict(result)


if __name__ == "__main__":
    raise SystemExit(main())
