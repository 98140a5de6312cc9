"""Index and scoring micro-benchmark: a 20-seed session → its top 20, for every candidate source.

For each catalog (an artefact version: its embeddings and track table) and each candidate
source — exact numpy/BLAS, exact FAISS flat, HNSW at a few efSearch, IVF at a few nprobe and a
precomputed top-N neighbour table — the *real* scorer (``musicrec.index.recommend.Recommender``) runs
with that source, so the latency is what a request pays for scoring, not only for the search.

Columns: build time; memory of the source's own structure (every source also needs the
embeddings, n × 32 float32, to score); search-only and end-to-end median and p99 per request;
recall@20 against the exact answer, which is the scorer run over *every* track (brute force)
with artist_weight = 0 (its top-M by weighted max-similarity, checked to contain the answer).
Recall counts songs: the scorer keeps one id per song, and the 114k file lists many songs under
several ids with identical features, so which id of a tie survives is arbitrary (by ids, exact
search scores 0.988 against brute force for that reason alone).

Sessions: half are 20 random tracks, half 20 tracks of one genre (a coherent listener), weighted
as the service weighs a session of views (0.8 · 0.95^age); seeds are excluded from the answer.
Threads: searching and scoring run on 1 thread (OpenBLAS and FAISS pinned), as one service
worker does; index builds use every core. Each source is timed in two passes after a warm-up,
and the pass with the lower median is reported (the machine is shared; see --passes).

    python -m benchmarks.index_bench --catalog 114k=artifacts/bench/114k --catalog 1M=artifacts/bench/1m
"""
from __future__ import annotations

import os

# Before numpy loads: one BLAS thread, as in a service worker (builds use FAISS's OpenMP threads).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from musicrec.index.artifacts import EMBEDDINGS, TRACKS, read_manifest, resolve_version_dir  # noqa: E402
from musicrec.index.catalog import TrackTable  # noqa: E402
from musicrec.index.faiss_index import build_index, configure, factory_string  # noqa: E402
from musicrec.index.recommend import NeighbourMemo, Query, Recommender, ScoringParams, Seed  # noqa: E402

K = 20
SEEDS = 20
DEPTH = 64            # what the scorer asks per seed for 20 seeds / 20 exclusions (min_depth)
TRUTH_POOL = 512      # brute-force candidates kept for the exact answer (checked, see _truth)
EF_SEARCH = (16, 32, 64, 128)
NPROBE = (2, 4, 8, 16, 32)
PURE = ScoringParams().content_only()
SERVICE = ScoringParams()
Search = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


@dataclass
class Row:
    catalog: str
    n: int
    method: str
    params: str
    build_s: float
    memory_mb: float
    search_p50_ms: float
    p50_ms: float
    p99_ms: float
    p50_artist_ms: float
    recall: float
    queries: int


class SourceRecommender(Recommender):
    """The production scorer with its candidate source swapped for the one under test."""

    def __init__(self, embeddings: np.ndarray, tracks: TrackTable, search: Search,
                 params: ScoringParams) -> None:
        super().__init__(embeddings, None, tracks, params)  # type: ignore[arg-type]
        self._source = search

    def _search(self, seed_rows: np.ndarray, seed_vecs: np.ndarray, depth: int) -> np.ndarray:
        return self._source(seed_rows, seed_vecs, depth)


# -- candidate sources ------------------------------------------------------------------------
def numpy_exact(embeddings: np.ndarray, stride: int = 64) -> Search:
    """Per-seed exact top-``depth``: one BLAS product, then a partial sort of the few above a bound.

    A full partial sort of every seed's n similarities costs more than the product at 1M; a
    strided sample's 4th best is a bound most rows fall below, and it is exact whenever at
    least ``depth`` rows pass it (checked; else that seed gets the full partial sort).
    """
    emb_t = np.ascontiguousarray(embeddings.T)

    def search(seed_rows: np.ndarray, seed_vecs: np.ndarray, depth: int) -> np.ndarray:
        sims = seed_vecs @ emb_t
        sample = sims[:, ::stride]
        if sample.shape[1] <= 4 * depth:
            return np.argpartition(sims, -depth, axis=1)[:, -depth:].ravel()
        bound = np.partition(sample, -4, axis=1)[:, -4]
        parts = []
        for row, b in zip(sims, bound):
            above = np.flatnonzero(row >= b)
            if len(above) < depth:
                above = np.arange(len(row))
            parts.append(above[np.argpartition(row[above], -depth)[-depth:]])
        return np.concatenate(parts)

    return search


