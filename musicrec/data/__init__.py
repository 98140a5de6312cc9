"""Track data: loading, cleaning and the synthetic demo catalogue.

Re-exports are resolved lazily so ``import musicrec.data.schema`` (the serving path's feature order and
single-track imputation) never pulls in pandas.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from musicrec.data.demo import demo_catalog, generate_demo_frame
    from musicrec.data.loader import Catalog, LoadReport, catalog_from_frame, load_csv
    from musicrec.data.schema import FEATURES, MIN_FEATURES, DataError, impute_features

_EXPORTS: dict[str, str] = {
    "FEATURES": "musicrec.data.schema",
    "MIN_FEATURES": "musicrec.data.schema",
    "DataError": "musicrec.data.schema",
    "impute_features": "musicrec.data.schema",
    "Catalog": "musicrec.data.loader",
    "LoadReport": "musicrec.data.loader",
    "catalog_from_frame": "musicrec.data.loader",
    "load_csv": "musicrec.data.loader",
    "demo_catalog": "musicrec.data.demo",
    "generate_demo_frame": "musicrec.data.demo",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
