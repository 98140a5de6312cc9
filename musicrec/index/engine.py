"""One loaded artefact version, ready to serve, and the holder that swaps versions.

A request takes ``holder.current`` once and uses that Engine throughout, so a swap
never mixes two versions inside one answer (in-flight requests finish on the old one).
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import pyarrow as pa
from threadpoolctl import threadpool_limits

from musicrec.index.browse import Browser
from musicrec.index.artifacts import Artifacts, load_artifacts
from musicrec.index.recommend import Recommender, ScoringParams

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Engine:
    artifacts: Artifacts
    recommender: Recommender
    browser: Browser
    loaded_in_s: float

    @property
    def model_version(self) -> str:
        return self.artifacts.model_version

    @property
    def tracks(self):  # -> TrackTable
        return self.artifacts.tracks

    @classmethod
    def load(cls, path: str | Path, params: ScoringParams = ScoringParams(), *, verify: bool = True) -> "Engine":
        started = time.perf_counter()
        artifacts = load_artifacts(path, verify=verify)
        params = params.with_blend(artifacts.manifest.scoring)  # checked by load_artifacts
        engine = cls(artifacts, Recommender(artifacts.embeddings, artifacts.index, artifacts.tracks, params,
                                            neighbours=artifacts.neighbours, colisten=artifacts.colisten),
                     Browser(artifacts.tracks), 0.0)
        elapsed = time.perf_counter() - started
        object.__setattr__(engine, "loaded_in_s", elapsed)
        # What was just loaded lives as long as the version: keep the cyclic GC from re-scanning
        # it (and everything imported before it) in every full collection, a pause that lands
        # on some request's latency (~20 ms at 114k here). Refcounting still frees it on a swap.
        gc.collect()
        gc.freeze()
        # Arrow's allocator keeps what the load freed for reuse (~600 MB per worker at 1M tracks)
        # and requests hardly allocate through it: hand it back to the OS.
        pa.default_memory_pool().release_unused()
        log.info("loaded artefacts %s (%d tracks%s) in %.2fs", artifacts.model_version, len(artifacts.tracks),
                 ", SYNTHETIC DEMO CATALOG" if artifacts.manifest.demo else "", elapsed)
        return engine


class EngineHolder:
    """The one mutable reference to the serving Engine; replaced, never mutated."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()

    @property
    def current(self) -> Engine:
        return self._engine

    def swap(self, engine: Engine) -> Engine:
        with self._lock:
            old, self._engine = self._engine, engine
        log.info("serving model_version %s (was %s)", engine.model_version, old.model_version)
        return old


def configure_faiss_threads(threads: int) -> None:
    """FAISS and BLAS never pick thread counts sensibly under a server: pin both at start-up.

    A request multiplies small matrices (20 seeds × a few thousand candidates). OpenBLAS
    defaults to one thread per core; its helper threads spin and contend with the other
    workers. The libraries are already loaded, so OPENBLAS_NUM_THREADS would come too late:
    threadpoolctl calls each loaded BLAS's and OpenMP's own setter (numpy's and FAISS's).
    """
    threads = max(1, threads)
    faiss.omp_set_num_threads(threads)
    threadpool_limits(limits=threads)
