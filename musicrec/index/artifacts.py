"""The versioned artefact set: file names, manifest, atomic publication, loading.

A version is one directory holding every file plus ``manifest.json`` (with sha256
checksums). Versions are written to a temporary sibling and renamed into place, so a
reader never sees half an output; a root of versions has a ``current`` symlink that is
replaced atomically. Loading imports no torch: the service memory-maps what it can.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import msgspec
import numpy as np

from musicrec.index import colisten
from musicrec.index.catalog import TrackTable
from musicrec.index.colisten import ColistenTable
from musicrec.index.faiss_index import load_index
from musicrec.index.recommend import ScoringParams

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL = "model.pth"
SCALER = "scaler.json"
EMBEDDINGS = "embeddings.npy"
INDEX = "index.faiss"
TRACKS = "tracks.parquet"
CURRENT = "current"
NEIGHBOURS = "neighbours.npy"
TRACK_LOOKUPS = "track_lookups.npz"  # the track table's derived lookups (TrackTable.lookup_arrays)
DATA_FILES = (MODEL, SCALER, EMBEDDINGS, INDEX, TRACKS)
OPTIONAL_FILES = (NEIGHBOURS, TRACK_LOOKUPS, *colisten.FILES)  # checked like the others when the manifest lists them


class ArtifactError(Exception):
    """An artefact set is missing, incomplete, corrupt or of another format."""


class SourceInfo(msgspec.Struct, kw_only=True):
    path: str | None
    sha256: str | None
    rows: int


class Manifest(msgspec.Struct, kw_only=True):
    model_version: str
    created_at: str
    n_tracks: int
    dim: int
    features: list[str]
    missing_features: list[str]
    source: SourceInfo
    demo: bool
    index_type: str
    index_factory: str
    train_loss: float
    val_loss: float
    epochs: int
    seed: int
    build_seconds: float
    load_report: dict[str, Any]
    metrics: dict[str, float]
    checksums: dict[str, str] = msgspec.field(default_factory=dict)
    metric: str = "inner_product"
    format_version: int = FORMAT_VERSION
    training: dict[str, Any] = msgspec.field(default_factory=dict)
    events: dict[str, Any] = msgspec.field(default_factory=dict)
    """What the build made of the event log (musicrec/indexer/blend.py); empty for a content-only build."""
    scoring: dict[str, float | None] = msgspec.field(default_factory=dict)
    """The blend the service scores with (``ScoringParams.BLEND``), as the build chose it; empty: defaults."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def stage_dir(out: Path) -> Path:
    """A fresh temporary directory beside ``out`` (same filesystem, so rename is atomic)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))


def finalize_version(staged: Path, out: Path, manifest: Manifest, *, replace: bool = False) -> Manifest:
    """Checksum the staged files, write the manifest, then move the directory into place.

    With ``replace`` an existing ``out`` is swapped out by two renames and deleted after;
    without it an existing ``out`` is an error, so a version is never silently overwritten.
    """
    missing = [name for name in DATA_FILES if not (staged / name).is_file()]
    if missing:
        raise ArtifactError(f"{staged}: staged version lacks {', '.join(missing)}")
    present = [*DATA_FILES, *(name for name in OPTIONAL_FILES if (staged / name).is_file())]
    manifest.checksums = {name: sha256_file(staged / name) for name in present}
    (staged / MANIFEST).write_bytes(msgspec.json.format(msgspec.json.encode(manifest), indent=2))
    for name in (*present, MANIFEST):
        with open(staged / name, "rb") as fh:
            os.fsync(fh.fileno())
    os.chmod(staged, 0o755)
    if out.exists():
        if not replace:
            raise ArtifactError(f"{out}: already exists (pass --force to replace it)")
        trash = out.with_name(f".{out.name}.old-{os.getpid()}-{time.time_ns()}")
        out.rename(trash)
        staged.rename(out)
        shutil.rmtree(trash)
    else:
        staged.rename(out)
    return manifest


def publish(root: Path, version_dir: Path) -> None:
    """Point ``root/current`` at ``version_dir`` with one atomic rename of a fresh symlink."""
    tmp_link = root / f".{CURRENT}.tmp-{os.getpid()}-{time.time_ns()}"
    os.symlink(os.path.relpath(version_dir, root), tmp_link)
    os.replace(tmp_link, root / CURRENT)


def resolve_version_dir(path: str | Path) -> Path:
    """A version directory itself, or the target of ``current`` in a root of versions."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    if (path / CURRENT).exists():
        return (path / CURRENT).resolve()
    if not path.exists():
        raise ArtifactError(f"{path}: no such artefact directory (build one with `musicrec build`)")
    raise ArtifactError(f"{path}: neither a version directory (no {MANIFEST}) nor a root with '{CURRENT}'")


