"""`python -m indexer build|eval`: the offline indexer's command line.

Bad input ends with exit code 2 and one line on stderr naming the file (and column and
row when known), never a traceback: the people running this are fixing a CSV, not code.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from data.schema import DataError
from index.artifacts import ArtifactError
from index.faiss_index import INDEX_TYPES, IndexBuildError
from indexer.train import ModelFitError

log = logging.getLogger("indexer")
DEFAULT_DATASET = Path("data/dataset.csv")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m indexer", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train the autoencoder and write a versioned artefact set")
    b.add_argument("--csv", type=Path, help=f"track CSV (default: {DEFAULT_DATASET} if present, else the demo catalog)")
    b.add_argument("--spotify-playlist", nargs="+", action="extend", metavar="URL_OR_ID",
                   help="build from these Spotify playlists instead (SPOTIPY_CLIENT_ID/SPOTIPY_CLIENT_SECRET); "
                        "--csv (or the default dataset) then supplies features Spotify refuses (403)")
    where = b.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, help="write one version exactly here")
    where.add_argument("--root", type=Path, help="write root/<model_version> and point root/current at it "
                       "(default: $ARTIFACTS_DIR or artifacts/)")
    b.add_argument("--demo", type=_positive, metavar="N", default=5000,
                   help="size of the synthetic demo catalog used when there is no CSV (default 5000)")
    b.add_argument("--epochs", type=_positive, default=40)
    b.add_argument("--seed", type=int, default=42)
    b.add_argument("--index-type", choices=INDEX_TYPES, default="ivf",
                   help="ivf (default: chosen by benchmarks/index_bench.py, see benchmarks/README.md), hnsw or flat (exact)")
    b.add_argument("--force", action="store_true", help="replace --out if it exists")
    b.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    e = sub.add_parser("eval", help="print the quality figures of an artefact set")
    e.add_argument("--artifacts", type=Path, required=True, help="a version directory or a root with current")
    e.add_argument("--sample", type=_positive, default=2000)
    return p


def _load_catalog(args: argparse.Namespace):
    from data.demo import demo_catalog
    from data.loader import load_csv

    csv = args.csv or (DEFAULT_DATASET if DEFAULT_DATASET.is_file() else None)
    if args.spotify_playlist:
        import time

        from indexer.spotify_source import load_spotify_catalog

        snapshot = (args.out.parent / f"{args.out.name}.spotify.csv" if args.out else
                    (args.root or Path(os.environ.get("ARTIFACTS_DIR") or "artifacts"))
                    / f"spotify-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.csv")
        catalog, report = load_spotify_catalog(args.spotify_playlist, environ=os.environ, snapshot=snapshot,
                                               local_csv=csv)
        print("\n".join(report.lines()))
        return catalog
    if csv is None:
        log.warning("no CSV given and %s absent: using the SYNTHETIC demo catalog (%d tracks)", DEFAULT_DATASET, args.demo)
        return demo_catalog(args.demo)
    return load_csv(csv)


def cmd_build(args: argparse.Namespace) -> int:
    from indexer.pipeline import BuildOptions, build_version

    catalog = _load_catalog(args)
    for warning in catalog.report.warnings:
        log.warning("%s", warning)
    options = BuildOptions(epochs=args.epochs, seed=args.seed, index_type=args.index_type, progress=not args.quiet)
    root = None if args.out else (args.root or Path(os.environ.get("ARTIFACTS_DIR") or "artifacts"))
    result = build_version(catalog, options, out=args.out, root=root, replace=args.force)
    m = result.manifest
    print(f"artefacts: {result.path}" + (f"  (current → {m.model_version})" if root else ""))
    print(f"tracks: {m.n_tracks}  dim: {m.dim}  features: {len(m.features)}  demo: {m.demo}  index: {m.index_type}")
    print(f"source: {m.source.path or 'synthetic demo catalog'}  rows read: {m.source.rows}  "
          f"merged duplicate rows: {m.load_report['merged_rows']}")
    imputed = {k: v for k, v in m.load_report["imputed"].items() if v}
    print(f"imputed (median): {imputed or 'none'}")
    print(f"loss: train {m.train_loss:.5f}  validation {m.val_loss:.5f}  epochs {m.epochs} "
          f"(best {m.training['best_epoch']})")
    _print_metrics(m.metrics)
    print(f"build time: {m.build_seconds:.1f} s")
    return 0


def _print_metrics(metrics: dict[str, float]) -> None:
    emb, raw = metrics.get("genre_agreement@10_embedding"), metrics.get("genre_agreement@10_raw")
    print(f"genre agreement@10: embedding {emb:.4f}  standardised raw features {raw:.4f}  "
          f"({int(metrics.get('genre_agreement_queries', 0))} query tracks)")
    print(f"reconstruction MSE: {metrics['reconstruction_mse']:.5f}  ANN recall@20 vs exact: {metrics['ann_recall@20']:.4f}")


def cmd_eval(args: argparse.Namespace) -> int:
    from indexer.evaluation_run import evaluate_artifacts

    metrics = evaluate_artifacts(args.artifacts, sample=args.sample)
    _print_metrics(metrics)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return cmd_build(args) if args.command == "build" else cmd_eval(args)
    except (DataError, ArtifactError, IndexBuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModelFitError as exc:
        print(f"error: training failed: {exc}", file=sys.stderr)
        return 1
