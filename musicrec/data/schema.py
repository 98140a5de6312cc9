"""Dataset vocabulary shared by the loader, the indexer and the service.

Kept free of pandas on purpose: the serving path needs the feature order and the
single-track imputation rule without paying for a pandas import.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

FEATURES: tuple[str, ...] = (
    "danceability",
    "energy",
    "key",
    "loudness",
    "mode",
    "speechiness",
    "acousticness",
    "instrumentalness",
    "liveness",
    "valence",
    "tempo",
    "duration_ms",
    "time_signature",
)
"""Canonical feature order; every feature vector in the project follows it."""

MIN_FEATURES = 3
"""Fewer features than this cannot place a track meaningfully, so loading refuses."""

MIN_TRACKS = 10
"""Fewer tracks than this leave too little to train and validate on, so a build refuses the file."""

FEATURE_RANGES: Mapping[str, tuple[float, float]] = {
    **{f: (0.0, 1.0) for f in ("danceability", "energy", "speechiness", "acousticness", "instrumentalness",
                               "liveness", "valence", "mode")},
    "key": (-1.0, 11.0),                   # pitch class; -1 = no key detected
    "loudness": (-100.0, 20.0),            # dB, about -60..0 in practice (-49.5..4.5 in the 114k file)
    "tempo": (0.0, 1000.0),                # BPM; 0 means unknown (imputed)
    "duration_ms": (0.0, 86_400_000.0),    # up to a day; 0 means unknown (imputed)
    "time_signature": (0.0, 16.0),         # beats per bar; 0 means unknown (imputed)
}
"""Inclusive bounds of a plausible value, per feature. A value outside them is a bad row, not data:
one ``danceability=1e308`` made the scaler's scale infinite and zeroed that feature for the
whole catalog. The bounds are generous (Spotify documents narrower ones) so real files pass."""

ZERO_MEANS_MISSING: frozenset[str] = frozenset({"tempo", "time_signature", "duration_ms"})
"""Features where the source writes 0 for "unknown" (no real track has 0 BPM or 0 ms)."""


class DataError(Exception):
    """Bad input data.

    ``str(err)`` is one line naming the file, and the column and row when known, e.g.
    ``data.csv: column 'energy', row 17: non-numeric value 'abc'`` (row = 1-based data row,
    header not counted), so a CLI can print it as-is and a user can find the culprit.
    """

    def __init__(self, path: str, message: str, *, column: str | None = None, row: int | None = None) -> None:
        self.path = str(path)
        self.message = " ".join(str(message).split())  # one line, whatever the parser said
        self.column = column
        self.row = row
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.column is not None:
            where.append(f"column '{self.column}'")
        if self.row is not None:
            where.append(f"row {self.row}")
        head = f"{self.path}: {', '.join(where)}" if where else self.path
        return f"{head}: {self.message}"

    def __str__(self) -> str:
        return self._render()

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only fields would be lost by the default Exception pickling.
        return (_rebuild_data_error, (self.path, self.message, self.column, self.row))


def _rebuild_data_error(path: str, message: str, column: str | None, row: int | None) -> DataError:
    return DataError(path, message, column=column, row=row)


def impute_features(
    values: Mapping[str, float | None], medians: Mapping[str, float], features: list[str]
) -> list[float]:
    """Feature vector for one new track, filled by the same rules the catalogue was cleaned with.

    A feature that is absent, None, NaN, or a 0 that means "unknown" (tempo, time_signature,
    duration_ms) takes the catalogue median, so a new track lands where the index expects it.
    Raises ValueError for a non-numeric or infinite value, or a feature with no median.
    """
    out: list[float] = []
    for name in features:
        raw = values.get(name)
        value: float | None = None
        if raw is not None:
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise ValueError(f"feature {name!r}: non-numeric value {raw!r}") from None
            if math.isinf(value):
                raise ValueError(f"feature {name!r}: non-finite value {raw!r}")
            if math.isnan(value) or (value == 0.0 and name in ZERO_MEANS_MISSING):
                value = None
        if value is None:
            if name not in medians:
                raise ValueError(f"feature {name!r}: value missing and no median to impute it")
            value = float(medians[name])
        out.append(value)
    return out
