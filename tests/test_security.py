"""Who may do what: API keys, the signed browser cookie, cross-site requests, rate limits, load shedding.

Each test is a hostile caller's attempt that used to work (or a limit that did not exist),
against the real app; the rate limits count in the real Redis (each test calls from its own
random address or with its own random key, so tests never share a counter).
"""
from __future__ import annotations

import asyncio
import random
import re
import secrets
import uuid
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest
from litestar.testing import AsyncTestClient

from musicrec.index.artifacts import load_artifacts
from musicrec.service.main import create_app
from musicrec.service.security import ApiKeys, CookieSigner, key_id
from musicrec.service.settings import Settings, SettingsError

pytestmark = pytest.mark.anyio
KEY_A, KEY_B = "key-a-" + secrets.token_hex(12), "key-b-" + secrets.token_hex(12)
OWN_ORIGIN = "http://testserver.local"  # AsyncTestClient's base URL


def settings_for(artifacts: Path, **env: str) -> Settings:
    base = {"ARTIFACTS_DIR": str(artifacts), "REDIS_URL": "memory://", "KAFKA_BOOTSTRAP_SERVERS": "",
            "RATE_LIMIT_PER_MIN": "0", "API_KEYS": f"{KEY_A},{KEY_B}", "COOKIE_SECRET": "s" * 32}
    return Settings.from_env(base | env, env_file=None)


@pytest.fixture(scope="module")
def catalog(demo_artifacts: Path):
    return load_artifacts(demo_artifacts).tracks


@pytest.fixture
async def app_client(demo_artifacts: Path, redis_url: str) -> AsyncIterator[AsyncTestClient]:
    async with AsyncTestClient(create_app(settings_for(demo_artifacts, REDIS_URL=redis_url))) as c:
        yield c


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def a_listener() -> str:
    return f"victim-{uuid.uuid4().hex[:12]}"


def an_address() -> str:
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


async def like(client, track_id: str, **kwargs) -> httpx.Response:
    return await client.post("/events", json={"type": "like", "track_id": track_id}, **kwargs)


# -- calling apps authenticate ------------------------------------------------------------------------

async def test_with_api_keys_only_a_caller_with_one_may_name_a_listener(app_client: AsyncTestClient, catalog) -> None:
    """Knowing a listener's id was enough to read, erase or poison their session."""
    victim = a_listener()
    as_app = {**bearer(KEY_A), "X-Client-Id": victim}
    assert (await like(app_client, catalog.ids[3], headers=as_app)).status_code == 202
    # Without a key: no reading, erasing or writing that session, by header or by body.
    for attempt in (app_client.get("/api/session", headers={"X-Client-Id": victim}),
                    app_client.get("/api/songs_recommendations", headers={"X-Client-Id": victim}),
                    app_client.delete("/api/session", headers={"X-Client-Id": victim}),
                    like(app_client, catalog.ids[4], headers={"X-Client-Id": victim}),
                    app_client.post("/events", json={"type": "skip", "track_id": catalog.ids[4], "client_id": victim})):
        response = await attempt
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer" and response.json()["detail"]
    session = (await app_client.get("/api/session", headers=as_app)).json()
    assert [(e["type"], e["track_id"]) for e in session["events"]] == [("like", catalog.ids[3])]
    # X-Api-Key works as well as the bearer header, and so does the second (rotation) key.
    assert (await app_client.get("/api/session", headers={"X-Api-Key": KEY_B, "X-Client-Id": victim})).status_code == 200


@pytest.mark.parametrize("headers", [bearer("wrong-key-0123456789"), {"X-Api-Key": KEY_A + "x"}, bearer(""),
                                     {"Authorization": f"Bearer {KEY_A[:-1]}"}],
                         ids=["wrong", "suffixed", "empty", "prefix"])
async def test_a_wrong_key_is_a_401(app_client: AsyncTestClient, headers: dict) -> None:
    response = await app_client.get("/api/songs", headers=headers)
    assert response.status_code == 401 and response.json()["detail"] == "invalid API key"


async def test_without_a_key_or_the_browser_cookie_the_api_is_closed(app_client: AsyncTestClient) -> None:
    for path in ("/api/songs", "/api/songs_recommendations"):
        response = await app_client.get(path)
        assert response.status_code == 401 and "API key" in response.json()["detail"]
    assert (await app_client.get("/api/songs", headers=bearer(KEY_A))).status_code == 200
    assert (await app_client.get("/healthz")).status_code == 200 and (await app_client.get("/songs")).status_code == 200


