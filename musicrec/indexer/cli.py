"""The offline indexer's commands: ``musicrec build | eval | consume | rebuild`` (``python -m musicrec.indexer`` too).

Bad input ends with exit code 2 and one line on stderr naming the file (and column and
row when known), never a traceback: the people running this are fixing a CSV, not code.
Settings come from the environment through ``OfflineSettings`` (musicrec/config.py), the
same parsing and defaults the service uses; an option given on the command line wins.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Callable, Sequence

from musicrec.config import COMMON_HELP, OfflineSettings, SettingsError, env_help_lines
from musicrec.data.schema import MIN_TRACKS, DataError
from musicrec.index.artifacts import ArtifactError
from musicrec.index.faiss_index import DEFAULT_INDEX_TYPE, INDEX_TYPES, IndexBuildError
from musicrec.indexer.errors import ModelFitError

log = logging.getLogger("musicrec.indexer")
DEFAULT_DATASET = Path("data/dataset.csv")
DEFAULT_EVENTS = Path("events")
DEFAULT_IDLE_S = 10.0
LOG_ENV = ("LOG_LEVEL", "LOG_FORMAT")
BUILD_ENV = ("ARTIFACTS_DIR", "SPOTIPY_CLIENT_ID", "SPOTIPY_CLIENT_SECRET", "SPOTIFY_API_URL", "SPOTIFY_TOKEN_URL",
             *LOG_ENV)
EVAL_ENV = ("ARTIFACTS_DIR", *LOG_ENV)
CONSUME_ENV = ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TOPIC", *LOG_ENV)
REBUILD_ENV = ("ARTIFACTS_DIR", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TOPIC", *BUILD_ENV[1:-2], *LOG_ENV)

Command = Callable[[argparse.Namespace, OfflineSettings], int]


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


def env_epilog(names: Sequence[str]) -> str:
    """The environment variables a command reads, with their defaults, for its --help."""
    lines = env_help_lines(OfflineSettings(), {name: COMMON_HELP[name] for name in names})
    return "environment (also read from ./.env; an option given here wins):\n" + "\n".join(lines)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's one-variable-per-line layout; wraps option help as usual."""


def add_build_arguments(b: argparse.ArgumentParser, *, single_version: bool = True, events: bool = True) -> None:
    b.add_argument("--csv", type=Path, metavar="PATH",
                   help=f"track CSV or CSV.gz (default: {DEFAULT_DATASET} if present, else the synthetic demo catalog)")
    b.add_argument("--spotify-playlist", nargs="+", action="extend", metavar="URL_OR_ID",
                   help="build from these Spotify playlists instead (needs SPOTIPY_CLIENT_ID/SPOTIPY_CLIENT_SECRET); "
                        "--csv (or the default dataset) then supplies the features Spotify refuses (403) (default: none, "
                        "build from the CSV)")
    if single_version:
        where = b.add_mutually_exclusive_group()
        where.add_argument("--out", type=Path, metavar="DIR", help="write one version exactly here, with no `current` link (default: build into --root)")
        where.add_argument("--root", type=Path, metavar="DIR", help="write DIR/<model_version> and point DIR/current "
                           "at it once it passes its check (default: $ARTIFACTS_DIR, else artifacts)")
    else:
        b.add_argument("--root", type=Path, metavar="DIR", help="root of versions whose `current` moves to the new "
                       "version once it passes its check (default: $ARTIFACTS_DIR, else artifacts)")
    b.add_argument("--demo", type=_positive, metavar="N", default=5000,
                   help="size of the synthetic demo catalog used when there is no CSV (default: 5000)")
    b.add_argument("--epochs", type=_positive, default=40, metavar="N",
                   help="most training epochs; training stops early once validation loss stops improving (default: 40)")
    b.add_argument("--seed", type=int, default=42, help="seed of the split, the weights and the shuffles (default: 42)")
    b.add_argument("--index-type", choices=INDEX_TYPES, default=DEFAULT_INDEX_TYPE,
                   help=f"ANN index (default: {DEFAULT_INDEX_TYPE}, chosen by benchmarks/index_bench.py, see "
                        "benchmarks/README.md); flat is exact search, hnsw a graph")
    if events:
        b.add_argument("--events", type=Path, metavar="DIR",
                       help="learn which tracks listeners play together from the event log in DIR (as written by "
                            "`consume`), and choose the scoring blend on held-out sessions of it (default: no events, "
                            "content only)")
    if single_version:
        b.add_argument("--force", action="store_true", help="replace --out if it exists (default: refuse)")
    b.add_argument("--quiet", action="store_true", help="only the summary and warnings (default: a progress bar and one line per build step)")


