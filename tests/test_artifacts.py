"""Artefact sets: manifest contract, round trip, atomic output, refusal of corrupt sets."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from musicrec.index.artifacts import (
    CURRENT, EMBEDDINGS, INDEX, MANIFEST, NEIGHBOURS, TRACK_LOOKUPS, TRACKS, ArtifactError, load_artifacts, read_manifest,
    resolve_version_dir,
)
from musicrec.index.recommend import NeighbourMemo, Query, Recommender, Seed
from musicrec.index.faiss_index import build_index, exact_search
from musicrec.indexer.pipeline import BuildOptions, build_version

FAST = BuildOptions(epochs=2, seed=1, progress=False, eval_sample=200)


def test_manifest_holds_the_contract_fields(demo_artifacts: Path, demo_catalog_small) -> None:
    raw = json.loads((demo_artifacts / MANIFEST).read_text())
    for field in ("model_version", "created_at", "n_tracks", "dim", "features", "source", "demo", "index_type",
                  "train_loss", "val_loss", "checksums"):
        assert field in raw, field
    assert raw["n_tracks"] == len(demo_catalog_small.tracks)
    assert raw["dim"] == 32 and raw["demo"] is True and raw["index_type"] == "ivf"  # the one default
    assert raw["features"] == list(demo_catalog_small.features)
    assert set(raw["checksums"]) >= {EMBEDDINGS, INDEX, TRACKS}
    for key in ("genre_agreement@10_embedding", "genre_agreement@10_raw", "reconstruction_mse", "ann_recall@20"):
        assert 0.0 <= raw["metrics"][key] <= 1.0 or key == "reconstruction_mse"


def test_round_trip_gives_the_same_neighbours(demo_artifacts: Path) -> None:
    loaded = load_artifacts(demo_artifacts)
    emb = np.asarray(loaded.embeddings)
    assert isinstance(loaded.embeddings, np.memmap)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    queries = emb[:25]
    _, via_index = loaded.index.search(queries, 10)
    _, exact = exact_search(emb, queries, 10)
    assert (via_index[:, 0] == np.arange(25)).all()
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(via_index, exact)]) == 1.0
    assert loaded.tracks.ids[0] == loaded.tracks.ids[loaded.tracks.row_of[loaded.tracks.ids[0]]]


def test_loading_imports_no_torch(demo_artifacts: Path) -> None:
    code = ("import sys; from musicrec.index.artifacts import load_artifacts; "
            f"load_artifacts({str(demo_artifacts)!r}); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_the_build_precomputes_every_tracks_neighbours(demo_artifacts: Path, tmp_path: Path) -> None:
    """The table is the ANN answer of every row, so serving from it answers exactly as searching would."""
    loaded = load_artifacts(demo_artifacts)
    assert NEIGHBOURS in loaded.manifest.checksums and loaded.neighbours.dtype == np.int32
    assert not loaded.neighbours.flags.writeable  # memory-mapped read-only: shared by the workers' page cache
    rows = np.arange(0, len(loaded.tracks), 37)
    _, searched = loaded.index.search(np.asarray(loaded.embeddings)[rows], loaded.neighbours.shape[1])
    np.testing.assert_array_equal(loaded.neighbours[rows], searched)

    with_table = Recommender(loaded.embeddings, loaded.index, loaded.tracks, neighbours=loaded.neighbours)
    on_demand = Recommender(loaded.embeddings, loaded.index, loaded.tracks)
    assert with_table._memo.filled.all() and not on_demand._memo.filled.any()
    for first in range(0, 200, 20):
        query = Query(seeds=[Seed(r, 1.0) for r in range(first, first + 5)], k=10, negatives=[first + 7])
        assert with_table.recommend(query) == on_demand.recommend(query)

    # A version built before the table (no checksum for it) still loads, and searches on demand.
    older = _copy(demo_artifacts, tmp_path / "older")
    (older / NEIGHBOURS).unlink()
    manifest = json.loads((older / MANIFEST).read_text())
    del manifest["checksums"][NEIGHBOURS]
    (older / MANIFEST).write_text(json.dumps(manifest))
    assert load_artifacts(older).neighbours is None
    # A table that does not fit the index is not used (the memo searches instead), and says so.
    wrong = NeighbourMemo.for_index(loaded.index, len(loaded.tracks), 64, table=np.zeros((3, 5), np.int32))
    assert not wrong.filled.any()


def test_the_build_saves_the_track_tables_lookups(demo_artifacts: Path, tmp_path: Path) -> None:
    """The service loads the table's lookups instead of deriving them (start-up time at 1M tracks)."""
    from musicrec.index.catalog import TrackTable
    from tests.test_catalog import assert_same_table

    loaded = load_artifacts(demo_artifacts)
    assert TRACK_LOOKUPS in loaded.manifest.checksums
    assert_same_table(loaded.tracks, TrackTable.from_parquet(demo_artifacts / TRACKS, loaded.manifest.features))
    # A version built before the file (no checksum for it) still loads, deriving them as before.
    older = _copy(demo_artifacts, tmp_path / "older")
    (older / TRACK_LOOKUPS).unlink()
    manifest = json.loads((older / MANIFEST).read_text())
    del manifest["checksums"][TRACK_LOOKUPS]
    (older / MANIFEST).write_text(json.dumps(manifest))
    assert_same_table(load_artifacts(older).tracks, loaded.tracks)
    # An unreadable file is refused with the artefact error, even when checksums are not verified.
    broken = _copy(demo_artifacts, tmp_path / "broken")
    (broken / TRACK_LOOKUPS).write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="track_lookups.npz: checksum"):
        load_artifacts(broken)
    with pytest.raises(ArtifactError, match="cannot read artefacts"):
        load_artifacts(broken, verify=False)


