"""musicrec.service.direct: the hot routes answer every request as Litestar's own parameter handling would.

Each case is sent to two apps on the same catalog, one with ``Direct`` and one with it passing
every request straight on, and the answers must match (status, body, content type): the fast
path may only change what a request costs. Well-formed requests must take it, the rest must not.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from litestar.routes.http import HTTPRoute
from litestar.testing import AsyncTestClient

from musicrec.service.direct import Direct
from musicrec.service.main import create_app
from musicrec.index.artifacts import load_artifacts
from tests.test_api import settings_for

pytestmark = pytest.mark.anyio

A, B, NOPE = "__A__", "__B__", "no-such-track"
JSON = {"content-type": "application/json"}

# (method, path, body or None, headers, taken directly?)
CASES = [
    ("GET", "/api/songs_recommendations", None, {}, True),
    ("GET", "/api/songs_recommendations?k=5", None, {}, True),
    ("GET", "/api/songs_recommendations?k=7&diversity=0.5", None, {}, True),
    ("GET", "/api/songs_recommendations?diversity=1", None, {}, True),
    ("GET", "/api/songs_recommendations?k=0", None, {}, True),       # the signature model's 400
    ("GET", "/api/songs_recommendations?k=201", None, {}, True),
    ("GET", "/api/songs_recommendations?k=abc", None, {}, True),
    ("GET", "/api/songs_recommendations?k=", None, {}, True),
    ("GET", "/api/songs_recommendations?diversity=1.5", None, {}, True),
    ("GET", "/api/songs_recommendations?k=5&k=6", None, {}, False),  # repeated: Litestar's multi-dict
    ("GET", "/api/songs_recommendations?k=%35", None, {}, False),    # escaped
    ("GET", "/api/songs_recommendations?k=+5", None, {}, False),
    ("GET", "/api/songs_recommendations?other=1", None, {}, False),  # not a parameter: Litestar ignores it
    ("GET", "/api/songs_recommendations?k", None, {}, False),
    ("POST", "/events", {"type": "track_view", "track_id": A, "source": "test"}, JSON, True),
    ("POST", "/events", {"type": "like", "track_id": B, "next": 4}, JSON, True),
    ("POST", "/events", {"type": "skip", "track_id": B, "next": 3, "position": 12}, {}, True),  # no type: JSON
    ("POST", "/events", {"type": "track_view_online", "track_id": A, "ts": 1796117687.5}, JSON, True),
    ("POST", "/events", {"type": "like", "track_id": NOPE}, JSON, True),             # the handler's 404
    ("POST", "/events", {"type": "like", "track_id": A, "client_id": "bad id!"}, JSON, False),
    ("POST", "/events", {"type": "dance", "track_id": A}, JSON, False),
    ("POST", "/events", {"type": "like", "track_id": A, "next": 0}, JSON, False),
    ("POST", "/events", {"type": "like", "track_id": A, "next": "5"}, JSON, False),  # lenient in Litestar
    ("POST", "/events", {"type": "like", "track_id": A, "colour": "red"}, JSON, False),
    ("POST", "/events", {"type": "like"}, JSON, False),
    ("POST", "/events", b'{"type": "like", "track_id": ', JSON, False),
    ("POST", "/events", b"[" * 1000 + b"]" * 1000, JSON, False),
    ("POST", "/events", b"", JSON, False),
    ("POST", "/events", {"type": "like", "track_id": A}, {"content-type": "text/plain"}, True),  # the hook's 415
    ("POST", "/events", {"type": "like", "track_id": A, "source": "x" * (2 << 20)}, JSON, False),  # 413
    ("POST", "/api/recommendations", {"track_ids": [A, B], "k": 6}, JSON, True),
    ("POST", "/api/recommendations", {"track_ids": [A, NOPE], "k": 6, "filters": {"min_popularity": 10},
                                      "exclude_ids": [B], "diversity": 0.3}, JSON, True),
    ("POST", "/api/recommendations", {"track_ids": [NOPE]}, JSON, True),
    ("POST", "/api/recommendations", {"track_ids": []}, JSON, False),
    ("POST", "/api/recommendations", {"track_ids": [A], "filters": {"genres": 3}}, JSON, False),
    ("POST", "/api/recommendations", {"track_ids": [A], "k": 6.0}, JSON, False),
]


def _body(case_body: Any, ids: dict[str, str]) -> bytes | None:
    if case_body is None or isinstance(case_body, bytes):
        return case_body
    text = json.dumps(case_body)
    for placeholder, track_id in ids.items():
        text = text.replace(placeholder, track_id)
    return text.encode()


def _comparable(response: Any) -> tuple[int, str, Any]:
    """Status, media type and body, without the parts that are random per request (event ids)."""
    body = response.json()
    if isinstance(body, dict):
        body.pop("event_id", None)
    return response.status_code, response.headers.get("content-type"), body


@pytest.fixture
async def apps(demo_artifacts: Path) -> AsyncIterator[tuple[AsyncTestClient, ...]]:
    """(with Direct, without it): two apps on the same catalog, each with its own in-process sessions."""
    async with AsyncTestClient(create_app(settings_for(demo_artifacts))) as direct, \
            AsyncTestClient(create_app(settings_for(demo_artifacts))) as plain:
        yield direct, plain


async def test_direct_answers_as_litestar_does(apps: tuple[AsyncTestClient, ...], demo_artifacts: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    direct, plain = apps
    catalog = load_artifacts(demo_artifacts).tracks
    ids = {A: catalog.ids[3], B: catalog.ids[40]}
    through_litestar: list[str] = []
    handled = HTTPRoute._call_handler_function

    async def counted(self: HTTPRoute, *args: Any, **kwargs: Any) -> Any:
        through_litestar.append(self.path)
        return await handled(self, *args, **kwargs)

    monkeypatch.setattr(HTTPRoute, "_call_handler_function", counted)
    original = Direct.__call__

    async def passing_on(self: Direct, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    for method, path, case_body, headers, taken in CASES:
        request = {"content": _body(case_body, ids), "headers": {"X-Client-Id": "parity", **headers}}
        answers = []
        for client, call in ((direct, original), (plain, passing_on)):
            monkeypatch.setattr(Direct, "__call__", call)
            through_litestar.clear()
            response = await client.request(method, path, **request)
            answers.append(_comparable(response))
            if call is original:
                assert bool(through_litestar) is not taken, (method, path, case_body, through_litestar)
        assert answers[0] == answers[1], (method, path, case_body)
        assert answers[0][0] < 500, (method, path, case_body, answers[0])


async def test_a_new_listener_gets_the_same_cookie_either_way(apps: tuple[AsyncTestClient, ...]) -> None:
    direct, _ = apps
    response = await direct.get("/api/songs_recommendations?k=3")
    assert response.status_code == 200 and response.cookies.get("client_id")
    assert response.headers["x-request-id"]


async def test_a_route_with_a_guard_is_left_to_litestar() -> None:
    """Direct does not run guards: on a guarded route it must pass every request on, or the guard would be skipped."""
    from litestar import Litestar, get
    from litestar.exceptions import NotAuthorizedException
    from litestar.middleware import DefineMiddleware

    def refuse(connection: Any, _: Any) -> None:
        raise NotAuthorizedException("no")

    @get("/guarded", guards=[refuse], middleware=[DefineMiddleware(Direct)], sync_to_thread=False)
    def guarded(k: int = 1) -> dict[str, int]:
        return {"k": k}

    @get("/open", middleware=[DefineMiddleware(Direct)], sync_to_thread=False)
    def open_route(k: int = 1) -> dict[str, int]:
        return {"k": k}

    async with AsyncTestClient(Litestar([guarded, open_route])) as client:
        assert (await client.get("/guarded?k=2")).status_code == 401
        answer = await client.get("/open?k=2")
        assert answer.status_code == 200 and answer.json() == {"k": 2}