async def test_the_web_ui_works_without_a_key_through_its_cookie(app_client: AsyncTestClient, catalog) -> None:
    page = await app_client.get("/")
    assert page.status_code == 200 and "client_id" in page.cookies
    track = catalog.ids[9]
    assert (await app_client.get(f"/songs/{track}")).status_code == 200  # records a view (same-site navigation)
    headers = {"Origin": OWN_ORIGIN, "Content-Type": "application/json"}  # what app.js sends
    response = await app_client.post("/events", json={"type": "like", "track_id": track, "source": "song_page"},
                                     headers=headers)
    assert response.status_code == 202, response.text
    assert (await app_client.get(f"/partials/session?current={track}")).status_code == 200
    events = (await app_client.get("/api/session")).json()["events"]
    assert [e["type"] for e in events] == ["like", "track_view"]
    form = await app_client.post(f"/songs/{track}/feedback", data={"type": "skip"}, headers={"Origin": OWN_ORIGIN},
                                 follow_redirects=False)
    assert form.status_code == 303


def test_keys_are_kept_as_digests_compared_with_every_key_and_never_shown() -> None:
    keys = ApiKeys([KEY_A, KEY_B])
    assert keys.identify(KEY_A) == key_id(KEY_A) and keys.identify(KEY_B) == key_id(KEY_B)
    assert keys.identify("nope") is None and keys.identify("") is None
    assert KEY_A not in repr(vars(keys)) and KEY_B not in repr(vars(keys))
    assert key_id(KEY_A) not in KEY_A  # the id names the key without revealing it
    s = Settings.from_env({"API_KEYS": f" {KEY_A} , {KEY_B} "}, env_file=None)
    assert s.api_keys == (KEY_A, KEY_B) and s.masked()["api_keys"] == "***" and KEY_A not in repr(s)
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"API_KEYS": f"{KEY_A},short"}, env_file=None)
    assert "API_KEYS" in str(info.value) and KEY_A not in str(info.value) and "short" not in str(info.value)


async def test_keys_never_reach_the_logs(demo_artifacts: Path, musicrec_logs: list) -> None:
    async with AsyncTestClient(create_app(settings_for(demo_artifacts))) as c:
        await c.get("/api/songs", headers=bearer(KEY_A))
        await c.get("/api/songs", headers=bearer(KEY_A + "-guess"))
    assert musicrec_logs and not [r for r in musicrec_logs if KEY_A in r.getMessage() or KEY_B in r.getMessage()]


# -- browsers: the signed cookie ---------------------------------------------------------------------

async def test_the_cookie_is_signed_httponly_lax_and_secure_over_https(demo_artifacts: Path) -> None:
    app = create_app(settings_for(demo_artifacts))
    async with AsyncTestClient(app) as c:
        header = (await c.get("/")).headers["set-cookie"]
    assert re.match(r"client_id=[0-9a-f]{32}\.[A-Za-z0-9_-]{22};", header), header
    assert "HttpOnly" in header and "SameSite=lax" in header and "Path=/" in header and "Secure" not in header
    async with AsyncTestClient(create_app(settings_for(demo_artifacts)), base_url="https://testserver.local") as c:
        assert "Secure" in (await c.get("/")).headers["set-cookie"]


@pytest.mark.parametrize("forge", [
    lambda victim: victim,                                             # unsigned (the old format)
    lambda victim: f"{victim}.{'A' * 22}",                             # a made-up signature
    lambda victim: CookieSigner("another-secret-0123456789").sign(victim),  # signed with another key
    lambda victim: CookieSigner("s" * 32).sign(victim)[:-1] + "x",      # one character changed
], ids=["unsigned", "made-up", "other-secret", "tampered"])
async def test_a_forged_cookie_is_a_new_listener(app_client: AsyncTestClient, catalog, forge) -> None:
    victim = a_listener()
    await like(app_client, catalog.ids[5], headers={**bearer(KEY_A), "X-Client-Id": victim})
    app_client.cookies.set("client_id", forge(victim))
    page = await app_client.get("/")
    assert page.status_code == 200 and "Welcome" in page.text  # an empty session, not the victim's
    fresh = page.cookies["client_id"]
    assert not fresh.startswith(victim)
    app_client.cookies.set("client_id", fresh)
    await like(app_client, catalog.ids[6], headers={"Origin": OWN_ORIGIN})
    victims = (await app_client.get("/api/session", headers={**bearer(KEY_A), "X-Client-Id": victim})).json()
    assert [e["track_id"] for e in victims["events"]] == [catalog.ids[5]]  # untouched


