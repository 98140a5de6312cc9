"""The HTML pages served by the app: query parameters, bad values, escaping, session effects."""
from __future__ import annotations

import re
from html import unescape
from pathlib import Path
from typing import AsyncIterator

import numpy as np
import pytest
from litestar.testing import AsyncTestClient

from musicrec.web.charts import PITCH_CLASSES, FeatureScale, display_value, feature_chart, feature_rows, scale_for
from musicrec.index.engine import Engine
from musicrec.service.main import create_app
from musicrec.service.settings import Settings
from musicrec.index.artifacts import load_artifacts

pytestmark = pytest.mark.anyio
NASTY = "<script>alert(1)</script>"
NASTY_ARTIST = 'Bob & <b>Ann</b> "quoted"'


def settings_for(artifacts: Path, **env: str) -> Settings:
    # The whole suite calls from one address: rate limits are off here and have their own tests (test_security.py).
    base = {"ARTIFACTS_DIR": str(artifacts), "REDIS_URL": "memory://", "KAFKA_BOOTSTRAP_SERVERS": "",
            "RATE_LIMIT_PER_MIN": "0"}
    return Settings.from_env(base | env, env_file=None)


@pytest.fixture
async def client(demo_artifacts: Path, redis_url: str) -> AsyncIterator[AsyncTestClient]:
    """A browser-like client: no client-id header, so the cookie set on the first visit names the session."""
    async with AsyncTestClient(create_app(settings_for(demo_artifacts, REDIS_URL=redis_url))) as c:
        yield c


@pytest.fixture(scope="module")
def catalog(demo_artifacts: Path):
    return load_artifacts(demo_artifacts).tracks


@pytest.fixture(scope="module")
def nasty_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real-looking (not demo) catalog whose first track's text is all markup."""
    from musicrec.data.demo import generate_demo_frame
    from musicrec.data.loader import catalog_from_frame
    from musicrec.indexer.pipeline import BuildOptions, build_version

    frame = generate_demo_frame(400, seed=5)
    frame.loc[0, ["track_name", "artists", "album_name", "track_genre"]] = [NASTY, NASTY_ARTIST, "<i>album</i>", "<u>genre</u>"]
    out = tmp_path_factory.mktemp("nasty") / "v1"
    build_version(catalog_from_frame(frame, source=None, demo=False),
                  BuildOptions(epochs=2, seed=1, progress=False, eval_sample=100), out=out)
    return out


def html_of(response) -> str:
    assert response.headers["content-type"].startswith("text/html"), response.headers["content-type"]
    return response.text


def song_links(html: str) -> list[str]:
    return re.findall(r'<a (?:class="card-title" )?href="/songs/([A-Za-z0-9]+)"', html)


def table_rows(html: str) -> int:
    body = html.split("<tbody>", 1)[1].split("</tbody>", 1)[0] if "<tbody>" in html else ""
    return body.count("<tr>")


# -- home ----------------------------------------------------------------------------------------

async def test_first_visit_sets_the_cookie_the_api_uses_and_shows_popular_tracks(client: AsyncTestClient) -> None:
    response = await client.get("/")
    html = html_of(response)
    assert response.status_code == 200 and "client_id" in response.cookies
    assert "Demo catalog" in html and "Popular tracks" in html and "Welcome" in html
    assert len(song_links(html)) >= 20
    assert response.headers["cache-control"] == "no-store"
    session = (await client.get("/api/session")).json()
    assert response.cookies["client_id"].startswith(session["client_id"] + ".") and session["events"] == []


async def test_home_says_because_you_played_after_views(client: AsyncTestClient, catalog) -> None:
    await client.get("/")
    for i in (3, 200):
        assert (await client.get(f"/songs/{catalog.ids[i]}")).status_code == 200
    html = html_of(await client.get("/"))
    assert "Because you played" in html and "Popular tracks" not in html
    seeds = re.findall(r'Because you played <a href="/songs/([A-Za-z0-9]+)"', html)
    assert set(seeds) <= {catalog.ids[3], catalog.ids[200]} and seeds
    recent = html.split('id="recent-heading"', 1)[1]
    assert recent.index(catalog.ids[200]) < recent.index(catalog.ids[3])  # newest first


