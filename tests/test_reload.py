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
            "RELOAD_POLL_S": "0.1", "ADMIN_TOKEN": "s3cret", "RATE_LIMIT_PER_MIN": "0", "ADMIN_RATE_LIMIT_PER_MIN": "0"}
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


# -- a bad version never stops hot reload (issue 13) ---------------------------------------------

def _with_checksum(version: Path, name: str) -> None:
    import json

    from musicrec.index.artifacts import MANIFEST, sha256_file

    manifest = json.loads((version / MANIFEST).read_text())
    manifest["checksums"][name] = sha256_file(version / name)
    (version / MANIFEST).write_text(json.dumps(manifest))


def _broken_header(src: Path, dst: Path) -> Path:
    """An embeddings.npy whose header is cut mid-tuple (tokenize.TokenError), with a matching checksum."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    raw = (dst / EMBEDDINGS).read_bytes()
    (dst / EMBEDDINGS).write_bytes(raw.replace(b"(1500, 32)", b"((((((((((", 1))
    _with_checksum(dst, EMBEDDINGS)
    return dst


def _wild_neighbours(src: Path, dst: Path) -> Path:
    """A neighbour table pointing past the catalog (valid checksum): every recommendation was a 500."""
    from musicrec.index.artifacts import NEIGHBOURS

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    table = np.load(dst / NEIGHBOURS)
    table[:, 1] = len(table) + 10
    np.save(dst / NEIGHBOURS, table)
    _with_checksum(dst, NEIGHBOURS)
    return dst


async def _serving(client, before: str, timeout_s: float = 10.0) -> str:
    for _ in range(int(timeout_s / 0.05)):
        version = (await client.get("/readyz")).json()["model_version"]
        if version != before:
            return version
        await asyncio.sleep(0.05)
    return before


@pytest.mark.parametrize("make_bad", [_broken_header, _wild_neighbours], ids=["broken-npy-header", "wild-neighbours"])
async def test_the_watcher_survives_a_bad_version_and_takes_the_next_good_one(two_versions, musicrec_logs: list,
                                                                             make_bad, demo_catalog_small) -> None:
    root, old, new = two_versions
    publish(root, old)
    bad = make_bad(new, root / f"bad-{make_bad.__name__}")
    ids = demo_catalog_small.tracks["id"].tolist()
    async with AsyncTestClient(create_app(_settings(root))) as client:
        serving = (await client.get("/readyz")).json()["model_version"]
        publish(root, bad)
        for _ in range(200):  # the watcher (every 0.1 s) refuses it, with one ERROR line
            if any("refused artefact version" in r.getMessage() for r in musicrec_logs):
                break
            await asyncio.sleep(0.05)
        refusals = [r for r in musicrec_logs if "refused artefact version" in r.getMessage()]
        assert refusals and str(bad) in refusals[0].getMessage()
        reply = await client.post("/api/recommendations", json={"track_ids": ids[:3], "k": 10})
        assert reply.status_code == 200 and reply.json()["model_version"] == serving
        forced = await client.post("/admin/reload", headers={"Authorization": "Bearer s3cret"})
        assert forced.status_code == 409 and "refused" in forced.json()["detail"]
        publish(root, new)  # the next good version is still picked up: the watcher is alive
        assert await _serving(client, serving) != serving
        assert (await client.post("/api/recommendations", json={"track_ids": ids[:3], "k": 10})).status_code == 200
    publish(root, old)


async def test_the_watcher_outlives_a_check_that_raises(two_versions, musicrec_logs: list) -> None:
    """Whatever a check raises (here an OSError from an unreadable target), the next poll still runs."""
    from musicrec.index.engine import Engine, EngineHolder
    from musicrec.service.reload import Reloader

    root, old, new = two_versions
    publish(root, old)
    reloader = Reloader(root, EngineHolder(Engine.load(old)))
    failures = iter([OSError("stale NFS handle")])
    real_check = reloader.check

    async def flaky_check(*, force: bool = False):
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return await real_check(force=force)

    reloader.check = flaky_check  # type: ignore[method-assign]
    watcher = asyncio.create_task(reloader.watch(0.05))
    try:
        publish(root, new)
        for _ in range(100):
            if reloader.holder.current.artifacts.path.resolve() == new.resolve():
                break
            await asyncio.sleep(0.05)
        assert reloader.holder.current.artifacts.path.resolve() == new.resolve()
        assert not watcher.done()
        assert any("artefact watcher" in r.getMessage() and r.exc_info for r in musicrec_logs)
    finally:
        watcher.cancel()
        publish(root, old)
