"""Simulated listeners for the load test (`make bench` runs it through benchmarks/load.py).

Two mixes, one user class each (benchmarks/load.py names the one it runs):

``Listener``, the `make bench` mix: each listener plays 20 tracks first (20 `track_view`
events, its session), then, at a fixed rate, mostly asks for its next tracks (GET
/api/songs_recommendations), now and then skips or likes one of the tracks it was just given,
and sometimes asks for a playlist continuation of its own tracks (POST /api/recommendations).
About three asks in four repeat the previous one, so the answer cache serves them.

``Player``, the player mix: a player that reports every track it plays and asks what comes
next in the same request (POST /events with ``"next"``): it plays the first track it was given
(or now and then skips it), so every ask follows a new event and the answer cache never helps.

Each listener runs at a constant
throughput of BENCH_USER_RATE tasks/s, so the offered load is users × rate requests/s whatever
the latency (as long as responses come back faster than 1/rate): latency is measured at a known
rate, not at saturation.

Why not Locust's own ``constant_throughput``: Locust starts ``spawn_rate`` users at the same
instant each second, and ``constant_throughput`` anchors each user's schedule to its start, so
every batch fires in lockstep for the whole run. Against a no-op ASGI app at 1,000 requests/s
that alone put the median at 60 ms (p99 170 ms); ``paced`` below is the same constant rate
with each listener's phase drawn at random (median 1 ms).

Environment (benchmarks/load.py sets it):
  BENCH_TRACK_IDS   a file with one catalog track id per line (else read from BENCH_ARTIFACTS)
  BENCH_ARTIFACTS   an artefact version or root, for its tracks.parquet
  BENCH_USER_RATE   requests/s per listener (default 2.0)
  BENCH_SAMPLES     a directory: every request's exact latency after BENCH_WARMUP_S seconds is
                    written there at the end (one file per Locust process), because Locust's own
                    statistics round to whole milliseconds and include the warm-up
  BENCH_WARMUP_S    seconds after the first request during which latencies are not kept
"""
from __future__ import annotations

import os
import random
import time
import uuid
from pathlib import Path

import msgspec
import gevent
from locust import events, task
from locust.contrib.fasthttp import FastHttpUser

SESSION_VIEWS = 20
PLAYLIST_SEEDS = 10
K = 20
REC_NAME = "GET /api/songs_recommendations"
PLAYLIST_NAME = "POST /api/recommendations"
PLAY_NAME = "POST /events next [play]"
SKIP_NAME = "POST /events next [skip]"


def _track_ids() -> list[str]:
    listed = os.environ.get("BENCH_TRACK_IDS")
    if listed:
        return [line for line in Path(listed).read_text().splitlines() if line]
    import pyarrow.parquet as pq  # only when no id list was prepared

    from musicrec.index.artifacts import TRACKS, resolve_version_dir
    return pq.read_table(resolve_version_dir(os.environ["BENCH_ARTIFACTS"]) / TRACKS, columns=["id"]).column(0).to_pylist()


TRACK_IDS = _track_ids()
USER_RATE = float(os.environ.get("BENCH_USER_RATE", "2.0"))
WARMUP_S = float(os.environ.get("BENCH_WARMUP_S", "0"))
SAMPLES_DIR = os.environ.get("BENCH_SAMPLES")


class _Rec(msgspec.Struct):
    id: str  # the only field a listener looks at; the others are skipped unparsed


_decode_recs = msgspec.json.Decoder(list[_Rec]).decode
_encode = msgspec.json.encode