def faiss_search(index: faiss.Index) -> Search:
    def search(seed_rows: np.ndarray, seed_vecs: np.ndarray, depth: int) -> np.ndarray:
        _, ann = index.search(seed_vecs, depth)
        return ann[ann >= 0]

    return search


def table_search(table: np.ndarray, fallback: Search) -> Search:
    """Seeds are catalog tracks, so their neighbours can be looked up instead of searched."""
    width = table.shape[1]

    def search(seed_rows: np.ndarray, seed_vecs: np.ndarray, depth: int) -> np.ndarray:
        if depth > width:
            return fallback(seed_rows, seed_vecs, depth)
        return table[seed_rows, :depth].ravel()

    return search


def exact_table(embeddings: np.ndarray, width: int, threads: int, block: int = 512) -> np.ndarray:
    """Every track's exact top-``width`` by inner product (blocked BLAS, one block per thread)."""
    emb_t = np.ascontiguousarray(embeddings.T)
    table = np.empty((len(embeddings), width), dtype=np.int32)

    def fill(start: int) -> None:
        sims = embeddings[start:start + block] @ emb_t
        top = np.argpartition(sims, -width, axis=1)[:, -width:]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        table[start:start + block] = np.take_along_axis(top, order, axis=1)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fill, range(0, len(embeddings), block)))
    return table


def ann_table(index: faiss.Index, embeddings: np.ndarray, width: int, threads: int) -> np.ndarray:
    """Every track's top-``width`` from an ANN index (for catalogs too big for the exact one):
    the table ``indexer build`` ships, filled the same way."""
    with threadpool_limits(limits=threads, user_api="openmp"):
        return NeighbourMemo(len(embeddings), width, prefix=True).fill(index, embeddings)


# -- workload and truth ---------------------------------------------------------------------
def sessions(tracks: TrackTable, count: int, seed: int) -> list[list[Seed]]:
    """Half random listeners, half single-genre ones; weights as for a session of 20 views."""
    rng = np.random.default_rng(seed)
    genres = [g for g, rows in tracks.genre_rows.items() if len(rows) >= 4 * SEEDS]
    sizes = np.array([len(tracks.genre_rows[g]) for g in genres], dtype=np.float64)
    weights = [SERVICE.view_weight * SERVICE.recency_decay ** age for age in range(SEEDS)]
    out = []
    for i in range(count):
        if i % 2 == 0 or not genres:
            rows = rng.choice(len(tracks), SEEDS, replace=False)
        else:
            rows = rng.choice(tracks.genre_rows[genres[rng.choice(len(genres), p=sizes / sizes.sum())]],
                              SEEDS, replace=False)
        out.append([Seed(int(r), w) for r, w in zip(rows, weights)])
    return out


def _query(seeds: list[Seed]) -> Query:
    return Query(seeds=seeds, k=K, exclude=[s.row for s in seeds])


def truth(embeddings: np.ndarray, tracks: TrackTable, all_sessions: list[list[Seed]]) -> list[list[int]]:
    """The exact answer: the scorer over every track, artist_weight 0.

    With artist_weight 0 and no skips a track's score is its weighted max-similarity, so the
    scorer over all tracks equals the scorer over the TRUTH_POOL best by that value whenever the
    answer's last score beats the pool's threshold; that is checked, else all tracks are scored.
    """
    pool: dict[str, np.ndarray] = {}

    def top_by_max_similarity(seed_rows: np.ndarray, seed_vecs: np.ndarray, depth: int) -> np.ndarray:
        return pool["rows"]

    rec = SourceRecommender(embeddings, tracks, top_by_max_similarity, PURE)
    answers = []
    for seeds in all_sessions:
        rows = np.array([s.row for s in seeds])
        w = np.array([s.weight for s in seeds], dtype=np.float32)
        best = (embeddings @ (embeddings[rows] * w[:, None]).T).max(axis=1)
        top = np.argpartition(best, -TRUTH_POOL)[-TRUTH_POOL:]
        pool["rows"] = top.astype(np.int64)
        hits = rec.recommend(_query(seeds))
        if len(hits) < K or hits[-1].score <= float(best[top].min()):
            pool["rows"] = np.arange(len(embeddings), dtype=np.int64)
            hits = rec.recommend(_query(seeds))
        answers.append([h.row for h in hits])
    return answers


