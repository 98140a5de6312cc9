"""`make bench`: the service under Locust at a fixed offered rate, against the latency budget.

Steps: build the artefacts if missing (the 114k file, or a synthetic catalog with --demo N);
use the Redis on --redis-url, or start a private one when none answers; start the service
(`python -m musicrec.service`, WORKERS from the core count) on a free port and wait for /readyz; run Locust
headless (benchmarks/locustfile.py, FastHttpUser, constant_throughput) at --rate requests/s for
--warmup + --duration seconds; read its CSV statistics and the exact per-request latencies the
locustfile keeps after the warm-up; print one summary table; stop everything it started.

Exit status 1 when the budget is missed: p99 of a recommendation endpoint above --p99-ms, any
failed request, or an achieved rate below 95 % of the offered one (the machine could not even
offer the load, so the latency was not measured at that rate). --ceiling R1,R2,… then steps
the offered rate up and reports the highest that kept p99 ≤ --ceiling-p99-ms without failures.

    python -m benchmarks.load                                   # 114k, 1,000/s, p99 ≤ 10 ms
    python -m benchmarks.load --ceiling 1000,1500,2000,2500,3000   # Locust on every core
    python -m benchmarks.load --demo 1000000 --artifacts artifacts/bench/1m --p99-ms 15
"""
from __future__ import annotations

import argparse
import csv
import json
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
EVENTS = ("POST /events [skip]", "POST /events [like]", "POST /events [session view]")


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
    while (await receive()).get("more_body"):
        pass
    path, method = scope["path"], scope["method"]
    status, body = 404, b"{}"
    if path == "/api/songs_recommendations":
        status, body = 200, _NULL_RECS
    elif path == "/api/recommendations" and method == "POST":
        status, body = 200, _NULL_PLAYLIST
    elif path == "/events" and method == "POST":
        status, body = 202, _NULL_EVENT
    elif path == "/readyz":
        status, body = 200, _NULL_READY
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


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
            null: bool = False, env: dict[str, str] | None = None) -> Iterator[Service]:
    """The service (or the null app) on a free port, ready; ``env`` adds to or overrides its settings."""
    port = free_port()
    env = dict(os.environ, ARTIFACTS_DIR=str(version_dir), HOST="127.0.0.1", PORT=str(port), WORKERS=str(workers),
               REDIS_URL=redis_url, KAFKA_BOOTSTRAP_SERVERS="", LOG_LEVEL="INFO", PYTHONUNBUFFERED="1",
               # Locust is one address: the per-address limit is counted as in production but set out of reach.
               RATE_LIMIT_PER_MIN="10000000") | (env or {})
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "musicrec.service"]
    if null:
        cmd = [sys.executable, "-m", "uvicorn", "benchmarks.load:null_app", "--host", "127.0.0.1", "--port", str(port),
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
               ids_file: Path, tag: str) -> RunResult:
    users = max(1, round(rate / args.user_rate))
    samples = workdir / f"samples-{tag}"
    samples.mkdir()
    run_time = args.warmup + args.duration
    env = dict(os.environ, BENCH_TRACK_IDS=str(ids_file), BENCH_USER_RATE=str(args.user_rate),
               BENCH_SAMPLES=str(samples), BENCH_WARMUP_S=str(args.warmup), PYTHONUNBUFFERED="1")
    prefix = workdir / f"locust-{tag}"
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", svc.url,
           "-u", str(users), "-r", str(max(1, users / max(1.0, args.warmup / 2))), "--run-time", f"{run_time:.0f}s",
           "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "5"]
    if args.processes != 1:
        cmd += ["--processes", str(args.processes)]
    log(f"{tag}: offering {rate:,.0f} req/s ({users} listeners × {args.user_rate}/s) for {args.warmup:.0f}s warm-up "
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
    order = [*RECOMMENDATIONS, *EVENTS]
    for name in sorted(merged, key=lambda n: order.index(n) if n in order else len(order)):
        values = np.asarray(merged[name])
        endpoints.append(Endpoint(name, len(values), failures_window.get(name, 0), len(values) / span,
                                  *_percentiles(values)))
    recs = np.concatenate([np.asarray(merged[n]) for n in RECOMMENDATIONS if n in merged] or [np.empty(0)])
    endpoints.append(Endpoint("all recommendations", len(recs), sum(failures_window.get(n, 0) for n in RECOMMENDATIONS),
                              len(recs) / span, *_percentiles(recs)))
    every = np.concatenate([np.asarray(v) for v in merged.values()])
    endpoints.append(Endpoint("all requests", len(every), sum(failures_window.values()), len(every) / span,
                              *_percentiles(every)))
    total_failures, kinds, csv_p99 = _read_locust_csv(prefix)
    elapsed = cpu1[3] - cpu0[3]
    per_process = sorted(((per1.get(pid, 0.0) - busy) / elapsed for pid, busy in per0.items()), reverse=True)
    handled = len(every) * elapsed / span if span > 0 else len(every)
    redis_ms = None if cpu0[2] is None or cpu1[2] is None else (cpu1[2] - cpu0[2]) / handled * 1e3
    return RunResult(rate, users, span, endpoints, len(every) / span, total_failures, kinds,
                     (cpu1[0] - cpu0[0]) / handled * 1e3, (cpu1[1] - cpu0[1]) / handled * 1e3, redis_ms,
                     (cpu1[0] - cpu0[0]) / elapsed, (cpu1[1] - cpu0[1]) / elapsed, csv_p99,
                     [round(c, 2) for c in per_process if c >= 0.005])


def _read_locust_csv(prefix: Path) -> tuple[int, list[str], dict[str, float]]:
    failures, p99 = 0, {}
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
            kinds = [f"{r['Name']}: {r['Error']} ×{r['Occurrences']}" for r in csv.DictReader(fh)]
    return failures, kinds, p99


# -- report ---------------------------------------------------------------------------------------
def budget_misses(result: RunResult, p99_ms: float) -> list[str]:
    misses = []
    for name in RECOMMENDATIONS:
        e = result.endpoint(name)
        if e is None or not e.count:
            misses.append(f"{name}: no requests measured")
        elif e.p99 > p99_ms:
            misses.append(f"{name}: p99 {e.p99:.2f} ms > {p99_ms:g} ms")
    if result.failures or any(e.failures for e in result.endpoints):
        misses.append(f"{result.failures} failed requests: {'; '.join(result.failure_kinds[:5])}")
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
        + ", ".join(f"{k} {v:g}" for k, v in result.locust_p99_csv.items() if k in (*RECOMMENDATIONS, "Aggregated")),
    ]
    return "\n".join(lines)