def fingerprint(path: str | Path) -> str:
    """Which version ``path`` is now, exactly: its directory and its manifest's hash (which holds every file's).

    ``musicrec serve`` verifies the version once and hands its workers this fingerprint, so they
    skip hashing the same bytes again (most of a large catalog's start-up); a different or changed
    version does not match and is verified as usual.
    """
    version_dir = resolve_version_dir(path).resolve()
    try:
        return f"{version_dir}:{hashlib.sha256((version_dir / MANIFEST).read_bytes()).hexdigest()}"
    except OSError as exc:
        raise ArtifactError(f"{version_dir / MANIFEST}: cannot read the manifest: {exc}") from exc


def read_manifest(version_dir: Path) -> Manifest:
    try:
        manifest = msgspec.json.decode((version_dir / MANIFEST).read_bytes(), type=Manifest)
    except FileNotFoundError as exc:
        raise ArtifactError(f"{version_dir}: {MANIFEST} is missing") from exc
    except OSError as exc:
        raise ArtifactError(f"{version_dir / MANIFEST}: cannot read the manifest: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ArtifactError(f"{version_dir / MANIFEST}: unreadable manifest: {exc}") from exc
    if manifest.format_version != FORMAT_VERSION:
        raise ArtifactError(f"{version_dir}: format_version {manifest.format_version}, this code reads {FORMAT_VERSION}")
    return manifest


@dataclass(frozen=True)
class Artifacts:
    """Everything the service needs from one version, loaded once at start-up."""

    path: Path
    manifest: Manifest
    embeddings: np.ndarray  # (n, dim) float32, memory-mapped, L2-normalised
    index: faiss.Index
    tracks: TrackTable
    scaler: dict[str, Any]
    neighbours: np.ndarray | None = None  # (n, width) int32, memory-mapped: every track's ANN answer
    colisten: ColistenTable | None = None  # memory-mapped: every track's co-listened tracks

    @property
    def model_version(self) -> str:
        return self.manifest.model_version


def check_array(version_dir: Path, name: str, array: np.ndarray, *, dtype: np.dtype | type,
                shape: tuple[int | None, ...], finite: bool = False,
                within: tuple[int | float, int | float] | None = None) -> np.ndarray:
    """Refuse an array whose contents serving would trip over; return it unchanged.

    Checksums only prove a file is the one the build wrote, and a build (or a hand edit with a
    recomputed checksum) can write nonsense: a neighbour row number past the table answered every
    recommendation with a 500. So each array is checked for what the code indexing it assumes:
    ``dtype``, ``shape`` (None: any length on that axis), no NaN/inf when ``finite``, and every value
    in ``within`` (inclusive bounds: row numbers, -1 where FAISS pads). One pass over the data, at load.
    """
    where = f"{version_dir}: {name}"
    if array.dtype != np.dtype(dtype):
        raise ArtifactError(f"{where} has dtype {array.dtype}, expected {np.dtype(dtype)}")
    if array.ndim != len(shape) or any(want is not None and got != want for got, want in zip(array.shape, shape)):
        expected = "×".join("any" if want is None else str(want) for want in shape)
        raise ArtifactError(f"{where} has shape {'×'.join(map(str, array.shape))}, expected {expected}")
    if finite and not np.isfinite(array).all():
        raise ArtifactError(f"{where} contains NaN or infinite values")
    if within is not None and array.size:
        low, high = array.min(), array.max()
        if not within[0] <= low <= high <= within[1]:
            raise ArtifactError(f"{where} holds values {low}..{high}, outside {within[0]}..{within[1]}")
    return array


def _check_scaler(version_dir: Path, scaler: Any, features: list[str]) -> None:
    """The scaler standardises every new track: its numbers must be finite and its scales positive."""
    if not isinstance(scaler, dict) or scaler.get("features") != features:
        got = scaler.get("features") if isinstance(scaler, dict) else type(scaler).__name__
        raise ArtifactError(f"{version_dir}: scaler features {got} differ from the manifest's")
    for key in ("mean", "scale"):
        values = scaler.get(key)
        if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                   for v in values):
            raise ArtifactError(f"{version_dir}: {SCALER} {key!r} is not a list of numbers")
        check_array(version_dir, f"{SCALER} {key}", np.asarray(values, dtype=np.float64), dtype=np.float64,
                    shape=(len(features),), finite=True)
    if min(scaler["scale"], default=1.0) <= 0:
        raise ArtifactError(f"{version_dir}: {SCALER} has a scale <= 0")