def test_corrupt_or_incomplete_sets_are_refused(demo_artifacts: Path, tmp_path: Path) -> None:
    corrupt = _copy(demo_artifacts, tmp_path / "corrupt")
    emb = np.load(corrupt / EMBEDDINGS)
    emb[0, 0] += 1.0
    np.save(corrupt / EMBEDDINGS, emb)
    with pytest.raises(ArtifactError, match="checksum"):
        load_artifacts(corrupt)
    table = _copy(demo_artifacts, tmp_path / "table")
    np.save(table / NEIGHBOURS, np.zeros_like(np.load(table / NEIGHBOURS)))
    with pytest.raises(ArtifactError, match="neighbours.npy: checksum"):
        load_artifacts(table)
    missing = _copy(demo_artifacts, tmp_path / "missing")
    (missing / INDEX).unlink()
    with pytest.raises(ArtifactError, match="index.faiss is missing"):
        load_artifacts(missing)
    mismatch = _copy(demo_artifacts, tmp_path / "mismatch")
    manifest = json.loads((mismatch / MANIFEST).read_text())
    manifest["n_tracks"] += 1
    (mismatch / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="manifest says|expected 1501"):
        load_artifacts(mismatch)
    with pytest.raises(ArtifactError, match="no such artefact directory"):
        load_artifacts(tmp_path / "nowhere")


def test_output_is_atomic_and_never_overwritten_silently(demo_catalog_small, tmp_path: Path) -> None:
    out = tmp_path / "v"
    first = build_version(demo_catalog_small, FAST, out=out)
    with pytest.raises(ArtifactError, match="already exists"):
        build_version(demo_catalog_small, FAST, out=out)
    assert read_manifest(out).model_version == first.manifest.model_version
    # A failure while writing (a track table parquet cannot store) leaves nothing behind.
    broken = type(demo_catalog_small)(
        tracks=demo_catalog_small.tracks.assign(name=[object()] * len(demo_catalog_small.tracks)),
        features=demo_catalog_small.features, report=demo_catalog_small.report, demo=True, source=None)
    with pytest.raises(Exception):
        build_version(broken, FAST, out=tmp_path / "w")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]
    replaced = build_version(demo_catalog_small, BuildOptions(epochs=2, seed=2, progress=False, eval_sample=200),
                             out=out, replace=True)
    assert read_manifest(out).seed == 2 == replaced.manifest.seed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]


def test_root_layout_switches_current(demo_catalog_small, tmp_path: Path) -> None:
    one = build_version(demo_catalog_small, FAST, root=tmp_path)
    assert resolve_version_dir(tmp_path) == one.path.resolve()
    two = build_version(demo_catalog_small, BuildOptions(epochs=2, seed=9, progress=False, eval_sample=200),
                        root=tmp_path)
    assert (tmp_path / CURRENT).is_symlink()
    assert load_artifacts(tmp_path).model_version == two.manifest.model_version != one.manifest.model_version


