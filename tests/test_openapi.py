"""The OpenAPI document, the docs pages without internet, and a generated client used against the app."""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from litestar.testing import TestClient

from musicrec.index.artifacts import load_artifacts
from musicrec.service.main import create_app
from musicrec.service.settings import Settings

ERROR_REF = "#/components/schemas/ErrorBody"
LISTENER_ROUTES = {("/api/songs_recommendations", "get"), ("/events", "post"), ("/api/session", "get"),
                   ("/api/session", "delete")}


@pytest.fixture(scope="module")
def client(demo_artifacts: Path) -> Iterator[TestClient]:
    settings = Settings.from_env({"ARTIFACTS_DIR": str(demo_artifacts), "REDIS_URL": "memory://", "RELOAD_POLL_S": "0",
                                  "ADMIN_TOKEN": "t0ken"}, env_file=None)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def document(client: TestClient) -> dict[str, Any]:
    response = client.get("/schema/openapi.json")
    assert response.status_code == 200
    return response.json()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, op in item.items():
            yield path, method, op


def test_every_route_has_a_tag_a_description_and_its_errors_declared_with_the_error_body(document) -> None:
    declared_tags = {t["name"] for t in document["tags"]}
    for path, method, op in operations(document):
        where = f"{method.upper()} {path}"
        assert op.get("tags") and set(op["tags"]) <= declared_tags, where
        assert op.get("summary") and op.get("description"), where
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")):
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": ERROR_REF}, (where, status, schema)
                assert response["content"]["application/json"].get("examples"), (where, status)
        if path.startswith(("/api/", "/events")):
            assert {"400", "429", "503"} <= set(op["responses"]), where
        ok = next(s for s in op["responses"] if s.startswith("2"))
        content = op["responses"][ok].get("content", {})
        if path != "/metrics" and content:
            assert any(media.get("examples") for media in content.values()), f"{where}: no example"
    assert {"404", "413", "415"} <= set(document["paths"]["/events"]["post"]["responses"])
    assert {"404", "413", "415"} <= set(document["paths"]["/api/recommendations"]["post"]["responses"])
    assert {"401", "403", "409"} <= set(document["paths"]["/admin/reload"]["post"]["responses"])
    assert set(document["components"]["schemas"]["ErrorBody"]["properties"]) == {"status_code", "detail", "extra"}
    for method, path in (("post", "/events"), ("post", "/api/recommendations")):
        body = document["paths"][path][method]["requestBody"]["content"]["application/json"]
        assert body.get("examples"), path


def test_the_listener_id_the_event_type_enum_and_the_admin_scheme_are_documented(document) -> None:
    for path, method, op in operations(document):
        params = {(p["name"], p["in"]) for p in op.get("parameters", [])}
        has_listener = {("X-Client-Id", "header"), ("client_id", "cookie")} <= params
        assert has_listener == ((path, method) in LISTENER_ROUTES), (path, method, params)
    for path, method in LISTENER_ROUTES:
        ok = next(r for s, r in document["paths"][path][method]["responses"].items() if s.startswith("2"))
        assert "client_id=" in str(ok["headers"]["Set-Cookie"]), path  # the cookie a new listener is given
        assert "X-Request-Id" in ok["headers"]
    event_type = document["components"]["schemas"]["EventIn"]["properties"]["type"]
    assert set(event_type["enum"]) == {"track_view", "skip", "like", "track_view_offline", "track_view_online"}
    assert document["components"]["securitySchemes"]["adminToken"] == {
        "type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <ADMIN_TOKEN>` (admin routes only)"}
    assert document["paths"]["/admin/reload"]["post"]["security"] == [{"adminToken": []}]


@pytest.mark.parametrize("page", ["/schema", "/schema/swagger", "/schema/redoc"])
def test_docs_pages_load_only_from_the_app(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[a-z]{2,}", html) == []  # no CDN, no web font, nothing outside
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", html)
    assert len(assets) >= 2 and all(a.startswith("/") for a in assets), assets
    for asset in assets:
        fetched = client.get(asset)
        assert fetched.status_code == 200 and len(fetched.content) > 100, asset


def test_a_non_json_body_is_415(client: TestClient) -> None:
    response = client.post("/events", content=b"type=like", headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415 and "application/json" in response.json()["detail"]


def test_a_client_generated_from_the_document_works_against_the_app(client: TestClient, document, tmp_path: Path,
                                                                    demo_artifacts: Path) -> None:
    spec = tmp_path / "openapi.json"
    spec.write_text(client.get("/schema/openapi.json").text)
    package = f"musicrec_api_client_{uuid.uuid4().hex[:8]}"
    bin_dir = Path(sys.executable).parent
    proc = subprocess.run([str(bin_dir / "openapi-python-client"), "generate", "--path", str(spec), "--meta", "none",
                           "--output-path", str(tmp_path / package)], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Warning" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr  # nothing dropped (the 400 models were)
    sys.path.insert(0, str(tmp_path))
    try:
        api = importlib.import_module(package)
        models = importlib.import_module(f"{package}.models")
        post_event = importlib.import_module(f"{package}.api.events.events_post_event")
        recommend = importlib.import_module(f"{package}.api.recommendations.api_recommendations_recommendations")
        next_tracks = importlib.import_module(
            f"{package}.api.recommendations.api_songs_recommendations_songs_recommendations")
        list_songs = importlib.import_module(f"{package}.api.catalog.api_songs_list_songs")
        generated = api.Client(base_url=str(client.base_url))
        generated.set_httpx_client(client)
        track = load_artifacts(demo_artifacts).tracks.ids[3]
        listener = f"gen-{uuid.uuid4().hex[:8]}"

        accepted = post_event.sync_detailed(client=generated, x_client_id=listener,
                                            body=models.EventIn(type_=models.EventInType.LIKE, track_id=track))
        assert accepted.status_code == 202 and isinstance(accepted.parsed, models.EventAccepted)
        assert (accepted.parsed.type_, accepted.parsed.client_id) == ("like", listener)
        unknown = post_event.sync_detailed(client=generated, x_client_id=listener,
                                           body=models.EventIn(type_=models.EventInType.SKIP, track_id="nope"))
        assert unknown.status_code == 404 and isinstance(unknown.parsed, models.ErrorBody)
        bad = list_songs.sync_detailed(client=generated, genre="no-such-genre")
        assert bad.status_code == 400 and isinstance(bad.parsed, models.ErrorBody) and "genre" in bad.parsed.detail

        answer = next_tracks.sync(client=generated, x_client_id=listener, k=5)
        assert len(answer) == 5 and all(isinstance(t, models.SongRecommendation) for t in answer)
        assert any(t.because == track for t in answer)  # the like the generated client sent shaped the answer
        continuation = recommend.sync(client=generated, body=models.RecommendRequest(track_ids=[track], k=4))
        assert isinstance(continuation, models.RecommendResponse) and len(continuation.items) == 4
    finally:
        sys.path.remove(str(tmp_path))
