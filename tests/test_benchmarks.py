"""The in-process request-cost benchmark runs end to end (real app, real Redis) and reports every kind."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import request_cost


def test_request_cost_reports_a_positive_cost_for_every_kind(demo_artifacts: Path, redis_url: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert request_cost.main(["--artifacts", str(demo_artifacts), "--redis-url", redis_url,
                              "--requests", "20", "--rounds", "2", "--warmup", "5"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [r[0].strip() for r in rows[1:]] == list(request_cost.KINDS)
    assert all(float(cpu) > 0 and float(wall) > 0 for _, cpu, wall in rows[1:])


def test_request_cost_refuses_an_empty_round(capsys: pytest.CaptureFixture[str]) -> None:
    assert request_cost.main(["--requests", "0"]) == 2
    assert "--requests and --rounds must be >= 1" in capsys.readouterr().err


def test_quality_runs_the_whole_loop_and_events_help(tmp_path: Path, redis_url: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks.quality end to end on a small synthetic catalog whose "playlists" keep to hidden scenes."""
    import gzip
    import json

    from benchmarks import quality
    from benchmarks.simulate import ListenerConfig, assign_scenes, simulate_events
    from musicrec.data.demo import generate_demo_frame, write_csv
    from musicrec.data.loader import load_csv

    csv = write_csv(generate_demo_frame(800, seed=4), tmp_path / "catalog.csv")
    world = assign_scenes(load_csv(csv), 12, content_share=0.2, seed=1)
    events = simulate_events(world, ListenerConfig(listeners=150, sessions_per_listener=1, plays=(15, 20),
                                                   stray_rate=0.0), seed=3)
    playlists: dict[str, list[str]] = {}
    for e in events:
        playlists.setdefault(e.client_id, []).append(e.track_id)
    with gzip.open(tmp_path / "playlists.jsonl.gz", "wt") as fh:
        for pid, tracks in enumerate(playlists.values()):
            fh.write(json.dumps({"pid": pid, "name": "p", "tracks": list(dict.fromkeys(tracks))}) + "\n")
    assert quality.main(["--playlists", str(tmp_path / "playlists.jsonl.gz"), "--csv", str(csv), "--workdir",
                         str(tmp_path / "work"), "--json", str(tmp_path / "report.json"), "--redis-url",
                         redis_url]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    results = report["results"]
    split = quality.split_playlists(quality.read_playlists(tmp_path / "playlists.jsonl.gz"), test_fraction=0.2,
                                    min_tracks=15, seeds=10)
    assert report["events"] == report["build_report"]["events_read"] == sum(len(p.tracks) for p in split.played)
    before = results["service before events: POST /api/recommendations"]
    after = results["service after events: POST /api/recommendations"]
    assert after["recall@50"] > before["recall@50"] and after["queries"] == report["test"] > 0
    assert set(results) >= {"co-occurrence count over played playlists", "popularity (catalog)",
                            "raw standardised features (max over seeds)", "audio embedding only (max over seeds)",
                            "same artist as a seed", "service after events: seeds played, GET /api/songs_recommendations"}
    assert "| method | Recall@50 | R-precision |" in capsys.readouterr().out


def _result(mix: str, cpu_ms: float, p99: float, failures: int = 0):  # type: ignore[no-untyped-def]
    from benchmarks.load import MIXES, Endpoint, RunResult

    endpoints = [Endpoint(name, 100, 0, 10.0, p99 / 3, p99 / 2, p99, p99) for name in MIXES[mix].recommendations]
    endpoints.append(Endpoint("all recommendations", 200, 0, 20.0, p99 / 3, p99 / 2, p99, p99))
    return RunResult(mix, 1000.0, 500, 30.0, endpoints, 1000.0, failures, [], cpu_ms, 0.2, None, 0.3, 0.2)


def test_load_goals_are_ratios_to_the_null_service_with_an_absolute_cap() -> None:
    from benchmarks.load import goal_misses, parser

    args = parser().parse_args([])
    null = _result("player", 0.2, 4.0)
    assert goal_misses(_result("player", 0.39, 9.9), null, args) == []
    misses = goal_misses(_result("player", 0.45, 10.5, failures=3), null, args)
    assert any("2.25× the null's" in m for m in misses) and any("p99 10.50 ms = 2.62×" in m for m in misses)
    assert any("3 failed requests" in m for m in misses)
    assert any("> 25 ms" in m for m in goal_misses(_result("bench", 0.3, 26.0), _result("bench", 0.2, 20.0), args))
    assert goal_misses(_result("bench", 5.0, 9.0), None, args) == []  # alone: only the absolute --p99-ms
    # Requests shed while the listeners' spawn burst outran the service are information; after it, failures.
    burst = _result("player", 0.39, 9.9, failures=40)
    burst.shed = 40
    assert burst.warmup_shed == 40 and goal_misses(burst, null, args) == []
    burst.endpoints[0].failures = 2
    assert burst.measured_failures == 2 and any("2 failed requests (2 after the warm-up)" in m
                                                 for m in goal_misses(burst, null, args))


@pytest.mark.anyio
async def test_the_null_service_answers_an_event_with_next_like_musicrec() -> None:
    import json

    from benchmarks.load import null_app
    from benchmarks.request_cost import InProcess

    async with InProcess(null_app) as app:
        assert await app.call("POST", "/events", body=b'{"type":"track_view","track_id":"x"}') == 202
        assert await app.call("POST", "/events", body=b'{"type":"track_view","track_id":"x","next":20}') == 200
    from benchmarks.load import _NULL_EVENT_NEXT
    body = json.loads(_NULL_EVENT_NEXT)
    assert len(body["next"]) == 20 and body["event_id"]


@pytest.mark.anyio
async def test_the_litestar_floor_answers_what_the_null_service_does() -> None:
    from benchmarks.load import litestar_floor, null_app
    from benchmarks.request_cost import InProcess

    requests = [("GET", "/api/songs_recommendations", b""), ("POST", "/api/recommendations", b'{"track_ids":["x"]}'),
                ("POST", "/events", b'{"type":"like","track_id":"x"}'),
                ("POST", "/events", b'{"type":"like","track_id":"x","next":20}'), ("GET", "/readyz", b"")]
    statuses = []
    for app in (null_app, litestar_floor()):
        async with InProcess(app) as served:
            statuses.append([await served.call(method, path, body=body) for method, path, body in requests])
    assert statuses[0] == statuses[1] == [200, 200, 202, 200, 200]


def test_the_comparison_prints_the_litestar_floor_when_it_was_run() -> None:
    from benchmarks.load import MIXES, comparison_table, parser

    args = parser().parse_args(["--framework-floor"])
    mixes = [MIXES["player"]]
    table = comparison_table(mixes, {"player": _result("player", 0.1, 2.0)}, {"player": _result("player", 0.6, 8.0)},
                             args, {"player": _result("player", 0.2, 3.0)})
    assert "| player | Litestar floor |" in table
    assert "the Litestar floor's CPU per request is 2.00× the null's; musicrec's is 3.00× the floor's" in table
    assert "Litestar floor" not in comparison_table(mixes, {"player": _result("player", 0.1, 2.0)},
                                                    {"player": _result("player", 0.6, 8.0)}, args)


def test_the_litestar_floor_is_refused_where_it_would_be_compared_with_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.load import main

    for extra in (["--no-null"], ["--null-service"], ["--ceiling", "500"]):
        assert main(["--framework-floor", *extra]) == 2
        assert "--framework-floor" in capsys.readouterr().err


def test_the_stall_probe_reports_a_busy_loop_and_a_long_collection(tmp_path: Path) -> None:
    """benchmarks/probe: a callback that holds a uvloop loop for 60 ms is a lag with its CPU; a big collection is logged."""
    import json
    import os
    import subprocess
    import sys

    script = ("import gc, time, uvloop\n"
              "loop = uvloop.new_event_loop()\n"
              "def hold():\n    end = time.perf_counter() + 0.06\n    while time.perf_counter() < end: pass\n"
              "junk = [[i] for i in range(600_000)]\n"
              "loop.call_later(0.02, hold)\nloop.call_later(0.1, gc.collect)\nloop.call_later(0.2, loop.stop)\n"
              "loop.run_forever()\n")
    probe = Path(__file__).resolve().parents[1] / "benchmarks" / "probe"
    env = dict(os.environ, STALL_PROBE=str(tmp_path), PYTHONPATH=str(probe))
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    [log] = tmp_path.glob("stall-*.jsonl")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    lags = [r for r in records if "lag_ms" in r]
    assert any(r["lag_ms"] >= 50 and r["cpu_ms"] >= 40 for r in lags), records
    assert any(r.get("gc") == 2 and r["ms"] > 2 for r in records), records
