"""Simulated listeners with a hidden taste structure: does rebuilding with their events help?

We have no real listening logs, so we make listeners whose taste we know. Every catalog track
belongs to one of K hidden *scenes*; the rule mixes a content part (the nearest of K centroid
tracks in standardised feature space) with a random part drawn per artist, so audio similarity
predicts a track's scene only partly (``content_share`` says how much). Per artist, because
real scenes are made of artists, and features cannot tell which scene an artist plays in. A
listener has one or two favourite scenes; each session picks one and plays tracks from it, and
now and then is served a track from elsewhere, which it views and skips.

The claim tested: a version rebuilt with ``--events`` (its co-listening table and the blend
its build chose) continues a new listener's session better than the content-only version:
Recall@50 and R-precision of the session's later plays from its first ones, answered by each
version's own scorer and blend, as the service would. New listeners, new sessions, drawn after
both versions were built: nothing of them was learnt from. This tests the loop's mechanics;
the figure of merit is benchmarks/quality.py on real playlists.

Events reach the event log one of three ways: through the real service (POST /events, captured
where the service publishes them; ``--service``), through the service *and* Kafka, read back by
the indexer's consumer (``--kafka HOST:PORT``), or written straight with ``write_events`` (the
default, fast; what the tests use).

    python -m benchmarks.simulate [--tracks 3000 --scenes 60 --listeners 800] [--service | --kafka HOST:PORT]
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import pyarrow as pa

from musicrec.data.events import Event
from musicrec.data.loader import Catalog
from musicrec.index.engine import Engine
from musicrec.indexer.blend import BlendConfig, Continuation, continuation_queries, score_blend
from musicrec.indexer.colisten import ColistenConfig, sessions_from_log
from musicrec.indexer.event_dataset import EVENT_COLUMNS, SCHEMA, read_events, write_events
from musicrec.indexer.pipeline import BuildOptions, build_version
from musicrec.models.scaler import StandardScaler

log = logging.getLogger(__name__)

DAY_S = 86_400.0
START_TS = 1_767_225_600.0  # 2026-01-01T00:00:00Z: fixed, so the same seed writes the same files


class SimulationError(RuntimeError):
    """Simulated events did not reach the event log as they were sent."""


@dataclass(frozen=True)
class World:
    """The catalog's track ids and each track's hidden scene."""

    track_ids: np.ndarray  # object array of str, catalog row order
    scene: np.ndarray      # int64 per row
    members: tuple[np.ndarray, ...]  # rows of each scene

    @property
    def n_scenes(self) -> int:
        return len(self.members)


@dataclass(frozen=True)
class ListenerConfig:
    listeners: int = 800
    sessions_per_listener: int = 3
    plays: tuple[int, int] = (8, 16)   # unskipped plays per session, inclusive range
    stray_rate: float = 0.15           # chance a served track is out of scene (viewed, then skipped)
    favourite_scenes: tuple[int, int] = (1, 2)


@dataclass(frozen=True)
class SimulationConfig:
    tracks: int = 3000
    catalog_seed: int = 7
    scenes: int = 60
    content_share: float = 0.5
    listeners: ListenerConfig = ListenerConfig()
    new_listeners: int = 300
    epochs: int = 10                  # content autoencoder epochs
    seed: int = 42
    threads: int | None = None        # torch threads for both builds; None: the trainers' defaults


def assign_scenes(catalog: Catalog, n_scenes: int, *, content_share: float = 0.5, seed: int = 0) -> World:
    """Scene of each track: argmax over scenes of content_share · c + (1 − content_share) · r.

    c: minus the standardised squared distance to the scene's centroid track (features z-scored
    as the indexer does); r: a standard normal per (artist, scene). Both are scaled to unit
    spread, so ``content_share`` is the weight of audio in the mix (1 = pure feature clusters).
    """
    if not 1 <= n_scenes <= len(catalog.tracks):
        raise ValueError(f"n_scenes must be in 1..{len(catalog.tracks)}, got {n_scenes}")
    rng = np.random.default_rng(seed)
    raw = catalog.tracks[catalog.features].to_numpy(dtype=np.float64)
    scaled = StandardScaler.fit(raw, catalog.features).transform(raw)
    centroids = scaled[rng.choice(len(scaled), n_scenes, replace=False)]
    dist = ((scaled[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    content = -(dist - dist.mean(axis=1, keepdims=True))
    content /= content.std() or 1.0
    artist_codes, _ = pd.factorize(catalog.tracks["artist"])
    by_artist = rng.standard_normal((int(artist_codes.max()) + 1, n_scenes))
    score = content_share * content + (1.0 - content_share) * by_artist[artist_codes]
    scene = score.argmax(axis=1).astype(np.int64)
    members = tuple(np.flatnonzero(scene == k) for k in range(n_scenes))
    return World(catalog.tracks["id"].to_numpy(dtype=object), scene, members)


def simulate_events(world: World, config: ListenerConfig, *, seed: int, client_prefix: str = "sim",
                    start_ts: float = START_TS) -> list[Event]:
    """Seeded sessions, ordered by listener then time; sessions of one listener are a day apart.

    Plays are 150–240 s apart (well inside one 30-min session); a stray track is viewed and
    skipped 5–30 s later, and the session then goes on in its scene.
    """
    rng = np.random.default_rng(seed)
    n = len(world.track_ids)
    usable = [k for k, rows in enumerate(world.members) if len(rows) >= 2]
    events: list[Event] = []

    def add(kind: str, row: int, ts: float, client: str) -> None:
        events.append(Event(event_id=f"{client}-{len(events):08d}", type=kind, track_id=str(world.track_ids[row]),
                            ts=round(ts, 3), source="simulator", client_id=client, position=None,
                            model_version="simulated"))

    for listener in range(config.listeners):
        client = f"{client_prefix}-{listener:06d}"
        lo, hi = config.favourite_scenes
        favourites = rng.choice(usable, size=min(int(rng.integers(lo, hi + 1)), len(usable)), replace=False)
        for session in range(config.sessions_per_listener):
            ts = start_ts + session * DAY_S + float(rng.uniform(0, 12 * 3600))
            scene = int(rng.choice(favourites))
            home = world.members[scene]
            order = rng.permutation(home)[: int(rng.integers(config.plays[0], config.plays[1] + 1))]
            for row in order.tolist():
                while rng.random() < config.stray_rate:
                    stray = int(rng.integers(n))
                    if world.scene[stray] == scene:
                        continue
                    add("track_view", stray, ts, client)
                    add("skip", stray, ts + float(rng.uniform(5, 30)), client)
                    ts += float(rng.uniform(30, 60))
                add("track_view", row, ts, client)
                ts += float(rng.uniform(150, 240))
    return events


def events_table(events: Sequence[Event]) -> pa.Table:
    """The table ``read_log_table`` would return for these events (for evaluating without a disk round trip)."""
    return pa.table({c: [getattr(e, c) for e in events] for c in EVENT_COLUMNS}, schema=SCHEMA)


def session_queries(events: Sequence[Event], track_ids: np.ndarray) -> list[Continuation]:
    """Every session of ``events`` with enough plays, as a continuation query (as the build makes them)."""
    sessions = sessions_from_log(events_table(events), track_ids, ColistenConfig())
    return continuation_queries(sessions, BlendConfig(max_queries=10**9))


# -- getting events into the log ----------------------------------------------------------------

async def post_through_service(artifacts: Path, events: Sequence[Event], *, kafka_bootstrap: str = "",
                               topic: str = "music-events", concurrency: int = 8) -> list[Event]:
    """POST every event to the real service (serving ``artifacts``); returns the events it published.

    The service assigns its own event ids and model_version, so what comes back is what its
    producer sent (to Kafka when ``kafka_bootstrap`` is set, else only to its local buffer).
    Each listener's events are posted in order; listeners are posted ``concurrency`` at a time.
    """
    import httpx

    from musicrec.service.events import EventSink
    from musicrec.service.main import Resources, create_app
    from musicrec.service.settings import Settings

    class CapturingSink(EventSink):
        """The service's own sink, also keeping every event it is handed."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.captured: list[Event] = []

        def publish(self, event: Event) -> None:
            self.captured.append(event)
            super().publish(event)

    settings = Settings.from_env({"ARTIFACTS_DIR": str(artifacts), "REDIS_URL": "memory://",
                                  "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPIC": topic,
                                  "RELOAD_POLL_S": "0", "LOG_LEVEL": "WARNING", "RATE_LIMIT_PER_MIN": "0",
                                  "EVENT_SPILL_DIR": ""}, env_file=None)
    sink = CapturingSink(settings.kafka_bootstrap_servers, settings.kafka_topic, buffer_size=len(events) + 1)
    by_client: dict[str, list[Event]] = {}
    for event in events:
        by_client.setdefault(event.client_id, []).append(event)
    root_level = logging.getLogger().level  # Litestar's default logging config sets INFO; given back below
    app = create_app(settings, resources=Resources(events=sink))
    await sink.start()
    try:
        async with app.lifespan(), httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://sim") as client:
            logging.getLogger().setLevel(root_level)  # and again at start-up: keep a benchmark's output a table

            async def post(mine: list[Event]) -> None:
                for e in mine:
                    # ts is sent so sessions keep their simulated gaps: posting takes seconds, not days.
                    response = await client.post("/events", json={"type": e.type, "track_id": e.track_id,
                                                                  "client_id": e.client_id, "ts": e.ts,
                                                                  "source": e.source})
                    if response.status_code != 202:
                        raise SimulationError(f"POST /events answered {response.status_code}: {response.text}")

            queue = list(by_client.values())
            for start in range(0, len(queue), concurrency):
                await asyncio.gather(*(post(mine) for mine in queue[start:start + concurrency]))
    finally:
        await sink.close(timeout_s=30.0)
        logging.getLogger().setLevel(root_level)
    if kafka_bootstrap and sink.buffered:
        raise SimulationError(f"{sink.buffered} events were not delivered to Kafka at {kafka_bootstrap}")
    return sink.captured


