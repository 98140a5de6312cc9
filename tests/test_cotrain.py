"""Retraining from listener events: sessions and pairs, fallback, determinism, the pre-publication
check, and the simulator's claim that a rebuild with events finds new listeners' next tracks."""
from __future__ import annotations

import asyncio
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks.simulate import (
    ListenerConfig, SimulationConfig, assign_scenes, events_frame, post_through_service, record_events, run,
    simulate_events,
)
from musicrec.index.artifacts import CURRENT, MANIFEST, read_manifest
from musicrec.index.catalog import TrackTable
from musicrec.indexer.cli import main
from musicrec.indexer.cotrain import (
    CotrainConfig, Pairs, Session, cotrain, fine_tune, pairs_from_sessions, session_pairs, sessions_from_events,
    split_by_client,
)
from musicrec.indexer.event_dataset import EVENT_COLUMNS, read_events, write_events
from musicrec.indexer.pipeline import BuildOptions, VersionCheckError, build_version, train_and_embed
from musicrec.indexer.errors import ModelFitError

ROW_OF = {t: i for i, t in enumerate("ABCDEF")}
FAST = BuildOptions(epochs=2, seed=3, progress=False, eval_sample=100, threads=1)


def _frame(rows: list[tuple[str, str, str, float]]) -> pd.DataFrame:
    """(client, type, track, ts) rows as an event frame, deliberately not in time order."""
    records = [{"event_id": f"e{i}", "type": kind, "track_id": track, "ts": ts, "source": None, "client_id": client,
                "position": None, "model_version": "v"} for i, (client, kind, track, ts) in enumerate(rows)]
    return pd.DataFrame(records, columns=list(EVENT_COLUMNS)).iloc[::-1].reset_index(drop=True)


HAND_MADE = _frame([
    ("a", "track_view", "A", 0.0), ("a", "track_view", "B", 100.0), ("a", "track_view", "C", 200.0),
    ("a", "skip", "C", 210.0), ("a", "track_view", "D", 300.0), ("a", "track_view", "B", 400.0),
    ("a", "track_view", "E", 400.0 + 1801.0), ("a", "track_view", "F", 400.0 + 1900.0),   # > 30 min later
    ("b", "track_view", "A", 0.0), ("b", "like", "B", 50.0), ("b", "track_view", "gone", 60.0),
])


def test_sessions_split_at_30_minute_gaps_and_drop_unknown_tracks() -> None:
    sessions, unknown = sessions_from_events(HAND_MADE, ROW_OF)
    A, B, C, D, E, F = range(6)
    assert unknown == 1
    assert sessions == [
        Session("a", (("track_view", A), ("track_view", B), ("track_view", C), ("skip", C), ("track_view", D),
                      ("track_view", B))),
        Session("a", (("track_view", E), ("track_view", F))),
        Session("b", (("track_view", A), ("like", B))),
    ]


def test_pairs_are_unskipped_plays_within_the_window_and_played_then_skipped() -> None:
    sessions, _ = sessions_from_events(HAND_MADE, ROW_OF)
    A, B, C, D, E, F = range(6)
    # C was skipped: no positive; B's replay adds nothing; the skip pairs C with what played before it.
    assert session_pairs(sessions[0], window=5) == ([(A, B), (A, D), (B, D)], [(A, C), (B, C)])
    assert session_pairs(sessions[0], window=1) == ([(A, B), (B, D)], [(B, C)])
    pairs = pairs_from_sessions(sessions, window=5)
    assert pairs.positives.tolist() == [[A, B], [A, D], [B, D], [E, F], [A, B]]
    assert pairs.negatives.tolist() == [[A, C], [B, C]]
    assert pairs.positives.dtype == np.int64 and pairs_from_sessions([], 5).positives.shape == (0, 2)


def test_client_split_is_seeded_and_never_splits_a_client() -> None:
    sessions = [Session(f"c{i % 10}", (("track_view", i),)) for i in range(40)]
    train, held = split_by_client(sessions, 0.2, seed=5)
    assert {s.client_id for s in train}.isdisjoint({s.client_id for s in held})
    assert len({s.client_id for s in held}) == 2 and len(train) + len(held) == 40
    assert split_by_client(sessions, 0.2, seed=5) == (train, held)
    assert split_by_client(sessions[:1], 0.2, seed=5) == (sessions[:1], [])  # one client: nothing to hold out


