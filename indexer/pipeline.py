"""Offline build: catalog → scaler → autoencoder → embeddings → FAISS index → a version on disk."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from data.loader import Catalog
from index.artifacts import (
    EMBEDDINGS, INDEX, MODEL, SCALER, TRACKS, Manifest, SourceInfo, finalize_version, publish, sha256_file, stage_dir,
)
from index.faiss_index import build_index, factory_string, save_index
from indexer.evaluate import ann_recall, genre_agreement_report
from indexer.train import TrainConfig, TrainResult, train_autoencoder
from models.autoencoder import embed, reconstruction_mse
from models.scaler import StandardScaler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildOptions:
    epochs: int = 40
    seed: int = 42
    index_type: str = "flat"
    batch_size: int = 256
    progress: bool = True
    eval_sample: int = 2000


@dataclass(frozen=True)
class BuildResult:
    path: Path
    manifest: Manifest


def _model_version(embeddings: np.ndarray, created: datetime) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(embeddings).tobytes()).hexdigest()[:8]
    return f"{created:%Y%m%dT%H%M%SZ}-{digest}"


def _source_info(catalog: Catalog) -> SourceInfo:
    rows = catalog.report.rows_read
    if catalog.source is None:
        return SourceInfo(path=None, sha256=None, rows=rows)
    return SourceInfo(path=str(Path(catalog.source).resolve()), sha256=sha256_file(catalog.source), rows=rows)


def train_and_embed(catalog: Catalog, options: BuildOptions) -> tuple[StandardScaler, np.ndarray, TrainResult, np.ndarray]:
    """Fit the scaler and the autoencoder on the catalog and embed every track."""
    raw = catalog.tracks[catalog.features].to_numpy(dtype=np.float64)
    scaler = StandardScaler.fit(raw, catalog.features)
    scaled = scaler.transform(raw)
    config = TrainConfig(epochs=options.epochs, seed=options.seed, batch_size=options.batch_size, progress=options.progress)
    result = train_autoencoder(scaled, config)
    return scaler, scaled, result, embed(result.model, scaled)


def build_version(catalog: Catalog, options: BuildOptions, *, out: Path | None = None, root: Path | None = None,
                  replace: bool = False) -> BuildResult:
    """Build one version into ``out``, or into ``root/<model_version>`` and point ``root/current`` at it."""
    if (out is None) == (root is None):
        raise ValueError("give exactly one of out or root")
    started = time.perf_counter()
    created = datetime.now(timezone.utc)
    scaler, scaled, trained, embeddings = train_and_embed(catalog, options)
    index = build_index(embeddings, options.index_type, seed=options.seed)
    metrics = {
        "reconstruction_mse": reconstruction_mse(trained.model, scaled),
        **genre_agreement_report(embeddings, scaled, catalog.tracks["genres"].tolist(), sample=options.eval_sample, seed=options.seed),
        "ann_recall@20": 1.0 if options.index_type == "flat" else ann_recall(index, embeddings, seed=options.seed),
    }
    model_version = _model_version(embeddings, created)
    target = out if out is not None else root / model_version
    staged = stage_dir(target)
    try:
        torch.save(trained.model.state_dict(), staged / MODEL)
        scaler_doc = scaler.to_dict() | {"medians": catalog.report.medians}
        (staged / SCALER).write_text(json.dumps(scaler_doc, indent=2))
        np.save(staged / EMBEDDINGS, embeddings, allow_pickle=False)
        save_index(index, staged / INDEX)
        catalog.tracks.to_parquet(staged / TRACKS, index=False)
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
        )
        manifest.build_seconds = round(time.perf_counter() - started, 3)
        finalize_version(staged, target, manifest, replace=replace)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    if root is not None:
        publish(root, target)
    log.info("built %s (%d tracks) in %.1fs", target, manifest.n_tracks, manifest.build_seconds)
    return BuildResult(target, manifest)
