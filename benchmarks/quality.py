"""Quality on real playlists, through the real loop: before events, after them, beside simple baselines.

The Million Playlist Dataset playlists in ``--playlists`` are split by a hash of their ``pid``:
about ``--test-fraction`` of them (those with at least ``--min-tracks`` tracks) are continued,
the rest are "played before". The whole loop runs as it would in production:

1. ``python -m musicrec.indexer build`` writes a content-only version into a root of versions;
2. the service (``python -m musicrec.service``, real Redis, a real Kafka-protocol broker) serves it,
   and each test playlist's first ``--seeds`` tracks are sent to ``POST /api/recommendations``;
3. every played-before playlist is played as one listener's session: a ``track_view`` per track,
   in order, through ``POST /events`` → Kafka;
4. ``python -m musicrec.indexer consume`` drains the topic into the Parquet event log and
   ``python -m musicrec.indexer build --events`` rebuilds (co-listening table, blend chosen on
   held-out sessions of the log) and switches ``current``; ``POST /admin/reload`` swaps it in;
5. the test playlists are asked again, as a playlist (``POST /api/recommendations``) and as a
   player would (the seeds played as events, then ``GET /api/songs_recommendations``).

The answers' first 50 give Recall@50 and their first R (R = the targets) R-precision, by
track id. Baselines are computed in-process on the same split: popularity, the seeds' artists,
raw standardised audio features and the autoencoder's embedding (max over seeds, nothing
else), and a plain co-occurrence count over the played-before playlists (no model at all).

    python -m benchmarks.quality --playlists ../shared/data/mpd_dev_playlists.jsonl.gz
    python -m benchmarks.quality --sweep --artifacts artifacts/bench/114k   # the table's weighting

``--sweep`` is how the co-listening table's weighting (window, shrinkage, tracks kept) was
chosen: in-process, no service, the played playlists as the log of a built version, each
weighting's table scored on the test playlists with the blend a build starts its search from.
"""
from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import itertools
import json
import math
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from benchmarks.kafka import run_tansu
from benchmarks.load import REPO, SHARED_CSV, BenchError, free_port, log, redis_server, service
from musicrec.index.artifacts import load_artifacts, read_manifest, resolve_version_dir
from musicrec.index.recommend import Query, Recommender, ScoringParams, Seed
from musicrec.indexer.blend import WITH_EVENTS, Continuation, score_blend
from musicrec.indexer.colisten import ColistenConfig, fit_colisten, sessions_from_log
from musicrec.indexer.evaluate import continuation_figures
from musicrec.models.scaler import StandardScaler

DEFAULT_PLAYLISTS = REPO.parent / "shared" / "data" / "mpd_dev_playlists.jsonl.gz"


@dataclass(frozen=True)
class Playlist:
    pid: int
    tracks: list[str]


@dataclass(frozen=True)
class Split:
    played: list[Playlist]   # played through the service as listening sessions
    test: list[Playlist]     # continued: first ``seeds`` tracks in, the rest are targets
    seeds: int

    def queries(self) -> list[tuple[list[str], list[str]]]:
        return [(p.tracks[:self.seeds], p.tracks[self.seeds:]) for p in self.test]


def read_playlists(path: Path) -> list[Playlist]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [Playlist(int(d["pid"]), list(d["tracks"])) for d in map(json.loads, fh)]


def split_playlists(playlists: Sequence[Playlist], *, test_fraction: float, min_tracks: int, seeds: int,
                    salt: str = "") -> Split:
    """By a hash of ``pid`` (stable across runs and machines); short test-side playlists are left out."""
    def is_test(pid: int) -> bool:
        digest = hashlib.sha256(f"{salt}{pid}".encode()).hexdigest()
        return int(digest[:8], 16) % 1000 < test_fraction * 1000

    played = [p for p in playlists if not is_test(p.pid)]
    test = [p for p in playlists if is_test(p.pid) and len(p.tracks) >= max(min_tracks, seeds + 1)]
    return Split(played, test, seeds)


def _answer_size(targets: Sequence[str]) -> int:
    return min(200, max(50, len(targets)))  # the API's k is at most 200


# -- baselines, in-process --------------------------------------------------------------------------

