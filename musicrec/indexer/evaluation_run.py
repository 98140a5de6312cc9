"""`indexer eval`: recompute an artefact set's quality figures from the files alone."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from musicrec.index.artifacts import MODEL, SCALER, load_artifacts
from musicrec.indexer.evaluate import ann_recall, genre_agreement_report
from musicrec.models.autoencoder import AutoEncoder, reconstruction_mse
from musicrec.models.scaler import StandardScaler


def load_model(version_dir: Path, n_features: int) -> AutoEncoder:
    model = AutoEncoder(n_features=n_features)
    model.load_state_dict(torch.load(version_dir / MODEL, weights_only=True))
    model.eval()
    return model


def evaluate_artifacts(path: Path, *, sample: int = 2000, seed: int = 0) -> dict[str, float]:
    artifacts = load_artifacts(path)
    scaler = StandardScaler.from_dict(json.loads((artifacts.path / SCALER).read_text()))
    scaled = scaler.transform(artifacts.tracks.features.astype(np.float64))
    model = load_model(artifacts.path, len(scaler.features))
    return {
        "reconstruction_mse": reconstruction_mse(model, scaled),
        **genre_agreement_report(np.asarray(artifacts.embeddings), scaled, list(artifacts.tracks.genres), sample=sample, seed=seed),
        "ann_recall@20": ann_recall(artifacts.index, np.asarray(artifacts.embeddings), sample=min(sample, 1000), seed=seed),
    }
