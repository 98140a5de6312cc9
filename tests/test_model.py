"""The autoencoder's shape, the scaler, and deterministic seeded training."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from musicrec.indexer.errors import ModelFitError
from musicrec.indexer.train import TrainConfig, train_autoencoder
from musicrec.models.autoencoder import AutoEncoder, embed, l2_normalise
from musicrec.models.scaler import StandardScaler


def _linear_shapes(model: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]


def test_autoencoder_has_the_designed_shape() -> None:
    model = AutoEncoder(13)
    assert _linear_shapes(model) == [(13, 128), (128, 64), (64, 32), (32, 64), (64, 128), (128, 13)]
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 4
    assert model(torch.zeros(5, 13)).shape == (5, 13)


def test_input_width_follows_the_features_present() -> None:
    assert _linear_shapes(AutoEncoder(4))[0] == (4, 128)
    assert _linear_shapes(AutoEncoder(4))[-1] == (128, 4)


def test_embeddings_are_unit_float32() -> None:
    rng = np.random.default_rng(0)
    vectors = embed(AutoEncoder(13), rng.normal(size=(50, 13)).astype(np.float32))
    assert vectors.shape == (50, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_l2_normalise_keeps_zero_rows_finite() -> None:
    out = l2_normalise(np.array([[0.0, 0.0], [3.0, 4.0]]))
    np.testing.assert_allclose(out, [[0.0, 0.0], [0.6, 0.8]])


def test_scaler_round_trip_is_exact_and_constant_columns_stay_finite() -> None:
    values = np.array([[1.0, 5.0, 0.1], [2.0, 5.0, 0.3], [4.0, 5.0, 0.2]])
    scaler = StandardScaler.fit(values, ["a", "b", "c"])
    again = StandardScaler.from_dict(scaler.to_dict())
    assert again == scaler
    scaled = again.transform(values)
    assert np.isfinite(scaled).all() and np.allclose(scaled[:, 1], 0.0)
    np.testing.assert_allclose(scaled[:, 0].mean(), 0.0, atol=1e-6)


def _toy_data(n: int = 400, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 13)).astype(np.float32)


def test_training_is_deterministic_for_a_seed() -> None:
    config = TrainConfig(epochs=3, seed=5, progress=False, threads=1)
    first = train_autoencoder(_toy_data(), config)
    second = train_autoencoder(_toy_data(), config)
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert first.history == second.history
    other = train_autoencoder(_toy_data(), TrainConfig(epochs=3, seed=6, progress=False, threads=1))
    assert not torch.equal(first.model.encoder[0].weight, other.model.encoder[0].weight)


def test_training_reduces_loss_and_stops_early() -> None:
    result = train_autoencoder(_toy_data(600), TrainConfig(epochs=200, patience=2, min_delta=0.05, progress=False))
    assert result.history[-1][1] < result.history[0][1]
    assert result.epochs_run < 200
    assert result.val_loss == min(v for _, v in result.history)


def test_diverging_data_raises_a_domain_error() -> None:
    data = _toy_data()
    data[3, 2] = np.nan
    with pytest.raises(ModelFitError, match="diverged"):
        train_autoencoder(data, TrainConfig(epochs=2, progress=False))