def baselines(split: Split, version: Path) -> dict[str, dict[str, float]]:
    artifacts = load_artifacts(version)
    tracks = artifacts.tracks
    row_of, ids = tracks.row_of, tracks.ids
    queries = split.queries()

    def run(answer: Callable[[np.ndarray, int], np.ndarray]) -> dict[str, float]:
        answers, targets = [], []
        for seed_ids, target_ids in queries:
            seeds = np.array([row_of[t] for t in seed_ids if t in row_of], dtype=np.int64)
            rows = answer(seeds, _answer_size(target_ids))
            answers.append(ids[rows].tolist())
            targets.append(target_ids)
        return continuation_figures(answers, targets)

    def top(score: np.ndarray, seeds: np.ndarray, k: int) -> np.ndarray:
        score = score.astype(np.float64, copy=True)
        score[seeds] = -np.inf
        best = np.argpartition(-score, k)[:k]
        return best[np.lexsort((best, -score[best]))]

    popularity = tracks.popularity.astype(np.float64)
    scaler = StandardScaler.from_dict(artifacts.scaler)
    raw = scaler.transform(tracks.features.astype(np.float64))
    raw /= np.linalg.norm(raw, axis=1, keepdims=True) + 1e-12
    played = [[row_of[t] for t in p.tracks if t in row_of] for p in split.played]
    rows = np.concatenate([np.full(len(r), i) for i, r in enumerate(played)]).astype(np.int64)
    X = sp.csr_matrix((np.ones(len(rows)), (rows, np.concatenate(played))), shape=(len(played), len(tracks)))
    cooc = (X.T @ X).tocsr()

    def same_artist(seeds: np.ndarray, k: int) -> np.ndarray:
        score = np.zeros(len(tracks))
        for s in seeds.tolist():
            for name in tracks.artists[s].split(";"):
                members = tracks.artist_rows.get(name.strip())
                if members is not None:
                    score[members] += 1.0
        return top(score + popularity / 1000.0, seeds, k)  # more seeds' artist first, then popularity

    content = Recommender(artifacts.embeddings, artifacts.index, tracks, ScoringParams().content_only(),
                          neighbours=artifacts.neighbours)
    return {
        "popularity (catalog)": run(lambda seeds, k: top(popularity, seeds, k)),
        "same artist as a seed": run(same_artist),
        "raw standardised features (max over seeds)": run(lambda seeds, k: top((raw[seeds] @ raw.T).max(axis=0),
                                                                              seeds, k)),
        "audio embedding only (max over seeds)": run(lambda seeds, k: np.array(
            [h.row for h in content.recommend(Query(seeds=[Seed(int(s), 1.0) for s in seeds], k=k))],
            dtype=np.int64)),
        "co-occurrence count over played playlists": run(
            lambda seeds, k: top(np.asarray(cooc[seeds].sum(axis=0)).ravel() + popularity / 1e6, seeds, k)),
    }


# -- the service, over HTTP ---------------------------------------------------------------------

async def ask_playlists(url: str, split: Split) -> dict[str, float]:
    """POST /api/recommendations for every test playlist (the stateless playlist-continuation route)."""
    import httpx

    answers, targets = [], []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for seed_ids, target_ids in split.queries():
            r = await client.post("/api/recommendations", json={"track_ids": seed_ids, "k": _answer_size(target_ids)})
            if r.status_code != 200:
                raise BenchError(f"POST /api/recommendations answered {r.status_code}: {r.text[:300]}")
            answers.append([item["id"] for item in r.json()["items"]])
            targets.append(target_ids)
    return continuation_figures(answers, targets)


async def play(url: str, sessions: Sequence[tuple[str, list[str]]], *, concurrency: int = 16) -> int:
    """Each (client id, tracks) played in order as ``track_view`` events, ``concurrency`` listeners at once."""
    import httpx

    sent = 0

    async def listener(client: httpx.AsyncClient, client_id: str, track_ids: list[str]) -> None:
        nonlocal sent
        for track_id in track_ids:
            r = await client.post("/events", json={"type": "track_view", "track_id": track_id, "source": "mpd"},
                                  headers={"X-Client-Id": client_id})
            if r.status_code != 202:
                raise BenchError(f"POST /events answered {r.status_code}: {r.text[:300]}")
            sent += 1

    queue = list(sessions)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async def worker() -> None:
            while queue:
                client_id, track_ids = queue.pop()
                await listener(client, client_id, track_ids)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sent


