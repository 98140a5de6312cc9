"""What one request costs the app itself: CPU per request of each hot route, with no HTTP server.

The load test (`make bench`) measures the whole machine: uvicorn, the kernel, Locust and Redis
share its two cores, so its "service CPU per request" cannot say which part of a request costs
what. Here the Litestar app built by ``create_app`` (the real settings, artefacts and Redis
session store, on uvloop) is called directly through ASGI, one request at a time, in a loop:
what remains is Litestar, our handlers, scoring, encoding and the Redis client.

Kinds, each after a warm-up, for a listener whose session holds 20 viewed tracks:
  cached-get    GET /api/songs_recommendations asked again with no new event (answer cache hit)
  uncached-get  the same with ANSWER_CACHE_SIZE=0: the session read, scoring and encoding
  event         POST /events (a like): validation, the Redis pipeline, the event sink
  playlist      POST /api/recommendations with 10 of the listener's tracks
  player        POST /events with "next": 20 (the player mix: a play, then its answer, never cached)

    python -m benchmarks.request_cost --artifacts artifacts/bench/114k
"""
from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable

import msgspec
import pyarrow.parquet as pq
import uvloop

from musicrec.service.main import create_app
from musicrec.service.settings import Settings
from musicrec.index.artifacts import TRACKS, resolve_version_dir

REPO = Path(__file__).resolve().parents[1]
KINDS = ("cached-get", "uncached-get", "event", "playlist", "player")
SESSION_VIEWS = 20
PLAYLIST_SEEDS = 10

class InProcess:
    """An ASGI app driven directly: its lifespan started and stopped, requests called one by one."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._lifespan: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "InProcess":
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
        self._lifespan = asyncio.create_task(self.app(scope, self._to_app.get, self._from_app.put))
        await self._to_app.put({"type": "lifespan.startup"})
        reply = await self._from_app.get()
        if reply["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"the app did not start: {reply}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._to_app.put({"type": "lifespan.shutdown"})
        await self._from_app.get()
        if self._lifespan is not None:
            await self._lifespan

    async def call(self, method: str, path: str, *, query: bytes = b"", body: bytes = b"",
                   headers: list[tuple[bytes, bytes]] | None = None) -> int:
        """One request; returns its status. The body is read and dropped, as a server would send it."""
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query, "root_path": "",
                 "headers": [(b"host", b"bench"), *(headers or [])], "client": ("127.0.0.1", 50000),
                 "server": ("127.0.0.1", 8000)}
        pending = [{"type": "http.request", "body": body, "more_body": False}]
        status = 0

        async def receive() -> dict[str, Any]:
            return pending.pop() if pending else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await self.app(scope, receive, send)
        return status


async def _measure(settings: Settings, ids: list[str], kinds: list[str], requests: int, warmup: int,
                   rounds: int) -> dict[str, tuple[float, float]]:
    """(CPU ms, wall ms) per request for each kind: the median over ``rounds`` timed rounds."""
    results: dict[str, tuple[float, float]] = {}
    async with InProcess(create_app(settings)) as app:
        client = f"bench-{uuid.uuid4().hex}".encode()
        listener = [(b"x-client-id", client), (b"content-type", b"application/json")]
        played = random.Random(7).sample(ids, SESSION_VIEWS)
        for track_id in played:
            await _expect(app.call("POST", "/events", body=msgspec.json.encode(
                {"type": "track_view", "track_id": track_id}), headers=listener), 202)
        like = msgspec.json.encode({"type": "like", "track_id": played[0]})
        pick = random.Random(8).choice

        def play() -> Awaitable[int]:  # a random track each time: the session never repeats, no answer is cached
            body = msgspec.json.encode({"type": "track_view", "track_id": pick(ids), "next": 20})
            return app.call("POST", "/events", body=body, headers=listener)

        playlist = msgspec.json.encode({"track_ids": played[:PLAYLIST_SEEDS], "k": 20})

        def ask() -> Awaitable[int]:  # cached or not is the settings' ANSWER_CACHE_SIZE
            return app.call("GET", "/api/songs_recommendations", query=b"k=20", headers=listener[:1])

        calls = {
            "cached-get": (ask, 200),
            "uncached-get": (ask, 200),
            "event": (lambda: app.call("POST", "/events", body=like, headers=listener), 202),
            "playlist": (lambda: app.call("POST", "/api/recommendations", body=playlist, headers=listener[1:]), 200),
            "player": (play, 200),
        }
        try:
            for kind in kinds:
                call, status = calls[kind]
                for _ in range(warmup):
                    await _expect(call(), status)
                samples = []
                for _ in range(rounds):
                    cpu, wall = time.process_time(), time.perf_counter()
                    for _ in range(requests):
                        await _expect(call(), status)
                    samples.append(((time.process_time() - cpu) / requests * 1e3,
                                    (time.perf_counter() - wall) / requests * 1e3))
                results[kind] = (statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples))
        finally:
            await app.call("DELETE", "/api/session", headers=listener[:1])
    return results


async def _expect(call: Awaitable[int], status: int) -> None:
    got = await call
    if got != status:
        raise RuntimeError(f"expected HTTP {status}, got {got}")


def run(args: argparse.Namespace) -> str:
    version_dir = resolve_version_dir(args.artifacts)
    ids = pq.read_table(version_dir / TRACKS, columns=["id"]).column(0).to_pylist()
    # One address sends every request: the rate limit is counted as in production, but set out of reach.
    env = {"ARTIFACTS_DIR": str(version_dir), "REDIS_URL": args.redis_url, "RELOAD_POLL_S": "0",
           "RATE_LIMIT_PER_MIN": "10000000"}
    kinds = [k for k in KINDS if k in args.kinds]
    results: dict[str, tuple[float, float]] = {}
    cached = [k for k in kinds if k != "uncached-get"]
    if cached:
        results |= uvloop.run(_measure(Settings.from_env(env, env_file=None), ids, cached, args.requests,
                                       args.warmup, args.rounds))
    if "uncached-get" in kinds:
        no_cache = Settings.from_env({**env, "ANSWER_CACHE_SIZE": "0"}, env_file=None)
        results |= uvloop.run(_measure(no_cache, ids, ["uncached-get"], args.requests, args.warmup, args.rounds))
    lines = [
        f"# request cost in-process, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: {len(ids):,} tracks "
        f"({version_dir.name}), Redis {args.redis_url}, uvloop, 1 thread, no HTTP server; "
        f"median of {args.rounds} rounds of {args.requests:,} requests after {args.warmup:,}",
        "| request | CPU ms | wall ms |",
        "|---|---|---|",
        *(f"| {kind} | {results[kind][0]:.3f} | {results[kind][1]:.3f} |" for kind in kinds),
    ]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.request_cost", description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", type=Path, default=REPO / "artifacts" / "bench" / "114k",
                   help="artefact version or root (default artifacts/bench/114k; `make bench` builds it)")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--requests", type=int, default=3000, help="requests per timed round (3000)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per kind; the median is reported (3)")
    p.add_argument("--warmup", type=int, default=300, help="untimed requests before each kind (300)")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), metavar="KIND",
                   help=f"which requests ({', '.join(KINDS)}; all by default)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.requests < 1 or args.rounds < 1 or args.warmup < 0:
        print("request_cost: --requests and --rounds must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    print(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
