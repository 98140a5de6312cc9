"""Audio features drawn on the server: one inline SVG, no script, no external asset.

Every feature is put on a 0–1 scale so they can share one axis: the ones Spotify already
gives in 0–1 keep that scale; the others (loudness, tempo, duration, time signature) are
scaled between the catalog's 0.5th and 99.5th percentiles, so one five-hour track does not
squash every other bar. The catalog's average is drawn beside each bar. Key and mode are
categories, not amounts (a minor track is not "0 % mode"): they are written as labels
("C♯", "minor") beside the catalog's most common value instead of drawn as bars. The
scales are computed once per Engine (artefact version) and cached by that object.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from markupsafe import Markup, escape

from musicrec.index.engine import Engine

UNIT_FEATURES = frozenset({"danceability", "energy", "speechiness", "acousticness", "instrumentalness",
                           "liveness", "valence", "mode"})
FIXED_RANGES = {"key": (0.0, 11.0)}
CATEGORICAL = frozenset({"key", "mode"})
"""Features that name a category: shown as a label and the catalog's most common value, never as a bar."""
PITCH_CLASSES = ("C", "C♯", "D", "D♯", "E", "F", "F♯", "G", "G♯", "A", "A♯", "B")


@dataclass(frozen=True)
class FeatureScale:
    """Per feature: the raw range mapped to 0–1 and the catalog's mean on that scale."""

    names: tuple[str, ...]
    low: np.ndarray
    high: np.ndarray
    mean_scaled: np.ndarray
    mean_raw: np.ndarray
    most_common: dict[str, float]
    """For each categorical feature, the catalog's most common value (its "average")."""

    def scaled(self, name: str, value: float) -> float:
        i = self.names.index(name)
        span = float(self.high[i] - self.low[i])
        if span <= 0:
            return 0.5
        return float(min(1.0, max(0.0, (value - float(self.low[i])) / span)))

    @classmethod
    def of(cls, features: np.ndarray, names: tuple[str, ...]) -> "FeatureScale":
        raw = np.asarray(features, dtype=np.float64)
        low = np.empty(len(names))
        high = np.empty(len(names))
        for i, name in enumerate(names):
            if name in UNIT_FEATURES:
                low[i], high[i] = 0.0, 1.0
            elif name in FIXED_RANGES:
                low[i], high[i] = FIXED_RANGES[name]
            elif len(raw):
                low[i], high[i] = np.percentile(raw[:, i], [0.5, 99.5])
            else:
                low[i], high[i] = 0.0, 1.0
        span = np.where(high > low, high - low, 1.0)
        scaled = np.clip((raw - low) / span, 0.0, 1.0) if len(raw) else np.zeros((1, len(names)))
        most_common = {}
        for i, name in enumerate(names):
            if name in CATEGORICAL and len(raw):
                values, counts = np.unique(np.round(raw[:, i]), return_counts=True)
                most_common[name] = float(values[np.argmax(counts)])
        return cls(tuple(names), low, high, scaled.mean(axis=0), raw.mean(axis=0) if len(raw) else np.zeros(len(names)),
                   most_common)


_scales: "weakref.WeakKeyDictionary[Engine, FeatureScale]" = weakref.WeakKeyDictionary()
_scales_lock = threading.Lock()


def scale_for(engine: Engine) -> FeatureScale:
    """The engine's feature scale, computed on its first page and kept with it (once per version, not per request)."""
    scale = _scales.get(engine)
    if scale is None:
        with _scales_lock:
            scale = _scales.get(engine)
            if scale is None:
                scale = FeatureScale.of(engine.tracks.features, engine.tracks.feature_names)
                _scales[engine] = scale
    return scale


def display_value(name: str, value: float | None) -> str:
    """A raw feature value as a listener reads it (BPM, dB, m:ss, pitch class)."""
    if value is None or not np.isfinite(value):
        return "n/a"
    if name == "key":
        k = int(round(value))
        return PITCH_CLASSES[k] if 0 <= k < 12 else "unknown"
    if name == "mode":
        return "major" if value >= 0.5 else "minor"
    if name == "tempo":
        return f"{value:.0f} BPM"
    if name == "loudness":
        return f"{value:.1f} dB"
    if name == "duration_ms":
        return duration_text(value)
    if name == "time_signature":
        return f"{int(round(value))}/4"
    return f"{value:.2f}"


