"""`python -m musicrec.indexer build|eval|consume`: the offline indexer's command line.

Bad input ends with exit code 2 and one line on stderr naming the file (and column and
row when known), never a traceback: the people running this are fixing a CSV, not code.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from musicrec.config import OfflineSettings, SettingsError
from musicrec.data.schema import DataError
from musicrec.index.artifacts import ArtifactError
from musicrec.index.faiss_index import DEFAULT_INDEX_TYPE, INDEX_TYPES, IndexBuildError
from musicrec.indexer.errors import ModelFitError

log = logging.getLogger("indexer")
DEFAULT_DATASET = Path("data/dataset.csv")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m musicrec.indexer", description=__doc__.splitlines()[0])
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
    b.add_argument("--index-type", choices=INDEX_TYPES, default=DEFAULT_INDEX_TYPE,
                   help="ivf (default: chosen by benchmarks/index_bench.py, see benchmarks/README.md), hnsw or flat (exact)")
    b.add_argument("--events", type=Path, metavar="DIR",
                   help="learn which tracks listeners play together from the event log in DIR (as written by "
                        "`consume`), and choose the scoring blend on held-out sessions of it")
    b.add_argument("--force", action="store_true", help="replace --out if it exists")
    b.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    e = sub.add_parser("eval", help="print the quality figures of an artefact set")
    e.add_argument("--artifacts", type=Path, required=True, help="a version directory or a root with current")
    e.add_argument("--sample", type=_positive, default=2000)
    c = sub.add_parser("consume", help="append listener events from Kafka to a Parquet event log (at least once)")
    c.add_argument("--out", type=Path, required=True, help="event log directory (date=YYYY-MM-DD/part-*.parquet)")
    c.add_argument("--until-idle", type=_seconds, metavar="S",
                   help="exit after S seconds without a message (batch use); default: run until SIGTERM/SIGINT")
    c.add_argument("--group", help="consumer group id (default musicrec-indexer)")
    c.add_argument("--bootstrap-servers", help="Kafka host:port[,...] (default: $KAFKA_BOOTSTRAP_SERVERS)")
    c.add_argument("--topic", help="topic (default: $KAFKA_TOPIC or music-events)")
    c.add_argument("--max-events", type=_positive, default=50_000, metavar="N", help="flush at N buffered events")
    c.add_argument("--max-age-s", type=_seconds, default=60.0, metavar="S", help="flush once the oldest buffered "
                   "message is S seconds old")
    c.add_argument("--progress-s", type=_seconds, default=5.0, metavar="S", help="progress line on stderr every S s")
    return p


def _load_catalog(args: argparse.Namespace, settings: OfflineSettings):
    from musicrec.data.demo import demo_catalog
    from musicrec.data.loader import load_csv

    csv = args.csv or (DEFAULT_DATASET if DEFAULT_DATASET.is_file() else None)
    if args.spotify_playlist:
        import time

        from musicrec.data.spotify_source import load_spotify_catalog

        snapshot = (args.out.parent / f"{args.out.name}.spotify.csv" if args.out else
                    (args.root or settings.artifacts_dir) / f"spotify-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.csv")
        catalog, report = load_spotify_catalog(args.spotify_playlist, config=settings.spotify_config(
            max_attempts=6, max_wait_s=60.0), snapshot=snapshot, local_csv=csv)
        print("\n".join(report.lines()))
        return catalog
    if csv is None:
        log.warning("no CSV given and %s absent: using the SYNTHETIC demo catalog (%d tracks)", DEFAULT_DATASET, args.demo)
        return demo_catalog(args.demo)
    return load_csv(csv)


def cmd_build(args: argparse.Namespace, settings: OfflineSettings) -> int:
    from musicrec.indexer.pipeline import BuildOptions, build_version

    catalog = _load_catalog(args, settings)
    for warning in catalog.report.warnings:
        log.warning("%s", warning)
    options = BuildOptions(epochs=args.epochs, seed=args.seed, index_type=args.index_type, progress=not args.quiet,
                           events=args.events)
    root = None if args.out else (args.root or settings.artifacts_dir)
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
    if m.events:
        _print_events(m.events, m.scoring)
    _print_metrics(m.metrics)
    print(f"build time: {m.build_seconds:.1f} s")
    return 0


def _print_events(report: dict[str, object], scoring: dict[str, float | None]) -> None:
    """What the build learnt from the event log, and the blend it chose (manifest ``events``, ``scoring``)."""
    print(f"events: {report['events_read']} read ({report['events_unknown_track']} about unknown tracks)  "
          f"clients: {report['clients']}  sessions: {report['sessions']}  plays: {report['plays']}  "
          f"skips: {report['skips']}")
    print(f"co-listening: {report['tracks_with_colisten']} tracks with co-listened tracks, "
          f"{report['pairs_kept']} pairs kept")
    # seed_power is ∞ (max over seeds) in memory and null once written to JSON.
    blend = "  ".join(f"{k} {'max' if v is None or math.isinf(v) else f'{v:g}'}" for k, v in scoring.items())
    print(f"scoring blend ({report['chosen_by']}): {blend}")
    if report["chosen_by"] == "held-out sessions":
        chosen, without = report["chosen"], report["without_colisten"]
        print(f"held-out continuation ({report['heldout_queries']} sessions of {report['heldout_clients']} listeners "
              f"in {report['folds']} folds, each scored by a table fitted without them; higher is better): "
              f"Recall@50 {chosen['recall@50']:.4f}, "
              f"R-precision {chosen['r_precision']:.4f}; without co-listening {without['recall@50']:.4f}, "
              f"{without['r_precision']:.4f}")
    else:
        print(f"  {report['reason']}")


def _print_metrics(metrics: dict[str, float]) -> None:
    emb, raw = metrics.get("genre_agreement@10_embedding"), metrics.get("genre_agreement@10_raw")
    print(f"genre agreement@10: embedding {emb:.4f}  standardised raw features {raw:.4f}  "
          f"({int(metrics.get('genre_agreement_queries', 0))} query tracks)")
    print(f"reconstruction MSE: {metrics['reconstruction_mse']:.5f}  ANN recall@20 vs exact: {metrics['ann_recall@20']:.4f}")


def cmd_eval(args: argparse.Namespace, settings: OfflineSettings) -> int:
    from musicrec.indexer.evaluation_run import evaluate_artifacts

    metrics = evaluate_artifacts(args.artifacts, sample=args.sample)
    _print_metrics(metrics)
    return 0


def cmd_consume(args: argparse.Namespace, settings: OfflineSettings) -> int:
    import asyncio

    from aiokafka.errors import KafkaError

    from musicrec.indexer.consume import DEFAULT_GROUP, ConsumeOptions, consume_until_signalled

    bootstrap = (args.bootstrap_servers or settings.kafka_bootstrap_servers).strip()
    if not bootstrap:
        print("error: no Kafka bootstrap servers: pass --bootstrap-servers or set KAFKA_BOOTSTRAP_SERVERS",
              file=sys.stderr)
        return 2
    options = ConsumeOptions(out=args.out, bootstrap_servers=bootstrap,
                             topic=args.topic or settings.kafka_topic,
                             group_id=args.group or DEFAULT_GROUP, max_events=args.max_events, max_age_s=args.max_age_s,
                             until_idle_s=args.until_idle, progress_interval_s=args.progress_s)
    try:
        result = asyncio.run(consume_until_signalled(
            options, progress=lambda line: print(line, file=sys.stderr, flush=True)))
    except KafkaError as exc:
        print(f"error: kafka at {bootstrap}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: writing the event log under {args.out}: {exc}", file=sys.stderr)
        return 1
    print(f"events written: {result.events_written}  dead letters: {result.dead_letters}  "
          f"files: {len(result.files)}  failed commits: {result.commit_failures}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = OfflineSettings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from musicrec.data.spotify import SpotifyAuthError

    try:
        commands = {"build": cmd_build, "eval": cmd_eval, "consume": cmd_consume}
        return commands[args.command](args, settings)
    except (DataError, ArtifactError, IndexBuildError, SpotifyAuthError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModelFitError as exc:
        print(f"error: training failed: {exc}", file=sys.stderr)
        return 1
