"""Co-listening fine-tune: move tracks that listeners play together closer in the embedding.

Why: the content autoencoder only knows what the 13 audio features say. Listeners group tracks
by things the features explain only in part (a scene, an era, a label); their sessions say which
tracks belong together and their skips say which do not. This module turns the event log into
training pairs and fine-tunes the model on them, and measures on listeners it never trained on
whether that made next-track recommendations better.

What is tuned, and why the encoder rather than a residual head on the 32-d vectors: the saved
``model.pth`` is what the service uses to place a track that is not in the catalog
(musicrec/service/online.py). Tuning the encoder in place keeps that file's shape, so new tracks land in the
tuned space too, and every track, played or not, is moved by the same function of its features,
so a track nobody has played moves with the tracks whose features it shares. A head on the 32-d
vectors would need a file the serving path does not know. The decoder stays attached: the
catalog's reconstruction MSE is a weighted term of the loss, so the latent keeps describing the
audio rather than only the tracks with events (simulator, 1,500 tracks, 6 epochs at lr 1e-3: with
weight 0 the catalog's reconstruction MSE went from 0.25 to 0.91; with weight 1 it ended at 0.14).

Sessions: one client's events ordered by ``ts``, split where the gap exceeds 30 min.
Positives: pairs of tracks played (view or like) in one session, neither skipped in it, at most
``window`` apart in the session's order of such plays. Negatives: (played, skipped) for each skip
and each of the ``window`` unskipped plays just before it. Sessions are split into training and
held-out by client (seeded), so a held-out listener's taste never leaks into training.

Held-out figure: for every unskipped first play after the first play of a held-out session, the
session's events so far (newest first, at most ``context``, as the service keeps them) become
seeds with ``musicrec.index.recommend.seeds_from_events`` and the real ``Recommender`` scores the catalog
(artist_weight=0: embedding similarity only; exact index, so the figure is the embedding's, not
the ANN's). A hit is the played track among the top ``k``.
"""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from musicrec.index.catalog import TrackTable
from musicrec.index.recommend import LIKE, SKIP, VIEW, Query, Recommender, ScoringParams, seeds_from_events
from musicrec.indexer.errors import ModelFitError
from musicrec.indexer.train import default_threads
from musicrec.models.autoencoder import AutoEncoder, embed, reconstruction_mse

log = logging.getLogger(__name__)

PLAYS = frozenset({VIEW, LIKE})


@dataclass(frozen=True)
class CotrainConfig:
    session_gap_s: float = 30 * 60
    window: int = 5
    heldout_fraction: float = 0.2
    min_pairs: int = 200            # fewer training positives than this: keep the content model
    epochs: int = 10
    max_seconds: float = 300.0      # checked between epochs; a time-cut run is reported as such
    batch_size: int = 512
    learning_rate: float = 2e-3
    temperature: float = 0.1
    skip_weight: float = 0.5
    reconstruction_weight: float = 1.0
    k: int = 20
    context: int = 20               # events of the session the service keeps (Settings.session_len)
    max_eval_queries: int = 3000
    seed: int = 42
    threads: int | None = None      # None: half the cores this process may use (see fine_tune_threads)


@dataclass(frozen=True)
class Session:
    client_id: str
    events: tuple[tuple[str, int], ...]  # (type, catalog row), oldest first


@dataclass(frozen=True)
class Pairs:
    positives: np.ndarray  # (m, 2) int64 rows: co-listened
    negatives: np.ndarray  # (q, 2) int64 rows: (played, skipped)


@dataclass
class TuneResult:
    model: AutoEncoder
    epochs_run: int
    seconds: float
    stopped_by_time: bool
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class CotrainResult:
    """The model and embeddings to publish (tuned, or the content ones on fallback) and what happened."""

    model: AutoEncoder
    embeddings: np.ndarray
    report: dict[str, Any]

    @property
    def fine_tuned(self) -> bool:
        return bool(self.report.get("fine_tuned"))


# -- events → sessions → pairs ------------------------------------------------------------------