async def test_a_malformed_cookie_is_replaced_not_an_error(demo_artifacts: Path) -> None:
    async with AsyncTestClient(create_app(settings_for(demo_artifacts))) as c:
        response = await c.get("/", headers={"Cookie": "client_id=not a valid id!"})
        assert response.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}\.[A-Za-z0-9_-]{22}",
                                                             response.cookies["client_id"])


# -- a song --------------------------------------------------------------------------------------

async def test_song_page_shows_the_track_its_chart_and_records_a_view(client: AsyncTestClient, catalog) -> None:
    track_id = catalog.ids[7]
    response = await client.get(f"/songs/{track_id}")
    html = html_of(response)
    assert response.status_code == 200 and "client_id" in response.cookies
    assert f">{catalog.name[7]}</h1>" in html and catalog.artist[7] in html and catalog.album[7] in html
    assert catalog.genre[7] in html and re.search(r"<dt>Duration</dt><dd>\d+:\d\d</dd>", html)
    svg = html.split("<svg", 1)[1].split("</svg>", 1)[0]
    assert svg.count('data-feature="') == len(catalog.feature_names) and "catalog average" in svg
    more = html.split('id="more-like-this"', 1)[1].split("</ol>", 1)[0]
    assert len(song_links(more)) == 10 and track_id not in more
    assert 'action="/songs/' + track_id + '/feedback"' in html and 'value="like"' in html and 'value="skip"' in html
    assert "/static/app.js" in html and "/static/app.css" in html
    events = (await client.get("/api/session")).json()["events"]
    assert [(e["type"], e["track_id"]) for e in events] == [("track_view", track_id)]


