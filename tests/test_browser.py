"""A real browser (Playwright driving Debian's chromium) through the site, served by uvicorn.

Search, page, open a song, see its chart, press like and skip, and watch the recommendations
change and the events land in the session. Uses the demo build, or the artefacts named by
MUSICREC_BROWSER_ARTIFACTS (e.g. a 114k build). Screenshots go to the pytest temp dir.
Skipped only when no chromium can be found (CI installs it in .ci/run).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from musicrec.service.main import create_app
from musicrec.service.settings import Settings

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium on PATH (CI installs Debian's: apt-get install -y chromium)")


@pytest.fixture(scope="module")
def served(demo_artifacts: Path, redis_url: str) -> Iterator[str]:
    """The app under uvicorn on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    artifacts = os.environ.get("MUSICREC_BROWSER_ARTIFACTS") or str(demo_artifacts)
    settings = Settings.from_env({"ARTIFACTS_DIR": artifacts, "REDIS_URL": redis_url, "KAFKA_BOOTSTRAP_SERVERS": "",
                                  "RATE_LIMIT_PER_MIN": "0"},
                                 env_file=None)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning", lifespan="on", loop="asyncio"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn-browser-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 180
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the app did not start under uvicorn")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def card_ids(page, selector: str) -> list[str]:
    return [h.rsplit("/", 1)[-1] for h in page.locator(f"{selector} a.card-title").evaluate_all(
        "els => els.map(e => e.getAttribute('href'))")]


def test_a_listener_searches_opens_a_song_likes_and_skips(served: str, browser, tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    outside: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(served) else outside.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    # Home: a new listener gets popular tracks and a cookie.
    page.goto(served + "/")
    assert page.get_by_role("heading", name="Popular tracks").is_visible()
    assert any(c["name"] == "client_id" for c in context.cookies())

    # Search and filter on /songs; the state lands in the query string.
    page.goto(served + "/songs")
    total_all = int(re.search(r"of ([\d,]+) songs", page.locator("#result-count").inner_text()).group(1).replace(",", ""))
    first_artist = page.locator("table.songs tbody tr").first.locator("td").nth(1).inner_text()
    page.get_by_label("Name, artist or album", exact=True).fill(first_artist)
    page.get_by_label("Sort by").select_option("name")
    page.get_by_label("Per page").select_option("10")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile(r"/songs\?.*sort=name"))
    assert "q=" in page.url and "per_page=10" in page.url
    count = page.locator("#result-count").inner_text()
    total = int(re.search(r"of ([\d,]+) songs", count).group(1).replace(",", ""))
    assert 0 < total < total_all
    if total > 10:  # page through, keeping the search
        page.get_by_role("link", name="Next ›").click()
        page.wait_for_url(re.compile(r"page=2"))
        assert "sort=name" in page.url and page.locator('[aria-current="page"]').inner_text() == "2"

    # Open a song: its facts, the chart and "more like this".
    page.locator("table.songs tbody a").first.click()
    page.wait_for_url(re.compile(r"/songs/[A-Za-z0-9]+$"))
    track_id = page.url.rsplit("/", 1)[-1]
    assert page.locator("h1#song-title").inner_text()
    chart = page.locator("svg.chart")
    assert chart.is_visible() and chart.locator("g.feature").count() >= 10
    assert chart.bounding_box()["width"] > 300
    assert len(card_ids(page, "#more-like-this")) == 10
    before = card_ids(page, "#for-you")
    assert before and track_id not in before

    # Like: fetch POST /events, the panel is swapped in place (no navigation).
    page.get_by_role("button", name="Like").click()
    page.locator("#feedback-status", has_text="Liked.").wait_for()
    assert page.url.endswith(track_id)
    page.locator("#session-events .action-liked").first.wait_for()
    after_like = card_ids(page, "#for-you")

    # Skip the first recommendation's effect: skipping this track turns it into a negative.
    page.get_by_role("button", name="Skip").click()
    page.locator("#feedback-status", has_text="Skipped.").wait_for()
    page.locator("#session-events .action-skipped").first.wait_for()
    after_skip = card_ids(page, "#for-you")
    assert after_skip and after_skip != after_like, (before, after_like, after_skip)

    # The events are in the session the API reads (same cookie).
    session = context.request.get(served + "/api/session").json()
    assert [(e["type"], e["track_id"]) for e in session["events"][:3]] == [
        ("skip", track_id), ("like", track_id), ("track_view", track_id)]

    shot = tmp_path / "song-page.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot of the song page: {shot}")

    # Narrow screens: same page, one column, nothing wider than the viewport.
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(tmp_path / "song-page-mobile.png"), full_page=True)
    # The song list too: the table becomes blocks, so neither it nor the page scrolls sideways.
    page.goto(served + "/songs?per_page=50")
    # The 114k catalog's longest unbroken title (82 characters), as a real row would carry it.
    page.evaluate("document.querySelector('table.songs tbody td a').textContent = "
                  "\"Sellthehousesellthecarsellthekidsfindsomeoneelseforgetiti'mnevercomingbackforgetit\"")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.evaluate("(() => { const w = document.querySelector('.table-wrap'); "
                         "return w.scrollWidth <= w.clientWidth; })()")
    page.screenshot(path=str(tmp_path / "songs-mobile.png"), full_page=True)

    # An unknown id is a proper 404 page.
    response = page.goto(served + "/songs/doesNotExist0000000000")
    assert response.status == 404 and page.get_by_role("heading", name="Song not found").is_visible()

    assert not outside, f"requests left the app: {outside}"
    assert not [e for e in errors if "404" not in e], errors
    context.close()