class _Samples:
    """Exact latencies (ms) per request name, kept after the warm-up; dumped at test stop."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.latencies: dict[str, list[float]] = {}
        self.times: dict[str, list[float]] = {}  # when each kept request ended (s since the first request)
        self.failures: dict[str, int] = {}
        self.window: list[float] = []  # first and last kept sample (wall clock)

    def add(self, name: str, response_time: float, failed: bool) -> None:
        now = time.time()
        if self.started is None:
            self.started = now
        if now - self.started < WARMUP_S:
            return
        if failed:
            self.failures[name] = self.failures.get(name, 0) + 1
        self.latencies.setdefault(name, []).append(response_time)
        self.times.setdefault(name, []).append(round(now - self.started, 3))
        if not self.window:
            self.window = [now, now]
        self.window[1] = now


SAMPLES = _Samples()


@events.request.add_listener
def _on_request(request_type: str, name: str, response_time: float, response_length: int,
                exception: BaseException | None = None, **_: object) -> None:
    SAMPLES.add(name, response_time, exception is not None)


@events.test_stop.add_listener
def _dump(**_: object) -> None:
    if not SAMPLES_DIR or not SAMPLES.latencies:
        return
    out = Path(SAMPLES_DIR) / f"samples-{os.getpid()}.json"
    out.write_bytes(_encode({"window": SAMPLES.window, "latencies": SAMPLES.latencies, "times": SAMPLES.times,
                             "failures": SAMPLES.failures}))


def _check_status(resp, wanted: int, what: str) -> bool:  # type: ignore[no-untyped-def]
    """Mark anything but ``wanted`` failed; a shed request (503/429) says so, to be counted apart."""
    if resp.status_code == wanted:
        return True
    resp.failure(f"shed: HTTP {resp.status_code}" if resp.status_code in (429, 503) else f"{what}: HTTP {resp.status_code}")
    return False


class _Paced(FastHttpUser):
    """One app install: a client id, a 20-track session, then steady traffic at USER_RATE."""

    abstract = True
    _next_run: float | None = None

    def wait_time(self) -> float:
        """Constant throughput (USER_RATE tasks/s) from a random phase; behind schedule, go now
        rather than burst to catch up (so, like Locust's, it offers less when responses are slow)."""
        period, now = 1.0 / USER_RATE, time.perf_counter()
        if self._next_run is None:
            self._next_run = now + random.random() * period
        else:
            self._next_run += period
        self._next_run = max(self._next_run, now)
        return self._next_run - now

    def on_start(self) -> None:
        self.client_id = uuid.uuid4().hex
        self.headers = {"X-Client-Id": self.client_id}
        self.played = random.sample(TRACK_IDS, SESSION_VIEWS)
        self.last_recs: list[str] = []
        gevent.sleep(random.random())  # a spawn batch starts together: spread its session building
        for track_id in self.played:
            self._event("track_view", track_id, "POST /events [session view]")

    def _event(self, kind: str, track_id: str, name: str) -> None:
        with self.client.post("/events", data=_encode({"type": kind, "track_id": track_id}), headers={
                **self.headers, "Content-Type": "application/json"}, name=name, catch_response=True) as resp:
            _check_status(resp, 202, kind)


class Listener(_Paced):
    """The `make bench` mix: mostly asks, a few events and playlists."""

    @task(8)
    def next_tracks(self) -> None:
        with self.client.get(f"/api/songs_recommendations?k={K}", headers=self.headers, name=REC_NAME,
                             catch_response=True) as resp:
            if not _check_status(resp, 200, "next tracks"):
                return
            recs = _decode_recs(resp.content)
            if len(recs) != K:
                resp.failure(f"{len(recs)} tracks, wanted {K}")
                return
            self.last_recs = [r.id for r in recs]

    @task(1)
    def skip(self) -> None:
        self._event("skip", random.choice(self.last_recs or self.played), "POST /events [skip]")

    @task(1)
    def like(self) -> None:
        self._event("like", random.choice(self.last_recs or self.played), "POST /events [like]")

    @task(1)
    def playlist(self) -> None:
        body = {"track_ids": random.sample(self.played, PLAYLIST_SEEDS), "k": K}
        with self.client.post("/api/recommendations", data=_encode(body), headers={"Content-Type": "application/json"},
                              name=PLAYLIST_NAME, catch_response=True) as resp:
            _check_status(resp, 200, "playlist")


class _Next(msgspec.Struct):
    next: list[_Rec]


_decode_next = msgspec.json.Decoder(_Next).decode


class Player(_Paced):
    """The player mix: a player reporting each track it plays and asking for the next ones in the same request."""

    @task(9)
    def play(self) -> None:
        self._play_next("track_view", PLAY_NAME)

    @task(1)
    def skip_next(self) -> None:
        self._play_next("skip", SKIP_NAME)

    def _play_next(self, kind: str, name: str) -> None:
        track_id = self.last_recs[0] if self.last_recs else random.choice(self.played)
        with self.client.post("/events", data=_encode({"type": kind, "track_id": track_id, "next": K}), headers={
                **self.headers, "Content-Type": "application/json"}, name=name, catch_response=True) as resp:
            if not _check_status(resp, 200, kind):
                return
            recs = _decode_next(resp.content).next
            if len(recs) != K:
                resp.failure(f"{len(recs)} tracks, wanted {K}")
                return
            self.last_recs = [r.id for r in recs]

