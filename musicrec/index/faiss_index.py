"""FAISS inner-product indexes over L2-normalised embeddings (inner product = cosine).

Index types are named by short aliases so the CLI, the manifest and the benchmarks agree:
``flat`` (exact), ``hnsw`` (graph, M=32) and ``ivf`` (inverted lists, nlist≈4·√n).
Search-time knobs (efSearch, nprobe) are not part of the file: they are set after loading.
"""
from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np

INDEX_TYPES = ("flat", "hnsw", "ivf")
DEFAULT_INDEX_TYPE = "ivf"  # chosen by benchmarks/index_bench.py (benchmarks/README.md); flat is exact
DEFAULT_EF_SEARCH = 64
DEFAULT_NPROBE = 32  # recall@20 ≥ 0.99 at 114k and 1M (benchmarks/README.md)


class IndexBuildError(ValueError):
    """The requested index cannot be built for these embeddings."""


def factory_string(index_type: str, n_vectors: int) -> str:
    """The faiss.index_factory description for an alias (recorded in the manifest)."""
    if index_type == "flat":
        return "Flat"
    if index_type == "hnsw":
        return "HNSW32,Flat"
    if index_type == "ivf":
        nlist = max(1, min(int(4 * math.sqrt(n_vectors)), n_vectors // 39 or 1))
        return f"IVF{nlist},Flat"
    raise IndexBuildError(f"unknown index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}")


def build_index(embeddings: np.ndarray, index_type: str = DEFAULT_INDEX_TYPE, *, seed: int = 0) -> faiss.Index:
    """Build an inner-product index; vectors are added in row order so ids are row numbers."""
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise IndexBuildError(f"need a non-empty (n, d) float32 array, got shape {vectors.shape}")
    dim = vectors.shape[1]
    index = faiss.index_factory(dim, factory_string(index_type, len(vectors)), faiss.METRIC_INNER_PRODUCT)
    if index_type == "hnsw":
        faiss.downcast_index(index).hnsw.efConstruction = 80
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = vectors[rng.choice(len(vectors), size=min(len(vectors), 100_000), replace=False)]
        index.train(sample)
    index.add(vectors)
    configure(index)
    return index


def configure(index: faiss.Index, *, ef_search: int = DEFAULT_EF_SEARCH, nprobe: int = DEFAULT_NPROBE) -> None:
    """Apply search-time parameters; harmless on an index type that has none."""
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = ef_search
    elif isinstance(inner, faiss.IndexIVF):
        inner.nprobe = nprobe


def save_index(index: faiss.Index, path: str | Path) -> None:
    faiss.write_index(index, str(path))


def load_index(path: str | Path) -> faiss.Index:
    """Read an index written by save_index and apply the default search parameters."""
    index = faiss.read_index(str(path))
    configure(index)
    return index


def exact_search(embeddings: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product, blocked so memory stays bounded on large catalogs."""
    flat = faiss.IndexFlatIP(embeddings.shape[1])
    flat.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    return flat.search(np.ascontiguousarray(queries, dtype=np.float32), k)
