"""The service end to end on a small deterministic catalog, with the real Redis."""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import AsyncIterator

import pytest
from litestar.testing import AsyncTestClient

from musicrec.service.main import create_app
from musicrec.service.settings import Settings
from musicrec.index.artifacts import load_artifacts

pytestmark = pytest.mark.anyio


def settings_for(artifacts: Path, **env: str) -> Settings:
    # The whole suite calls from one address: rate limits are off here and have their own tests (test_security.py).
    base = {"ARTIFACTS_DIR": str(artifacts), "REDIS_URL": "memory://", "KAFKA_BOOTSTRAP_SERVERS": "",
            "RATE_LIMIT_PER_MIN": "0"}
    return Settings.from_env(base | env, env_file=None)


@pytest.fixture
async def client(demo_artifacts: Path, redis_url: str) -> AsyncIterator[AsyncTestClient]:
    app = create_app(settings_for(demo_artifacts, REDIS_URL=redis_url))
    async with AsyncTestClient(app) as c:
        c.headers["X-Client-Id"] = f"test-{uuid.uuid4().hex}"
        yield c


@pytest.fixture(scope="module")
def catalog(demo_artifacts: Path):
    return load_artifacts(demo_artifacts).tracks


async def view(client: AsyncTestClient, track_id: str, kind: str = "track_view") -> dict:
    response = await client.post("/events", json={"type": kind, "track_id": track_id, "source": "test"})
    assert response.status_code == 202, response.text
    return response.json()


