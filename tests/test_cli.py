"""The ``musicrec`` command: sub-commands, their help (defaults and environment), and a start-up that fails fast.

The start-up tests run the real command in a subprocess, from an empty directory (no ``.env``),
and time-bound it: a command that starts serving instead of refusing would hang, not pass.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from musicrec import __version__
from musicrec.cli import main, parser
from musicrec.data.events import Event, encode_event
from musicrec.index.artifacts import MANIFEST, SCALER, read_manifest, resolve_version_dir
from tests.conftest import free_port
from tests.fixtures_artifacts import REPO

COMMANDS = ("serve", "build", "consume", "eval", "rebuild")
BIN = Path(sys.executable).parent / "musicrec"


def run_cli(args: list[str], tmp_path: Path, timeout_s: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m musicrec ARGS`` in an empty directory with only ``env`` (plus PATH and the interpreter's)."""
    base = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "musicrec", *args], cwd=tmp_path, env=base | env, text=True,
                          capture_output=True, timeout=timeout_s)


def subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_installed_command_and_python_m_are_the_same_program(tmp_path: Path) -> None:
    assert BIN.is_file(), "pip install -e . installs the `musicrec` script ([project.scripts])"
    for cmd in ([str(BIN)], [sys.executable, "-m", "musicrec"]):
        proc = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert proc.returncode == 0 and all(name in proc.stdout for name in COMMANDS), proc.stderr
        version = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert version.returncode == 0 and version.stdout.strip() == f"musicrec {__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_that_states_its_default_and_the_epilog_names_the_environment(command: str) -> None:
    sub = subparsers()[command]
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{command} {action.option_strings} has no help text"
        assert "default" in action.help or "required" in action.help, f"{command} {action.option_strings}: {action.help}"
        if action.default not in (None, False):
            assert str(action.default).rstrip("0").rstrip(".") in action.help, (action.option_strings, action.help)
    epilog = sub.epilog or ""
    assert "environment" in epilog and "LOG_LEVEL" in epilog and "(default: " in epilog
    expected = {"serve": ["REDIS_URL", "PORT", "WORKERS", "MODE", "ARTIFACTS_DIR", "PROMETHEUS_MULTIPROC_DIR"],
                "build": ["ARTIFACTS_DIR", "SPOTIPY_CLIENT_ID"], "consume": ["KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TOPIC"],
                "eval": ["ARTIFACTS_DIR"], "rebuild": ["ARTIFACTS_DIR", "KAFKA_BOOTSTRAP_SERVERS"]}[command]
    assert [name for name in expected if name not in epilog] == []


def test_build_keeps_every_option_of_the_indexer_command() -> None:
    from musicrec.indexer.cli import parser as indexer_parser

    def options(p: argparse.ArgumentParser, name: str) -> set[str]:
        action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        return {o for a in action.choices[name]._actions for o in a.option_strings}

    wanted = {"--csv", "--spotify-playlist", "--out", "--root", "--demo", "--epochs", "--seed", "--index-type",
              "--events", "--force", "--quiet"}
    assert wanted <= options(parser(), "build") == options(indexer_parser(), "build")


def test_serve_help_prints_and_exits_without_starting_a_server(tmp_path: Path) -> None:
    proc = run_cli(["serve", "--help"], tmp_path, timeout_s=30)
    assert proc.returncode == 0 and "REDIS_URL" in proc.stdout and "Uvicorn" not in proc.stderr + proc.stdout


