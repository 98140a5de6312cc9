"""Offline build: catalog → scaler → autoencoder → embeddings → FAISS index → [co-listening + blend] → a version.

With ``events`` the build also fits the co-listening table from the event log
(musicrec/indexer/colisten.py) and chooses the service's scoring blend on held-out sessions of
it (musicrec/indexer/blend.py); the manifest's ``events`` and ``scoring`` fields record both.
A build into a root of versions is checked (it loads as the service would, and its ANN index
finds what exact search finds) before ``current`` points at it: a bad build must never be served.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from musicrec.data.loader import Catalog
from musicrec.data.schema import DataError
from musicrec.index.artifacts import (
    CURRENT, EMBEDDINGS, INDEX, MODEL, NEIGHBOURS, SCALER, TRACK_LOOKUPS, TRACKS, ArtifactError, Manifest, SourceInfo,
    finalize_version, load_artifacts, publish, sha256_file, stage_dir,
)
from musicrec.index.catalog import TrackTable
from musicrec.index.colisten import ColistenTable
from musicrec.index.faiss_index import DEFAULT_INDEX_TYPE, build_index, factory_string, save_index
from musicrec.index.recommend import NeighbourMemo, Recommender, ScoringParams
from musicrec.indexer.blend import BlendConfig, Fold, choose_blend, continuation_queries, held_out_clients
from musicrec.indexer.colisten import ColistenConfig, describe, fit_colisten, sessions_from_log
from musicrec.indexer.errors import ModelFitError
from musicrec.indexer.evaluate import ann_recall, genre_agreement_report
from musicrec.indexer.progress import Steps
from musicrec.indexer.train import TrainConfig, TrainResult, train_autoencoder
from musicrec.models.autoencoder import embed, reconstruction_mse
from musicrec.models.scaler import StandardScaler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildOptions:
    epochs: int = 40
    seed: int = 42
    index_type: str = DEFAULT_INDEX_TYPE
    batch_size: int = 256
    progress: bool = True
    eval_sample: int = 2000
    events: Path | None = None
    """A Parquet event log (musicrec/indexer/event_dataset.py) to learn co-listening from; None: content only."""
    colisten: ColistenConfig = ColistenConfig()
    blend: BlendConfig | None = None
    """How the scoring blend is chosen; None: the defaults, with this build's seed."""
    min_ann_recall: float = 0.9
    """A root build is published only if its index's recall@20 against exact search reaches this."""
    threads: int | None = None
    """Torch threads for training; None: the trainer's default (musicrec/indexer/train.py)."""


@dataclass(frozen=True)
class BuildResult:
    path: Path
    manifest: Manifest
    steps: dict[str, float] = field(default_factory=dict)
    """Seconds per build step, in order (the CLI's summary)."""


class VersionCheckError(ArtifactError):
    """A freshly built version failed the check before publication; ``current`` was left as it was."""


def check_version(version_dir: Path, *, min_ann_recall: float, seed: int = 0) -> float:
    """Load ``version_dir`` as the service would and return its ANN recall@20 against exact search.

    ``load_artifacts`` verifies the checksums, the shapes and that no embedding is NaN or
    infinite; the recall catches an index that does not match its embeddings.
    """
    try:
        artifacts = load_artifacts(version_dir)
    except ArtifactError as exc:
        raise VersionCheckError(f"{exc} (not published)") from exc
    recall = ann_recall(artifacts.index, np.asarray(artifacts.embeddings), seed=seed)
    if not recall >= min_ann_recall:  # written so that a NaN recall fails too
        raise VersionCheckError(f"{version_dir}: ANN recall@20 vs exact search is {recall:.4f}, "
                                f"below {min_ann_recall} (not published)")
    return recall


def _current_target(root: Path) -> str:
    link = root / CURRENT
    return os.readlink(link) if link.is_symlink() else "nothing"


def _model_version(embeddings: np.ndarray, created: datetime) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(embeddings).tobytes()).hexdigest()[:8]
    return f"{created:%Y%m%dT%H%M%SZ}-{digest}"