async def test_health_readiness_metrics_and_schema(client: AsyncTestClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = (await client.get("/readyz")).json()
    assert ready["status"] == "ok" and ready["redis"] == "ok" and ready["kafka"] == "disabled"
    assert ready["demo"] is True and ready["artifacts"]["loaded"] is True and ready["model_version"]
    await client.get("/api/songs_recommendations")
    assert (await client.get("/api/songs/no-such-track")).status_code == 404
    metrics = (await client.get("/metrics")).text
    assert "musicrec_recommendation_seconds_bucket" in metrics and "musicrec_events_dropped_total" in metrics
    assert "musicrec_redis_degraded 0.0" in metrics
    assert ('musicrec_http_request_duration_seconds_count{method="GET",path="/api/songs_recommendations",'
            'status_code="200"} 1.0') in metrics
    # Routes are labelled by template, not by raw path (bounded label sets), with the status sent.
    assert 'path="/api/songs/{track_id}",status_code="404"} 1.0' in metrics
    assert (await client.get("/schema/openapi.json")).json()["paths"]["/api/recommendations"]


async def test_new_listener_gets_a_cookie_and_popular_tracks(demo_artifacts: Path, catalog) -> None:
    async with AsyncTestClient(create_app(settings_for(demo_artifacts))) as fresh:
        response = await fresh.get("/api/songs_recommendations?k=12")
        assert response.status_code == 200
        assert "client_id" in response.cookies
        items = response.json()
        assert len(items) == 12 and all(set(i) >= {"id", "name", "artist", "genre", "popularity"} for i in items)
        assert len({i["genre"] for i in items}) >= 8  # spread across genres
        assert all(i["because"] is None and i["reason"] == "popular" for i in items)
        # The cookie names the session from then on.
        await fresh.post("/events", json={"type": "track_view", "track_id": items[0]["id"]})
        session = (await fresh.get("/api/session")).json()
        # The cookie is the listener's id, signed (musicrec.service.security).
        assert response.cookies["client_id"].startswith(session["client_id"] + ".") and len(session["events"]) == 1


async def test_session_recommendations_follow_views_skips_and_likes(client: AsyncTestClient, catalog) -> None:
    seeds = [catalog.ids[i] for i in (5, 40, 300)]
    for track_id in seeds:
        await view(client, track_id)
    first = (await client.get("/api/songs_recommendations?k=10")).json()
    assert len(first) == 10
    assert not {i["id"] for i in first} & set(seeds)
    assert {i["because"] for i in first} <= set(seeds)
    await view(client, first[0]["id"], "skip")
    after_skip = (await client.get("/api/songs_recommendations?k=10")).json()
    assert first[0]["id"] not in {i["id"] for i in after_skip} and after_skip != first
    await view(client, seeds[0], "like")
    after_like = (await client.get("/api/songs_recommendations?k=10")).json()
    assert after_like != after_skip
    assert sum(i["because"] == seeds[0] for i in after_like) >= sum(i["because"] == seeds[0] for i in after_skip)


async def test_an_event_with_next_answers_the_next_tracks_in_one_round_trip(client: AsyncTestClient, catalog) -> None:
    seeds = [catalog.ids[i] for i in (5, 40, 300)]
    for track_id in seeds[:2]:
        await view(client, track_id)
    response = await client.post("/events", json={"type": "track_view", "track_id": seeds[2], "next": 8})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["type"] == "track_view" and body["client_id"] == client.headers["X-Client-Id"] and body["event_id"]
    # The same answer, in the same shape, as asking GET right after the event; the session has the event.
    assert body["next"] == (await client.get("/api/songs_recommendations?k=8")).json()
    assert len(body["next"]) == 8 and {i["because"] for i in body["next"]} <= set(seeds)
    assert [e["track_id"] for e in (await client.get("/api/session")).json()["events"]] == seeds[::-1]
    # The answer is computed after the event: a skipped track is gone from it at once.
    skipped = body["next"][0]["id"]
    after = await client.post("/events", json={"type": "skip", "track_id": skipped, "next": 8})
    assert after.status_code == 200 and skipped not in {i["id"] for i in after.json()["next"]}
    assert after.json()["next"] == (await client.get("/api/songs_recommendations?k=8")).json()
    # Without "next" it stays the 202 receipt.
    plain = await client.post("/events", json={"type": "like", "track_id": seeds[0]})
    assert plain.status_code == 202 and set(plain.json()) == {"event_id", "client_id", "type"}


async def test_a_new_listener_posting_an_event_with_next_gets_a_cookie(demo_artifacts: Path, catalog) -> None:
    async with AsyncTestClient(create_app(settings_for(demo_artifacts))) as fresh:
        response = await fresh.post("/events", json={"type": "track_view", "track_id": catalog.ids[2], "next": 3})
        assert response.status_code == 200 and "client_id" in response.cookies
        assert {i["because"] for i in response.json()["next"]} == {catalog.ids[2]}


@pytest.mark.parametrize("bad", [0, 201, -1, "ten", 2.5, None])
async def test_a_bad_next_is_400_json(client: AsyncTestClient, catalog, bad: object) -> None:
    body = {"type": "track_view", "track_id": catalog.ids[0], "next": bad}
    if bad is None:
        body["next"] = {"k": 3}
    response = await client.post("/events", json=body)
    assert response.status_code == 400, response.text
    assert "next" in response.json()["detail"] or "next" in json.dumps(response.json().get("extra"))
    assert (await client.get("/api/session")).json()["events"] == []  # a refused event is not recorded


async def test_session_keeps_the_last_20_with_a_ttl(client: AsyncTestClient, catalog, redis_url: str) -> None:
    import redis.asyncio as redis

    for i in range(25):
        await view(client, catalog.ids[i])
    session = (await client.get("/api/session")).json()
    assert [e["track_id"] for e in session["events"]] == [catalog.ids[i] for i in range(24, 4, -1)]
    r = redis.from_url(redis_url)
    try:
        keys = [k async for k in r.scan_iter(match=f"*{client.headers['X-Client-Id']}*")]
        assert len(keys) == 1
        assert await r.llen(keys[0]) == 20
        assert 3500 < await r.ttl(keys[0]) <= 3600
    finally:
        await r.aclose()
    assert (await client.delete("/api/session")).status_code == 204
    assert (await client.get("/api/session")).json()["events"] == []


async def test_seed_spelling_of_view_events_is_accepted(client: AsyncTestClient, catalog) -> None:
    body = await view(client, catalog.ids[1], "track_view_offline")
    assert body["type"] == "track_view"


async def test_playlist_continuation(client: AsyncTestClient, catalog) -> None:
    ids = [catalog.ids[i] for i in (3, 9, 27)]
    response = await client.post("/api/recommendations", json={"track_ids": ids + ["not-a-track"], "k": 15})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["unknown_ids"] == ["not-a-track"] and body["model_version"]
    assert len(body["items"]) == 15 and not {i["id"] for i in body["items"]} & set(ids)
    assert all(i["because"] in ids for i in body["items"])
    assert set(body["items"][0]) == {"id", "name", "artist", "album", "genre", "popularity", "score", "because",
                                     "reason"}
    assert {i["reason"] for i in body["items"]} <= {"same artist", "sounds like"}  # no co-listening table here
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)


