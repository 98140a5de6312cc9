"""Feature standardisation fitted on the catalog and shipped with the model.

Plain numpy so the service can scale a new track without pandas; stored as JSON with
full float precision, so a track is embedded exactly as it was at build time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class StandardScaler:
    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def fit(cls, values: np.ndarray, features: list[str] | tuple[str, ...]) -> "StandardScaler":
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(features):
            raise ValueError(f"expected a (n, {len(features)}) array, got {values.shape}")
        mean = values.mean(axis=0)
        std = values.std(axis=0)
        # A constant column carries no information; scale 1 keeps it finite (it becomes 0).
        std = np.where(std > 1e-12, std, 1.0)
        return cls(tuple(features), tuple(float(m) for m in mean), tuple(float(s) for s in std))

    def transform(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if values.shape[-1] != len(self.features):
            raise ValueError(f"expected {len(self.features)} features, got {values.shape[-1]}")
        return ((values - np.asarray(self.mean)) / np.asarray(self.scale)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "standard", "features": list(self.features), "mean": list(self.mean), "scale": list(self.scale)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "StandardScaler":
        if raw.get("kind") != "standard":
            raise ValueError(f"unknown scaler kind {raw.get('kind')!r}")
        features, mean, scale = raw["features"], raw["mean"], raw["scale"]
        if not (len(features) == len(mean) == len(scale)):
            raise ValueError("scaler arrays have different lengths")
        return cls(tuple(features), tuple(float(m) for m in mean), tuple(float(s) for s in scale))