async def test_cookies_survive_a_restart_with_a_cookie_secret_and_not_without(demo_artifacts: Path, catalog) -> None:
    async with AsyncTestClient(create_app(settings_for(demo_artifacts))) as first:
        cookie = (await first.get("/")).cookies["client_id"]
    async with AsyncTestClient(create_app(settings_for(demo_artifacts))) as again:  # same COOKIE_SECRET
        again.cookies.set("client_id", cookie)
        assert "set-cookie" not in (await again.get("/")).headers
    async with AsyncTestClient(create_app(settings_for(demo_artifacts, COOKIE_SECRET=""))) as random_secret:
        random_secret.cookies.set("client_id", cookie)
        assert "set-cookie" in (await random_secret.get("/")).headers  # a stranger: a new listener


# -- cross-site requests -----------------------------------------------------------------------------

async def _browser(client: AsyncTestClient) -> None:
    assert (await client.get("/")).status_code == 200  # the cookie, as a visit gives it


@pytest.mark.parametrize("headers", [{"Origin": "https://evil.example"}, {"Origin": "null"},
                                     {"Sec-Fetch-Site": "cross-site"}, {"Origin": "http://testserver.local.evil.example"}],
                         ids=["other-origin", "null-origin", "fetch-metadata", "lookalike"])
async def test_cookie_state_changes_from_another_site_are_refused(app_client: AsyncTestClient, catalog,
                                                                  headers: dict) -> None:
    await _browser(app_client)
    assert (await like(app_client, catalog.ids[1], headers=headers)).status_code == 403
    assert (await app_client.delete("/api/session", headers=headers)).status_code == 403
    form = await app_client.post(f"/songs/{catalog.ids[1]}/feedback", data={"type": "like"}, headers=headers,
                                 follow_redirects=False)
    assert form.status_code == 403 and form.headers["content-type"].startswith("text/html")
    assert (await app_client.get("/api/session")).json()["events"] == []
    # The same requests from this site go through.
    assert (await like(app_client, catalog.ids[1], headers={"Origin": OWN_ORIGIN})).status_code == 202
    assert (await like(app_client, catalog.ids[2], headers={"Sec-Fetch-Site": "same-origin"})).status_code == 202
    assert (await app_client.delete("/api/session", headers={"Origin": OWN_ORIGIN})).status_code == 204


async def test_a_trusted_origin_may_make_changes(demo_artifacts: Path, catalog) -> None:
    settings = settings_for(demo_artifacts, TRUSTED_ORIGINS="https://www.example.com")
    async with AsyncTestClient(create_app(settings)) as c:
        await _browser(c)
        assert (await like(c, catalog.ids[1], headers={"Origin": "https://www.example.com"})).status_code == 202
        assert (await like(c, catalog.ids[1], headers={"Origin": "https://example.com"})).status_code == 403


async def test_an_app_with_a_key_is_not_held_to_the_origin_check(app_client: AsyncTestClient, catalog) -> None:
    headers = {**bearer(KEY_A), "X-Client-Id": a_listener(), "Origin": "https://partner.example"}
    assert (await like(app_client, catalog.ids[1], headers=headers)).status_code == 202


@pytest.mark.parametrize(("headers", "recorded"), [
    ({"Sec-Fetch-Site": "cross-site"}, False),
    ({"Sec-Fetch-Site": "same-site"}, False),
    ({"Referer": "https://evil.example/page"}, False),
    ({"Sec-Fetch-Site": "same-origin"}, True),
    ({"Sec-Fetch-Site": "none"}, True),  # typed or bookmarked
    ({"Referer": f"{OWN_ORIGIN}/songs"}, True),
    ({}, True),
], ids=["cross-site", "same-site", "foreign-referer", "same-origin", "typed", "own-referer", "no-browser-headers"])
async def test_opening_a_song_records_a_view_only_for_a_same_site_navigation(app_client: AsyncTestClient, catalog,
                                                                             headers: dict, recorded: bool) -> None:
    """A link or an <img> on another site used to write views into the visitor's session."""
    await _browser(app_client)
    track = catalog.ids[12]
    page = await app_client.get(f"/songs/{track}", headers=headers)
    assert page.status_code == 200
    events = (await app_client.get("/api/session")).json()["events"]
    assert [(e["type"], e["track_id"]) for e in events] == ([("track_view", track)] if recorded else [])
    # Not recorded by the server: the page's own script records it (a same-origin fetch).
    assert (f'data-record-view="{track}"' in page.text) is not recorded


# -- rate limits -----------------------------------------------------------------------------------

def limited_app(demo_artifacts: Path, redis_url: str, **env: str):
    return create_app(settings_for(demo_artifacts, REDIS_URL=redis_url, **env))