def sessions_from_events(events: pd.DataFrame, row_of: Mapping[str, int],
                         gap_s: float = 30 * 60) -> tuple[list[Session], int]:
    """Per-client sessions (split at gaps > ``gap_s``) of known tracks, and the count of unknown-track events.

    Events about tracks not in this catalog (removed by a rebuild, or from another catalog) are
    dropped before splitting, so they neither count as plays nor bridge a gap.
    """
    if events.empty:
        return [], 0
    rows = events["track_id"].map(row_of)
    known = events.loc[rows.notna(), ["client_id", "ts", "type"]].assign(row=rows[rows.notna()].astype(np.int64))
    known = known.sort_values(["client_id", "ts"], kind="stable")
    sessions: list[Session] = []
    for client, group in known.groupby("client_id", sort=True):
        ts = group["ts"].to_numpy(dtype=np.float64)
        cuts = np.flatnonzero(np.diff(ts) > gap_s) + 1
        pairs = list(zip(group["type"].tolist(), group["row"].tolist()))
        for part in np.split(np.arange(len(pairs)), cuts):
            sessions.append(Session(str(client), tuple(pairs[i] for i in part)))
    return sessions, int(rows.isna().sum())


def _skipped(session: Session) -> set[int]:
    return {row for kind, row in session.events if kind == SKIP}


def session_pairs(session: Session, window: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """One session's (positives, negatives), in order of play, without repeats."""
    skipped = _skipped(session)
    plays: list[int] = []
    negatives: dict[tuple[int, int], None] = {}
    for kind, row in session.events:
        if kind == SKIP:
            negatives.update(((p, row), None) for p in plays[-window:] if p != row)
        elif kind in PLAYS and row not in skipped and row not in plays:
            plays.append(row)
    positives = [(a, b) for i, a in enumerate(plays) for b in plays[i + 1:i + 1 + window]]
    return positives, list(negatives)


def pairs_from_sessions(sessions: Sequence[Session], window: int = 5) -> Pairs:
    pos: list[tuple[int, int]] = []
    neg: list[tuple[int, int]] = []
    for session in sessions:
        p, n = session_pairs(session, window)
        pos += p
        neg += n
    return Pairs(_pair_array(pos), _pair_array(neg))


def _pair_array(pairs: list[tuple[int, int]]) -> np.ndarray:
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def split_by_client(sessions: Sequence[Session], heldout_fraction: float,
                    seed: int) -> tuple[list[Session], list[Session]]:
    """(train, held-out) sessions; a client is wholly in one of them. Needs ≥ 2 clients to hold any out."""
    clients = sorted({s.client_id for s in sessions})
    n_held = 0
    if len(clients) >= 2 and heldout_fraction > 0:
        n_held = min(max(1, round(len(clients) * heldout_fraction)), len(clients) - 1)
    order = np.random.default_rng(seed).permutation(len(clients))
    held = {clients[i] for i in order[:n_held]}
    return [s for s in sessions if s.client_id not in held], [s for s in sessions if s.client_id in held]


# -- the held-out figure ------------------------------------------------------------------------

def next_track_queries(sessions: Sequence[Session], context: int) -> list[tuple[list[tuple[str, int]], int]]:
    """(events so far, newest first and at most ``context``; the next unskipped first play) per query."""
    out = []
    for session in sessions:
        skipped = _skipped(session)
        played: set[int] = set()
        for i, (kind, row) in enumerate(session.events):
            if kind not in PLAYS or row in skipped or row in played:
                continue
            if played:
                out.append((list(reversed(session.events[max(0, i - context):i])), row))
            played.add(row)
    return out


def sample_queries(queries: list[tuple[list[tuple[str, int]], int]], max_queries: int,
                   seed: int) -> list[tuple[list[tuple[str, int]], int]]:
    """At most ``max_queries`` of them, a seeded sample in their original order."""
    if len(queries) <= max_queries:
        return queries
    keep = np.sort(np.random.default_rng(seed).choice(len(queries), max_queries, replace=False))
    return [queries[i] for i in keep]


def next_track_hit_rate(embeddings: np.ndarray, tracks: TrackTable, sessions: Sequence[Session], *,
                        k: int = 20, context: int = 20, max_queries: int = 3000,
                        seed: int = 0) -> dict[str, float | None]:
    """Share of next plays found in the top ``k`` by max-similarity scoring (see the module docstring)."""
    queries = sample_queries(next_track_queries(sessions, context), max_queries, seed)
    if not queries:
        return {"hit_rate": None, "queries": 0}
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    params = ScoringParams(artist_weight=0.0)
    recommender = Recommender(vectors, index, tracks, params, memo=False)
    ids = tracks.ids
    hits = 0
    # One request's search is a few seed vectors: as in a service worker, one FAISS thread is
    # faster than a team (whose spin-waits stall on a busy machine). Restored for the build after.
    with threadpool_limits(limits=1, user_api="openmp"):
        for prefix, target in queries:
            seen = seeds_from_events(((kind, ids[row]) for kind, row in prefix), tracks.row_of, params)
            answer = recommender.recommend(Query(seeds=seen.seeds, k=k, negatives=seen.negatives, exclude=seen.seen))
            hits += any(h.row == target for h in answer)
    return {"hit_rate": hits / len(queries), "queries": len(queries)}


# -- the fine-tune ------------------------------------------------------------------------------

def _info_nce(anchor: torch.Tensor, anchor_rows: torch.Tensor, cand: torch.Tensor, cand_rows: torch.Tensor,
              temperature: float) -> torch.Tensor:
    """InfoNCE with in-batch negatives; a candidate that *is* the anchor's track or its partner's is masked.

    Without the mask a track appearing in two pairs of one batch would be pushed away from itself.
    """
    logits = anchor @ cand.T / temperature
    same = (cand_rows[None, :] == anchor_rows[:, None]) | (cand_rows[None, :] == cand_rows[:, None])
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(anchor)))