def load_artifacts(path: str | Path, *, verify: bool = True) -> Artifacts:
    """Load and cross-check one version; refuses a mismatched or corrupt set with ArtifactError.

    With ``verify`` the files are hashed in a second thread while they are read (hashlib and file
    reads release the GIL), since hashing a large version takes about as long as reading it; a
    file whose checksum does not match is reported as such, even when reading it failed first.
    """
    version_dir = resolve_version_dir(path)
    manifest = read_manifest(version_dir)
    listed = [*DATA_FILES, *(name for name in OPTIONAL_FILES if name in manifest.checksums)]
    for name in listed:
        if not (version_dir / name).is_file():
            raise ArtifactError(f"{version_dir}: {name} is missing")
    with ThreadPoolExecutor(1, thread_name_prefix="artefact-hash") as hasher:
        sums = {name: hasher.submit(sha256_file, version_dir / name) for name in listed} if verify else {}
        try:
            loaded = _read_version(version_dir, manifest, listed)
        finally:  # also after a failed read: a replaced file is named as one, not as unreadable
            _compare_checksums(version_dir, manifest, sums)
    return _checked(version_dir, manifest, *loaded)


def _compare_checksums(version_dir: Path, manifest: Manifest, sums: dict[str, Future[str]]) -> None:
    for name, digest in sums.items():  # in the order they were listed and hashed
        if manifest.checksums.get(name) != digest.result():
            raise ArtifactError(f"{version_dir / name}: checksum does not match the manifest (corrupt or replaced file)")


def _read_version(version_dir: Path, manifest: Manifest, listed: list[str]) -> tuple:
    """The version's readers, each failure as the one ArtifactError its callers handle."""
    try:
        embeddings = np.load(version_dir / EMBEDDINGS, mmap_mode="r", allow_pickle=False)
        index = load_index(version_dir / INDEX)
        lookups = None
        if TRACK_LOOKUPS in listed:  # versions built before it derive the lookups at load, as before
            with np.load(version_dir / TRACK_LOOKUPS, allow_pickle=False) as npz:
                lookups = dict(npz)
        tracks = TrackTable.from_parquet(version_dir / TRACKS, manifest.features, lookups)
        scaler = json.loads((version_dir / SCALER).read_text())
        neighbours = (np.load(version_dir / NEIGHBOURS, mmap_mode="r", allow_pickle=False)
                      if NEIGHBOURS in listed else None)
        with_colisten = [name in listed for name in colisten.FILES]
        if any(with_colisten) and not all(with_colisten):
            raise ArtifactError(f"{version_dir}: the manifest lists only some of {', '.join(colisten.FILES)}")
        table = ColistenTable.load(version_dir, manifest.n_tracks) if all(with_colisten) else None
    except ArtifactError:
        raise
    except Exception as exc:  # noqa: BLE001
        # A damaged file fails in more ways than the readers document: a negative shape in an .npy
        # header is an OverflowError, one cut mid-tuple a tokenize.TokenError. Whatever the way, the
        # version cannot be read, and the caller (start-up, hot reload) must get the one error it handles.
        raise ArtifactError(f"{version_dir}: cannot read artefacts: {type(exc).__name__}: {exc}") from exc
    return embeddings, index, tracks, scaler, neighbours, table


def _checked(version_dir: Path, manifest: Manifest, embeddings: np.ndarray, index: faiss.Index, tracks: TrackTable,
             scaler: dict[str, Any], neighbours: np.ndarray | None, table: ColistenTable | None) -> Artifacts:
    """The read version, once its arrays agree with the manifest and each other."""
    n, dim = manifest.n_tracks, manifest.dim
    check_array(version_dir, EMBEDDINGS, embeddings, dtype=np.float32, shape=(n, dim), finite=True)
    if index.ntotal != n or index.d != dim:
        raise ArtifactError(f"{version_dir}: index holds {index.ntotal}×{index.d}, manifest says {n}×{dim}")
    if len(tracks) != n:
        raise ArtifactError(f"{version_dir}: track table has {len(tracks)} rows, manifest says {n}")
    check_array(version_dir, f"{TRACKS} features", tracks.features, dtype=np.float32,
                shape=(n, len(manifest.features)), finite=True)
    check_array(version_dir, f"{TRACKS} popularity", tracks.popularity, dtype=np.int16, shape=(n,), within=(0, 100))
    _check_scaler(version_dir, scaler, manifest.features)
    if neighbours is not None:  # row numbers into the catalog; FAISS pads a short answer with -1
        check_array(version_dir, NEIGHBOURS, neighbours, dtype=np.int32, shape=(n, None), within=(-1, n - 1))
    # The co-listening table's arrays are checked as they load (ColistenTable.validate: offsets, rows, weights).
    try:
        ScoringParams().with_blend(manifest.scoring)
    except ValueError as exc:
        raise ArtifactError(f"{version_dir / MANIFEST}: {exc}") from exc
    return Artifacts(version_dir, manifest, embeddings, index, tracks, scaler, neighbours, table)
