"""Hot swap: a new `current` is served without a restart, under load, with no errors."""
from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from litestar.testing import AsyncTestClient

from musicrec.service.main import create_app
from musicrec.service.settings import Settings
from musicrec.index.artifacts import EMBEDDINGS, publish
from musicrec.indexer.pipeline import BuildOptions, build_version

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory, demo_catalog_small) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("versions")
    old = build_version(demo_catalog_small, BuildOptions(epochs=2, seed=1, progress=False, eval_sample=200), root=root)
    new = build_version(demo_catalog_small, BuildOptions(epochs=2, seed=2, progress=False, eval_sample=200),
                        out=root / "next")
    publish(root, old.path)
    return root, old.path, new.path


def _settings(root: Path, **env: str) -> Settings:
    base = {"ARTIFACTS_DIR": str(root), "REDIS_URL": "memory://", "KAFKA_BOOTSTRAP_SERVERS": "",
            "RELOAD_POLL_S": "0.1", "ADMIN_TOKEN": "s3cret"}
    return Settings.from_env(base | env, env_file=None)


async def test_swap_under_load_switches_once_without_errors(two_versions, demo_catalog_small) -> None:
    root, old, new = two_versions
    publish(root, old)
    track_ids = demo_catalog_small.tracks["id"].tolist()
    app = create_app(_settings(root))
    # httpx's ASGI transport runs requests on this loop, truly concurrently; Litestar's
    # AsyncTestClient would block the loop for each request and serialise the hammering.
    async with app.lifespan(), httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
        before = (await client.get("/readyz")).json()["model_version"]
        stop = asyncio.Event()

        async def hammer(worker: int) -> list[tuple[int, str]]:
            seen = []
            i = 0
            while not stop.is_set() or i < 5:
                body = {"track_ids": track_ids[worker * 7 + i % 5: worker * 7 + i % 5 + 3], "k": 10}
                response = await client.post("/api/recommendations", json=body)
                seen.append((response.status_code, response.json().get("model_version", "")))
                i += 1
                await asyncio.sleep(0)  # an in-memory request never suspends: let the other tasks run
            return seen

        workers = [asyncio.create_task(hammer(w)) for w in range(4)]
        await asyncio.sleep(0.3)
        publish(root, new)
        for _ in range(100):
            if (await client.get("/readyz")).json()["model_version"] != before:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        stop.set()
        results = await asyncio.gather(*workers)
    versions = set()
    for seen in results:
        assert all(status == 200 for status, _ in seen), seen
        sequence = [v for _, v in seen]
        switches = sum(a != b for a, b in zip(sequence, sequence[1:]))
        assert switches == 1 and sequence[0] == before and sequence[-1] != before, sequence
        versions.update(sequence)
    assert len(versions) == 2


async def test_a_broken_version_is_refused_and_the_old_keeps_serving(two_versions, tmp_path: Path) -> None:
    root, old, new = two_versions
    publish(root, old)
    broken = root / "broken"
    shutil.rmtree(broken, ignore_errors=True)
    shutil.copytree(new, broken)
    emb = np.load(broken / EMBEDDINGS)
    emb[0] = np.nan
    np.save(broken / EMBEDDINGS, emb)
    async with AsyncTestClient(create_app(_settings(root, RELOAD_POLL_S="0"))) as client:
        serving = (await client.get("/readyz")).json()["model_version"]
        publish(root, broken)
        response = await client.post("/admin/reload", headers={"Authorization": "Bearer s3cret"})
        assert response.status_code == 409 and "refused" in response.json()["detail"]
        assert (await client.get("/readyz")).json()["model_version"] == serving
        publish(root, new)
        response = await client.post("/admin/reload", headers={"Authorization": "Bearer s3cret"})
        assert response.status_code == 200 and response.json()["swapped"] is True
        assert (await client.get("/readyz")).json()["model_version"] == response.json()["model_version"] != serving
    publish(root, old)


async def test_admin_reload_needs_the_token(two_versions) -> None:
    root, old, _ = two_versions
    publish(root, old)
    async with AsyncTestClient(create_app(_settings(root, RELOAD_POLL_S="0"))) as client:
        assert (await client.post("/admin/reload")).status_code == 401
        wrong = await client.post("/admin/reload", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["detail"]
    async with AsyncTestClient(create_app(_settings(root, RELOAD_POLL_S="0", ADMIN_TOKEN=""))) as client:
        assert (await client.post("/admin/reload", headers={"Authorization": "Bearer "})).status_code == 403