@pytest.fixture(scope="module")
def small_world():
    """A 500-track demo catalog, its content model and hidden scenes (shared: training takes a second)."""
    from musicrec.data.demo import demo_catalog

    catalog = demo_catalog(500, seed=5)
    _, scaled, trained, embeddings = train_and_embed(catalog, FAST)
    tracks = TrackTable.from_frame(catalog.tracks, catalog.features)
    world = assign_scenes(catalog, 12, seed=3)
    return catalog, scaled, trained.model, embeddings, tracks, world


def test_too_few_events_keep_the_content_model_and_say_why(small_world) -> None:
    _, scaled, model, embeddings, tracks, world = small_world
    events = simulate_events(world, ListenerConfig(listeners=6, sessions_per_listener=1, plays=(4, 4)), seed=1)
    result = cotrain(model, scaled, tracks, events_frame(events), CotrainConfig(min_pairs=200, seed=1),
                     content_embeddings=embeddings)
    report = result.report
    assert not result.fine_tuned and result.model is model and result.embeddings is embeddings
    assert 0 < report["positive_pairs"] < 200 and "too few events" in report["reason"]
    assert report["heldout_before"] == report["heldout_after"] and report["heldout_queries"] > 0
    empty = cotrain(model, scaled, tracks, events_frame([]), CotrainConfig(), content_embeddings=embeddings)
    assert not empty.fine_tuned and empty.report["events_read"] == 0 and empty.report["heldout_before"] is None


def test_fine_tune_is_deterministic_for_a_seed(small_world) -> None:
    _, scaled, model, _, tracks, world = small_world
    sessions, _ = sessions_from_events(events_frame(simulate_events(world, ListenerConfig(listeners=20), seed=2)),
                                       tracks.row_of)
    pairs = pairs_from_sessions(sessions)
    config = CotrainConfig(epochs=2, batch_size=128, seed=9, threads=1)
    one, two = fine_tune(model, scaled, pairs, config), fine_tune(model, scaled, pairs, config)
    other = fine_tune(model, scaled, pairs, CotrainConfig(epochs=2, batch_size=128, seed=10, threads=1))
    for name, weight in one.model.state_dict().items():
        assert torch.equal(weight, two.model.state_dict()[name]), name
    assert not torch.equal(one.model.encoder[0].weight, other.model.encoder[0].weight)
    assert not torch.equal(one.model.encoder[0].weight, model.encoder[0].weight)  # the input model is not touched
    assert one.history == two.history and one.epochs_run == 2 and not one.stopped_by_time


def test_a_nan_loss_is_a_model_fit_error(small_world) -> None:
    _, scaled, model, *_ = small_world
    poisoned = scaled.copy()
    poisoned[0] = np.nan
    pairs = Pairs(np.array([[0, 1], [2, 3], [4, 5]]), np.empty((0, 2), dtype=np.int64))
    with pytest.raises(ModelFitError, match="diverged"):
        fine_tune(model, poisoned, pairs, CotrainConfig(epochs=1, threads=1))


# -- the check before publication -----------------------------------------------------------------

def _broken_index(embeddings: np.ndarray, index_type: str = "flat", *, seed: int = 0):
    """An index over other vectors: it loads fine, but finds the wrong neighbours."""
    from musicrec.index.faiss_index import build_index

    shuffled = np.random.default_rng(seed).permutation(np.asarray(embeddings))
    return build_index(shuffled, index_type, seed=seed)


def _nan_embed(model, scaled):
    from musicrec.models.autoencoder import embed

    out = embed(model, scaled)
    out[0] = np.nan
    return out