def duration_text(ms: float | None) -> str:
    if ms is None or not np.isfinite(ms) or ms <= 0:
        return "unknown"
    seconds = int(round(ms / 1000))
    return f"{seconds // 60}:{seconds % 60:02d}"


def label(name: str) -> str:
    return {"duration_ms": "Duration", "time_signature": "Time signature"}.get(name, name.replace("_", " ").capitalize())


@dataclass(frozen=True)
class FeatureRow:
    name: str
    label: str
    value: str          # the raw value, for people
    scaled: float | None  # None: unknown, or a categorical feature (no bar)
    average: float      # catalog mean, 0–1 scale
    average_value: str  # the catalog's mean, or for a categorical feature its most common value
    categorical: bool = False


def feature_rows(scale: FeatureScale, values: Mapping[str, float | None]) -> list[FeatureRow]:
    rows = []
    for i, name in enumerate(scale.names):
        raw = values.get(name)
        known = raw is not None and np.isfinite(raw)
        if name in CATEGORICAL:
            common = scale.most_common.get(name)
            rows.append(FeatureRow(name, label(name), display_value(name, raw), None, float(scale.mean_scaled[i]),
                                   f"most often {display_value(name, common)}" if common is not None else "n/a",
                                   categorical=True))
            continue
        rows.append(FeatureRow(name, label(name), display_value(name, raw),
                               scale.scaled(name, float(raw)) if known else None,
                               float(scale.mean_scaled[i]), display_value(name, float(scale.mean_raw[i]))))
    return rows


ROW_H = 26
LABEL_W = 125
BAR_W = 240
VALUE_W = 80
TOP = 30


def feature_chart(rows: list[FeatureRow], title: str) -> Markup:
    """Horizontal bars (this track) with a tick for the catalog average, as an escaped SVG string."""
    width = LABEL_W + BAR_W + VALUE_W
    height = TOP + ROW_H * len(rows) + 6
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'aria-labelledby="chart-title" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="chart-title">{escape(title)}</title>',
        f'<rect class="legend-bar" x="{LABEL_W}" y="6" width="14" height="10"/>',
        f'<text class="legend" x="{LABEL_W + 20}" y="15">this track</text>',
        f'<line class="avg" x1="{LABEL_W + 105}" y1="4" x2="{LABEL_W + 105}" y2="18"/>',
        f'<text class="legend" x="{LABEL_W + 113}" y="15">catalog average</text>',
    ]
    for i, row in enumerate(rows):
        y = TOP + i * ROW_H
        parts.append(f'<g class="feature" data-feature="{escape(row.name)}">')
        parts.append(f'<text class="label" x="{LABEL_W - 8}" y="{y + 15}" text-anchor="end">{escape(row.label)}</text>')
        if row.categorical:  # a category: its name, and the catalog's most common one, instead of a bar
            parts.append(f'<text class="category" x="{LABEL_W}" y="{y + 15}">{escape(row.value)}</text>')
            parts.append(f'<text class="value" x="{LABEL_W + BAR_W + 8}" y="{y + 15}">{escape(row.average_value)}</text>')
            parts.append("</g>")
            continue
        parts.append(f'<rect class="track" x="{LABEL_W}" y="{y + 3}" width="{BAR_W}" height="16" rx="3"/>')
        if row.scaled is not None:
            parts.append(f'<rect class="bar" x="{LABEL_W}" y="{y + 3}" width="{row.scaled * BAR_W:.1f}" height="16" rx="3">'
                         f'<title>{escape(row.label)}: {escape(row.value)}</title></rect>')
        avg_x = LABEL_W + row.average * BAR_W
        parts.append(f'<line class="avg" x1="{avg_x:.1f}" y1="{y}" x2="{avg_x:.1f}" y2="{y + 22}">'
                     f'<title>catalog average: {escape(row.average_value)}</title></line>')
        parts.append(f'<text class="value" x="{LABEL_W + BAR_W + 8}" y="{y + 15}">{escape(row.value)}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    return Markup("".join(parts))