async def ask_as_player(url: str, split: Split, run_id: str) -> dict[str, float]:
    """Each test playlist's seeds played as a new listener's events, then GET /api/songs_recommendations."""
    import httpx

    answers, targets = [], []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for i, (seed_ids, target_ids) in enumerate(split.queries()):
            client_id = f"quality-{run_id}-test-{i}"
            await play(url, [(client_id, seed_ids)], concurrency=1)
            r = await client.get("/api/songs_recommendations", params={"k": _answer_size(target_ids)},
                                 headers={"X-Client-Id": client_id})
            if r.status_code != 200:
                raise BenchError(f"GET /api/songs_recommendations answered {r.status_code}: {r.text[:300]}")
            answers.append([item["id"] for item in r.json()])
            targets.append(target_ids)
    return continuation_figures(answers, targets)


def sweep(split: Split, version: Path) -> list[tuple[ColistenConfig, dict[str, float]]]:
    """Each co-listening weighting's figures on the test playlists (see the module docstring)."""
    artifacts = load_artifacts(version)
    tracks = artifacts.tracks
    log_table = pa.table({"type": [e for p in split.played for e in ["track_view"] * len(p.tracks)],
                          "track_id": [t for p in split.played for t in p.tracks],
                          "ts": [float(i) for p in split.played for i in range(len(p.tracks))],
                          "client_id": [str(p.pid) for p in split.played for _ in p.tracks]})
    queries = [Continuation(np.array([tracks.row_of[t] for t in seeds]), np.array([tracks.row_of[t] for t in targets]))
               for seeds, targets in split.queries()]
    params = ScoringParams().with_blend(WITH_EVENTS)
    out = []
    for window, shrink, top_n in itertools.product((5, 10, 20, 50), (3.0, 10.0, 30.0), (50, 100, 200)):
        config = ColistenConfig(window=window, shrink=shrink, top_n=top_n)
        table = fit_colisten(sessions_from_log(log_table, tracks.ids, config), len(tracks), config)
        recommender = Recommender(artifacts.embeddings, artifacts.index, tracks, params,
                                  neighbours=artifacts.neighbours, colisten=table)
        out.append((config, score_blend(recommender, queries)))
    return out


def _readyz(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/readyz", timeout=5) as r:
        return json.loads(r.read())


def _run(cmd: list[str], what: str, env: dict[str, str]) -> str:
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"{what} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    log(f"{what}: {time.perf_counter() - started:.1f} s")
    return done.stdout


# -- the whole run ------------------------------------------------------------------------------

def run(args: argparse.Namespace, workdir: Path) -> dict:
    split = split_playlists(read_playlists(args.playlists), test_fraction=args.test_fraction,
                            min_tracks=args.min_tracks, seeds=args.seeds, salt=args.salt)
    log(f"{len(split.played)} playlists played as sessions ({sum(len(p.tracks) for p in split.played)} events), "
        f"{len(split.test)} continued")
    root, events_dir = workdir / "artifacts", workdir / "events"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    indexer = [sys.executable, "-m", "musicrec.indexer"]
    _run([*indexer, "build", "--root", str(root), "--csv", str(args.csv), "--quiet", "--seed", str(args.seed)],
         "content-only build", env)
    first = resolve_version_dir(root)
    results: dict[str, dict[str, float]] = {}
    run_id = secrets.token_hex(4)
    with ExitStack() as stack:
        redis_url = stack.enter_context(redis_server(args.redis_url, workdir))
        bootstrap = stack.enter_context(run_tansu(free_port(), workdir / "tansu.log"))
        topic, token = f"quality-{run_id}", secrets.token_hex(16)
        svc = stack.enter_context(service(root, redis_url, 1, workdir, 120, env={
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPIC": topic, "ADMIN_TOKEN": token,
            "RELOAD_POLL_S": "0", "EVENT_BUFFER_SIZE": "200000"}))
        results["service before events: POST /api/recommendations"] = asyncio.run(ask_playlists(svc.url, split))
        started = time.perf_counter()
        sent = asyncio.run(play(svc.url, [(f"quality-{run_id}-{p.pid}", p.tracks) for p in split.played]))
        deadline = time.monotonic() + 120
        while (events := _readyz(svc.url)["events"])["produced"] < sent:
            if time.monotonic() > deadline:
                raise BenchError(f"only {events['produced']} of {sent} events reached Kafka: {events}")
            time.sleep(0.5)
        log(f"played {sent} events through POST /events → Kafka in {time.perf_counter() - started:.1f} s")
        _run([*indexer, "consume", "--out", str(events_dir), "--until-idle", "5", "--bootstrap-servers", bootstrap,
              "--topic", topic, "--group", f"quality-{run_id}"], "consume", env)
        build_started = time.perf_counter()
        build_output = _run([*indexer, "build", "--root", str(root), "--csv", str(args.csv), "--quiet",
                             "--seed", str(args.seed), "--events", str(events_dir)], "build --events", env)
        build_s = time.perf_counter() - build_started
        second = resolve_version_dir(root)
        request = urllib.request.Request(f"{svc.url}/admin/reload", method="POST",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=60) as r:
            reload = json.loads(r.read())
        served = _readyz(svc.url)["model_version"]
        if served != read_manifest(second).model_version:
            raise BenchError(f"the service serves {served} after the reload ({reload}), not the rebuilt version")
        results["service after events: POST /api/recommendations"] = asyncio.run(ask_playlists(svc.url, split))
        results["service after events: seeds played, GET /api/songs_recommendations"] = asyncio.run(
            ask_as_player(svc.url, split, run_id))
    results |= baselines(split, first)
    manifest = read_manifest(second)
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "playlists": str(args.playlists), "played": len(split.played), "test": len(split.test),
        "events": sent, "seeds": args.seeds, "min_tracks": args.min_tracks, "test_fraction": args.test_fraction,
        "content_version": read_manifest(first).model_version, "events_version": manifest.model_version,
        "events_build_s": round(build_s, 1), "scoring": manifest.scoring,
        "build_report": {k: v for k, v in manifest.events.items() if k != "tried"},
        "build_output": build_output, "results": results,
    }