def add_eval_arguments(e: argparse.ArgumentParser) -> None:
    e.add_argument("--artifacts", type=Path, metavar="DIR",
                   help="a version directory or a root with `current` (default: $ARTIFACTS_DIR, else artifacts)")
    e.add_argument("--sample", type=_positive, default=2000, metavar="N",
                   help="query tracks for the genre agreement figures (default: 2000)")


def add_consume_arguments(c: argparse.ArgumentParser, *, out: bool = True) -> None:
    if out:
        c.add_argument("--out", type=Path, required=True, metavar="DIR",
                       help="event log directory (date=YYYY-MM-DD/part-*.parquet); required")
        c.add_argument("--until-idle", type=_seconds, metavar="S",
                       help="exit after S seconds without a message (batch use) (default: run until SIGTERM/SIGINT)")
    c.add_argument("--group", metavar="ID", help="consumer group id (default: musicrec-indexer)")
    c.add_argument("--bootstrap-servers", metavar="HOST:PORT[,...]",
                   help="Kafka brokers (default: $KAFKA_BOOTSTRAP_SERVERS; one of the two is required)")
    c.add_argument("--topic", help="topic to read (default: $KAFKA_TOPIC, else music-events)")
    if out:
        c.add_argument("--max-events", type=_positive, default=50_000, metavar="N",
                       help="write a file once N events are buffered (default: 50000)")
        c.add_argument("--max-age-s", type=_seconds, default=60.0, metavar="S",
                       help="write a file once the oldest buffered message is S seconds old (default: 60)")
        c.add_argument("--progress-s", type=_seconds, default=5.0, metavar="S",
                       help="a progress line on stderr every S seconds (default: 5)")


def add_rebuild_arguments(r: argparse.ArgumentParser) -> None:
    r.add_argument("--events", type=Path, default=DEFAULT_EVENTS, metavar="DIR",
                   help=f"the event log: consumed into, then trained on (default: {DEFAULT_EVENTS})")
    r.add_argument("--until-idle", type=_seconds, default=DEFAULT_IDLE_S, metavar="S",
                   help=f"stop consuming after S seconds without a message (default: {DEFAULT_IDLE_S:g})")
    add_consume_arguments(r, out=False)
    add_build_arguments(r, single_version=False, events=False)