async def test_callers_without_a_key_are_limited_per_address_across_workers(demo_artifacts: Path, redis_url: str) -> None:
    """Two apps (two workers) on one Redis share each address's count: 5 a minute means 5 in all."""
    address, other = an_address(), an_address()
    apps = [limited_app(demo_artifacts, redis_url, RATE_LIMIT_PER_MIN="5") for _ in range(2)]
    async with apps[0].lifespan(), apps[1].lifespan():
        clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app, client=(address, 1000)), base_url=OWN_ORIGIN)
                   for app in apps]
        statuses = [(await clients[i % 2].get("/songs")).status_code for i in range(5)]
        assert statuses == [200] * 5
        refused = await clients[1].get("/songs")
        assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60
        assert "text/html" in refused.headers["content-type"]  # a page answers with a page
        api = await clients[0].get("/api/songs", headers=bearer(KEY_A))  # a key has its own budget
        assert api.status_code == 200
        keyless = await clients[0].get("/api/songs", headers={"Cookie": f"client_id={CookieSigner('s' * 32).sign('x')}"})
        assert keyless.status_code == 429 and keyless.json()["status_code"] == 429
        async with httpx.AsyncClient(transport=httpx.ASGITransport(apps[0], client=(other, 1)), base_url=OWN_ORIGIN) as c:
            assert (await c.get("/songs")).status_code == 200  # another address is not affected
        refusals = [f"musicrec_requests_rate_limited_total {n}" in (await c.get("/metrics")).text
                    for c, n in zip(clients, ("1.0", "1.0"))]  # each worker counts the refusals it gave
        assert refusals == [True, True]
        for c in clients:
            await c.aclose()


async def test_workers_share_a_high_limit_through_redis_without_a_round_trip_per_request(
        demo_artifacts: Path, redis_url: str) -> None:
    """A limit of 256 syncs every 4 requests: two workers together let through 256, give or take 3 each."""
    address = an_address()
    apps = [limited_app(demo_artifacts, redis_url, RATE_LIMIT_PER_MIN="256") for _ in range(2)]
    async with apps[0].lifespan(), apps[1].lifespan():
        browser = {"Cookie": f"client_id={CookieSigner('s' * 32).sign('b')}"}
        clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app, client=(address, 1)), base_url=OWN_ORIGIN,
                                     headers=browser) for app in apps]
        served = 0
        for i in range(400):
            status = (await clients[i % 2].get("/api/songs?per_page=1")).status_code
            if status == 429:
                break
            assert status == 200
            served += 1
        for c in clients:
            await c.aclose()
    assert 256 <= served <= 256 + 2 * 3, served


async def test_each_api_key_has_its_own_budget(demo_artifacts: Path, redis_url: str) -> None:
    key_c, key_d = "key-c-" + secrets.token_hex(12), "key-d-" + secrets.token_hex(12)
    app = limited_app(demo_artifacts, redis_url, API_KEYS=f"{key_c},{key_d}", API_KEY_RATE_LIMIT_PER_MIN="3")
    async with AsyncTestClient(app) as c:
        assert [(await c.get("/api/songs", headers=bearer(key_c))).status_code for _ in range(3)] == [200] * 3
        over = await c.get("/api/songs", headers=bearer(key_c))
        assert over.status_code == 429 and "per API key" in over.json()["detail"] and over.headers["retry-after"]
        assert (await c.get("/api/songs", headers=bearer(key_d))).status_code == 200


async def test_admin_token_guesses_are_limited(demo_artifacts: Path, redis_url: str) -> None:
    app = limited_app(demo_artifacts, redis_url, ADMIN_TOKEN="the-real-admin-token", ADMIN_RATE_LIMIT_PER_MIN="3",
                      RELOAD_POLL_S="0")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app, client=(an_address(), 1)), base_url=OWN_ORIGIN) as c, \
            app.lifespan():
        guesses = [(await c.post("/admin/reload", headers=bearer(f"guess-{i}"))).status_code for i in range(3)]
        assert guesses == [401] * 3
        blocked = await c.post("/admin/reload", headers=bearer("the-real-admin-token"))
        assert blocked.status_code == 429 and blocked.headers["retry-after"]


async def test_with_redis_down_the_limits_hold_in_process(demo_artifacts: Path, own_redis) -> None:
    app = limited_app(demo_artifacts, own_redis.url, RATE_LIMIT_PER_MIN="4")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app, client=(an_address(), 1)), base_url=OWN_ORIGIN) as c, \
            app.lifespan():
        assert (await c.get("/songs")).status_code == 200  # counted in Redis
        own_redis.kill()
        statuses = [(await c.get("/songs")).status_code for _ in range(5)]
        assert 500 not in statuses and statuses.count(429) >= 1 and statuses[0] == 200
        assert app.state.sessions.status == "degraded"