async def consume_into(out: Path, kafka_bootstrap: str, topic: str, *, group_id: str, idle_s: float = 5.0) -> int:
    """Read the topic into the event log with the indexer's own consumer until it is idle; events written."""
    from musicrec.indexer.consume import ConsumeOptions, consume

    result = await consume(ConsumeOptions(out=out, bootstrap_servers=kafka_bootstrap, topic=topic,
                                          group_id=group_id, until_idle_s=idle_s))
    return result.events_written


def record_events(events: Sequence[Event], out: Path, *, serving: Path | None = None, kafka_bootstrap: str = "",
                  topic: str = "music-events", group_id: str = "simulate", idle_s: float = 5.0) -> int:
    """Put ``events`` into the log at ``out``: directly, via the service, or via the service and Kafka.

    Via Kafka, the consumer reads until the topic has been quiet ``idle_s`` (counted from joining
    the group; every event is already in the topic by then). Returns the number of distinct
    events the log then holds.
    """
    if serving is None and not kafka_bootstrap:
        write_events(out, events)
    else:
        published = asyncio.run(post_through_service(serving, events, kafka_bootstrap=kafka_bootstrap, topic=topic))
        if kafka_bootstrap:
            asyncio.run(consume_into(out, kafka_bootstrap, topic, group_id=group_id, idle_s=idle_s))
        else:
            write_events(out, published)
    logged = len(read_events(out))
    if logged < len(events):
        raise SimulationError(f"{out}: {logged} of {len(events)} events reached the event log")
    return logged