def fine_tune_threads(config: CotrainConfig) -> int:
    """Torch threads for the fine-tune: ``config.threads``, else half this process's cores (at least 1).

    Why not all: the batches are small (512 × 128), so a second thread gained ~25 % on an idle
    2-core machine, while with one of the two cores busy the thread team's spin-waits made an
    epoch 7× slower (0.7 s → 5.2 s, 800 tracks, 15k pairs).
    """
    return config.threads or max(1, default_threads() // 2)


def fine_tune(model: AutoEncoder, scaled: np.ndarray, pairs: Pairs, config: CotrainConfig = CotrainConfig()) -> TuneResult:
    """A tuned copy of ``model``: symmetric InfoNCE on positives + skip term + weighted reconstruction.

    The skip term, ``softplus(cos(played, skipped) / T)``, is word2vec's negative-sampling half:
    it pushes each skipped track away from what was playing, and fades once they are apart.
    The reconstruction batch is drawn from the whole catalog, not only tracks with events.
    Determinism: one seed drives the initial shuffle and every draw; same data, seed and thread
    count give the same weights (unless the time budget cuts a different epoch).
    """
    torch.set_num_threads(fine_tune_threads(config))
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True)
    model = copy.deepcopy(model)
    x = torch.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32))
    pos = torch.from_numpy(pairs.positives)
    neg = torch.from_numpy(pairs.negatives)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    stopped_by_time = False
    model.train()
    for epoch in range(1, config.epochs + 1):
        perm = torch.randperm(len(pos), generator=generator)
        sums = {"contrastive": 0.0, "skip": 0.0, "reconstruction": 0.0}
        steps = 0
        for start in range(0, len(pos), config.batch_size):
            batch = pos[perm[start:start + config.batch_size]]
            if len(batch) < 2:
                continue  # a lone pair has no in-batch negatives
            optimiser.zero_grad(set_to_none=True)
            a = F.normalize(model.encoder(x[batch[:, 0]]), dim=1)
            b = F.normalize(model.encoder(x[batch[:, 1]]), dim=1)
            contrastive = 0.5 * (_info_nce(a, batch[:, 0], b, batch[:, 1], config.temperature)
                                 + _info_nce(b, batch[:, 1], a, batch[:, 0], config.temperature))
            if len(neg):
                pick = neg[torch.randint(len(neg), (len(batch),), generator=generator)]
                p = F.normalize(model.encoder(x[pick[:, 0]]), dim=1)
                s = F.normalize(model.encoder(x[pick[:, 1]]), dim=1)
                skip = F.softplus((p * s).sum(dim=1) / config.temperature).mean()
            else:
                skip = torch.zeros(())
            rec_rows = x[torch.randint(len(x), (config.batch_size,), generator=generator)]
            reconstruction = F.mse_loss(model(rec_rows), rec_rows)
            loss = contrastive + config.skip_weight * skip + config.reconstruction_weight * reconstruction
            if not torch.isfinite(loss):
                raise ModelFitError(f"co-listening fine-tune diverged at epoch {epoch} "
                                    f"(contrastive {contrastive.item()}, skip {skip.item()}, "
                                    f"reconstruction {reconstruction.item()})")
            loss.backward()
            optimiser.step()
            sums["contrastive"] += contrastive.item()
            sums["skip"] += skip.item()
            sums["reconstruction"] += reconstruction.item()
            steps += 1
        history.append({name: round(total / max(steps, 1), 6) for name, total in sums.items()})
        log.info("fine-tune epoch %d/%d %s", epoch, config.epochs, history[-1])
        if time.perf_counter() - started > config.max_seconds and epoch < config.epochs:
            stopped_by_time = True
            log.warning("fine-tune stopped by its %.0f s budget after epoch %d", config.max_seconds, epoch)
            break
    model.eval()
    return TuneResult(model, len(history), time.perf_counter() - started, stopped_by_time, history)