async def test_view_is_published_with_source_song_page(client: AsyncTestClient, catalog,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    published = []
    monkeypatch.setattr(client.app.state.events, "publish", published.append)
    await client.get(f"/songs/{catalog.ids[1]}")
    await client.post(f"/songs/{catalog.ids[1]}/feedback", data={"type": "like"}, follow_redirects=False)
    assert [(e.type, e.track_id, e.source) for e in published] == [
        ("track_view", catalog.ids[1], "song_page"), ("like", catalog.ids[1], "song_page")]
    assert published[0].client_id == published[1].client_id and published[0].model_version


async def test_like_and_skip_change_the_session_panel(client: AsyncTestClient, catalog) -> None:
    track_id = catalog.ids[11]
    await client.get(f"/songs/{track_id}")
    panel = html_of(await client.get(f"/partials/session?current={track_id}"))
    assert panel.lstrip().startswith('<section id="session-panel"') and "<html" not in panel
    before = song_links(panel.split('id="for-you"', 1)[1].split("</ol>", 1)[0])
    assert len(before) == 8
    # What the page's script does: POST /events, then fetch the fragment again.
    skip = await client.post("/events", json={"type": "skip", "track_id": before[0], "source": "song_page"})
    assert skip.status_code == 202
    await client.post("/events", json={"type": "like", "track_id": track_id, "source": "song_page"})
    after_html = html_of(await client.get(f"/partials/session?current={track_id}"))
    after = song_links(after_html.split('id="for-you"', 1)[1].split("</ol>", 1)[0])
    assert before[0] not in after and after != before
    assert "skipped" in after_html and "liked" in after_html
    types = [e["type"] for e in (await client.get("/api/session")).json()["events"]]
    assert types == ["like", "skip", "track_view"]


async def test_like_without_javascript_posts_a_form_and_comes_back(client: AsyncTestClient, catalog) -> None:
    track_id = catalog.ids[12]
    await client.get(f"/songs/{track_id}")
    response = await client.post(f"/songs/{track_id}/feedback", data={"type": "skip"}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == f"/songs/{track_id}?recorded=skip#for-you"
    back = html_of(await client.get(response.headers["location"]))
    assert "Skipped. Your recommendations have been updated." in back
    # Coming back is not a new view, so the skip stays the track's latest event.
    assert [e["type"] for e in (await client.get("/api/session")).json()["events"]] == ["skip", "track_view"]
    bad = await client.post(f"/songs/{track_id}/feedback", data={"type": "love"}, follow_redirects=False)
    assert bad.status_code == 400 and "Unknown action" in html_of(bad)


async def test_unknown_song_is_an_html_404_while_the_api_stays_json(client: AsyncTestClient) -> None:
    response = await client.get("/songs/doesNotExist0000000000")
    assert response.status_code == 404 and "Song not found" in html_of(response)
    assert "doesNotExist0000000000" in response.text and "<form" in response.text  # the page still has its search
    api = await client.get("/api/songs/doesNotExist0000000000")
    assert api.status_code == 404 and api.json()["detail"]
    feedback = await client.post("/songs/doesNotExist0000000000/feedback", data={"type": "like"})
    assert feedback.status_code == 404 and "Song not found" in html_of(feedback)


# -- the song list -------------------------------------------------------------------------------

async def test_songs_list_search_filters_sort_and_paging(client: AsyncTestClient, catalog) -> None:
    genre = catalog.genre[0]
    url = f"/songs?q=demo&genre={genre}&explicit=false&min_popularity=10&max_popularity=80&sort=name&page=2&per_page=10"
    html = html_of(await client.get(url))
    names = [unescape(n) for n in re.findall(r'<td><a href="/songs/[^"]+">([^<]+)</a>', html)]
    assert len(names) == 10 and names == sorted(names, key=str.casefold)
    rows = [catalog.row_of[i] for i in song_links(html)]
    assert all(genre in catalog.genres[r].split("|") and not catalog.explicit[r] and 10 <= catalog.popularity[r] <= 80
               for r in rows)
    total = int(re.search(r"11–20 of ([\d,]+) songs", html).group(1).replace(",", ""))
    expected = sum(1 for r in catalog.genre_rows[genre] if not catalog.explicit[r] and 10 <= catalog.popularity[r] <= 80)
    assert total == expected
    # The state lives in the query string: the pager's links reproduce it, and the form shows it.
    nxt = unescape(re.search(r'<a rel="next" href="([^"]+)"', html).group(1))
    assert nxt == f"/songs?q=demo&genre={genre}&explicit=false&min_popularity=10&max_popularity=80&sort=name&page=3&per_page=10"
    assert f'<option value="{genre}" selected>' in html and 'value="name" selected' in html
    assert 'aria-current="page">2<' in html


async def test_songs_list_defaults_and_total(client: AsyncTestClient, catalog) -> None:
    html = html_of(await client.get("/songs"))
    assert table_rows(html) == 20 and f"1–20 of {len(catalog):,} songs" in html
    pops = [catalog.popularity[catalog.row_of[i]] for i in song_links(html)]
    assert pops == sorted(pops, reverse=True)
    assert "No songs match." in html_of(await client.get("/songs?q=zzzz-no-such-song"))


@pytest.mark.parametrize("query, status, rows", [
    ("page=-1", 200, 20),
    ("page=0", 200, 20),
    ("page=abc", 200, 20),
    ("page=99999999999999999999", 200, None),
    ("per_page=10000", 200, 100),
    ("per_page=0", 200, 1),
    ("per_page=-5", 200, 1),
    ("min_popularity=500&max_popularity=-3", 200, None),
    ("sort=DROP%20TABLE", 200, 20),
    ("explicit=maybe", 200, 20),
    ("q=" + "a" * 5000, 200, None),
    ("genre=no-such-genre", 400, 0),
    ("genre=%3Cscript%3E", 400, 0),
], ids=lambda v: str(v)[:30])
async def test_bad_list_values_are_clamped_or_a_400_page_never_a_500(client: AsyncTestClient, query: str, status: int,
                                                                     rows: int | None) -> None:
    response = await client.get(f"/songs?{query}")
    html = html_of(response)
    assert response.status_code == status, html[:500]
    if rows is not None:
        assert table_rows(html) == rows
    if status == 400:
        assert "There is no genre called" in html and "<script>" not in html.split("<main", 1)[1]


async def test_a_page_past_the_end_shows_the_last_page(client: AsyncTestClient, catalog) -> None:
    html = html_of(await client.get("/songs?per_page=100&page=5000"))
    last = -(-len(catalog) // 100)
    assert f'aria-current="page">{last}<' in html and table_rows(html) == len(catalog) - (last - 1) * 100


# -- escaping ------------------------------------------------------------------------------------

async def test_every_value_is_escaped(nasty_artifacts: Path) -> None:
    tracks = load_artifacts(nasty_artifacts).tracks
    nasty_id = tracks.ids[tracks.row_of[tracks.ids[0]]]
    assert tracks.name[0] == NASTY
    async with AsyncTestClient(create_app(settings_for(nasty_artifacts))) as c:
        pages = [await c.get(f"/songs/{nasty_id}"), await c.get("/songs?q=script"), await c.get("/"),
                 await c.get(f"/partials/session?current={nasty_id}"), await c.get("/songs?q=" + NASTY),
                 await c.get("/songs?genre=<u>genre</u>")]
    for response in pages:
        html = html_of(response)
        assert response.status_code == 200, html[:300]
        assert "<script>alert(1)" not in html and "<b>Ann</b>" not in html and "<u>genre</u>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    song = pages[0].text
    assert "Demo catalog" not in song  # built with demo=False: no banner
    assert "Bob &amp; &lt;b&gt;Ann&lt;/b&gt; &#34;quoted&#34;" in song
    assert ">Audio features of &lt;script&gt;alert(1)&lt;/script&gt;</title>" in song
    assert 'value="&lt;script&gt;alert(1)&lt;/script&gt;"' in pages[4].text  # the search box echoes it as text


# -- assets --------------------------------------------------------------------------------------

async def test_assets_are_served_by_the_app_itself(client: AsyncTestClient, catalog) -> None:
    css = await client.get("/static/app.css")
    js = await client.get("/static/app.js")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"] and "fetch(\"/events\"" in js.text
    for url in ("/", "/songs", f"/songs/{catalog.ids[0]}"):
        html = (await client.get(url)).text
        external = re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="(https?:)?//', html)
        assert not external, url
        assert '<meta name="viewport"' in html and '<html lang="en">' in html
        for field_id in re.findall(r'<(?:input|select)[^>]* id="([^"]+)"', html):
            assert f'for="{field_id}"' in html, f"{url}: #{field_id} has no label"


@pytest.mark.parametrize("path", ["/static/app.js/x", "/static/app.js%00", "/static/%2e%2e/README.md",
                                  "/static/../pyproject.toml", "/static/nope.css", "/static/",
                                  "/docs-assets/redoc.standalone.js/x", "/docs-assets/swagger-ui.css%00"])
async def test_odd_static_paths_are_404_not_500(client: AsyncTestClient, path: str, musicrec_logs: list) -> None:
    response = await client.get(path)
    assert response.status_code == 404, (path, response.text)
    assert not [r for r in musicrec_logs if r.levelname == "ERROR"]


# -- the chart -----------------------------------------------------------------------------------

def test_feature_scale_is_computed_once_per_engine_and_stays_in_0_1(demo_artifacts: Path) -> None:
    engine = Engine.load(demo_artifacts)
    scale = scale_for(engine)
    assert scale_for(engine) is scale and scale_for(Engine.load(demo_artifacts)) is not scale
    assert ((scale.mean_scaled >= 0) & (scale.mean_scaled <= 1)).all()
    rows = feature_rows(scale, {"danceability": 0.8, "loudness": 5.0, "tempo": -10.0, "key": 3.0})
    by_name = {r.name: r for r in rows}
    assert by_name["danceability"].scaled == pytest.approx(0.8) and by_name["loudness"].scaled == 1.0
    assert by_name["tempo"].scaled == 0.0 and by_name["energy"].scaled is None and by_name["energy"].value == "n/a"
    assert by_name["key"].value == "D♯" and by_name["key"].scaled is None and by_name["key"].categorical
    svg = str(feature_chart(rows, "t"))
    assert svg.count('class="bar"') == 3 and svg.count('class="avg"') == len(rows) - 2 + 1  # key, mode: no bar


def test_display_values_read_like_music() -> None:
    assert display_value("duration_ms", 185_000) == "3:05" and display_value("tempo", 120.4) == "120 BPM"
    assert display_value("mode", 1.0) == "major" and display_value("time_signature", 3.0) == "3/4"
    assert display_value("loudness", -5.25) == "-5.2 dB" and display_value("energy", None) == "n/a"
    empty = FeatureScale.of(np.zeros((0, 2)), ("energy", "tempo"))
    assert empty.scaled("energy", 0.5) == 0.5


def test_one_mapping_words_every_error_for_json_and_pages_alike() -> None:
    from litestar.exceptions import HTTPException, NotFoundException

    from musicrec.data.spotify import (
        SpotifyAuthError, SpotifyError, SpotifyNotFound, SpotifyRateLimited, SpotifyUnavailable,
    )
    from musicrec.service.errors import BadRequest, describe, from_spotify

    cases = [(SpotifyNotFound("x"), 404, "Song not found", {}),
             (SpotifyRateLimited("slow", retry_after_s=12.2), 503, "Spotify is busy", {"Retry-After": "13"}),
             (SpotifyUnavailable("down"), 503, "Spotify could not be reached", {"Retry-After": "30"}),
             (SpotifyAuthError("no"), 503, "Spotify is not available", {}),
             (SpotifyError("odd"), 502, "Spotify answered with an error", {})]
    for exc, status, title, headers in cases:
        view = describe(from_spotify(exc, "abc"))
        assert (view.status, view.title, view.headers) == (status, title, headers), exc
    assert describe(BadRequest("no", title="Unknown action")).title == "Unknown action"
    assert (describe(NotFoundException()).status, describe(NotFoundException()).title) == (404, "Page not found")
    assert describe(HTTPException(status_code=413, detail="big")).detail == "big"
    assert (describe(RuntimeError("secret")).status, describe(RuntimeError("secret")).detail) == (500, "internal error")



# -- as a listener sees it ---------------------------------------------------------------------------

def genre_cells(html: str) -> list[str]:
    body = html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [unescape(re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)[3].strip()) for row in body.split("<tr>")[1:]]


async def test_with_a_genre_filter_every_row_shows_that_genre(client: AsyncTestClient, catalog) -> None:
    # A genre that some tracks have only as a second genre: those rows used to show their first one.
    second = next(g.split("|")[1] for g in catalog.genres if "|" in g)
    html = html_of(await client.get(f"/songs?genre={second}&per_page=100"))
    cells = genre_cells(html)
    assert cells and set(cells) == {second}
    assert any(g.split("|")[0] != second for g in catalog.genres if second in g.split("|"))  # the case exists
    unfiltered = genre_cells(html_of(await client.get("/songs?per_page=100")))
    assert len(set(unfiltered)) > 1  # without a filter each row shows its own (first) genre


async def test_key_and_mode_are_labels_not_bars(client: AsyncTestClient, catalog) -> None:
    row = 7
    html = html_of(await client.get(f"/songs/{catalog.ids[row]}"))
    names = list(catalog.feature_names)
    key = int(round(float(catalog.features[row][names.index("key")])))
    mode = "major" if float(catalog.features[row][names.index("mode")]) >= 0.5 else "minor"
    for feature, shown in (("key", PITCH_CLASSES[key]), ("mode", mode)):
        group = html.split(f'data-feature="{feature}"', 1)[1].split("</g>", 1)[0]
        assert 'class="category" x="125" y="' in group and f">{shown}</text>" in group, group
        assert 'class="bar"' not in group and 'class="track"' not in group and "most often " in group
    table = html.split('class="feature-table"', 1)[1]
    assert re.search(rf"<th scope=\"row\">Key</th><td>{re.escape(PITCH_CLASSES[key])}</td><td>most often ", table)


async def test_a_liked_track_stays_liked_when_played_again(client: AsyncTestClient, catalog) -> None:
    track_id = catalog.ids[21]
    await client.get(f"/songs/{track_id}")                       # played
    await client.post("/events", json={"type": "like", "track_id": track_id})
    song = html_of(await client.get(f"/songs/{track_id}"))       # opened again: a new view, newest
    recent = song.split('id="session-events"', 1)[1].split("</ol>", 1)[0]
    assert re.search(r'class="action action-liked">liked</span> <a href="/songs/' + track_id, recent), recent
    assert "played</span>" not in recent
    for_you = song.split('id="for-you"', 1)[1].split("</ol>", 1)[0]
    assert "because you liked " in for_you and "because you played " not in for_you
    home = html_of(await client.get("/"))
    assert "Because you liked <a" in home and "Because you played" not in home
    other = catalog.ids[22]
    await client.get(f"/songs/{other}")                          # only played: still "played"
    assert "Because you played <a" in html_of(await client.get("/"))


def test_the_song_table_does_not_scroll_sideways_on_a_phone() -> None:
    """At 390 px each song becomes a block of lines (the browser test measures it where chromium runs)."""
    css = (Path(__file__).resolve().parents[1] / "musicrec/web/static/app.css").read_text()
    phone = css.split("@media (max-width: 40rem) {", 1)[1].split("\n}", 1)[0]
    assert re.search(r"table\.songs, table\.songs tbody, table\.songs tr, table\.songs td \{ display: block; width: 100%; \}",
                     phone)
    assert "overflow-wrap: anywhere" in phone and ".table-wrap { overflow-x: visible; }" in phone
    assert "table.songs thead { position: absolute;" in phone  # hidden from sight, kept for screen readers