# -- the experiment -----------------------------------------------------------------------------

def continuation(version: Path, queries: Sequence[Continuation]) -> dict[str, float]:
    """Recall@50 and R-precision of a built version, with the blend its manifest names, on ``queries``."""
    return score_blend(Engine.load(version).recommender, queries)


def scene_oracle(world: World, queries: Sequence[Continuation]) -> float | None:
    """Recall@50 of a reference that knows each session's hidden scene and picks 50 of its tracks
    (not among the seeds) at random. Same queries as the versions'. Not a ceiling: a version can
    beat it by ranking the scene's tracks listeners actually play first."""
    if not queries:
        return None
    expected = []
    for q in queries:
        members = world.members[world.scene[q.targets[0]]]
        left = int(np.count_nonzero(~np.isin(members, q.seeds)))
        expected.append(min(1.0, 50 / max(left, 1)))
    return float(np.mean(expected))


@dataclass(frozen=True)
class SimulationReport:
    oracle_recall: float | None
    content: dict[str, float]          # the content-only version on the new sessions
    with_events: dict[str, float]      # the version rebuilt with the events
    events_written: int
    build_report: dict[str, Any]       # the events build's manifest.events
    scoring: dict[str, float | None]   # the blend the events build chose
    content_seconds: float
    events_seconds: float

    def table(self) -> str:
        b = self.build_report
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        rows = [
            f"{'version':<30}{'Recall@50':>10}{'R-precision':>12}{'build s':>9}",
            f"{'hidden scene, 50 random picks':<30}{fmt(self.oracle_recall):>10}",
            f"{'content only':<30}{fmt(self.content['recall@50']):>10}{fmt(self.content['r_precision']):>12}"
            f"{self.content_seconds:>9.1f}",
            f"{'rebuilt with --events':<30}{fmt(self.with_events['recall@50']):>10}"
            f"{fmt(self.with_events['r_precision']):>12}{self.events_seconds:>9.1f}",
            f"new-session queries: {self.content['queries']}; events in the log: {self.events_written}; build: "
            f"{b.get('sessions')} sessions, {b.get('plays')} plays, {b.get('skips')} skips, "
            f"{b.get('heldout_queries')} held-out queries; blend {self.scoring} ({b.get('chosen_by')})",
        ]
        return "\n".join(rows)