def _source_info(catalog: Catalog) -> SourceInfo:
    rows = catalog.report.rows_read
    if catalog.source is None:
        return SourceInfo(path=None, sha256=None, rows=rows)
    return SourceInfo(path=str(Path(catalog.source).resolve()), sha256=sha256_file(catalog.source), rows=rows)


def train_and_embed(catalog: Catalog, options: BuildOptions,
                    steps: Steps | None = None) -> tuple[StandardScaler, np.ndarray, TrainResult, np.ndarray]:
    """Fit the scaler and the autoencoder on the catalog and embed every track."""
    raw = catalog.tracks[catalog.features].to_numpy(dtype=np.float64)
    scaler = StandardScaler.fit(raw, catalog.features)
    scaled = scaler.transform(raw)
    config = TrainConfig(epochs=options.epochs, seed=options.seed, batch_size=options.batch_size, progress=options.progress,
                         threads=options.threads)
    result = train_autoencoder(scaled, config)
    if steps is not None:
        steps.start("embed", f"{len(scaled):,} tracks to {result.model.latent_dim}-d unit vectors")
    return scaler, scaled, result, embed(result.model, scaled)


def learn_from_events(catalog: Catalog, options: BuildOptions, embeddings: np.ndarray, index: faiss.Index,
                      neighbours: np.ndarray) -> tuple[ColistenTable, dict[str, float], dict[str, Any]]:
    """The co-listening table of the whole log, the blend chosen on its held-out folds, and a report.

    Each fold's table is fitted without that fold's clients; the one shipped, on every client
    (serving wants all of it, and the blend does not hinge on the table's size).
    """
    from musicrec.indexer.event_dataset import read_log_table

    started = time.perf_counter()
    tracks = TrackTable.from_frame(catalog.tracks, catalog.features)
    config = options.colisten
    blend_config = options.blend or BlendConfig(seed=options.seed)
    log_table = read_log_table(options.events, ("type", "track_id", "ts", "client_id"))
    sessions = sessions_from_log(log_table, tracks.ids, config)
    del log_table
    held_out = held_out_clients(sessions, blend_config)
    per_fold = replace(blend_config, max_queries=-(-blend_config.max_queries // max(1, len(held_out))))
    folds = [Fold(fit_colisten(sessions.subset(~held), len(tracks), config),
                  continuation_queries(sessions.subset(held), per_fold), int(held.sum())) for held in held_out]
    choice = choose_blend(lambda params, table: Recommender(embeddings, index, tracks, params, neighbours=neighbours,
                                                            colisten=table), folds, config=blend_config)
    del folds
    table = fit_colisten(sessions, len(tracks), config)
    report = {"path": str(Path(options.events).resolve()), **describe(sessions, table), "colisten": config.to_dict(),
              **choice.report, "seconds": round(time.perf_counter() - started, 3)}
    return table, choice.blend, report


def build_version(catalog: Catalog, options: BuildOptions, *, out: Path | None = None, root: Path | None = None,
                  replace: bool = False) -> BuildResult:
    """Build one version into ``out``, or into ``root/<model_version>`` and point ``root/current`` at it."""
    if (out is None) == (root is None):
        raise ValueError("give exactly one of out or root")
    if options.events is not None and not Path(options.events).is_dir():
        raise DataError(str(options.events), "no such event log directory")  # before minutes of training
    started = time.perf_counter()
    created = datetime.now(timezone.utc)
    steps = Steps(6 + (options.events is not None) + (root is not None), log)
    steps.start("train", f"autoencoder on {len(catalog.tracks):,} tracks × {len(catalog.features)} features, "
                f"up to {options.epochs} epochs (stops early when validation loss stalls)")
    scaler, scaled, trained, embeddings = train_and_embed(catalog, options, steps)
    model = trained.model
    if not np.isfinite(embeddings).all():  # an IVF index cannot even be trained on them: say so, not faiss
        raise ModelFitError("the trained encoder gives NaN or infinite embeddings")
    steps.start("index", f"{factory_string(options.index_type, len(embeddings))} over {len(embeddings):,} vectors")
    index = build_index(embeddings, options.index_type, seed=options.seed)
    steps.start("neighbours", f"every track's {ScoringParams().min_depth} ANN neighbours, so the service never "
                "searches while answering")
    # Every track's ANN answer, searched now so the service never searches at request time.
    memo = NeighbourMemo.for_index(index, len(embeddings), ScoringParams().min_depth)
    neighbours = memo.fill(index, embeddings)
    colisten, scoring, events_report = None, {}, {}
    if options.events is not None:
        steps.start("co-listening", f"what listeners play together in {options.events}, and the scoring blend "
                    "chosen on held-out listeners")
        colisten, scoring, events_report = learn_from_events(catalog, options, embeddings, index, neighbours)
    steps.start("evaluate", "genre agreement, reconstruction error and ANN recall")
    metrics = {
        "reconstruction_mse": reconstruction_mse(model, scaled),
        **genre_agreement_report(embeddings, scaled, catalog.tracks["genres"].tolist(), sample=options.eval_sample, seed=options.seed),
        "ann_recall@20": 1.0 if options.index_type == "flat" else ann_recall(index, embeddings, seed=options.seed),
    }
    model_version = _model_version(embeddings, created)
    target = out if out is not None else root / model_version
    staged = stage_dir(target)
    steps.start("write", f"the model, the index, the track table, its lookups and the manifest into {target}")
    try:
        torch.save(model.state_dict(), staged / MODEL)
        scaler_doc = scaler.to_dict() | {"medians": catalog.report.medians}
        (staged / SCALER).write_text(json.dumps(scaler_doc, indent=2))
        np.save(staged / EMBEDDINGS, embeddings, allow_pickle=False)
        save_index(index, staged / INDEX)
        np.save(staged / NEIGHBOURS, neighbours, allow_pickle=False)
        if colisten is not None:
            colisten.save(staged)
        catalog.tracks.to_parquet(staged / TRACKS, index=False)
        # The track table's lookups, derived from the file the service reads, so it loads them instead.
        np.savez(staged / TRACK_LOOKUPS, **TrackTable.from_parquet(staged / TRACKS, catalog.features).lookup_arrays())
        report = catalog.report
        manifest = Manifest(
            model_version=model_version,
            created_at=created.isoformat(timespec="seconds"),
            n_tracks=len(embeddings),
            dim=int(embeddings.shape[1]),
            features=list(catalog.features),
            missing_features=list(report.missing_features),
            source=_source_info(catalog),
            demo=catalog.demo,
            index_type=options.index_type,
            index_factory=factory_string(options.index_type, len(embeddings)),
            train_loss=trained.train_loss,
            val_loss=trained.val_loss,
            epochs=trained.epochs_run,
            seed=options.seed,
            build_seconds=0.0,
            load_report={
                "rows_read": report.rows_read, "exact_duplicate_rows": report.exact_duplicate_rows,
                "merged_rows": report.merged_rows, "n_tracks": report.n_tracks, "imputed": report.imputed,
                "warnings": report.warnings,
            },
            metrics=metrics,
            training={"best_epoch": trained.best_epoch, "seconds": round(trained.seconds, 3),
                      "history": [[round(t, 6), round(v, 6)] for t, v in trained.history]},
            events=events_report,
            scoring=scoring,
        )
        manifest.build_seconds = round(time.perf_counter() - started, 3)
        finalize_version(staged, target, manifest, replace=replace)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    if root is not None:
        steps.start("check", f"the new version loads and its ANN recall@20 reaches {options.min_ann_recall}")
        try:
            check_version(target, min_ann_recall=options.min_ann_recall, seed=options.seed)
        except VersionCheckError as exc:
            raise VersionCheckError(f"{exc}; current still points at {_current_target(root)}") from exc
        publish(root, target)
    log.info("built %s (%d tracks) in %.1fs", target, manifest.n_tracks, manifest.build_seconds)
    return BuildResult(target, manifest, steps.finish())
