"""Autoencoder training: seeded, early-stopped, with a progress bar and per-epoch losses."""
from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from musicrec.data.schema import MIN_TRACKS
from musicrec.indexer.errors import ModelFitError
from musicrec.models.autoencoder import AutoEncoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 40
    batch_size: int = 256
    learning_rate: float = 2e-3
    val_fraction: float = 0.1
    patience: int = 5
    min_delta: float = 1e-4
    seed: int = 42
    threads: int | None = None  # None: all cores this process may use
    progress: bool = True


@dataclass
class TrainResult:
    model: AutoEncoder
    train_loss: float
    val_loss: float
    best_epoch: int
    epochs_run: int
    seconds: float
    history: list[tuple[float, float]] = field(default_factory=list)


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def train_autoencoder(scaled: np.ndarray, config: TrainConfig = TrainConfig()) -> TrainResult:
    """Train on standardised rows; returns the weights of the best validation epoch.

    Determinism: one seed drives the split, the initial weights and the shuffles, and
    torch runs single-process deterministic kernels, so the same data and seed give the
    same weights on the same machine and thread count.
    """
    if len(scaled) < MIN_TRACKS:
        raise ModelFitError(f"need at least {MIN_TRACKS} tracks to train, got {len(scaled)}")
    torch.set_num_threads(config.threads or default_threads())
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(scaled))
    n_val = max(1, int(len(scaled) * config.val_fraction))
    x_val = torch.from_numpy(np.ascontiguousarray(scaled[order[:n_val]], dtype=np.float32))
    x_train = torch.from_numpy(np.ascontiguousarray(scaled[order[n_val:]], dtype=np.float32))

    model = AutoEncoder(n_features=scaled.shape[1])
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loss_fn = nn.MSELoss()
    generator = torch.Generator().manual_seed(config.seed)
    best = (float("inf"), 0, copy.deepcopy(model.state_dict()), float("inf"))
    last_gain_epoch, last_gain_loss = 0, float("inf")
    history: list[tuple[float, float]] = []
    started = time.perf_counter()
    bar = tqdm(range(1, config.epochs + 1), desc="training", unit="epoch", disable=not config.progress, leave=False)
    for epoch in bar:
        model.train()
        perm = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for start in range(0, len(x_train), config.batch_size):
            batch = x_train[perm[start:start + config.batch_size]]
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(model(batch), batch)
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        train_loss = total / len(x_train)
        model.eval()
        with torch.no_grad():
            val_loss = float(loss_fn(model(x_val), x_val))
        if not (np.isfinite(train_loss) and np.isfinite(val_loss)):
            raise ModelFitError(f"training diverged at epoch {epoch} (train {train_loss}, val {val_loss})")
        history.append((train_loss, val_loss))
        bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
        # The bar's postfix shows the losses; an INFO line per epoch would break the bar on every epoch.
        log.debug("epoch %d/%d train_loss=%.5f val_loss=%.5f", epoch, config.epochs, train_loss, val_loss)
        if val_loss < best[0]:
            best = (val_loss, epoch, copy.deepcopy(model.state_dict()), train_loss)
        # Patience counts epochs without a *meaningful* gain; the best weights are kept regardless.
        if val_loss < last_gain_loss - config.min_delta:
            last_gain_epoch, last_gain_loss = epoch, val_loss
        elif epoch - last_gain_epoch >= config.patience:
            log.info("early stop at epoch %d: no validation gain above %g for %d epochs",
                     epoch, config.min_delta, config.patience)
            break
    bar.close()
    val_loss, best_epoch, state, train_loss = best
    model.load_state_dict(state)
    model.eval()
    return TrainResult(model, train_loss, val_loss, best_epoch, len(history), time.perf_counter() - started, history)