async def test_playlist_filters_exclusions_and_diversity(client: AsyncTestClient, catalog) -> None:
    genre = catalog.genre[0]
    ids = [catalog.ids[i] for i in (3, 9)]
    plain = (await client.post("/api/recommendations", json={"track_ids": ids, "k": 10})).json()["items"]
    body = {"track_ids": ids, "k": 10, "exclude_ids": [plain[0]["id"]],
            "filters": {"genres": [genre], "explicit": False, "min_popularity": 5, "max_popularity": 90},
            "diversity": 0.5, "artist_weight": 0.0}
    items = (await client.post("/api/recommendations", json=body)).json()["items"]
    assert len(items) == 10 and plain[0]["id"] not in {i["id"] for i in items}
    for item in items:
        row = catalog.row_of[item["id"]]
        assert genre in catalog.genres[row].split("|") and not catalog.explicit[row]
        assert 5 <= item["popularity"] <= 90


@pytest.mark.parametrize(("body", "status"), [
    ({"track_ids": []}, 400),
    ({"track_ids": "abc"}, 400),
    ({"track_ids": ["x"] * 101}, 400),
    ({"track_ids": ["only-unknown"]}, 404),
    ({"track_ids": ["__FIRST__"], "k": 0}, 400),
    ({"track_ids": ["__FIRST__"], "k": 10_000}, 400),
    ({"track_ids": ["__FIRST__"], "k": "ten"}, 400),
    ({"track_ids": ["__FIRST__"], "diversity": 2}, 400),
    ({"track_ids": ["__FIRST__"], "filters": {"genres": ["no-such-genre"]}}, 400),
    ({"track_ids": ["__FIRST__"], "filters": {"min_popularity": 80, "max_popularity": 20}}, 400),
    ({"track_ids": ["__FIRST__"], "surprise": 1}, 400),
], ids=["empty", "wrong-type", "too-many", "unknown-only", "k0", "k10000", "k-str", "diversity", "genre",
        "pop-range", "unknown-field"])