@pytest.mark.parametrize(("env", "expect"), [
    ({"PORT": "http"}, "PORT must be an integer in 1..65535, got 'http'"),
    ({"MODE": "online"}, "MODE=online needs SPOTIPY_CLIENT_ID and SPOTIPY_CLIENT_SECRET"),
    ({"ARTIFACTS_DIR": "{tmp}/nothing-here"}, "nothing-here: no such artefact directory"),
    ({"ARTIFACTS_DIR": "{corrupt}"}, "checksum does not match the manifest"),
], ids=["bad-setting", "online-without-credentials", "missing-artefacts", "corrupt-artefacts"])
def test_start_up_refuses_with_one_line_and_exit_2_before_any_worker(env: dict[str, str], expect: str, tmp_path: Path,
                                                                    demo_artifacts: Path) -> None:
    corrupt = tmp_path / "corrupt"
    shutil.copytree(demo_artifacts, corrupt)
    (corrupt / SCALER).write_text((corrupt / SCALER).read_text() + " ")
    env = {k: v.format(tmp=tmp_path, corrupt=corrupt) for k, v in env.items()}
    proc = run_cli(["serve"] if "PORT" in env else ["serve", "--port", str(free_port())], tmp_path, timeout_s=60,
                   **({"ARTIFACTS_DIR": str(demo_artifacts), "REDIS_URL": "memory://"} | env))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], proc.stderr
    assert proc.stdout == ""


def test_bad_settings_stop_the_offline_commands_too(tmp_path: Path) -> None:
    proc = run_cli(["eval"], tmp_path, LOG_FORMAT="xml")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: invalid settings: LOG_FORMAT must be one of text, json, got 'xml'"]


def test_eval_defaults_to_artifacts_dir(demo_artifacts: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTIFACTS_DIR", str(demo_artifacts))
    assert main(["eval", "--sample", "200"]) == 0
    out = capsys.readouterr().out
    assert "genre agreement@10: embedding" in out and "good:" in out and "higher is better" in out


def test_rebuild_consumes_until_idle_then_builds_with_those_events(kafka_bootstrap: str, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from aiokafka import AIOKafkaProducer

    topic = f"rebuild-{uuid.uuid4().hex[:8]}"
    sent = [Event(event_id=uuid.uuid4().hex, type="track_view", track_id=f"t{i}", ts=1_700_000_000.0 + i,
                  source=None, client_id=f"c{i % 3}", position=None, model_version="v0") for i in range(12)]

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False)
        await producer.start()
        try:
            for event in sent:
                await producer.send_and_wait(topic, encode_event(event))
        finally:
            await producer.stop()

    asyncio.run(produce())
    root, events = tmp_path / "artifacts", tmp_path / "events"
    code = main(["rebuild", "--root", str(root), "--events", str(events), "--until-idle", "2", "--bootstrap-servers",
                 kafka_bootstrap, "--topic", topic, "--group", f"g-{topic}", "--demo", "300", "--epochs", "1",
                 "--index-type", "flat", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "events written: 12" in out and "events: 12 read" in out
    manifest = read_manifest(resolve_version_dir(root))
    assert manifest.events["events_read"] == 12 and (resolve_version_dir(root) / MANIFEST).is_file()


def test_make_run_installs_only_the_runtime_and_make_test_the_dev_extra(tmp_path: Path) -> None:
    venv = tmp_path / "venv"  # absent: make prints the whole install it would do
    run = subprocess.run(["make", "-n", "run", f"VENV={venv}"], cwd=REPO, capture_output=True, text=True, timeout=60)
    test = subprocess.run(["make", "-n", "test", f"VENV={venv}"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == test.returncode == 0, run.stderr + test.stderr
    assert "pip install --quiet -e .\n" in run.stdout and "[dev]" not in run.stdout
    assert f"{venv}/bin/musicrec serve" in run.stdout
    assert "pip install --quiet -e '.[dev]'" in test.stdout and "-m pytest" in test.stdout


def test_one_package_with_no_leftovers_of_the_old_layout() -> None:
    """Everything installs under musicrec/; the dead code the layout review found is gone."""
    import musicrec.data
    from musicrec.service import logic, schemas

    assert not hasattr(logic, "page_rows") and not hasattr(musicrec.data, "load_csv")
    assert "ErrorBody" in (REPO / "musicrec/service/openapi.py").read_text()  # used: the declared error model
    assert not (REPO / "musicrec/web/pages.py").exists() and hasattr(schemas, "EventType")
    top = {p.name for p in REPO.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert top == {"musicrec", "tests", "benchmarks"}, top
