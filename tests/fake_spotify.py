"""A fake Spotify Web API on a loopback port, for tests that must never reach the internet.

Serves the client-credentials token endpoint and the handful of endpoints the project
uses (tracks, artists, audio-features, playlist items with ``next`` paging), with faults
scripted per path: ``fail("/v1/tracks/", 429, retry_after=1, times=2)``. By default
audio-features answers 403, as Spotify does for apps created after 2024-11-27.
"""
from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

CLIENT_ID = "fake-client-id"
CLIENT_SECRET = "fake-client-secret"
TOKEN = "fake-access-token"


@dataclass
class Fault:
    prefix: str
    status: int
    retry_after: float | None
    times: int
    drop: bool = False  # close the connection without an answer (a network error)


@dataclass
class FakeSpotify:
    tracks: dict[str, dict[str, Any]] = field(default_factory=dict)
    artists: dict[str, dict[str, Any]] = field(default_factory=dict)
    features: dict[str, dict[str, float]] = field(default_factory=dict)
    playlists: dict[str, list[str]] = field(default_factory=dict)
    features_forbidden: bool = True
    requests: list[str] = field(default_factory=list)
    token_requests: int = 0
    _faults: list[Fault] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    # -- set-up ---------------------------------------------------------------------------
    def add_track(self, track_id: str, name: str, artist: str, *, artist_id: str | None = None, album: str = "Album",
                  popularity: int = 50, duration_ms: int = 200_000, genres: list[str] | None = None,
                  features: dict[str, float] | None = None) -> dict[str, Any]:
        artist_id = artist_id or ("A" + track_id[1:])
        self.artists.setdefault(artist_id, {"id": artist_id, "name": artist, "genres": genres or []})
        track = {"id": track_id, "type": "track", "name": name, "popularity": popularity, "explicit": False,
                 "duration_ms": duration_ms, "is_local": False, "album": {"name": album},
                 "artists": [{"id": artist_id, "name": artist}]}
        self.tracks[track_id] = track
        if features is not None:
            self.features[track_id] = {"id": track_id, **features}
        return track

    def fail(self, prefix: str, status: int = 429, *, retry_after: float | None = None, times: int = 1,
             drop: bool = False) -> None:
        with self._lock:
            self._faults.append(Fault(prefix, status, retry_after, times, drop))

    def count(self, prefix: str) -> int:
        return sum(1 for r in self.requests if r.startswith(prefix))

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_url(self) -> str:
        return self.url + "/v1/"

    @property
    def token_url(self) -> str:
        return self.url + "/api/token"

    def env(self) -> dict[str, str]:
        return {"SPOTIPY_CLIENT_ID": CLIENT_ID, "SPOTIPY_CLIENT_SECRET": CLIENT_SECRET,
                "SPOTIFY_API_URL": self.api_url, "SPOTIFY_TOKEN_URL": self.token_url}

    # -- serving --------------------------------------------------------------------------
    def start(self) -> "FakeSpotify":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                fake._handle(self, "POST")

            def do_GET(self) -> None:  # noqa: N802
                fake._handle(self, "GET")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-spotify", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if path.startswith(fault.prefix) and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        parts = urlsplit(h.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        path = parts.path
        with self._lock:
            self.requests.append(path)
        fault = self._fault(path)
        if fault is not None:
            if fault.drop:
                h.close_connection = True
                h.wfile.flush()
                h.connection.close()
                return
            headers = {"Retry-After": str(int(fault.retry_after))} if fault.retry_after is not None else {}
            return _send(h, fault.status, {"error": {"status": fault.status, "message": "scripted fault"}}, headers)
        if method == "POST" and path == "/api/token":
            return self._token(h, body)
        if h.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _send(h, 401, {"error": {"status": 401, "message": "No token provided"}})
        self._api(h, path, query)

    def _token(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        with self._lock:
            self.token_requests += 1
        if h.headers.get("Authorization") != expected or b"grant_type=client_credentials" not in body:
            return _send(h, 400, {"error": "invalid_client", "error_description": "Invalid client"})
        _send(h, 200, {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 3600})

    def _api(self, h: BaseHTTPRequestHandler, path: str, query: dict[str, str]) -> None:
        ids = [i for i in query.get("ids", "").split(",") if i]
        if path.startswith("/v1/tracks/") and path.rstrip("/") != "/v1/tracks":
            track = self.tracks.get(path.rsplit("/", 1)[-1])
            return _send(h, 200, track) if track else _send(h, 404, {"error": {"status": 404, "message": "Not found"}})
        if path.rstrip("/") == "/v1/tracks":
            return _send(h, 200, {"tracks": [self.tracks.get(i) for i in ids]})
        if path.rstrip("/") == "/v1/artists":
            return _send(h, 200, {"artists": [self.artists.get(i) for i in ids]})
        if path.rstrip("/") == "/v1/audio-features":
            if self.features_forbidden:
                return _send(h, 403, {"error": {"status": 403, "message": "Forbidden"}})
            return _send(h, 200, {"audio_features": [self.features.get(i) for i in ids]})
        if path.startswith("/v1/playlists/") and path.endswith("/items"):
            return self._playlist(h, path.split("/")[3], query)
        _send(h, 404, {"error": {"status": 404, "message": "Service not found"}})

    def _playlist(self, h: BaseHTTPRequestHandler, pid: str, query: dict[str, str]) -> None:
        if pid not in self.playlists:
            return _send(h, 404, {"error": {"status": 404, "message": "Resource not found"}})
        ids = self.playlists[pid]
        offset, limit = int(query.get("offset", 0)), int(query.get("limit", 50))
        page = ids[offset:offset + limit]
        nxt = (f"{self.api_url}playlists/{pid}/items?offset={offset + limit}&limit={limit}&additional_types=track"
               if offset + limit < len(ids) else None)
        _send(h, 200, {"items": [{"track": self.tracks[i]} for i in page], "next": nxt, "total": len(ids),
                       "offset": offset, "limit": limit})


def _send(h: BaseHTTPRequestHandler, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(payload).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(data)


def spotify_id(n: int, prefix: str = "T") -> str:
    """A valid-looking 22-character base62 id."""
    return f"{prefix}{n:021d}"