def _locust_processes(args: argparse.Namespace) -> int:
    return (os.cpu_count() or 1) if args.processes == -1 else args.processes


def ceiling_table(steps: list[tuple[RunResult, list[str]]], p99_ms: float, args: argparse.Namespace) -> str:
    lines = [f"# ceiling, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, {args.workers} "
             f"service workers, Locust in {_locust_processes(args)} process(es): offered rate stepped up; a step passes "
             f"with p99 ≤ {p99_ms:g} ms on both recommendation endpoints, no failures and ≥ 95% of the rate achieved",
             "| offered req/s | achieved req/s | rec p50 ms | rec p95 ms | rec p99 ms | failures | service cores | "
             "Locust cores | pass |", "|---|---|---|---|---|---|---|---|---|"]
    for result, misses in steps:
        rec = result.endpoint("all recommendations")
        lines.append(f"| {result.rate:,.0f} | {result.achieved:,.0f} | {rec.p50:.2f} | {rec.p95:.2f} | {rec.p99:.2f} | "
                     f"{result.failures} | {result.service_cores:.2f} | {result.locust_cores:.2f} | "
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
    p.add_argument("--rate", type=float, default=1000.0, help="offered requests/s, all kinds together (1000)")
    p.add_argument("--p99-ms", type=float, default=10.0, help="budget: p99 of each recommendation endpoint (10)")
    p.add_argument("--duration", type=float, default=60.0, help="measured seconds (60)")
    p.add_argument("--warmup", type=float, default=20.0, help="seconds before measuring: spawn, sessions (20)")
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
    p.add_argument("--ceiling-duration", type=float, default=30.0, help="measured seconds per ceiling step (30)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--workdir", type=Path, help="keep the service log and Locust CSVs under this folder")
    p.add_argument("--null-service", action="store_true",
                   help="serve fixed answers instead of the app: the load generator's own floor at this rate")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.processes is None:
        args.processes = -1 if args.ceiling else 1
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
            svc = stack.enter_context(service(version_dir, redis_url, args.workers, workdir, args.ready_timeout,
                                              null=args.null_service))
            startup_rss = memory_mb(svc.proc.pids())
            log(f"service memory at start: RSS {startup_rss[0]:,.0f} MiB, PSS {startup_rss[1]:,.0f} MiB")
            if args.ceiling:
                return _ceiling(svc, redis_url, args, workdir, ids_file)
            result = run_locust(svc, redis_url, args.rate, args, workdir, ids_file, "budget")
            rss = memory_mb(svc.proc.pids())
            print(summary(result, svc, rss, args))
            misses = budget_misses(result, args.p99_ms)
            if args.json:
                args.json.write_text(json.dumps({"result": _as_dict(result), "misses": misses, "ready_s": svc.ready_s,
                                                 "all_ready_s": svc.all_ready_s, "rss_mb": rss,
                                                 "startup_rss_mb": startup_rss}, indent=1))
            if misses:
                print(f"BUDGET MISSED (p99 ≤ {args.p99_ms:g} ms at {args.rate:,.0f} req/s, no failures): "
                      + "; ".join(misses))
                return 1
            print(f"budget met: p99 ≤ {args.p99_ms:g} ms at {args.rate:,.0f} req/s offered, no failures")
            return 0
    except (BenchError, subprocess.CalledProcessError) as exc:
        print(f"bench error: {exc}", file=sys.stderr)
        return 2


def _ceiling(svc: Service, redis_url: str, args: argparse.Namespace, workdir: Path, ids_file: Path) -> int:
    steps: list[tuple[RunResult, list[str]]] = []
    step_args = argparse.Namespace(**{**vars(args), "duration": args.ceiling_duration})
    for rate in (float(r) for r in args.ceiling.split(",")):
        result = run_locust(svc, redis_url, rate, step_args, workdir, ids_file, f"ceiling-{rate:.0f}")
        misses = budget_misses(result, args.ceiling_p99_ms)
        steps.append((result, misses))
        rec = result.endpoint("all recommendations")
        log(f"{rate:,.0f}/s: achieved {result.achieved:,.0f}, rec p99 {rec.p99:.2f} ms, "
            f"{'pass' if not misses else 'miss: ' + '; '.join(misses)}")
        if misses and result.achieved < 0.95 * rate:
            break  # the machine cannot offer more; higher steps would only say so again
    print(ceiling_table(steps, args.ceiling_p99_ms, args))
    if args.json:
        args.json.write_text(json.dumps([{"result": _as_dict(r), "misses": m} for r, m in steps], indent=1))
    return 0 if any(not m for _, m in steps) else 1


def _as_dict(result: RunResult) -> dict:
    from dataclasses import asdict

    return asdict(result)


if __name__ == "__main__":
    raise SystemExit(main())