def table(report: dict) -> str:
    rows = [f"{report['date']}: {report['test']} test playlists continued from their first {report['seeds']} "
            f"tracks (≥ {report['min_tracks']} tracks each); {report['played']} playlists played as sessions "
            f"({report['events']} events through POST /events → Kafka → consume → build --events)",
            "", "| method | Recall@50 | R-precision |", "|---|---|---|"]
    for name, figures in report["results"].items():
        rows.append(f"| {name} | {figures['recall@50']:.4f} | {figures['r_precision']:.4f} |")
    blend = {k: ("max" if v is None or (isinstance(v, float) and math.isinf(v)) else v)
             for k, v in report["scoring"].items()}
    chosen = report["build_report"]
    rows += ["", f"blend chosen by the events build ({chosen.get('chosen_by')}, "
             f"{chosen.get('heldout_queries')} held-out sessions): {blend}; build --events took "
             f"{report['events_build_s']} s"]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.splitlines()[0])
    p.add_argument("--playlists", type=Path, default=DEFAULT_PLAYLISTS, help="MPD playlists (.jsonl.gz)")
    p.add_argument("--csv", type=Path, default=SHARED_CSV, help="the track catalog the playlists are cut to")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of playlists continued (by pid hash)")
    p.add_argument("--min-tracks", type=int, default=15, help="a test playlist needs this many tracks")
    p.add_argument("--seeds", type=int, default=10, help="tracks given as the playlist so far")
    p.add_argument("--salt", default="", help="changes the split (the hash of pid is salted)")
    p.add_argument("--seed", type=int, default=42, help="the builds' seed")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="used if it answers, else a private one")
    p.add_argument("--workdir", type=Path, help="keep the versions, event log and logs here (default: a temp dir)")
    p.add_argument("--json", type=Path, help="also write the report here")
    p.add_argument("--sweep", action="store_true", help="only compare co-listening weightings, in-process")
    p.add_argument("--artifacts", type=Path, default=REPO / "artifacts" / "bench" / "114k",
                   help="with --sweep: the built version to use (make bench builds this one)")
    args = p.parse_args(argv)
    if not args.playlists.is_file() or not args.csv.is_file():
        print(f"error: need {args.playlists} and {args.csv}", file=sys.stderr)
        return 2
    if args.sweep:
        split = split_playlists(read_playlists(args.playlists), test_fraction=args.test_fraction,
                                min_tracks=args.min_tracks, seeds=args.seeds, salt=args.salt)
        print(f"{len(split.test)} test playlists; blend {dict(WITH_EVENTS)} over the defaults\n")
        print("| window | shrink | top_n | Recall@50 | R-precision |\n|---|---|---|---|---|")
        for config, figures in sweep(split, resolve_version_dir(args.artifacts)):
            print(f"| {config.window} | {config.shrink:g} | {config.top_n} | {figures['recall@50']:.4f} | "
                  f"{figures['r_precision']:.4f} |")
        return 0
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        report = run(args, workdir)
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
