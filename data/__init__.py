"""Track data: loading, cleaning and the synthetic demo catalogue.

Re-exports are resolved lazily so ``import data.schema`` (the serving path's feature order and
single-track imputation) never pulls in pandas.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from data.demo import demo_catalog, generate_demo_frame
    from data.loader import Catalog, LoadReport, catalog_from_frame, load_csv
    from data.schema import FEATURES, MIN_FEATURES, DataError, impute_features

_EXPORTS: dict[str, str] = {
    "FEATURES": "data.schema",
    "MIN_FEATURES": "data.schema",
    "DataError": "data.schema",
    "impute_features": "data.schema",
    "Catalog": "data.loader",
    "LoadReport": "data.loader",
    "catalog_from_frame": "data.loader",
    "load_csv": "data.loader",
    "demo_catalog": "data.demo",
    "generate_demo_frame": "data.demo",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
