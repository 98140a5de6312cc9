"""Online mode and the Spotify source, against a fake Spotify on a loopback port (never the internet)."""
from __future__ import annotations

import json
import random
import string
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import anyio
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from musicrec.service.main import Resources, create_app
from musicrec.service.online import CACHE_PREFIX, OnlineService, online_service
from musicrec.service.settings import Settings
from musicrec.data.spotify import (
    SpotifyAuthError, SpotifyClient, SpotifyConfig, SpotifyNotFound, SpotifyRateLimited, SpotifyUnavailable, playlist_id,
)
from musicrec.index.artifacts import load_artifacts
from tests.fake_spotify import CLIENT_ID, CLIENT_SECRET, FakeSpotify, spotify_id

pytestmark = pytest.mark.filterwarnings("ignore:You're using `audio_features:DeprecationWarning")
REPO = Path(__file__).resolve().parents[1]
FULL_FEATURES = {"danceability": 0.71, "energy": 0.64, "key": 5.0, "loudness": -6.1, "mode": 1.0, "speechiness": 0.05,
                 "acousticness": 0.12, "instrumentalness": 0.0, "liveness": 0.1, "valence": 0.55, "tempo": 118.0,
                 "duration_ms": 201_000.0, "time_signature": 4.0}


def fresh_id() -> str:
    """A random track id: the Redis cache outlives a test run, so ids must not repeat between runs."""
    return "".join(random.choices(string.ascii_letters + string.digits, k=22))


@pytest.fixture
def fake() -> Iterator[FakeSpotify]:
    server = FakeSpotify().start()
    yield server
    server.stop()


def client_for(fake: FakeSpotify, sleeps: list[float] | None = None, **config: float) -> SpotifyClient:
    cfg = SpotifyConfig(CLIENT_ID, CLIENT_SECRET, api_url=fake.api_url, token_url=fake.token_url,
                        **({"backoff_s": 0.01} | config))
    return SpotifyClient(cfg, sleep=(sleeps.append if sleeps is not None else lambda s: None))


# -- the client ----------------------------------------------------------------------------------

