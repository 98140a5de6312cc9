"""The answer cache: exact per session state, bounded, and never a stale answer after an event."""
from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from musicrec.service.answers import AnswerCache, answer_key
from musicrec.service.main import create_app
from musicrec.service.sessions import SessionEvent
from tests.test_api import catalog, settings_for, view  # noqa: F401 (catalog is a fixture)


def _key(*events: tuple[str, str], version: str = "v", k: int = 20, diversity: float = 0.0) -> bytes:
    return answer_key(version, [SessionEvent(kind, track, 1.0) for kind, track in events], k, diversity)


def test_lru_keeps_the_most_recently_used_and_counts() -> None:
    cache = AnswerCache(2)
    calls: list[str] = []

    def compute(name: str):
        return lambda: calls.append(name) or name.encode()

    assert cache.get_or_compute(_key(("track_view", "a")), compute("a")) == b"a"
    assert cache.get_or_compute(_key(("track_view", "a")), compute("a-again")) == b"a"
    cache.get_or_compute(_key(), compute("cold"))
    cache.get_or_compute(_key(("track_view", "a")), compute("a-3"))  # a is now the most recent
    cache.get_or_compute(_key(("skip", "a")), compute("skip"))        # evicts "cold", not "a"
    cache.get_or_compute(_key(("track_view", "a")), compute("a-4"))
    assert calls == ["a", "cold", "skip"]
    assert (cache.hits, cache.misses, len(cache)) == (3, 3, 2)


def test_the_key_is_exactly_what_an_answer_depends_on() -> None:
    """Equal for the same version, (type, track) sequence, k and diversity, whatever the times; else different,
    also where a plain join of the strings would collide."""
    same = answer_key("v", [SessionEvent("track_view", "a", 1.0), SessionEvent("like", "b", 2.0)], 20, 0.0)
    assert same == answer_key("v", [SessionEvent("track_view", "a", 9.0), SessionEvent("like", "b", 8.0)], 20, 0.0)
    keys = [_key(("track_view", "ab"), ("track_view", "c")), _key(("track_view", "a"), ("track_view", "bc")),
            _key(("track_view", "a b")), _key(("track_view", "a"), ("track_view", "b")), _key(("like", "a")),
            _key(("track_view", "a"), k=20), _key(("track_view", "a"), k=21), _key(("track_view", "a"), diversity=0.5),
            _key(("track_view", "a"), version="w"), _key()]
    assert len(set(keys)) == len(keys)
    assert keys[5] == _key(("track_view", "a"))
    assert all(type(key) is bytes for key in keys)


def test_size_zero_computes_every_time_and_failures_are_not_kept() -> None:
    off = AnswerCache(0)
    key = _key()
    assert [off.get_or_compute(key, lambda: b"x") for _ in range(3)] == [b"x"] * 3 and len(off) == 0

    cache = AnswerCache(4)

    def boom() -> bytes:
        raise ValueError("scoring failed")

    with pytest.raises(ValueError):
        cache.get_or_compute(key, boom)
    assert len(cache) == 0 and cache.get_or_compute(key, lambda: b"ok") == b"ok"
    with pytest.raises(ValueError, match=">= 0"):
        AnswerCache(-1)


def _counter(metrics: str, name: str) -> float:
    return float(re.search(rf"^{name}_total (\S+)$", metrics, re.M).group(1))


@pytest.mark.anyio
async def test_asking_again_is_a_hit_and_any_event_is_a_new_answer(demo_artifacts: Path, redis_url: str, catalog) -> None:
    async with AsyncTestClient(create_app(settings_for(demo_artifacts, REDIS_URL=redis_url))) as client:
        client.headers["X-Client-Id"] = f"test-{uuid.uuid4().hex}"
        for row in (5, 40, 300):
            await view(client, catalog.ids[row])
        first = (await client.get("/api/songs_recommendations?k=10")).content
        again = (await client.get("/api/songs_recommendations?k=10")).content
        assert again == first
        other_k = (await client.get("/api/songs_recommendations?k=5")).json()
        metrics = (await client.get("/metrics")).text
        assert (_counter(metrics, "musicrec_answer_cache_hits"), _counter(metrics, "musicrec_answer_cache_misses")) == (1, 2)
        assert len(other_k) == 5

        skipped = (await client.get("/api/songs_recommendations?k=10")).json()[0]["id"]
        await view(client, skipped, "skip")
        after = (await client.get("/api/songs_recommendations?k=10")).json()
        assert skipped not in {item["id"] for item in after}

    # With the cache off the same session gets the same answer, computed each time.
    async with AsyncTestClient(create_app(settings_for(demo_artifacts, REDIS_URL=redis_url,
                                                       ANSWER_CACHE_SIZE="0"))) as uncached:
        uncached.headers["X-Client-Id"] = client.headers["X-Client-Id"]
        assert (await uncached.get("/api/songs_recommendations?k=10")).json() == after
        metrics = (await uncached.get("/metrics")).text
        assert _counter(metrics, "musicrec_answer_cache_hits") == 0
