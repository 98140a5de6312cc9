"""Quality figures: does the embedding keep what the raw features know, and do answers continue playlists?

Genre agreement@k: for sampled tracks, the share of their k nearest neighbours (self
excluded) that share at least one genre with them. Computed on the 32-d embeddings
(cosine) and on the standardised raw features (Euclidean), for the same query tracks.

Continuation figures (Recall@50, R-precision): given a playlist's or session's first tracks,
how many of the rest the answer holds; the build chooses its blend by them and
benchmarks/quality.py reports them on real playlists.
"""
from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np

from musicrec.index.faiss_index import exact_search


def genre_agreement(
    neighbours: np.ndarray, queries: np.ndarray, genre_sets: list[frozenset[str]]
) -> float:
    hits = 0
    total = 0
    for query, row in zip(queries, neighbours):
        mine = genre_sets[query]
        for other in row:
            if other < 0 or other == query:
                continue
            total += 1
            hits += bool(mine & genre_sets[other])
    return hits / total if total else float("nan")


def knn_excluding_self(vectors: np.ndarray, queries: np.ndarray, k: int, *, metric: str) -> np.ndarray:
    """k nearest rows to each query row (self removed), exact; metric 'ip' or 'l2'."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1]) if metric == "ip" else faiss.IndexFlatL2(vectors.shape[1])
    index.add(vectors)
    _, found = index.search(vectors[queries], k + 1)
    out = np.empty((len(queries), k), dtype=np.int64)
    for i, (query, row) in enumerate(zip(queries, found)):
        out[i] = [r for r in row if r != query][:k]
    return out


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(n, size), replace=False))


def genre_agreement_report(
    embeddings: np.ndarray, scaled: np.ndarray, genres: list[str], *, k: int = 10, sample: int = 2000, seed: int = 0
) -> dict[str, float]:
    genre_sets = [frozenset(g.split("|")) for g in genres]
    queries = sample_rows(len(embeddings), sample, seed)
    emb = genre_agreement(knn_excluding_self(embeddings, queries, k, metric="ip"), queries, genre_sets)
    raw = genre_agreement(knn_excluding_self(scaled, queries, k, metric="l2"), queries, genre_sets)
    return {f"genre_agreement@{k}_embedding": emb, f"genre_agreement@{k}_raw": raw, "genre_agreement_queries": float(len(queries))}


def ann_recall(index: faiss.Index, embeddings: np.ndarray, *, k: int = 20, sample: int = 1000, seed: int = 0) -> float:
    """recall@k of the index against exact inner-product search, for sampled track queries."""
    queries = np.ascontiguousarray(embeddings[sample_rows(len(embeddings), sample, seed)], dtype=np.float32)
    _, truth = exact_search(embeddings, queries, k)
    _, found = index.search(queries, k)
    hits = sum(len(set(t) & set(f)) for t, f in zip(truth, found))
    return hits / truth.size


def recall_at(answer: Sequence[str], targets: Sequence[str], k: int = 50) -> float:
    """Share of the targets among the first ``k`` answers (the RecSys Challenge 2018's recall)."""
    wanted = set(targets)
    return len(wanted.intersection(answer[:k])) / len(wanted) if wanted else float("nan")


def r_precision(answer: Sequence[str], targets: Sequence[str]) -> float:
    """Share of the targets among the first R answers, R = the number of targets."""
    wanted = set(targets)
    return len(wanted.intersection(answer[:len(wanted)])) / len(wanted) if wanted else float("nan")


def continuation_figures(answers: Sequence[Sequence[str]], targets: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean Recall@50 and R-precision over continuation queries (answer ids best first, target ids)."""
    if not answers:
        return {"recall@50": float("nan"), "r_precision": float("nan"), "queries": 0}
    return {"recall@50": round(float(np.mean([recall_at(a, t) for a, t in zip(answers, targets)])), 6),
            "r_precision": round(float(np.mean([r_precision(a, t) for a, t in zip(answers, targets)])), 6),
            "queries": len(answers)}