def test_token_is_fetched_once_and_kept_in_memory_not_in_a_file(fake: FakeSpotify, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    fake.add_track(spotify_id(1), "One", "Someone")
    client = client_for(fake)
    assert client.track(spotify_id(1))["name"] == "One" and client.track(spotify_id(1))["name"] == "One"
    assert fake.token_requests == 1 and fake.count("/v1/tracks/") == 2
    assert list(tmp_path.iterdir()) == []  # spotipy's default would have written .cache here


def test_refused_credentials_are_an_auth_error(fake: FakeSpotify) -> None:
    client = SpotifyClient(SpotifyConfig(CLIENT_ID, "wrong", api_url=fake.api_url, token_url=fake.token_url))
    with pytest.raises(SpotifyAuthError, match="refused"):
        client.track(spotify_id(1))
    with pytest.raises(SpotifyAuthError, match="SPOTIPY_CLIENT_ID"):
        SpotifyConfig.from_env({})


def test_audio_features_403_is_an_answer_not_an_error(fake: FakeSpotify) -> None:
    fake.add_track(spotify_id(1), "One", "Someone", features=FULL_FEATURES)
    client = client_for(fake)
    answer = client.audio_features([spotify_id(1)])
    assert answer.forbidden and answer.by_id == {spotify_id(1): None}
    fake.features_forbidden = False
    answer = client.audio_features([spotify_id(1), spotify_id(2)])
    assert not answer.forbidden and answer.by_id[spotify_id(1)] == FULL_FEATURES and answer.by_id[spotify_id(2)] is None


def test_429_waits_as_long_as_retry_after_says_then_succeeds(fake: FakeSpotify) -> None:
    fake.add_track(spotify_id(1), "One", "Someone")
    fake.fail("/v1/tracks/", 429, retry_after=2, times=2)
    sleeps: list[float] = []
    client = client_for(fake, sleeps)
    assert client.track(spotify_id(1))["name"] == "One"
    assert sleeps == [2.0, 2.0] and fake.count("/v1/tracks/") == 3


def test_429_asking_longer_than_the_budget_gives_up_at_once(fake: FakeSpotify) -> None:
    fake.fail("/v1/tracks/", 429, retry_after=120, times=1)
    sleeps: list[float] = []
    with pytest.raises(SpotifyRateLimited) as caught:
        client_for(fake, sleeps, max_wait_s=8.0).track(spotify_id(1))
    assert caught.value.retry_after_s == 120 and sleeps == [] and fake.count("/v1/tracks/") == 1


def test_endless_429_without_retry_after_backs_off_then_gives_up(fake: FakeSpotify) -> None:
    fake.fail("/v1/tracks/", 429, times=10)
    sleeps: list[float] = []
    with pytest.raises(SpotifyRateLimited):
        client_for(fake, sleeps, backoff_s=0.5, max_attempts=4).track(spotify_id(1))
    assert sleeps == [0.5, 1.0, 2.0]


def test_network_errors_retry_with_backoff_then_give_up(closed_port: int) -> None:
    sleeps: list[float] = []
    cfg = SpotifyConfig(CLIENT_ID, CLIENT_SECRET, api_url=f"http://127.0.0.1:{closed_port}/v1/",
                        token_url=f"http://127.0.0.1:{closed_port}/api/token", backoff_s=0.5, max_wait_s=1.5,
                        max_attempts=4, timeout_s=1.0)
    with pytest.raises(SpotifyUnavailable, match="ConnectionError"):
        SpotifyClient(cfg, sleep=sleeps.append).track(spotify_id(1))
    assert sleeps == [0.5, 1.0, 1.5]


def test_a_dropped_connection_and_a_5xx_are_retried(fake: FakeSpotify) -> None:
    fake.add_track(spotify_id(1), "One", "Someone")
    fake.fail("/v1/tracks/", drop=True, times=1)
    fake.fail("/v1/tracks/", 502, times=1)
    sleeps: list[float] = []
    assert client_for(fake, sleeps).track(spotify_id(1))["name"] == "One"
    assert len(sleeps) == 2 and fake.count("/v1/tracks/") == 3


def test_unknown_and_malformed_ids_are_not_found(fake: FakeSpotify) -> None:
    client = client_for(fake)
    with pytest.raises(SpotifyNotFound):
        client.track(spotify_id(404))
    with pytest.raises(SpotifyNotFound):
        client.track("../../me")
    assert fake.count("/v1/tracks/") == 1


def test_playlist_items_are_paged_and_playlists_named_any_way(fake: FakeSpotify) -> None:
    pid = spotify_id(7, "P")
    for i in range(120):
        fake.add_track(spotify_id(i), f"Song {i}", "Someone")
    fake.playlists[pid] = [spotify_id(i) for i in range(120)]
    tracks = client_for(fake).playlist_tracks(f"https://open.spotify.com/playlist/{pid}?si=abc")
    assert [t["id"] for t in tracks] == fake.playlists[pid] and fake.count(f"/v1/playlists/{pid}/items") == 3
    assert playlist_id(f"spotify:playlist:{pid}") == pid == playlist_id(pid)
    assert playlist_id(f"https://open.spotify.com/intl-de/playlist/{pid}") == pid
    with pytest.raises(ValueError):
        playlist_id("https://example.com/not-a-playlist")


# -- the indexer's Spotify source ----------------------------------------------------------------

@pytest.fixture(scope="module")
def local_catalog():
    from musicrec.data.demo import demo_catalog

    return demo_catalog(300, seed=21)


def _playlist_of_local_and_new(fake: FakeSpotify, local, n_local: int, n_new: int, *, features: bool) -> str:
    pid = spotify_id(9, "P")
    ids = []
    for i in range(n_local):
        row = local.tracks.iloc[i]
        fake.add_track(row["id"], row["name"], row["artist"], genres=["indie pop", "pop"],
                       features={f: float(row[f]) for f in local.features} if features else None)
        ids.append(row["id"])
    for i in range(n_new):
        fake.add_track(spotify_id(1000 + i), f"New {i}", "Newcomer", features=FULL_FEATURES if features else None)
        ids.append(spotify_id(1000 + i))
    fake.playlists[pid] = ids + ids[:3]  # repeats are one track
    return pid


def test_a_403_takes_features_from_the_local_catalog_and_names_the_rest(fake: FakeSpotify, local_catalog) -> None:
    from musicrec.data.spotify_source import fetch_frame

    pid = _playlist_of_local_and_new(fake, local_catalog, 40, 5, features=False)
    frame, report = fetch_frame(client_for(fake), [pid], local_catalog)
    assert report.tracks == 45 and report.features_forbidden and report.from_local == 40 and report.from_spotify == 0
    assert [i for i, _, _ in report.without_features] == [spotify_id(1000 + i) for i in range(5)]
    assert len(frame) == 40 and set(frame["track_genre"]) == {"indie pop"}
    assert any("403" in line for line in report.lines()) and any("left out" in line for line in report.lines())


def test_features_from_spotify_when_it_allows(fake: FakeSpotify, local_catalog) -> None:
    from musicrec.data.spotify_source import fetch_frame

    fake.features_forbidden = False
    pid = _playlist_of_local_and_new(fake, local_catalog, 10, 5, features=True)
    frame, report = fetch_frame(client_for(fake), [pid])
    assert report.from_spotify == 15 and not report.without_features and len(frame) == 15
    assert frame.loc[frame["track_id"] == spotify_id(1000), "tempo"].item() == 118.0


def test_cli_builds_artefacts_from_playlists(fake: FakeSpotify, local_catalog, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from musicrec.data.demo import generate_demo_frame, write_csv
    from musicrec.indexer.cli import main

    monkeypatch.chdir(tmp_path)
    for key, value in fake.env().items():
        monkeypatch.setenv(key, value)
    local_csv = write_csv(generate_demo_frame(300, seed=21), tmp_path / "local.csv")  # local_catalog's source
    pid = _playlist_of_local_and_new(fake, local_catalog, 60, 4, features=False)
    out = tmp_path / "spotify-v1"
    code = main(["build", "--spotify-playlist", f"spotify:playlist:{pid}", "--csv", str(local_csv), "--out", str(out),
                 "--epochs", "2", "--index-type", "flat", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "spotify: 1 playlist(s), 64 distinct tracks" in printed and "403" in printed
    assert "4 track(s) have no audio features and were left out of the build" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_tracks"] == 60 and manifest["source"]["path"].endswith("spotify-v1.spotify.csv")
    assert any("left out" in w for w in manifest["load_report"]["warnings"])
    assert load_artifacts(out).tracks.genre_rows.keys() == {"indie pop"}


def test_cli_without_any_features_fails_with_one_line(fake: FakeSpotify, local_catalog, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    from musicrec.indexer.cli import main

    monkeypatch.chdir(tmp_path)  # no data/dataset.csv here: no local catalog
    for key, value in fake.env().items():
        monkeypatch.setenv(key, value)
    pid = _playlist_of_local_and_new(fake, local_catalog, 3, 2, features=False)
    code = main(["build", "--spotify-playlist", pid, "--out", str(tmp_path / "v"), "--quiet"])
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if not line[:4].isdigit()]  # log records (timestamped) aside
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error: ") and "403" in err and "--csv" in err
    assert "Traceback" not in err
    monkeypatch.delenv("SPOTIPY_CLIENT_SECRET")
    assert main(["build", "--spotify-playlist", pid, "--out", str(tmp_path / "v"), "--quiet"]) == 2
    assert "SPOTIPY_CLIENT_SECRET" in capsys.readouterr().err


# -- online mode in the service ------------------------------------------------------------------

def settings_for(artifacts: Path, **env: str) -> Settings:
    base = {"ARTIFACTS_DIR": str(artifacts), "REDIS_URL": "memory://", "KAFKA_BOOTSTRAP_SERVERS": "",
            "MODE": "online", "SPOTIPY_CLIENT_ID": CLIENT_ID, "SPOTIPY_CLIENT_SECRET": CLIENT_SECRET}
    return Settings.from_env(base | env, env_file=None)


def online_app(artifacts: Path, client: SpotifyClient, redis_url: str) -> Litestar:
    """The app in online mode with its Spotify client pointed at the fake (injected like any external client)."""
    return create_app(settings_for(artifacts, REDIS_URL=redis_url), resources=Resources(spotify=client))


@pytest.fixture(scope="module")
def catalog(demo_artifacts: Path):
    return load_artifacts(demo_artifacts).tracks


pytest_anyio = pytest.mark.anyio


@pytest_anyio
async def test_an_outside_track_with_features_is_embedded_cached_and_recommended(
        fake: FakeSpotify, demo_artifacts: Path, redis_url: str) -> None:
    import redis.asyncio as redis

    fake.features_forbidden = False
    track_id = fresh_id()
    fake.add_track(track_id, "Outside <Song>", "Visitor", album="Elsewhere", genres=["synthwave"], features=FULL_FEATURES)
    async with AsyncTestClient(online_app(demo_artifacts, client_for(fake), redis_url)) as c:
        first = await c.get(f"/songs/{track_id}")
        second = await c.get(f"/songs/{track_id}")
    assert first.status_code == second.status_code == 200
    html = first.text
    assert "From Spotify" in html and "Outside &lt;Song&gt;" in html and "Visitor" in html and "Elsewhere" in html
    assert "synthwave" in html and "3:21" in html and '<svg class="chart"' in html and "notice" not in html
    more = html.split('id="more-like-this"', 1)[1].split("</ol>", 1)[0]
    assert more.count('class="card-title"') == 10
    assert 'data-feedback' not in html  # likes and skips are for catalog tracks
    assert fake.count("/v1/tracks/") == 1 and fake.count("/v1/audio-features") == 1  # the second came from Redis
    r = redis.from_url(redis_url)
    try:
        cached = json.loads(await r.get(CACHE_PREFIX + track_id))
        assert cached["features_from"] == "spotify" and cached["genres"] == ["synthwave"]
        assert 86_000 < await r.ttl(CACHE_PREFIX + track_id) <= 86_400
    finally:
        await r.aclose()


@pytest_anyio
async def test_a_403_keeps_the_metadata_and_says_there_are_no_features(
        fake: FakeSpotify, demo_artifacts: Path, redis_url: str) -> None:
    track_id = fresh_id()
    fake.add_track(track_id, "Closed Door", "Gatekeeper", album="Forbidden Album")
    async with AsyncTestClient(online_app(demo_artifacts, client_for(fake), redis_url)) as c:
        response = await c.get(f"/songs/{track_id}")
    html = response.text
    assert response.status_code == 200 and "Closed Door" in html and "Gatekeeper" in html and "Forbidden Album" in html
    assert "closed to new apps since 27 November 2024" in html and "this track has no audio features" in html
    assert '<svg class="chart"' not in html and "No recommendations: this track has no audio features" in html


@pytest_anyio
async def test_a_403_takes_the_same_songs_features_from_the_catalog(
        fake: FakeSpotify, demo_artifacts: Path, redis_url: str, catalog) -> None:
    track_id = fresh_id()
    fake.add_track(track_id, catalog.name[5], catalog.artist[5])  # another release of a catalog song
    async with AsyncTestClient(online_app(demo_artifacts, client_for(fake), redis_url)) as c:
        html = (await c.get(f"/songs/{track_id}")).text
    assert "features shown are those of the same song in the local catalog" in html
    assert '<svg class="chart"' in html and f'href="/songs/{catalog.ids[5]}"' in html
    more = html.split('id="more-like-this"', 1)[1].split("</ol>", 1)[0]
    assert more.count('class="card-title"') == 10 and catalog.ids[5] not in more


@pytest_anyio
async def test_a_long_rate_limit_is_a_503_page_with_retry_after(fake: FakeSpotify, demo_artifacts: Path,
                                                                redis_url: str) -> None:
    fake.fail("/v1/tracks/", 429, retry_after=90, times=1)
    async with AsyncTestClient(online_app(demo_artifacts, client_for(fake, max_wait_s=2.0), redis_url)) as c:
        response = await c.get(f"/songs/{fresh_id()}")
    assert response.status_code == 503 and response.headers["retry-after"] == "90"
    assert "text/html" in response.headers["content-type"] and "Try this song again in about 90 seconds" in response.text


@pytest_anyio
async def test_a_short_rate_limit_is_waited_out(fake: FakeSpotify, demo_artifacts: Path, redis_url: str) -> None:
    track_id = fresh_id()
    fake.add_track(track_id, "Patient", "Waiter")
    fake.fail("/v1/tracks/", 429, retry_after=1, times=2)
    sleeps: list[float] = []
    async with AsyncTestClient(online_app(demo_artifacts, client_for(fake, sleeps), redis_url)) as c:
        response = await c.get(f"/songs/{track_id}")
    assert response.status_code == 200 and "Patient" in response.text and sleeps == [1.0, 1.0]


@pytest_anyio
async def test_network_errors_are_a_503_page(closed_port: int, demo_artifacts: Path, redis_url: str) -> None:
    cfg = SpotifyConfig(CLIENT_ID, CLIENT_SECRET, api_url=f"http://127.0.0.1:{closed_port}/v1/",
                        token_url=f"http://127.0.0.1:{closed_port}/api/token", backoff_s=0.01, max_attempts=2)
    async with AsyncTestClient(online_app(demo_artifacts, SpotifyClient(cfg), redis_url)) as c:
        response = await c.get(f"/songs/{fresh_id()}")
    assert response.status_code == 503 and "Spotify could not be reached" in response.text


@pytest_anyio
async def test_unknown_on_spotify_too_is_a_404_page(fake: FakeSpotify, demo_artifacts: Path, redis_url: str) -> None:
    async with AsyncTestClient(online_app(demo_artifacts, client_for(fake), redis_url)) as c:
        missing = await c.get(f"/songs/{fresh_id()}")
        malformed = await c.get("/songs/not-a-spotify-id")
    assert missing.status_code == 404 and "Neither this catalog nor Spotify" in missing.text
    assert malformed.status_code == 404 and fake.count("/v1/tracks/") == 1


@pytest_anyio
async def test_online_lookups_work_while_redis_is_down_and_readyz_says_so(
        fake: FakeSpotify, demo_artifacts: Path, closed_port: int) -> None:
    """The track cache is on the worker's one Redis link: one outage, one fallback, shown in /readyz."""
    track_id = fresh_id()
    fake.add_track(track_id, "No Cache", "Anyway")
    app = online_app(demo_artifacts, client_for(fake), f"redis://127.0.0.1:{closed_port}/0")
    async with AsyncTestClient(app) as c:
        assert (await c.get(f"/songs/{track_id}")).status_code == 200
        assert (await c.get(f"/songs/{track_id}")).status_code == 200
        ready = (await c.get("/readyz")).json()
    assert fake.count("/v1/tracks/") == 1  # the second from the in-process LRU
    assert ready["redis"] == "degraded" and ready["online"] == {"cache": "degraded"} and "redis" in ready["degraded"]


@pytest_anyio
async def test_the_track_cache_uses_the_sessions_redis_client_and_recovers_with_it(
        fake: FakeSpotify, demo_artifacts: Path, redis_url: str) -> None:
    """One client and one outage state: Redis away at start, both fall back; back, both use it."""
    import redis.asyncio as aioredis

    from tests.test_sessions import SwitchableProxy

    target = aioredis.from_url(redis_url)
    port = target.connection_pool.connection_kwargs.get("port", 6379)
    await target.aclose()
    track_id = fresh_id()
    fake.add_track(track_id, "Flapping", "Cache")
    async with SwitchableProxy(port) as proxy:
        app = online_app(demo_artifacts, client_for(fake), f"redis://127.0.0.1:{proxy.port}/0")
        async with AsyncTestClient(app) as c:
            online, sessions = app.state.online, app.state.sessions
            assert online.cache.link is sessions.link and online.cache.link.client is sessions.client
            assert (await c.get(f"/songs/{track_id}")).status_code == 200
            ready = (await c.get("/readyz")).json()
            assert ready["redis"] == "degraded" and ready["online"] == {"cache": "degraded"}
            proxy.forwarding = True
            for _ in range(200):
                ready = (await c.get("/readyz")).json()
                if ready["redis"] == "ok":
                    break
                await anyio.sleep(0.05)
            assert ready["redis"] == "ok" and ready["online"] == {"cache": "ok"}
    assert fake.count("/v1/tracks/") == 1


@pytest_anyio
async def test_offline_mode_never_asks_spotify(demo_artifacts: Path) -> None:
    settings = settings_for(demo_artifacts, MODE="offline")
    assert online_service(settings, None) is None
    app = create_app(settings)
    async with AsyncTestClient(app) as c:
        response = await c.get(f"/songs/{fresh_id()}")
        assert app.state.online is None and "online" not in (await c.get("/readyz")).json()
    assert response.status_code == 404 and "in this catalog" in response.text


def test_the_online_service_is_built_from_settings(demo_artifacts: Path) -> None:
    settings = settings_for(demo_artifacts, SPOTIFY_API_URL="http://127.0.0.1:9/v1")
    service = online_service(settings, None)
    assert isinstance(service, OnlineService) and service.cache.status == "memory"
    assert service.client.config.client_id == CLIENT_ID and service.client.config.api_url == "http://127.0.0.1:9/v1/"


def test_the_offline_service_never_imports_torch(demo_artifacts: Path) -> None:
    script = f"""
import sys
from litestar.testing import TestClient
from musicrec.service.main import create_app
from musicrec.service.settings import Settings
from musicrec.index.artifacts import load_artifacts
settings = Settings.from_env({{"ARTIFACTS_DIR": {str(demo_artifacts)!r}, "REDIS_URL": "memory://",
                               "KAFKA_BOOTSTRAP_SERVERS": ""}}, env_file=None)
track = load_artifacts({str(demo_artifacts)!r}).tracks.ids[0]
with TestClient(create_app(settings)) as c:
    for url in ("/", "/songs?q=demo", f"/songs/{{track}}", "/songs/nope"):
        c.get(url)
print("torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