# -- load shedding ---------------------------------------------------------------------------------

async def test_past_max_in_flight_a_worker_sheds_with_503_before_queueing(demo_artifacts: Path, catalog,
                                                                          musicrec_logs: list) -> None:
    app = create_app(settings_for(demo_artifacts, MAX_IN_FLIGHT="2", API_KEYS=""))
    release = asyncio.Event()

    async def slow_body():
        yield b'{"type": "like", '
        await release.wait()
        yield ('"track_id": "%s"}' % catalog.ids[0]).encode()

    async with app.lifespan(), httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=OWN_ORIGIN) as c:
        held = [asyncio.create_task(c.post("/events", content=slow_body(), headers={"content-type": "application/json",
                                                                                    "X-Client-Id": f"held-{i}"}))
                for i in range(2)]
        for _ in range(100):
            if app.state.guard.in_flight == 2:
                break
            await asyncio.sleep(0.01)
        assert app.state.guard.in_flight == 2
        shed = await c.get("/api/songs")
        assert shed.status_code == 503 and shed.headers["retry-after"] == "1" and shed.json()["status_code"] == 503
        assert (await c.get("/healthz")).status_code == 200  # liveness is never shed
        assert (await c.get("/readyz")).status_code == 200
        release.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [202, 202]
        assert (await c.get("/api/songs")).status_code == 200
        assert "musicrec_requests_shed_total 1.0" in (await c.get("/metrics")).text
    assert len([r for r in musicrec_logs if "overloaded" in r.getMessage()]) == 1


# -- /metrics and /readyz details --------------------------------------------------------------------

async def test_private_ops_details_need_the_admin_token(demo_artifacts: Path) -> None:
    settings = settings_for(demo_artifacts, OPS_DETAILS="private", ADMIN_TOKEN="ops-token-0123456789")
    async with AsyncTestClient(create_app(settings)) as c:
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        assert (await c.get("/readyz")).json() == {"status": "ok"}
        full = (await c.get("/readyz", headers=bearer("ops-token-0123456789"))).json()
        assert full["model_version"] and full["artifacts"]["path"]
        assert (await c.get("/metrics")).status_code == 401
        assert (await c.get("/metrics", headers=bearer("wrong"))).status_code == 401
        metrics = await c.get("/metrics", headers=bearer("ops-token-0123456789"))
        assert metrics.status_code == 200 and "musicrec_model_info" in metrics.text
    async with AsyncTestClient(create_app(settings_for(demo_artifacts, OPS_DETAILS="private"))) as c:
        assert (await c.get("/metrics")).status_code == 403  # no token configured: nobody reads them
    async with AsyncTestClient(create_app(settings_for(demo_artifacts))) as c:  # public, the default
        assert (await c.get("/metrics")).status_code == 200 and "model_version" in (await c.get("/readyz")).json()


@pytest.mark.parametrize(("name", "value"), [
    ("API_KEYS", "tooshort"), ("API_KEYS", "has space in it 0123456789"), ("COOKIE_SECRET", "short"),
    ("TRUSTED_ORIGINS", "example.com"), ("TRUSTED_ORIGINS", "https://example.com/path"), ("RATE_LIMIT_PER_MIN", "-1"),
    ("API_KEY_RATE_LIMIT_PER_MIN", "lots"), ("ADMIN_RATE_LIMIT_PER_MIN", "-5"), ("MAX_IN_FLIGHT", "-1"),
    ("OPS_DETAILS", "secret"),
])
def test_security_settings_are_validated_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: value}, env_file=None)
    assert name in str(info.value)
    if name in ("API_KEYS", "COOKIE_SECRET"):
        assert value not in str(info.value)  # secrets are not echoed


def test_security_settings_defaults() -> None:
    s = Settings()
    assert (s.api_keys, s.cookie_secret, s.trusted_origins) == ((), "", ())
    assert (s.rate_limit_per_min, s.api_key_rate_limit_per_min, s.admin_rate_limit_per_min) == (0, 60_000, 10)
    assert (s.max_in_flight, s.ops_details) == (32, "public")
    parsed = Settings.from_env({"COOKIE_SECRET": "c" * 20, "TRUSTED_ORIGINS": "https://A.example.com/, http://b:8080",
                                "OPS_DETAILS": "PRIVATE"}, env_file=None)
    assert parsed.trusted_origins == ("https://a.example.com", "http://b:8080") and parsed.ops_details == "private"
    assert parsed.masked()["cookie_secret"] == "***" and "c" * 20 not in repr(parsed)