# -- timing -----------------------------------------------------------------------------------
def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure(catalog: str, n: int, method: str, params: str, build_s: float, memory: int, search: Search,
            embeddings: np.ndarray, tracks: TrackTable, all_sessions: list[list[Seed]],
            answers: list[list[int]], passes: int, budget_s: float,
            recommenders: tuple[Recommender, Recommender] | None = None, warm_up: bool = True) -> Row:
    pure, service = recommenders or (SourceRecommender(embeddings, tracks, search, PURE),
                                     SourceRecommender(embeddings, tracks, search, SERVICE))
    queries = [_query(s) for s in all_sessions]
    seed_rows = [np.array([s.row for s in seeds], dtype=np.int64) for seeds in all_sessions]
    seed_vecs = [np.ascontiguousarray(embeddings[r]) for r in seed_rows]
    warm = min(10, len(queries))
    first = _timed(lambda: [pure.recommend(q) for q in queries[-warm:] if warm_up]) / warm
    # A slow source (exact FAISS without SIMD, exact at 1M) gets fewer queries, never < 30.
    used = max(30, min(len(queries), int(budget_s / max(first, 1e-6) / (2 * passes + 1))))
    queries, seed_rows, seed_vecs = queries[:used], seed_rows[:used], seed_vecs[:used]
    best = (float("inf"), float("inf"))
    for _ in range(max(1, passes)):
        lat = np.array([_timed(lambda q=q: pure.recommend(q)) for q in queries])
        best = min(best, (float(np.median(lat)), float(np.percentile(lat, 99))))
    search_lat = [_timed(lambda r=r, v=v: search(r, v, DEPTH)) for r, v in zip(seed_rows, seed_vecs)]
    if warm_up:  # the same steady state as the timed passes (per-track artist links cached)
        for q in queries:
            service.recommend(q)
    artist_lat = [_timed(lambda q=q: service.recommend(q)) for q in queries]
    song = tracks.song_key
    recall = np.mean([len({song[h.row] for h in pure.recommend(q)} & {song[r] for r in a}) / K
                      for q, a in zip(queries, answers)])
    return Row(catalog, n, method, params, round(build_s, 2), round(memory / 2**20, 1),
               round(float(np.median(search_lat)) * 1e3, 3), round(best[0] * 1e3, 3), round(best[1] * 1e3, 3),
               round(float(np.median(artist_lat)) * 1e3, 3), round(float(recall), 4), used)


def _index_bytes(index: faiss.Index) -> int:
    return int(faiss.serialize_index(index).nbytes)


def _build(fn: Callable[[], object], threads: int) -> tuple[object, float]:
    with threadpool_limits(limits=threads, user_api="openmp"):
        started = time.perf_counter()
        built = fn()
        return built, time.perf_counter() - started


def bench_catalog(name: str, path: Path, args: argparse.Namespace) -> list[Row]:
    version = resolve_version_dir(path)
    manifest = read_manifest(version)
    embeddings = np.ascontiguousarray(np.load(version / EMBEDDINGS, allow_pickle=False))
    tracks = TrackTable.from_parquet(version / TRACKS, manifest.features)
    n = len(embeddings)
    all_sessions = sessions(tracks, args.queries, args.seed)
    started = time.perf_counter()
    answers = truth(embeddings, tracks, all_sessions)
    log(f"[{name}] n={n:,}: exact answers for {len(answers)} sessions in {time.perf_counter() - started:.1f}s")
    threads = args.build_threads
    rows: list[Row] = []

    def run(method: str, params: str, build_s: float, memory: int, search: Search) -> None:
        row = measure(name, n, method, params, build_s, memory, search, embeddings, tracks, all_sessions, answers,
                      args.passes, args.budget_s)
        log(f"[{name}] {method} {params}: p50 {row.p50_ms} ms p99 {row.p99_ms} ms recall {row.recall}")
        rows.append(row)

    methods = set(args.methods)
    if "exact-numpy" in methods:
        run("exact numpy (BLAS)", "", 0.0, embeddings.nbytes, numpy_exact(embeddings))
    if "exact-faiss" in methods:
        flat, secs = _build(lambda: build_index(embeddings, "flat"), threads)
        run("exact FAISS flat", "", secs, _index_bytes(flat), faiss_search(flat))
        del flat
    if "hnsw" in methods:
        hnsw, secs = _build(lambda: build_index(embeddings, "hnsw"), threads)
        for ef in args.ef_search:
            configure(hnsw, ef_search=ef)
            run("HNSW", f"{factory_string('hnsw', n).split(',')[0]} efSearch={ef}", secs, _index_bytes(hnsw),
                faiss_search(hnsw))
        del hnsw
    ivf = None
    if methods & {"ivf", "table", "memo"}:
        ivf, ivf_secs = _build(lambda: build_index(embeddings, "ivf"), threads)
    if "ivf" in methods:
        for nprobe in args.nprobe:
            configure(ivf, nprobe=nprobe)
            run("IVF", f"{factory_string('ivf', n).split(',')[0]} nprobe={nprobe}", ivf_secs, _index_bytes(ivf),
                faiss_search(ivf))
    if "memo" in methods:
        # The service's own path: the production Recommender, IVF at its default nprobe, with its
        # neighbour memo. "cold": every seed is new (one pass, no warm-up); "warm": seen before.
        configure(ivf)
        nprobe = faiss.extract_index_ivf(ivf).nprobe
        pure = Recommender(embeddings, ivf, tracks, PURE)
        service = Recommender(embeddings, ivf, tracks, SERVICE)
        memo_mb = pure._memo.table.nbytes / 2**20 if pure._memo is not None else 0.0
        for label, passes, warm_up in (("cold", 1, False), ("warm", args.passes, True)):
            row = measure(name, n, f"IVF + neighbour memo, {label}", f"nprobe={nprobe}, memo width "
                          f"{pure._memo.width if pure._memo else 0}", ivf_secs, _index_bytes(ivf) + int(memo_mb * 2**20),
                          pure._search, embeddings, tracks, all_sessions, answers, passes, 1e9,
                          (pure, service), warm_up)
            if label == "cold":  # its search-only column was timed after the pass, on a filled memo
                row.search_p50_ms = float("nan")
            log(f"[{name}] memo {label}: p50 {row.p50_ms} ms p99 {row.p99_ms} ms recall {row.recall}")
            rows.append(row)
    if "table" in methods:
        configure(ivf, nprobe=args.table_nprobe)
        if n <= args.exact_table_max:
            table, secs = _build(lambda: exact_table(embeddings, args.table_width, threads), threads)
            how = "exact"
        else:
            table, secs = _build(lambda: ann_table(ivf, embeddings, args.table_width, threads), threads)
            secs += ivf_secs
            how = f"from IVF nprobe={args.table_nprobe}"
        configure(ivf)
        run("neighbour table", f"top-{args.table_width} int32, {how}", secs, table.nbytes,
            table_search(table, faiss_search(ivf)))
    return rows