@pytest.mark.parametrize("index_type", ["hnsw", "ivf"])
def test_approximate_indexes_find_the_exact_neighbours(index_type: str) -> None:
    rng = np.random.default_rng(0)  # clustered, as real embeddings are (uniform noise defeats any ANN)
    centres = rng.normal(size=(40, 32))
    vectors = (centres[rng.integers(0, 40, 5000)] + 0.35 * rng.normal(size=(5000, 32))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = build_index(vectors, index_type)
    _, found = index.search(vectors[:50], 20)
    _, truth = exact_search(vectors, vectors[:50], 20)
    recall = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(found, truth)])
    assert recall >= 0.9, recall


def test_nan_embeddings_are_refused_even_with_matching_checksums(demo_artifacts: Path, tmp_path: Path) -> None:
    from musicrec.index.artifacts import finalize_version

    staged = _copy(demo_artifacts, tmp_path / "staged")
    emb = np.load(staged / EMBEDDINGS)
    emb[4] = np.nan
    np.save(staged / EMBEDDINGS, emb)
    (staged / MANIFEST).unlink()
    finalize_version(staged, tmp_path / "nan", read_manifest(demo_artifacts))  # re-checksummed
    with pytest.raises(ArtifactError, match="NaN"):
        load_artifacts(tmp_path / "nan")


def test_non_finite_embeddings_stop_the_build_with_a_fit_error(demo_catalog_small, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """With the IVF default, faiss would fail training its clusters on NaN with a C++ traceback."""
    from musicrec.indexer.errors import ModelFitError
    from musicrec.models import autoencoder

    monkeypatch.setattr("musicrec.indexer.pipeline.embed",
                        lambda model, scaled: np.full_like(autoencoder.embed(model, scaled), np.nan))
    with pytest.raises(ModelFitError, match="NaN or infinite embeddings"):
        build_version(demo_catalog_small, FAST, out=tmp_path / "v")
    assert not (tmp_path / "v").exists()


# -- contents, not only checksums (issue 13) ------------------------------------------------------

def _rewritten(src: Path, dst: Path, name: str, write) -> Path:
    """A copy of ``src`` whose file ``name`` is replaced by ``write(path)``, with the manifest's checksum
    recomputed: what a buggy build or a hand edit produces, which checksums alone cannot catch."""
    from musicrec.index.artifacts import sha256_file

    version = _copy(src, dst)
    write(version / name)
    manifest = json.loads((version / MANIFEST).read_text())
    manifest["checksums"][name] = sha256_file(version / name)
    (version / MANIFEST).write_text(json.dumps(manifest))
    return version


def _npy(array: np.ndarray):
    return lambda path: np.save(path, array, allow_pickle=False)


def _edit_npy(name: str, edit):
    def write(path: Path) -> None:
        array = np.load(path)
        np.save(path, edit(array), allow_pickle=False)
    return write


def _edit_header(old: bytes, new: bytes):
    def write(path: Path) -> None:
        raw = path.read_bytes()
        assert old in raw[:128]
        path.write_bytes(raw.replace(old, new, 1))
    return write


def _edit_json(edit):
    def write(path: Path) -> None:
        doc = json.loads(path.read_text())
        edit(doc)
        path.write_text(json.dumps(doc))
    return write


def _edit_parquet(edit):
    def write(path: Path) -> None:
        import pandas as pd

        frame = pd.read_parquet(path)
        edit(frame)
        frame.to_parquet(path, index=False)
    return write


def _set(frame, column: str, value) -> None:
    frame.loc[3, column] = value


def _put(doc: dict, key: str, index: int, value) -> None:
    doc[key][index] = value


@pytest.mark.parametrize(("name", "write", "match"), [
    (NEIGHBOURS, _edit_npy(NEIGHBOURS, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 7, len(a) + 5, a)),
     r"neighbours.npy holds values -?\d+\.\.\d+, outside -1\.\.1499"),
    (NEIGHBOURS, _edit_npy(NEIGHBOURS, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 7, -9, a)),
     "neighbours.npy holds values -9"),
    (NEIGHBOURS, _edit_npy(NEIGHBOURS, lambda a: a.astype(np.int64)), "neighbours.npy has dtype int64"),
    (NEIGHBOURS, _edit_npy(NEIGHBOURS, lambda a: a[:-1]), "neighbours.npy has shape 1499"),
    (NEIGHBOURS, _edit_npy(NEIGHBOURS, lambda a: a[:, 0]), "neighbours.npy has shape 1500, expected 1500×any"),
    (EMBEDDINGS, _edit_npy(EMBEDDINGS, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 3, np.inf, a)
                           .astype(np.float32)), "embeddings.npy contains NaN or infinite"),
    (EMBEDDINGS, _edit_npy(EMBEDDINGS, lambda a: a.astype(np.float64)), "embeddings.npy has dtype float64"),
    # Broken .npy headers: errors numpy raises outside ValueError, which load_artifacts let through.
    (EMBEDDINGS, _edit_header(b"(1500, 32)", b"(-1500, 32)"), "cannot read artefacts: OverflowError"),
    (EMBEDDINGS, _edit_header(b"(1500, 32)", b"(((((((((("), "cannot read artefacts: TokenError"),
    (EMBEDDINGS, _edit_header(b"'<f4'", b"'<zz'"), "cannot read artefacts: ValueError"),
    (TRACKS, _edit_parquet(lambda f: _set(f, "energy", np.nan)), "tracks.parquet features contains NaN"),
    (TRACKS, _edit_parquet(lambda f: _set(f, "tempo", np.inf)), "tracks.parquet features contains NaN"),
    (TRACKS, _edit_parquet(lambda f: _set(f, "popularity", 400)), "tracks.parquet popularity holds values 0..400"),
    ("scaler.json", _edit_json(lambda d: _put(d, "scale", 2, 0.0)), "scale <= 0"),
    ("scaler.json", _edit_json(lambda d: _put(d, "mean", 1, float("inf"))), "scaler.json mean contains NaN"),
    ("scaler.json", _edit_json(lambda d: _put(d, "scale", 0, "x")), "'scale' is not a list of numbers"),
    ("scaler.json", _edit_json(lambda d: d.__setitem__("mean", d["mean"][:-1])), "scaler.json mean has shape 12"),
    (TRACK_LOOKUPS, lambda path: np.savez(path, **{**np.load(path), "name_order": np.arange(1500) + 3}),
     "name_order out of range"),
], ids=["neighbour-past-end", "neighbour-negative", "neighbour-dtype", "neighbour-rows", "neighbour-1d",
        "embedding-inf", "embedding-dtype", "npy-negative-shape", "npy-cut-header", "npy-bad-dtype",
        "feature-nan", "feature-inf", "popularity-range", "scale-zero", "mean-inf", "scale-not-number",
        "mean-short", "lookup-range"])
