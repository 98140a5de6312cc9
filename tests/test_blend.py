"""The build with events: co-listening table, the blend chosen on held-out sessions, what the service loads."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import msgspec

from benchmarks.simulate import ListenerConfig, assign_scenes, events_table, session_queries, simulate_events
from musicrec.index import colisten as colisten_files
from musicrec.index.artifacts import MANIFEST, ArtifactError, load_artifacts, read_manifest, sha256_file
from musicrec.index.engine import Engine
from musicrec.index.recommend import Query, Seed
from musicrec.indexer.blend import (
    WITH_EVENTS, BlendConfig, choose_blend, continuation_queries, held_out_clients, score_blend,
)
from musicrec.indexer.colisten import ColistenConfig, sessions_from_log
from musicrec.indexer.event_dataset import write_events
from musicrec.indexer.pipeline import BuildOptions, build_version

FAST = BuildOptions(epochs=2, seed=5, progress=False, eval_sample=100, index_type="flat", threads=1)


@pytest.fixture(scope="module")
def world(demo_catalog_small):  # type: ignore[no-untyped-def]
    return assign_scenes(demo_catalog_small, 25, content_share=0.3, seed=4)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, demo_catalog_small, world):  # type: ignore[no-untyped-def]
    """A content-only version and one rebuilt with simulated listeners' events."""
    tmp = tmp_path_factory.mktemp("blend")
    events = simulate_events(world, ListenerConfig(listeners=300, sessions_per_listener=2, plays=(8, 12)), seed=2)
    write_events(tmp / "events", events)
    content = build_version(demo_catalog_small, FAST, out=tmp / "content")
    rebuilt = build_version(demo_catalog_small, replace(FAST, events=tmp / "events"), out=tmp / "with-events")
    return content, rebuilt, events


def test_continuation_queries_are_first_plays_then_the_rest(world) -> None:  # type: ignore[no-untyped-def]
    events = simulate_events(world, ListenerConfig(listeners=5, sessions_per_listener=1, plays=(7, 7),
                                                   stray_rate=0.0), seed=1)
    sessions = sessions_from_log(events_table(events), world.track_ids, ColistenConfig())
    queries = continuation_queries(sessions, BlendConfig(min_plays=6, max_seeds=10))
    assert len(queries) == 5
    for q in queries:
        assert len(q.seeds) == 3 and len(q.targets) == 4  # half, at most max_seeds, are seeds
        assert not set(q.seeds.tolist()) & set(q.targets.tolist())
    assert continuation_queries(sessions, BlendConfig(min_plays=8)) == []


def test_folds_hold_out_every_client_once_when_the_log_is_small(world) -> None:  # type: ignore[no-untyped-def]
    events = simulate_events(world, ListenerConfig(listeners=40, sessions_per_listener=2, plays=(8, 9)), seed=5)
    sessions = sessions_from_log(events_table(events), world.track_ids, ColistenConfig())
    folds = held_out_clients(sessions, BlendConfig(folds=4, seed=1))
    assert len(folds) == 4 and (np.sum(folds, axis=0) == 1).all()  # a partition of the clients
    assert [int(f.sum()) for f in folds] == [10, 10, 10, 10]
    assert all((a == b).all() for a, b in zip(folds, held_out_clients(sessions, BlendConfig(folds=4, seed=1))))
    # A big enough log needs fewer folds for max_queries (80 sessions of ≥ 6 plays, 20 per fold).
    assert len(held_out_clients(sessions, BlendConfig(folds=4, max_queries=30))) == 2
    assert held_out_clients(sessions.subset(np.arange(41) == 0), BlendConfig()) == []  # one client: nothing to hold out


def test_the_build_learns_co_listening_and_serves_it_better_to_new_listeners(built, world) -> None:  # type: ignore[no-untyped-def]
    content, rebuilt, events = built
    manifest = read_manifest(rebuilt.path)
    report = manifest.events
    assert report["events_read"] == len(events) and report["chosen_by"] == "held-out sessions"
    assert set(colisten_files.FILES) <= set(manifest.checksums)
    assert manifest.scoring["colisten_weight"] > 0
    # The choice is the best of what was tried, and no worse than serving without events.
    objective = lambda f: f["recall@50"] + f["r_precision"]  # noqa: E731
    assert objective(report["chosen"]) == max(objective(t) for t in report["tried"])
    assert objective(report["chosen"]) > objective(report["without_colisten"])
    # The service loads the blend and the table; new listeners' sessions are continued better.
    engine = Engine.load(rebuilt.path)
    assert engine.recommender.colisten is not None
    assert engine.recommender.params.colisten_weight == manifest.scoring["colisten_weight"]
    fresh = simulate_events(world, ListenerConfig(listeners=80, sessions_per_listener=1, plays=(10, 12)),
                            seed=77, client_prefix="new")
    queries = session_queries(fresh, world.track_ids)
    before = score_blend(Engine.load(content.path).recommender, queries)
    after = score_blend(engine.recommender, queries)
    assert after["recall@50"] > before["recall@50"] + 0.1 and after["r_precision"] > before["r_precision"]
    answer = engine.recommender.recommend(Query(seeds=[Seed(int(q), 1.0) for q in queries[0].seeds], k=20))
    assert "co-listened" in {h.reason for h in answer}


def test_too_few_held_out_sessions_fall_back_to_the_measured_defaults(demo_catalog_small, built) -> None:  # type: ignore[no-untyped-def]
    content, _, _ = built
    recommender = Engine.load(content.path).recommender
    choice = choose_blend(lambda params, table: recommender, [], config=BlendConfig(min_queries=20))
    assert choice.report["chosen_by"] == "defaults" and "0 held-out queries" in choice.report["reason"]
    assert {k: choice.blend[k] for k in WITH_EVENTS} == WITH_EVENTS


def test_a_version_with_a_bad_co_listening_table_is_refused(built, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, rebuilt, _ = built
    copy = tmp_path / "v"
    shutil.copytree(rebuilt.path, copy)
    indices = np.load(copy / colisten_files.INDICES)
    indices[0] = 10**6  # a row the catalog does not have
    np.save(copy / colisten_files.INDICES, indices)
    manifest = read_manifest(copy)
    manifest.checksums[colisten_files.INDICES] = sha256_file(copy / colisten_files.INDICES)  # a valid checksum
    (copy / MANIFEST).write_bytes(msgspec.json.encode(manifest))
    with pytest.raises(ArtifactError, match="co-listening indices outside"):
        load_artifacts(copy)


def test_a_manifest_blend_out_of_range_is_refused(built, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, rebuilt, _ = built
    copy = tmp_path / "v"
    shutil.copytree(rebuilt.path, copy)
    manifest = read_manifest(copy)
    manifest.scoring["colisten_weight"] = -3.0
    (copy / MANIFEST).write_bytes(msgspec.json.encode(manifest))
    with pytest.raises(ArtifactError, match="scoring.colisten_weight"):
        load_artifacts(copy)
