"""Artefact fixtures shared by the indexer, index and service tests (imported by conftest)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MUSICREC_SHARED_DATA", REPO.parent / "shared" / "data"))
REAL_CSV = SHARED_DATA / "spotify_tracks_114k.csv.gz"


def require_real_csv() -> Path:
    if not REAL_CSV.is_file():
        pytest.skip(f"the 114k catalog is not at {REAL_CSV} (set MUSICREC_SHARED_DATA); CI must have it")
    return REAL_CSV


@pytest.fixture(scope="session")
def demo_catalog_small():
    from musicrec.data.demo import demo_catalog

    return demo_catalog(1500, seed=11)


@pytest.fixture(scope="session")
def demo_artifacts(tmp_path_factory: pytest.TempPathFactory, demo_catalog_small) -> Path:
    """A small demo version (few epochs): fast enough to share across the whole session."""
    from musicrec.indexer.pipeline import BuildOptions, build_version

    out = tmp_path_factory.mktemp("demo-artifacts") / "v1"
    build_version(demo_catalog_small, BuildOptions(epochs=4, seed=3, progress=False, eval_sample=300), out=out)
    return out


@pytest.fixture(scope="session")
def real_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full 114k build (the one integration test that trains on real data), shared."""
    from musicrec.data.loader import load_csv
    from musicrec.indexer.pipeline import BuildOptions, build_version

    csv = require_real_csv()
    root = tmp_path_factory.mktemp("real-artifacts")
    result = build_version(load_csv(csv), BuildOptions(progress=False), root=root)
    return result.path