async def test_bad_recommendation_requests_are_4xx_json(client: AsyncTestClient, catalog, body: dict, status: int) -> None:
    body = json.loads(json.dumps(body).replace("__FIRST__", catalog.ids[0]))
    response = await client.post("/api/recommendations", json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["detail"]


async def test_bad_bodies_and_params_are_4xx_json(client: AsyncTestClient, catalog) -> None:
    huge = b'{"track_ids": ["' + b"a" * (10 * 1024 * 1024) + b'"]}'
    response = await client.post("/api/recommendations", content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["detail"]
    response = await client.post("/api/recommendations", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["detail"]
    for query in ("k=0", "k=10000", "k=abc", "diversity=-1"):
        response = await client.get(f"/api/songs_recommendations?{query}")
        assert response.status_code == 400, query
        assert response.json()["detail"]


@pytest.mark.parametrize(("event", "status"), [
    ({"type": "dance", "track_id": "__FIRST__"}, 400),
    ({"type": "skip", "track_id": "no-such-track"}, 404),
    ({"type": "skip"}, 400),
    ({"type": "skip", "track_id": "__FIRST__", "position": -3}, 400),
    ({"type": "skip", "track_id": "__FIRST__", "client_id": "bad id!"}, 400),
    ({"type": "skip", "track_id": "__FIRST__", "extra": True}, 400),
], ids=["bad-type", "unknown-track", "no-track", "negative-position", "bad-body-client", "unknown-field"])
async def test_bad_events_are_4xx_json(demo_artifacts: Path, catalog, event: dict, status: int) -> None:
    async with AsyncTestClient(create_app(settings_for(demo_artifacts))) as fresh:
        event = json.loads(json.dumps(event).replace("__FIRST__", catalog.ids[0]))
        response = await fresh.post("/events", json=event)
        assert response.status_code == status, response.text
        assert response.json()["detail"]


@pytest.mark.parametrize("bad", ["", "has space", "x" * 65, "semi;colon", "ünï"])
async def test_bad_client_ids_are_400(client: AsyncTestClient, bad: str) -> None:
    response = await client.get("/api/songs_recommendations", headers={"X-Client-Id": bad.encode()})  # raw UTF-8 bytes
    assert response.status_code == 400 and "client id" in response.json()["detail"]


async def test_songs_listing_and_detail(client: AsyncTestClient, catalog) -> None:
    page = (await client.get("/api/songs?per_page=7&page=2&sort=-popularity")).json()
    assert page["page"] == 2 and page["per_page"] == 7 and page["total"] == len(catalog)
    pops = [i["popularity"] for i in page["items"]]
    assert len(pops) == 7 and pops == sorted(pops, reverse=True)
    name = catalog.name[10]
    found = (await client.get("/api/songs", params={"q": name.upper()})).json()
    assert catalog.ids[10] in {i["id"] for i in found["items"]}
    genre = catalog.genre[0]
    in_genre = (await client.get("/api/songs", params={"genre": genre, "explicit": "false", "per_page": 100})).json()
    assert in_genre["total"] == int(sum(genre in g.split("|") and not e for g, e in zip(catalog.genres, catalog.explicit)))
    detail = (await client.get(f"/api/songs/{catalog.ids[10]}")).json()
    assert detail["id"] == catalog.ids[10] and set(detail["features"]) == set(catalog.feature_names)
    missing = await client.get("/api/songs/nope")
    assert missing.status_code == 404 and missing.json()["detail"]
    for query in ("page=0", "per_page=10000", "genre=nope", "sort=sideways", "min_popularity=101", "explicit=maybe"):
        response = await client.get(f"/api/songs?{query}")
        assert response.status_code == 400, query


async def test_redis_down_still_serves_and_reports_degraded(demo_artifacts: Path, catalog, closed_port: int) -> None:
    settings = settings_for(demo_artifacts, REDIS_URL=f"redis://127.0.0.1:{closed_port}/0")
    async with AsyncTestClient(create_app(settings)) as c:
        c.headers["X-Client-Id"] = "offline-listener"
        await view(c, catalog.ids[3])
        response = await c.get("/api/songs_recommendations?k=5")
        assert response.status_code == 200 and len(response.json()) == 5
        assert {i["because"] for i in response.json()} == {catalog.ids[3]}
        ready = (await c.get("/readyz")).json()
        assert ready["status"] == "degraded" and ready["redis"] == "degraded" and "redis" in ready["degraded"]


async def test_kafka_down_still_accepts_events(demo_artifacts: Path, catalog, closed_port: int, tmp_path: Path) -> None:
    settings = settings_for(demo_artifacts, KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{closed_port}",
                            EVENT_SPILL_DIR=str(tmp_path / "spill"))
    async with AsyncTestClient(create_app(settings)) as c:
        for i in range(5):
            assert (await c.post("/events", json={"type": "track_view", "track_id": catalog.ids[i]})).status_code == 202
        ready = (await c.get("/readyz")).json()
        assert ready["kafka"] == "degraded" and ready["events"]["buffered"] == 5 and ready["events"]["dropped"] == 0


async def test_events_reach_kafka_n_in_n_out(demo_artifacts: Path, catalog, kafka_bootstrap: str, tmp_path: Path) -> None:
    from aiokafka import AIOKafkaConsumer

    from musicrec.data.events import decode_event

    topic = f"api-events-{uuid.uuid4().hex[:8]}"
    settings = settings_for(demo_artifacts, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, KAFKA_TOPIC=topic,
                            EVENT_SPILL_DIR=str(tmp_path / "spill"))
    sent = []
    async with AsyncTestClient(create_app(settings)) as c:
        for i in range(30):
            body = (await view(c, catalog.ids[i % 11], ["track_view", "skip", "like"][i % 3]))
            sent.append(body["event_id"])
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                                group_id=f"g-{uuid.uuid4().hex[:6]}")
    await consumer.start()
    try:
        got = []
        batches = await consumer.getmany(timeout_ms=10_000)
        while True:
            for records in batches.values():
                got.extend(decode_event(r.value) for r in records)
            if len(got) >= len(sent):
                break
            batches = await consumer.getmany(timeout_ms=5_000)
            if not batches:
                break
    finally:
        await consumer.stop()
    assert sorted(e.event_id for e in got) == sorted(sent)
    assert all(e.model_version and e.client_id for e in got)


# -- hostile bodies (issue 13) -------------------------------------------------------------------

DEEP = "[" * 1000 + "]" * 1000  # ~2 KB that made the generic JSON decode raise RecursionError (a 500)


@pytest.mark.parametrize(("path", "body"), [
    ("/api/recommendations", '{"track_ids": ' + DEEP + "}"),
    ("/events", '{"type": "like", "track_id": ' + DEEP + "}"),
    ("/events", DEEP),
], ids=["recommendations", "events-field", "events-top-level"])
async def test_deeply_nested_json_is_a_400_not_a_500(client: AsyncTestClient, path: str, body: str,
                                                     musicrec_logs: list) -> None:
    response = await client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json() == {"status_code": 400, "detail": "JSON body nested too deeply"}
    assert not [r for r in musicrec_logs if r.levelname == "ERROR"]


@pytest.mark.parametrize(("headers", "content"), [
    ({"content-type": "text/plain"}, '{"type": "like", "track_id": "__FIRST__"}'),
    ({"content-type": "application/x-www-form-urlencoded"}, '{"type": "like", "track_id": "__FIRST__"}'),
    ({"content-type": "multipart/form-data; boundary=x"}, '{"type": "like", "track_id": "__FIRST__"}'),
], ids=["text-plain", "form", "multipart"])
async def test_events_take_only_json_so_a_cross_site_form_cannot_post_one(client: AsyncTestClient, catalog,
                                                                        headers: dict, content: str) -> None:
    # A cross-site <form> can send text/plain, form or multipart bodies without a preflight; they used to be
    # parsed as JSON and written into the listener's session.
    response = await client.post("/events", content=content.replace("__FIRST__", catalog.ids[0]).encode(),
                                 headers=headers)
    assert response.status_code == 415, response.text
    assert "application/json" in response.json()["detail"]
    assert (await client.get("/api/session")).json()["events"] == []  # nothing was written
    ok = await client.post("/events", content=content.replace("__FIRST__", catalog.ids[0]).encode(),
                           headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 202


async def test_every_5xx_is_logged_with_its_traceback(musicrec_logs: list) -> None:
    """Litestar's own 500s (HTTPException) went out through the JSON mapping without a log line."""
    from litestar import Litestar, get
    from litestar.exceptions import InternalServerException

    from musicrec.service.errors import EXCEPTION_HANDLERS

    @get("/boom")
    async def boom() -> None:
        try:
            raise OSError("disk on fire")
        except OSError as exc:
            raise InternalServerException() from exc

    async with AsyncTestClient(Litestar([boom], exception_handlers=EXCEPTION_HANDLERS)) as c:
        response = await c.get("/boom")
    assert response.status_code == 500 and response.json()["status_code"] == 500
    errors = [r for r in musicrec_logs if r.levelname == "ERROR" and "/boom" in r.getMessage()]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert errors[0].exc_info[1].__cause__.args == ("disk on fire",)  # the cause's traceback goes with it


async def test_metrics_count_aborted_bodies_as_499_and_unknown_routes(client: AsyncTestClient, catalog) -> None:
    app = client.app
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/events", "raw_path": b"/events", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"t"), (b"content-type", b"application/json"), (b"content-length", b"200"),
                         (b"x-client-id", b"aborting-listener")],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80), "state": {}}
    messages = iter([{"type": "http.request", "body": b'{"type": "like", ', "more_body": True},
                     {"type": "http.disconnect"}])
    sent: list[dict] = []

    async def receive() -> dict:
        return next(messages)

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)  # a client that hangs up halfway through its body
    assert sent[0]["status"] == 499
    assert (await client.get("/no/such/route")).status_code == 404
    metrics = (await client.get("/metrics")).text
    assert 'method="POST",path="/events",status_code="499"} 1.0' in metrics
    assert 'status_code="500"' not in metrics
    assert 'method="GET",path="<unmatched>",status_code="404"} 1.0' in metrics