@pytest.mark.parametrize(("target", "fake", "expect"), [
    ("build_index", _broken_index, "ANN recall@20"),
    ("embed", _nan_embed, "NaN"),
], ids=["index-misses-neighbours", "nan-embedding"])
def test_a_broken_root_build_is_not_published(small_world, tmp_path: Path, monkeypatch, capsys,
                                             target: str, fake, expect: str) -> None:
    catalog = small_world[0]
    good = build_version(catalog, FAST, root=tmp_path)
    before = os.readlink(tmp_path / CURRENT)
    assert before == good.path.name
    monkeypatch.setattr(f"musicrec.indexer.pipeline.{target}", fake)
    with pytest.raises(VersionCheckError, match=expect) as info:
        build_version(catalog, replace(FAST, seed=4), root=tmp_path)  # another seed: another version name
    assert f"current still points at {before}" in str(info.value)
    assert os.readlink(tmp_path / CURRENT) == before
    # The command line: exit 2, one line, current unchanged.
    code = main(["build", "--demo", "300", "--epochs", "1", "--index-type", "flat", "--root", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and expect in err and "not published" in err
    assert os.readlink(tmp_path / CURRENT) == before


# -- events through the build, the service and the simulator ------------------------------------

def test_cli_build_with_events_records_and_prints_before_and_after(tmp_path: Path, capsys) -> None:
    from musicrec.data.demo import demo_catalog

    catalog = demo_catalog(400)  # the catalog `--demo 400` builds, so the events' track ids are known
    world = assign_scenes(catalog, 10, seed=4)
    log_dir = tmp_path / "events"
    write_events(log_dir, simulate_events(world, ListenerConfig(listeners=40), seed=4))
    out = tmp_path / "v"
    code = main(["build", "--demo", "400", "--epochs", "2", "--index-type", "flat", "--out", str(out),
                 "--events", str(log_dir), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = read_manifest(out).events
    assert report["fine_tuned"] and report["events_read"] == len(read_events(log_dir))
    assert report["clients"] == 40 and report["heldout_clients"] == 8 and report["positive_pairs"] >= 200
    assert f"content-only {report['heldout_before']:.4f}  →  with events {report['heldout_after']:.4f}" in printed
    assert json.loads((out / MANIFEST).read_text())["events"]["metric"] == "next_track_hit@20"
    code = main(["build", "--demo", "400", "--out", str(tmp_path / "w"), "--events", str(tmp_path / "nope"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "nope" in err and "no such event log" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def content_version(small_world, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_version(small_world[0], FAST, out=tmp_path_factory.mktemp("content") / "v").path


def test_a_content_only_manifest_has_an_empty_events_record(content_version: Path) -> None:
    assert read_manifest(content_version).events == {}


def test_events_posted_through_the_real_service_reach_the_log_unchanged(small_world, content_version: Path,
                                                                        tmp_path: Path) -> None:
    world = small_world[-1]
    events = simulate_events(world, ListenerConfig(listeners=3, sessions_per_listener=2, plays=(3, 4)), seed=6)
    published = asyncio.run(post_through_service(content_version, events))
    write_events(tmp_path, published)
    logged = read_events(tmp_path)
    key = ["client_id", "ts", "type", "track_id"]
    direct = events_frame(events)
    assert len(logged) == len(events) and logged["event_id"].is_unique
    assert logged[key].reset_index(drop=True).equals(direct[key].reset_index(drop=True))
    served = read_manifest(content_version).model_version
    assert set(logged["model_version"]) == {served}  # the service stamped the version it served


def test_events_through_the_service_and_kafka_reach_the_log_via_the_consumer(
        small_world, content_version: Path, kafka_bootstrap: str, tmp_path: Path) -> None:
    """The near-line loop end to end: service → Kafka (tansu) → indexer consumer → Parquet log."""
    events = simulate_events(small_world[-1], ListenerConfig(listeners=3, sessions_per_listener=1, plays=(3, 3)),
                             seed=7, client_prefix="kafka")
    topic = f"sim-{os.getpid()}-{tmp_path.name}"[:200]
    written = record_events(events, tmp_path / "log", serving=content_version, kafka_bootstrap=kafka_bootstrap,
                            topic=topic, group_id=f"g-{tmp_path.name}", idle_s=2.0)
    logged = read_events(tmp_path / "log")
    key = ["client_id", "ts", "type", "track_id"]
    assert written == len(events)
    assert logged[key].reset_index(drop=True).equals(events_frame(events)[key].reset_index(drop=True))


def test_simulated_listeners_are_found_more_often_after_a_rebuild_with_events(tmp_path: Path) -> None:
    """The honest claim: new listeners (never trained on) get their next in-scene track in the top 20 more often.

    Measured with this config (1 torch thread) on seeds 42, 1, 2, 3, 4: content-only 0.17–0.24,
    with events 0.55–0.65, margins 0.32–0.47 (400 queries each); the build's own held-out figure
    gained 0.27–0.41. The asserted margins (0.25, 0.2) sit below the smallest seen, not at them.
    """
    config = SimulationConfig(tracks=800, scenes=20, listeners=ListenerConfig(listeners=150), new_listeners=80,
                              epochs=3, cotrain=CotrainConfig(epochs=4, max_eval_queries=400, seed=42), seed=42,
                              threads=1)
    report = run(config, tmp_path)
    assert report.build_report["fine_tuned"] and report.queries == 400
    assert report.events_recall - report.content_recall >= 0.25, report.table()
    assert report.build_report["heldout_after"] - report.build_report["heldout_before"] >= 0.2, report.table()
    assert report.content_recall > 20 / 800  # content alone beats chance: features explain scenes in part
    assert report.events_recall <= report.oracle_recall + 0.05  # no better than knowing the hidden scene