def add_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register build, consume, eval and rebuild on a subparsers object (this CLI's and ``musicrec``'s)."""
    specs: list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Sequence[str], Command]] = [
        ("build", "train the autoencoder and write a versioned artefact set", add_build_arguments, BUILD_ENV, cmd_build),
        ("consume", "append listener events from Kafka to a Parquet event log (at least once)",
         add_consume_arguments, CONSUME_ENV, cmd_consume),
        ("eval", "print the quality figures of an artefact set", add_eval_arguments, EVAL_ENV, cmd_eval),
        ("rebuild", "consume the topic until idle, then build with those events into the root and move `current`",
         add_rebuild_arguments, REBUILD_ENV, cmd_rebuild),
    ]
    for name, text, add, env, func in specs:
        p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".", epilog=env_epilog(env),
                           formatter_class=HelpFormatter)
        add(p)
        p.set_defaults(func=func)


def parser() -> argparse.ArgumentParser:
    from musicrec import __version__

    p = argparse.ArgumentParser(prog="python -m musicrec.indexer", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"musicrec {__version__}")
    add_commands(p.add_subparsers(dest="command", required=True, metavar="{build,consume,eval,rebuild}"))
    return p


def _load_catalog(args: argparse.Namespace, settings: OfflineSettings):
    from musicrec.data.demo import demo_catalog
    from musicrec.data.loader import load_csv

    csv = args.csv or (DEFAULT_DATASET if DEFAULT_DATASET.is_file() else None)
    if args.spotify_playlist:
        import time

        from musicrec.data.spotify_source import load_spotify_catalog

        out = getattr(args, "out", None)
        snapshot = (out.parent / f"{out.name}.spotify.csv" if out else
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
    if catalog.report.n_tracks < MIN_TRACKS:  # the file's fault, so exit 2 (training would fail with exit 1)
        raise DataError(catalog.source or "<demo>", f"only {catalog.report.n_tracks} track(s) after cleaning; "
                        f"a build needs at least {MIN_TRACKS}")
    for warning in catalog.report.warnings:
        log.warning("%s", warning)
    options = BuildOptions(epochs=args.epochs, seed=args.seed, index_type=args.index_type, progress=not args.quiet,
                           events=getattr(args, "events", None))
    out = getattr(args, "out", None)
    root = None if out else (args.root or settings.artifacts_dir)
    result = build_version(catalog, options, out=out, root=root, replace=getattr(args, "force", False))
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
    steps = ", ".join(f"{name} {seconds:.1f}" for name, seconds in result.steps.items())
    print(f"build time: {m.build_seconds:.1f} s" + (f"  (seconds per step: {steps})" if steps else ""))
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
    """The quality figures, each with what it measures and what a good value is."""
    emb, raw = metrics.get("genre_agreement@10_embedding"), metrics.get("genre_agreement@10_raw")
    queries = int(metrics.get("genre_agreement_queries", 0))
    print(f"genre agreement@10: embedding {emb:.4f}  standardised raw features {raw:.4f}  ({queries} query tracks)")
    print("  = share of a track's 10 nearest neighbours that share one of its genres (higher is better); good: the\n"
          "    embedding at least 0.9x the raw features' figure (the 114k catalog: 0.17 and 0.17, since audio\n"
          "    features explain genre only in part); far below it, the model lost what the features know")
    print(f"reconstruction MSE: {metrics['reconstruction_mse']:.5f}  (decoded vs standardised features; 1.0 = no "
          "better than the mean; good: below 0.05)")
    print(f"ANN recall@20 vs exact: {metrics['ann_recall@20']:.4f}  (share of the exact top 20 the index finds; "
          "good: 0.95 or more; below 0.9 a build into a root is not published)")


def cmd_eval(args: argparse.Namespace, settings: OfflineSettings) -> int:
    from musicrec.indexer.evaluation_run import evaluate_artifacts

    metrics = evaluate_artifacts(args.artifacts or settings.artifacts_dir, sample=args.sample)
    _print_metrics(metrics)
    return 0


def cmd_consume(args: argparse.Namespace, settings: OfflineSettings) -> int:
    import asyncio

    from aiokafka.errors import KafkaError

    from musicrec.config import has_credentials
    from musicrec.indexer.consume import DEFAULT_GROUP, ConsumeOptions, consume_until_signalled

    bootstrap = (args.bootstrap_servers or settings.kafka_bootstrap_servers).strip()
    if not bootstrap:
        print("error: no Kafka bootstrap servers: pass --bootstrap-servers or set KAFKA_BOOTSTRAP_SERVERS",
              file=sys.stderr)
        return 2
    if has_credentials(bootstrap):  # they would reach aiokafka's log lines; SASL carries them instead
        print("error: credentials in the Kafka bootstrap servers: set KAFKA_SECURITY_PROTOCOL=SASL_SSL (or "
              "SASL_PLAINTEXT), KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD instead", file=sys.stderr)
        return 2
    options = ConsumeOptions(out=args.out, bootstrap_servers=bootstrap, security=settings.kafka_security,
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


def cmd_rebuild(args: argparse.Namespace, settings: OfflineSettings) -> int:
    """``consume --until-idle`` into the event log, then ``build --events`` into the root (``make rebuild``)."""
    consume = argparse.Namespace(out=args.events, until_idle=args.until_idle, group=args.group,
                                 bootstrap_servers=args.bootstrap_servers, topic=args.topic, max_events=50_000,
                                 max_age_s=60.0, progress_s=5.0)
    code = cmd_consume(consume, settings)
    if code:
        return code
    args.events.mkdir(parents=True, exist_ok=True)  # a quiet topic leaves no file: build then says "too few pairs"
    build = argparse.Namespace(**{**vars(args), "events": args.events, "out": None, "force": False})
    return cmd_build(build, settings)


def run(args: argparse.Namespace, settings: OfflineSettings | None = None) -> int:
    """Run a parsed command: one-line errors with exit 2 for bad input, 1 for a failed fit or Kafka."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from musicrec import logs

    try:
        settings = settings or OfflineSettings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logs.configure("WARNING" if getattr(args, "quiet", False) else settings.log_level, settings.log_format)
    from musicrec.data.spotify import SpotifyAuthError

    try:
        with logging_redirect_tqdm():  # log lines go above the progress bar instead of through it
            return args.func(args, settings)
    except (DataError, ArtifactError, IndexBuildError, SpotifyAuthError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModelFitError as exc:
        print(f"error: training failed: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    return run(parser().parse_args(argv))
