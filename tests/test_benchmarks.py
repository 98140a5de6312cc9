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
