"""How long ``build --events`` takes, and how much memory, on a large event log.

Writes a synthetic log of ``--events`` events in the consumer's format (``date=…/part-*.parquet``)
over a built version's catalog, then times ``python -m musicrec.indexer build --events`` on it and
reports its wall time, the time of its event step (co-listening table and blend search, from the
manifest) and the build's peak RSS.

The log is shaped like listening, so the table and the blend search have real work to do:
listeners of three sessions each, on different days; a session keeps to one genre and picks its
tracks by popularity (a power law), 8 to 30 plays 3 to 4 minutes apart, with a skip now and then
and a few likes.

    python -m benchmarks.log_scale --events 1000000     # then --events 10000000
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.load import REPO, SHARED_CSV
from musicrec.index.artifacts import TRACKS, read_manifest, resolve_version_dir
from musicrec.indexer.event_dataset import SCHEMA

DAY_S = 86_400.0
START_TS = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def synthetic_log(track_table: pa.Table, n_events: int, out: Path, *, seed: int = 0, days: int = 30) -> int:
    """Write about ``n_events`` events to ``out``; returns how many were written."""
    rng = np.random.default_rng(seed)
    ids = track_table.column("id").combine_chunks()
    genre_codes = track_table.column("genre").combine_chunks().dictionary_encode().indices.to_numpy()
    popularity = track_table.column("popularity").to_numpy().astype(np.float64)
    lengths = rng.integers(8, 31, size=max(1, int(n_events / 1.2 / 19)))
    n_sessions = len(lengths)
    session_genre = rng.integers(0, int(genre_codes.max()) + 1, n_sessions)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    rows = np.empty(offsets[-1], dtype=np.int64)
    for g in np.unique(session_genre):
        members = np.flatnonzero(genre_codes == g)
        if not len(members):
            continue
        weight = (popularity[members] + 1.0) ** 2.5
        mine = np.flatnonzero(session_genre == g)
        picks = rng.choice(members, size=int(lengths[mine].sum()), p=weight / weight.sum())
        positions = np.concatenate([np.arange(offsets[s], offsets[s + 1]) for s in mine])
        rows[positions] = picks
    session_of = np.repeat(np.arange(n_sessions), lengths)
    within = np.arange(len(rows)) - offsets[session_of]
    client = session_of // 3
    day = (session_of % 3) * (days // 3) + rng.integers(0, max(1, days // 3), n_sessions)[session_of]
    ts = START_TS + day * DAY_S + rng.uniform(0, 12 * 3600, n_sessions)[session_of] + within * 210.0
    kind = np.where(rng.random(len(rows)) < 0.05, "like", "track_view").astype(object)
    # A skip: a track from elsewhere in the catalog, viewed and skipped a few seconds later.
    strays = rng.random(len(rows)) < 0.1
    stray_rows = rng.integers(0, len(ids), int(strays.sum()))
    all_rows = np.concatenate([rows, stray_rows, stray_rows])
    all_ts = np.concatenate([ts, ts[strays] + 30.0, ts[strays] + 40.0])
    all_kind = np.concatenate([kind, np.full(len(stray_rows), "track_view", object), np.full(len(stray_rows), "skip",
                                                                                            object)])
    all_client = np.concatenate([client, client[strays], client[strays]])
    order = np.argsort(all_ts, kind="stable")
    n = len(order)
    prefix = pa.scalar("listener-", pa.string())
    table = pa.table({
        "event_id": pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string()),
        "type": pa.array(all_kind[order], pa.string()),
        "track_id": ids.take(pa.array(all_rows[order])).cast(pa.string()),
        "ts": pa.array(all_ts[order]),
        "source": pa.nulls(n, pa.string()),
        "client_id": pc.binary_join_element_wise(prefix, pc.cast(pa.array(all_client[order]), pa.string()), ""),
        "position": pa.nulls(n, pa.float64()),
        "model_version": pa.array(np.full(n, "synthetic", object), pa.string()),
    }, schema=SCHEMA)
    dates = (all_ts[order] - START_TS) // DAY_S
    bounds = np.flatnonzero(np.diff(dates)) + 1
    for a, b in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [n]])):
        folder = out / f"date={time.strftime('%Y-%m-%d', time.gmtime(START_TS + dates[a] * DAY_S))}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(a, b - a), folder / f"part-{a:012d}.parquet")
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.log_scale", description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--catalog", type=Path, default=REPO / "artifacts" / "bench" / "114k",
                   help="a built version (or root) whose tracks the log is about (make bench builds this one)")
    p.add_argument("--csv", type=Path, default=SHARED_CSV, help="the catalog the build reads")
    p.add_argument("--workdir", type=Path, help="keep the log and the version here (default: a temp dir)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    version = resolve_version_dir(args.catalog)
    with tempfile.TemporaryDirectory(prefix="log-scale-") as tmp:
        workdir = args.workdir or Path(tmp)
        started = time.perf_counter()
        written = synthetic_log(pq.read_table(version / TRACKS, columns=["id", "genre", "popularity"]), args.events,
                                workdir / "events", seed=args.seed)
        print(f"wrote {written} events in {time.perf_counter() - started:.1f} s")
        cmd = [sys.executable, "-m", "musicrec.indexer", "build", "--csv", str(args.csv), "--out",
               str(workdir / "version"), "--force", "--quiet", "--events", str(workdir / "events")]
        started = time.perf_counter()
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
            return 1
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        report = read_manifest(workdir / "version").events
        print(done.stdout.strip())
        print(f"| {written:,} events | build --events {wall:.1f} s (its event step {report['seconds']:.1f} s) | "
              f"peak RSS {peak_mib:,.0f} MiB | {report['sessions']:,} sessions, {report['pairs_kept']:,} pairs kept, "
              f"{report['heldout_queries']} held-out queries |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
