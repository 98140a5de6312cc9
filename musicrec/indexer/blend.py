"""The build's choice of the service's scoring blend, measured on held-out sessions of the event log.

Why measured here and not fixed in code: how much co-listening should count against audio and
artist, whether seeds should agree (power mean) or one close seed suffice (max), and how much a
popular track is worth, depend on the catalog and on how people listen; the log says.

Clients are dealt into ``folds`` (seeded), as in k-fold cross-validation: for each fold used,
a co-listening table is fitted on the other folds' clients only, so a held-out listener's plays
never inform the table that scores them. Each held-out session with enough plays is a
continuation query, as a player would ask: its first plays are the seeds, the rest the targets.
A small log uses every fold, so every session is a query once (one fold alone was too noisy to
choose between close blends on the dev playlists); a large one only as many folds as
``max_queries`` needs. The figure is Recall@50 + R-precision, averaged over all queries, from
the real ``Recommender``; a coordinate search over ``GRID`` keeps whichever blend does best (the
defaults without co-listening are among those tried, so the chosen blend is never worse on
held-out listeners than serving without events). The manifest records every blend tried and
its figures.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from musicrec.index.colisten import ColistenTable
from musicrec.index.recommend import Query, Recommender, ScoringParams, Seed
from musicrec.indexer.colisten import Sessions
from musicrec.indexer.evaluate import continuation_figures

log = logging.getLogger(__name__)

GRID: dict[str, tuple[float, ...]] = {
    "colisten_weight": (0.0, 1.0, 3.0, 10.0, 30.0, 100.0),
    "seed_power": (1.0, 2.0, 4.0, math.inf),
    "artist_weight": (0.0, 0.25, 0.5, 1.0, 2.0, 4.0),
    "popularity_weight": (0.0, 0.25, 0.5, 1.0, 2.0, 4.0),
}
"""Values the search tries, per blend parameter (``ScoringParams.BLEND``)."""

WITH_EVENTS: dict[str, float] = {"colisten_weight": 30.0, "seed_power": 1.0}
"""Where the search starts, and the blend used when too few held-out queries allow no choice:
the optimum of this search on the dev playlists' played sessions (benchmarks/README.md)."""


@dataclass(frozen=True)
class BlendConfig:
    folds: int = 5                 # clients are dealt into this many folds; each fold used is held out once
    max_seeds: int = 10            # a query's seeds: its session's first plays, at most this many …
    min_plays: int = 6             # … and half of them at most; shorter sessions are no query
    min_queries: int = 20          # fewer held-out queries than this: no choice, WITH_EVENTS is used
    max_queries: int = 2000        # folds used, and a seeded sample of queries, stop here (build time)
    passes: int = 2
    seed: int = 42
    grid: dict[str, tuple[float, ...]] = field(default_factory=lambda: dict(GRID))


@dataclass(frozen=True)
class Continuation:
    seeds: np.ndarray    # int64 rows, in play order
    targets: np.ndarray  # int64 rows


@dataclass(frozen=True)
class Fold:
    """One held-out fold: the table fitted without its clients, and its clients' queries."""

    table: ColistenTable
    queries: list[Continuation]
    clients: int


@dataclass(frozen=True)
class BlendChoice:
    params: ScoringParams
    report: dict[str, Any]

    @property
    def blend(self) -> dict[str, float]:
        return {name: getattr(self.params, name) for name in ScoringParams.BLEND}


