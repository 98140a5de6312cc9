"""The co-listening table as served: each track's top co-listened tracks with weights, in CSR form.

Three flat arrays (``indptr``, ``indices``, ``weights``), saved with ``np.save`` and memory-mapped
by the service, so every worker shares one copy in the page cache and a request only slices
them. Built by ``musicrec.indexer.colisten`` (the serving side needs no scipy); loading checks every
value a request will index with, since a table that passes its checksum can still be wrong.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

INDPTR = "colisten_indptr.npy"
INDICES = "colisten_indices.npy"
WEIGHTS = "colisten_weights.npy"
FILES = (INDPTR, INDICES, WEIGHTS)


@dataclass(frozen=True, eq=False)
class ColistenTable:
    indptr: np.ndarray   # int64 (n + 1,)
    indices: np.ndarray  # int32 (nnz,): co-listened rows, best first within a row
    weights: np.ndarray  # float32 (nnz,): > 0

    @property
    def n(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return len(self.indices)

    def save(self, folder: Path) -> None:
        for name, array in zip(FILES, (self.indptr, self.indices, self.weights)):
            np.save(folder / name, array, allow_pickle=False)

    @classmethod
    def load(cls, folder: Path, n: int) -> "ColistenTable":
        """Memory-map the three arrays and check them against a catalog of ``n`` rows (ValueError if wrong)."""
        indptr, indices, weights = (np.load(folder / name, mmap_mode="r", allow_pickle=False) for name in FILES)
        table = cls(indptr, indices, weights)
        table.validate(n)
        return table

    def validate(self, n: int) -> None:
        """Every offset monotone and in range, every row index below ``n``, every weight finite and > 0."""
        indptr, indices, weights = self.indptr, self.indices, self.weights
        if indptr.dtype != np.int64 or indptr.shape != (n + 1,):
            raise ValueError(f"co-listening indptr {indptr.shape}/{indptr.dtype}, expected ({n + 1},)/int64")
        if indices.dtype != np.int32 or weights.dtype != np.float32 or indices.shape != weights.shape \
                or indices.ndim != 1:
            raise ValueError(f"co-listening indices {indices.shape}/{indices.dtype} and weights "
                             f"{weights.shape}/{weights.dtype}, expected equal 1-d int32/float32")
        if indptr[0] != 0 or indptr[-1] != len(indices) or (n and np.any(np.diff(indptr) < 0)):
            raise ValueError("co-listening indptr is not a monotone 0..nnz offset array")
        if len(indices) and not (0 <= int(indices.min()) and int(indices.max()) < n):
            raise ValueError(f"co-listening indices outside 0..{n - 1}")
        if len(weights) and not (np.isfinite(weights).all() and float(weights.min()) > 0):
            raise ValueError("co-listening weights must be finite and > 0")

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(owner position in ``rows``, co-listened row, weight) for every entry of the given rows."""
        starts, stops = self.indptr[rows], self.indptr[rows + 1]
        lengths = stops - starts
        total = int(lengths.sum())
        if not total:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
        owner = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
        offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        flat = np.repeat(starts, lengths) + offsets
        return owner, self.indices[flat].astype(np.int64), self.weights[flat]

    def neighbours(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.indptr[row]), int(self.indptr[row + 1])
        return np.asarray(self.indices[a:b]), np.asarray(self.weights[a:b])
