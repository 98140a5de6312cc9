"""The whole near-line → offline loop against the real broker, without a restart:

listeners' events → the running service → Kafka (tansu) → `indexer consume` → Parquet log →
a build with those events into the root → `current` switched → the same service answers with
the new model_version.
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path

import anyio
import httpx
import pytest

from musicrec.service.main import create_app
from musicrec.service.settings import Settings
from benchmarks.simulate import ListenerConfig, assign_scenes, simulate_events
from musicrec.index.artifacts import read_manifest, resolve_version_dir
from musicrec.indexer.consume import ConsumeOptions, consume
from musicrec.indexer.event_dataset import read_events
from musicrec.indexer.pipeline import BuildOptions, build_version

pytestmark = pytest.mark.anyio
FAST = BuildOptions(epochs=2, seed=5, progress=False, eval_sample=100, threads=1)


async def _until(check, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.1)


async def test_events_through_kafka_rebuild_the_served_version_without_a_restart(
        demo_catalog_small, kafka_bootstrap: str, tmp_path: Path) -> None:
    root, log_dir = tmp_path / "artifacts", tmp_path / "events"
    first = build_version(demo_catalog_small, FAST, root=root)
    world = assign_scenes(demo_catalog_small, 30, seed=3)
    events = simulate_events(world, ListenerConfig(listeners=60, sessions_per_listener=2, plays=(6, 8)), seed=9)
    topic = f"loop-{os.getpid()}-{tmp_path.name}"[:200]
    settings = Settings.from_env({"ARTIFACTS_DIR": str(root), "REDIS_URL": "memory://", "RELOAD_POLL_S": "0.2",
                                  "RATE_LIMIT_PER_MIN": "0",
                                  "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPIC": topic,
                                  "EVENT_BUFFER_SIZE": str(len(events) + 1), "EVENT_SPILL_DIR": str(tmp_path / "spill")},
                                 env_file=None)
    app = create_app(settings)
    async with app.lifespan(), httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
        async def ready() -> dict:
            return (await client.get("/readyz")).json()

        assert (await ready())["model_version"] == first.manifest.model_version
        for e in events:
            response = await client.post("/events", json={"type": e.type, "track_id": e.track_id,
                                                          "client_id": e.client_id, "ts": e.ts})
            assert response.status_code == 202, response.text

        async def all_produced() -> bool:
            return (await ready())["events"]["produced"] == len(events)

        await _until(all_produced, 30, f"{len(events)} events acknowledged by Kafka")

        # N in, N out: every accepted event lands in the Parquet log once.
        result = await consume(ConsumeOptions(out=log_dir, bootstrap_servers=kafka_bootstrap, topic=topic,
                                              group_id=f"loop-{tmp_path.name}", until_idle_s=2.0))
        logged = read_events(log_dir)
        assert result.events_written == len(logged) == len(events)
        assert sorted(logged["track_id"]) == sorted(e.track_id for e in events)
        assert set(logged["model_version"]) == {first.manifest.model_version}

        # Rebuild in a worker thread while the service keeps answering on this loop.
        rebuilt = await anyio.to_thread.run_sync(
            lambda: build_version(demo_catalog_small, replace(FAST, seed=6, events=log_dir), root=root))
        report = rebuilt.manifest.events
        assert report["plays"] > 0 and report["tracks_with_colisten"] > 0, report
        assert {"colisten_indptr.npy", "colisten_indices.npy", "colisten_weights.npy"} <= set(rebuilt.manifest.checksums)
        assert resolve_version_dir(root).resolve() == rebuilt.path.resolve()

        async def swapped() -> bool:
            return (await ready())["model_version"] == rebuilt.manifest.model_version

        await _until(swapped, 20, "the service to serve the rebuilt version")
        answer = await client.post("/api/recommendations", json={"track_ids": [events[0].track_id], "k": 5})
        assert answer.status_code == 200 and answer.json()["model_version"] == rebuilt.manifest.model_version
        assert len(answer.json()["items"]) == 5
        assert read_manifest(rebuilt.path).events["events_read"] == len(events)