async def test_listeners_dropped_by_the_in_process_store_are_on_the_metrics(demo_artifacts: Path, catalog) -> None:
    async with AsyncTestClient(create_app(settings_for(demo_artifacts, MEMORY_SESSION_LIMIT="2"))) as c:
        for listener in ("a", "b", "c"):
            r = await c.post("/events", json={"type": "like", "track_id": catalog.ids[0]}, headers={"X-Client-Id": listener})
            assert r.status_code == 202
        metrics = (await c.get("/metrics")).text
    assert "musicrec_sessions_evicted_total 1.0" in metrics and "musicrec_session_events_evicted_total 1.0" in metrics


async def test_an_injected_empty_session_store_is_the_one_used(demo_artifacts: Path, catalog) -> None:
    """An empty MemorySessionStore has len 0, so ``given or open_…`` used to discard it for a new one."""
    from musicrec.service.main import Resources
    from musicrec.service.sessions import MemorySessionStore

    store = MemorySessionStore(max_len=20, ttl_s=60)
    app = create_app(settings_for(demo_artifacts), resources=Resources(sessions=store))
    async with AsyncTestClient(app) as fresh:
        response = await fresh.post("/events", json={"type": "track_view", "track_id": catalog.ids[3]},
                                    headers={"X-Client-Id": "injected-store"})
        assert response.status_code == 202, response.text
    assert [e.track_id for e in store.recent_now("injected-store")] == [catalog.ids[3]]