def test_bad_contents_are_refused_even_with_matching_checksums(demo_artifacts: Path, tmp_path: Path, name: str,
                                                               write, match: str) -> None:
    """An array that would make serving fail (or serve nonsense) is refused at load, not met by a request."""
    version = _rewritten(demo_artifacts, tmp_path / "v", name, write)
    with pytest.raises(ArtifactError, match=match):
        load_artifacts(version)


@pytest.mark.parametrize(("array", "kwargs", "match"), [
    (np.zeros((3, 2), np.float32), {"dtype": np.float64, "shape": (3, 2)}, "dtype float32, expected float64"),
    (np.zeros((3, 2), np.float32), {"dtype": np.float32, "shape": (3,)}, "shape 3×2, expected 3"),
    (np.zeros((3, 2), np.float32), {"dtype": np.float32, "shape": (4, None)}, "shape 3×2, expected 4×any"),
    (np.array([0.0, np.nan], np.float32), {"dtype": np.float32, "shape": (2,), "finite": True}, "NaN"),
    (np.array([0, 5, 3], np.int32), {"dtype": np.int32, "shape": (3,), "within": (0, 4)}, "values 0..5, outside 0..4"),
], ids=["dtype", "ndim", "rows", "nan", "range"])
def test_check_array_names_what_is_wrong(tmp_path: Path, array: np.ndarray, kwargs: dict, match: str) -> None:
    from musicrec.index.artifacts import check_array

    with pytest.raises(ArtifactError, match=match):
        check_array(tmp_path, "table.npy", array, **kwargs)
    ok = {**kwargs, "shape": array.shape, "dtype": array.dtype, "finite": False, "within": None}
    assert check_array(tmp_path, "table.npy", array, **ok) is array