def run(config: SimulationConfig, workdir: Path, *, catalog: Catalog | None = None, via_service: bool = False,
        kafka_bootstrap: str = "", topic: str = "music-events") -> SimulationReport:
    """Build content-only, simulate listeners on it, rebuild with their events, score both on new listeners."""
    from musicrec.data.demo import demo_catalog

    catalog = catalog if catalog is not None else demo_catalog(config.tracks, seed=config.catalog_seed)
    world = assign_scenes(catalog, config.scenes, content_share=config.content_share, seed=config.seed)
    base = BuildOptions(epochs=config.epochs, seed=config.seed, index_type="flat", progress=False, eval_sample=500,
                        threads=config.threads)
    started = time.perf_counter()
    content = build_version(catalog, base, out=workdir / "content")
    content_seconds = time.perf_counter() - started
    log_dir = workdir / "events"
    training = simulate_events(world, config.listeners, seed=config.seed, client_prefix="listener")
    written = record_events(training, log_dir, serving=content.path if (via_service or kafka_bootstrap) else None,
                            kafka_bootstrap=kafka_bootstrap, topic=topic, group_id=f"simulate-{time.time_ns()}")
    started = time.perf_counter()
    rebuilt = build_version(catalog, replace(base, events=log_dir), out=workdir / "with-events")
    events_seconds = time.perf_counter() - started
    fresh = simulate_events(world, replace(config.listeners, listeners=config.new_listeners),
                            seed=config.seed + 1_000_003, client_prefix="new",
                            start_ts=START_TS + 30 * DAY_S)
    queries = session_queries(fresh, world.track_ids)
    return SimulationReport(scene_oracle(world, queries), continuation(content.path, queries),
                            continuation(rebuilt.path, queries), written, dict(rebuilt.manifest.events),
                            dict(rebuilt.manifest.scoring), content_seconds, events_seconds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.simulate", description=__doc__.splitlines()[0])
    d = SimulationConfig()
    p.add_argument("--tracks", type=int, default=d.tracks, help="demo catalog size")
    p.add_argument("--scenes", type=int, default=d.scenes)
    p.add_argument("--content-share", type=float, default=d.content_share,
                   help="weight of audio features in the scene rule, 0..1")
    p.add_argument("--listeners", type=int, default=d.listeners.listeners, help="listeners whose events are trained on")
    p.add_argument("--new-listeners", type=int, default=d.new_listeners, help="fresh listeners scored afterwards")
    p.add_argument("--epochs", type=int, default=d.epochs, help="content autoencoder epochs")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, help="torch threads (default: the trainers' own choice)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--service", action="store_true", help="POST the events through the real service")
    where.add_argument("--kafka", metavar="HOST:PORT", default="",
                       help="POST through the service with Kafka on, and read them back with the indexer's consumer")
    p.add_argument("--topic", default="music-events")
    p.add_argument("--workdir", type=Path, help="keep the versions and the event log here (default: a temp dir)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = SimulationConfig(tracks=args.tracks, scenes=args.scenes, content_share=args.content_share,
                              listeners=ListenerConfig(listeners=args.listeners), new_listeners=args.new_listeners,
                              epochs=args.epochs, seed=args.seed, threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="simulate-") as tmp:
        workdir = args.workdir or Path(tmp)
        started = time.perf_counter()
        report = run(config, workdir, via_service=args.service, kafka_bootstrap=args.kafka, topic=args.topic)
        print(f"catalog: demo {config.tracks} tracks, {config.scenes} scenes, content share {config.content_share}; "
              f"{config.listeners.listeners} training listeners, {config.new_listeners} new; seed {config.seed}; "
              f"torch threads {config.threads or 'default'}; "
              f"events via {'service+kafka' if args.kafka else 'service' if args.service else 'write_events'}")
        print(report.table())
        print(f"total {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