def continuation_queries(sessions: Sessions, config: BlendConfig = BlendConfig()) -> list[Continuation]:
    """Every session with at least ``min_plays`` plays, as (first plays, remaining plays)."""
    s, r = sessions.play_session, sessions.play_row
    if not len(s):
        return []
    bounds = np.flatnonzero(np.diff(s)) + 1
    starts = np.concatenate([[0], bounds])
    stops = np.concatenate([bounds, [len(s)]])
    long_enough = np.flatnonzero(stops - starts >= config.min_plays)
    if len(long_enough) > config.max_queries:
        picked = np.random.default_rng(config.seed).choice(long_enough, config.max_queries, replace=False)
        long_enough = np.sort(picked)
    out = []
    for i in long_enough.tolist():
        a, b = int(starts[i]), int(stops[i])
        cut = a + min(config.max_seeds, (b - a) // 2)
        out.append(Continuation(r[a:cut], r[cut:b]))
    return out


def held_out_clients(sessions: Sessions, config: BlendConfig = BlendConfig()) -> list[np.ndarray]:
    """Boolean masks over client codes, one per fold used (see the module docstring); none with < 2 clients."""
    clients = np.unique(sessions.play_client)
    if len(clients) < 2:
        return []
    folds = min(config.folds, len(clients))
    fold_of = np.full(int(clients.max()) + 1, -1)
    fold_of[np.random.default_rng(config.seed).permutation(clients)] = np.arange(len(clients)) % folds
    starts = np.concatenate([[True], np.diff(sessions.play_session) != 0])
    lengths = np.diff(np.concatenate([np.flatnonzero(starts), [len(starts)]]))
    eligible = int(np.count_nonzero(lengths >= config.min_plays))
    per_fold = max(1, eligible // folds)
    used = min(folds, max(1, math.ceil(config.max_queries / per_fold)))
    return [fold_of == f for f in range(used)]


def score_blend(recommender: Recommender, queries: Sequence[Continuation]) -> dict[str, float]:
    """Mean Recall@50 and R-precision of the recommender's answers to ``queries`` (equal-weight seeds)."""
    ids = recommender.tracks.ids
    answers, targets = [], []
    for q in queries:
        k = min(max(50, len(q.targets)), 500)
        hits = recommender.recommend(Query(seeds=[Seed(int(r), 1.0) for r in q.seeds], k=k))
        answers.append([ids[h.row] for h in hits])
        targets.append(ids[q.targets].tolist())
    return continuation_figures(answers, targets)


def _objective(figures: dict[str, float]) -> float:
    return figures["recall@50"] + figures["r_precision"]


def _pooled(parts: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per-fold means as the mean over all their queries."""
    total = sum(p["queries"] for p in parts)
    return {"recall@50": round(sum(p["recall@50"] * p["queries"] for p in parts) / total, 6),
            "r_precision": round(sum(p["r_precision"] * p["queries"] for p in parts) / total, 6),
            "queries": total}


def choose_blend(make: Callable[[ScoringParams, ColistenTable], Recommender], folds: Sequence[Fold],
                 base: ScoringParams = ScoringParams(), config: BlendConfig = BlendConfig()) -> BlendChoice:
    """The blend with the best held-out figure, by coordinate search from ``WITH_EVENTS`` (module docstring)."""
    start = base.with_blend(WITH_EVENTS)
    folds = [f for f in folds if f.queries]
    n_queries = sum(len(f.queries) for f in folds)
    if n_queries < config.min_queries:
        reason = (f"{n_queries} held-out queries (need {config.min_queries}): the blend was not chosen on "
                  f"this log; the defaults measured on the dev playlists apply")
        log.warning("%s", reason)
        return BlendChoice(start, {"chosen_by": "defaults", "reason": reason, "heldout_queries": n_queries})
    tried: dict[tuple[float, ...], dict[str, float]] = {}

    def figures_of(params: ScoringParams) -> dict[str, float]:
        key = tuple(getattr(params, name) for name in ScoringParams.BLEND)
        if key not in tried:
            tried[key] = _pooled([score_blend(make(params, f.table), f.queries) for f in folds])
        return tried[key]

    without_events = figures_of(base.with_blend({"colisten_weight": 0.0}))
    best, best_figures = start, figures_of(start)
    for _ in range(config.passes):
        improved = False
        for name, values in config.grid.items():
            for value in values:
                candidate = best.with_blend({name: value})
                figures = figures_of(candidate)
                if _objective(figures) > _objective(best_figures) + 1e-9:
                    best, best_figures, improved = candidate, figures, True
        if not improved:
            break
    if _objective(without_events) >= _objective(best_figures):
        best, best_figures = base.with_blend({"colisten_weight": 0.0}), without_events
    report = {
        "chosen_by": "held-out sessions",
        "folds": len(folds), "heldout_queries": n_queries, "heldout_clients": sum(f.clients for f in folds),
        "objective": "recall@50 + r_precision (mean over queries; seeds = first plays of a held-out session)",
        "without_colisten": without_events,
        "chosen": best_figures,
        "tried": [dict(zip(ScoringParams.BLEND, key)) | figures for key, figures in tried.items()],
    }
    log.info("blend chosen on %d held-out queries in %d folds: %s → recall@50 %.4f, R-precision %.4f (without "
             "co-listening %.4f, %.4f)", n_queries, len(folds), {n: getattr(best, n) for n in ScoringParams.BLEND},
             best_figures["recall@50"], best_figures["r_precision"], without_events["recall@50"],
             without_events["r_precision"])
    return BlendChoice(best, report)
