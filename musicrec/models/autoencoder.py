"""The MLP autoencoder that turns audio features into 32-d track embeddings.

Pure model code: no file I/O, no data loading. The indexer trains it; the service
imports it only when it has to embed a track that is not in the catalog.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

LATENT_DIM = 32
HIDDEN = (128, 64)


class AutoEncoder(nn.Module):
    """n→128→64→32→64→128→n with ReLU between layers (the design's exact shape).

    The latent layer is linear: embeddings are compared by cosine similarity after
    L2 normalisation, so clipping negatives with a ReLU there would waste half the space.
    """

    def __init__(self, n_features: int = 13, latent_dim: int = LATENT_DIM) -> None:
        super().__init__()
        if n_features < 1:
            raise ValueError(f"n_features must be positive, got {n_features}")
        h1, h2 = HIDDEN
        self.n_features = n_features
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(
            nn.Linear(n_features, h1), nn.ReLU(),
            nn.Linear(h1, h2), nn.ReLU(),
            nn.Linear(h2, latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, h2), nn.ReLU(),
            nn.Linear(h2, h1), nn.ReLU(),
            nn.Linear(h1, n_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32; an all-zero row stays zero instead of NaN."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))


@torch.no_grad()
def embed(model: AutoEncoder, scaled: np.ndarray, batch_size: int = 65_536) -> np.ndarray:
    """Encoder output for already-scaled rows, L2-normalised float32 (what the index stores)."""
    model.eval()
    out = np.empty((len(scaled), model.latent_dim), dtype=np.float32)
    for start in range(0, len(scaled), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(scaled[start:start + batch_size], dtype=np.float32))
        out[start:start + len(chunk)] = model.encoder(chunk).numpy()
    return l2_normalise(out)


@torch.no_grad()
def reconstruction_mse(model: AutoEncoder, scaled: np.ndarray) -> float:
    """Mean squared reconstruction error over all rows and features (in scaled units)."""
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32))
    return float(torch.mean((model(x) - x) ** 2))