# -- the whole step, as the build runs it -------------------------------------------------------

def cotrain(model: AutoEncoder, scaled: np.ndarray, tracks: TrackTable, events: pd.DataFrame,
            config: CotrainConfig = CotrainConfig(), *, content_embeddings: np.ndarray | None = None) -> CotrainResult:
    """Fine-tune on ``events`` when there are enough of them, else keep the content model; report either way."""
    sessions, unknown = sessions_from_events(events, tracks.row_of, config.session_gap_s)
    train, held = split_by_client(sessions, config.heldout_fraction, config.seed)
    pairs = pairs_from_sessions(train, config.window)
    before = content_embeddings if content_embeddings is not None else embed(model, scaled)
    evaluate = lambda emb: next_track_hit_rate(  # noqa: E731
        emb, tracks, held, k=config.k, context=config.context, max_queries=config.max_eval_queries, seed=config.seed)
    report: dict[str, Any] = {
        "events_read": int(len(events)), "events_unknown_track": unknown,
        "clients": len({s.client_id for s in sessions}), "sessions": len(sessions),
        "train_sessions": len(train), "heldout_sessions": len(held),
        "heldout_clients": len({s.client_id for s in held}),
        "positive_pairs": int(len(pairs.positives)), "skip_pairs": int(len(pairs.negatives)),
        "window": config.window, "min_pairs": config.min_pairs, "seed": config.seed,
        "metric": f"next_track_hit@{config.k}",
    }
    none: dict[str, float | None] = {"hit_rate": None, "queries": 0}
    content = evaluate(before) if held else none
    report["heldout_queries"] = int(content["queries"])
    report["heldout_before"] = content["hit_rate"]
    if len(pairs.positives) < config.min_pairs:
        reason = (f"too few events: {len(pairs.positives)} co-listened pairs in training sessions, "
                  f"need {config.min_pairs}; kept the content-only model")
        log.warning("%s", reason)
        report |= {"fine_tuned": False, "reason": reason, "heldout_after": content["hit_rate"]}
        return CotrainResult(model, before, report)
    tuned = fine_tune(model, scaled, pairs, config)
    after = embed(tuned.model, scaled)
    tuned_figure = evaluate(after) if held else none
    report |= {
        "fine_tuned": True,
        "reason": (f"{len(pairs.positives)} co-listened pairs in training sessions (minimum {config.min_pairs}); "
                   f"{tuned.epochs_run} epochs in {tuned.seconds:.1f} s"
                   + ("; no held-out clients, so no figures" if not held else "")
                   + ("; stopped by the time budget" if tuned.stopped_by_time else "")),
        "heldout_after": tuned_figure["hit_rate"],
        "epochs": tuned.epochs_run, "seconds": round(tuned.seconds, 3),
        "reconstruction_mse_before": reconstruction_mse(model, scaled),
        "reconstruction_mse_after": reconstruction_mse(tuned.model, scaled),
        "history": tuned.history,
    }
    before_rate, after_rate = content["hit_rate"], tuned_figure["hit_rate"]
    if before_rate is not None and after_rate is not None and after_rate < before_rate:
        # The events made held-out listeners worse off (noise, or too few of them): serve content.
        report |= {"fine_tuned": False,
                   "reason": f"fine-tune lowered held-out {report['metric']} from {before_rate:.4f} to "
                             f"{after_rate:.4f}; kept the content-only model"}
        log.warning("%s", report["reason"])
        return CotrainResult(model, before, report)
    return CotrainResult(tuned.model, after, report)