# -- output -----------------------------------------------------------------------------------
def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores; Python {platform.python_version()}, numpy {np.__version__}, faiss {faiss.__version__}"


def table(rows: list[Row]) -> str:
    head = ("| catalog | source | parameters | build s | memory MB | search p50 ms | p50 ms | p99 ms | "
            "p50 ms, artist 0.25 | recall@20 | queries |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r.catalog} ({r.n:,}) | {r.method} | {r.params} | {r.build_s:.1f} | {r.memory_mb:,.1f} | "
                     f"{_ms(r.search_p50_ms)} | {r.p50_ms:.3f} | {r.p99_ms:.3f} | {r.p50_artist_ms:.3f} | "
                     f"{r.recall:.4f} | {r.queries} |")
    return "\n".join(lines)


def _ms(value: float) -> str:
    return "–" if value != value else f"{value:.3f}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.index_bench", description=__doc__.splitlines()[0])
    p.add_argument("--catalog", action="append", required=True, metavar="NAME=PATH",
                   help="an artefact version (or root with current) to benchmark; repeatable")
    p.add_argument("--methods", nargs="+", default=["exact-numpy", "exact-faiss", "hnsw", "ivf", "memo", "table"],
                   choices=["exact-numpy", "exact-faiss", "hnsw", "ivf", "memo", "table"])
    p.add_argument("--queries", type=int, default=300, help="sessions per catalog (default 300)")
    p.add_argument("--passes", type=int, default=2, help="timed passes per source; the lower median is kept")
    p.add_argument("--budget-s", type=float, default=40.0, help="rough seconds per slow source (fewer queries)")
    p.add_argument("--ef-search", type=int, nargs="+", default=list(EF_SEARCH))
    p.add_argument("--nprobe", type=int, nargs="+", default=list(NPROBE))
    p.add_argument("--table-width", type=int, default=DEPTH)
    p.add_argument("--table-nprobe", type=int, default=32, help="IVF nprobe when the table is built approximately")
    p.add_argument("--exact-table-max", type=int, default=200_000, help="largest catalog given an exact table")
    p.add_argument("--build-threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the rows here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    faiss.omp_set_num_threads(1)
    rows: list[Row] = []
    for spec in args.catalog:
        name, _, path = spec.partition("=")
        rows += bench_catalog(name, Path(path), args)
    print(f"# index micro-benchmark, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"# {machine()}")
    print(f"# {SEEDS} seeds → top {K}, {DEPTH} per seed; search/scoring on 1 thread, builds on "
          f"{args.build_threads}; the better of {args.passes} passes after warm-up")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
