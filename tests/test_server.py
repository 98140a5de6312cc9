"""The service as it really runs: `python -m musicrec.service` (uvicorn + httptools) on a loopback port.

What only a real server shows: how it starts (or refuses to), and what it does with hostile
connections (huge headers, clients that never finish a request). Every wait here is bounded.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]


def service_env(artifacts: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "REDIS_", "API_", "ADMIN_"))}
    return env | {"ARTIFACTS_DIR": str(artifacts), "HOST": "127.0.0.1", "PORT": str(port), "WORKERS": "1",
                  "REDIS_URL": "memory://", "RELOAD_POLL_S": "0", "LOG_LEVEL": "WARNING"} | extra


@contextlib.contextmanager
def running_service(artifacts: Path, tmp_path: Path, **extra: str) -> Iterator[str]:
    """Start the service, wait (bounded) until /healthz answers, yield its base URL; stop it after."""
    port = free_port()
    log = tmp_path / f"service-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "musicrec.service"], cwd=tmp_path,
                                env=service_env(artifacts, port, **extra), stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the service exited with {proc.returncode}: {log.read_text()}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the service did not answer within 60 s: {log.read_text()}")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# -- start-up ------------------------------------------------------------------------------------

def test_a_version_with_bad_contents_is_refused_at_start_with_one_line(demo_artifacts: Path, tmp_path: Path) -> None:
    """Out-of-range neighbours with a valid checksum used to start fine and answer every recommendation with a 500."""
    import json

    from musicrec.index.artifacts import MANIFEST, NEIGHBOURS, sha256_file

    bad = tmp_path / "bad"
    shutil.copytree(demo_artifacts, bad)
    table = np.load(bad / NEIGHBOURS)
    table[5, 3] = len(table) + 1
    np.save(bad / NEIGHBOURS, table)
    manifest = json.loads((bad / MANIFEST).read_text())
    manifest["checksums"][NEIGHBOURS] = sha256_file(bad / NEIGHBOURS)
    (bad / MANIFEST).write_text(json.dumps(manifest))
    done = subprocess.run([sys.executable, "-m", "musicrec.service"], cwd=tmp_path, capture_output=True, text=True,
                          env=service_env(bad, free_port()), timeout=60)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "neighbours.npy holds values" in errors[0], done.stderr


def test_bad_settings_are_refused_at_start_with_one_line(demo_artifacts: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "musicrec.service"], cwd=tmp_path, capture_output=True, text=True,
                          env=service_env(demo_artifacts, free_port(), SESSION_LEN="many"), timeout=60)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: invalid settings: SESSION_LEN must be an integer in 1..1000, got 'many'"]
